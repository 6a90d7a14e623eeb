"""Measuring what code costs: peak tensor memory and time per call, the way the benchmarks do it.

* ``peak_memory(fn)``: the most bytes of tensor memory alive at once while ``fn()`` runs, above
  what was alive before. Measured with ``torch.profiler`` (``profile_memory=True``), which records
  every allocation and free made by torch's allocator as "[memory]" events (+bytes / -bytes);
  summing them in time order gives the bytes alive after each event, and their maximum is the peak.
  It counts tensor memory exactly and deterministically, and nothing else (not the Python heap, not
  allocator slack). ``tracemalloc`` cannot do this on the CPU: torch allocates outside Python's allocator.
* ``count_parameters(model)``: how many numbers a model learns (its trainable parameters).
* ``forward_macs(model, *inputs)``: the multiply-adds of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (every matrix product and convolution, attention's included;
  element-wise work, norms and softmax are not counted). DiT (Peebles & Xie 2023) reports this count as
  "Gflops" (DiT-XL/2: 118.6); ``FlopCounterMode`` itself counts 2 floating-point operations per multiply-add.
* ``time_per_call(fns)``: seconds per call of several functions, measured in *interleaved* repeats
  (repeat 1 of every function, then repeat 2, ...) so that the machine's slow drifts hit all of them
  alike; the median of the repeats is reported. Compare functions measured in the same call, never
  numbers from different runs: timings on a shared machine vary several-fold.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from .attention import plain_attention

__all__ = ["count_parameters", "forward_macs", "peak_memory", "time_per_call"]


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters in ``model``; ``trainable_only=False`` counts frozen ones too."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def forward_macs(model: Callable, *inputs, **kwargs) -> int:
    """Multiply-adds of ``model(*inputs, **kwargs)``: FlopCounterMode's floating-point operations / 2 (a matrix
    product [m, k] x [k, n] is m k n multiply-adds), with the attention layers of a module on their einsum path,
    whose products the counter sees. Divide by the batch size for one image's count."""
    layers = plain_attention(model) if isinstance(model, torch.nn.Module) else contextlib.nullcontext()
    with layers, FlopCounterMode(display=False) as counter:  # the einsum path: FlopCounterMode skips fused SDPA
        model(*inputs, **kwargs)
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def _quiet_fds():
    """Silence file descriptors 1 and 2: the profiler's C++ backend logs lines there on every session
    (in Jupyter those descriptors are pipes that the kernel forwards into the notebook, so silencing
    ``sys.stderr`` is not enough). Python-level output made inside the block is lost too."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(os.devnull, "w") as devnull:
        for fd in saved:
            os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes of tensor memory alive during ``fn()``, above what was alive before it (see module docs).

    Tensors that ``fn`` returns or keeps count until they are freed; run it under ``torch.no_grad()``
    to measure inference (autograd keeps activations for the backward pass). Whatever ``fn`` prints
    is discarded (the profiler's own log lines are silenced with it).
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fds(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    changes = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    alive, peak = 0, 0
    for _, nbytes in changes:
        alive += nbytes
        peak = max(peak, alive)
    return peak


def time_per_call(fns: Mapping[str, Callable[[], object]], repeats: int = 5,
                  min_seconds: float = 0.1) -> dict[str, float]:
    """Median seconds per call of each function, from ``repeats`` interleaved timed runs.

    Each function is first called once (warm-up) and timed once to choose how many calls make a run
    last about ``min_seconds`` (short calls are repeated so that the clock's resolution does not matter).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up: first calls pay for allocation and kernel selection
        start = time.perf_counter()
        fn()
        calls[name] = max(1, round(min_seconds / max(time.perf_counter() - start, 1e-6)))
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            runs[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(r) for name, r in runs.items()}
