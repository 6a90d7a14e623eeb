"""Benchmark the three attention versions of ``course_lib.attention``: time and peak memory against length.

For each sequence length N (self-attention, q, k, v of shape [B, heads, N, d]) and each version
(``einsum``, ``sdpa``, ``chunked``) it measures

* time: seconds per call, forward only under ``torch.no_grad`` (what sampling does), or forward +
  backward with ``--backward`` (what training does). Runs are interleaved (repeat 1 of every N and
  version, then repeat 2, ...) so that drifts of the machine hit every variant alike; the table
  shows medians and the ratio to ``einsum``.
* peak memory: the most bytes of tensor memory alive at once during one call, above what was
  alive before it (the inputs). Measured, not estimated, by ``course_lib.profiling.peak_memory``:
  ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made by torch's allocator
  ("[memory]" events, +bytes / -bytes, on every device and thread); summing them in time order
  gives the bytes alive after each event, and the maximum is the peak. It counts tensor memory
  exactly (it is deterministic, so one call suffices) and nothing else (not the Python heap, not
  allocator slack). ``tracemalloc`` cannot do this: torch allocates outside Python's allocator.
* cross-check (``--rss``, on by default without ``--quick``; Linux): at the largest N, each version
  runs once in a fresh subprocess, which resets its resident-set high-water mark (``VmHWM`` in
  /proc/self/status, reset by writing 5 to /proc/self/clear_refs) just before the call and reports
  how far it rose above the resident set size before it: what the operating system saw, allocator
  slack included. (``ru_maxrss`` would not do: a child inherits its parent's high-water mark at exec.)
  RSS can exceed the tensor peak: glibc's malloc raises its mmap threshold after freeing a large
  block and then keeps freed blocks in its heap; ``MALLOC_MMAP_THRESHOLD_=1048576`` pins it.

    python benchmarks/bench_attention.py                  # N = 64 .. 4096, B=1, heads=4, d=64, float32
    python benchmarks/bench_attention.py --quick          # N = 64 .. 1024, 3 repeats, no RSS check
    python benchmarks/bench_attention.py --backward --lengths 256,1024,2048 --threads 1
    python benchmarks/bench_attention.py --lengths 23,32,71,80 --threads 1 --record   # chapter 6's joint sequences

``--record`` appends one line per length (kind ``attention_cost``) to the course's results file.

This is a script, not a test: times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import benchmark_parser, header, setup_torch  # this folder's; puts the checkout on sys.path
from course_lib.attention import ATTENTION_IMPLS, chunked_attention
from course_lib.config import hardware_description
from course_lib.profiling import peak_memory, time_per_call
from course_lib.results import append_result

IMPLS = ("einsum", "sdpa", "chunked")
MB = 2**20


def make_inputs(N: int, batch: int, heads: int, dim: int, requires_grad: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, N, dim, generator=g).requires_grad_(requires_grad) for _ in range(3)]


def run_once(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool) -> None:
    """One forward pass (no autograd), or one forward + backward pass."""
    if backward:
        ATTENTION_IMPLS[impl](q, k, v).sum().backward()
        for x in (q, k, v):
            x.grad = None
    else:
        with torch.no_grad():
            ATTENTION_IMPLS[impl](q, k, v)


# --------------------------------------------------------------------------- memory (RSS cross-check)


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (Linux), e.g. VmRSS (resident now) or VmHWM (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def rss_child(impl: str, N: int, batch: int, heads: int, dim: int, backward: bool) -> None:
    """Subprocess entry: warm up at a small length, then print how far the RSS peaks above its start in one call."""
    run_once(impl, *make_inputs(64, batch, heads, dim, backward), backward)
    q, k, v = make_inputs(N, batch, heads, dim, backward)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = proc_status_bytes("VmRSS")
    run_once(impl, q, k, v, backward)
    print(json.dumps({"rss_growth_bytes": proc_status_bytes("VmHWM") - before}))


def rss_growth(impl: str, N: int, args) -> int:
    command = [sys.executable, __file__, "--rss-child", impl, str(N), "--batch", str(args.batch),
               "--heads", str(args.heads), "--dim", str(args.dim)] + (["--backward"] if args.backward else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_bytes"]


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = benchmark_parser(__doc__, repeats=5)
    p.set_defaults(repeats=None)  # 5, or 3 with --quick, unless given
    p.add_argument("--lengths", default="64,128,256,512,1024,2048,4096", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="head dimension d")
    p.add_argument("--min-seconds", type=float, default=0.2, help="each timed run lasts about this long")
    p.add_argument("--backward", action="store_true", help="time and measure forward + backward")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                   help="RSS cross-check at the largest length in subprocesses (default: on unless --quick)")
    p.add_argument("--quick", action="store_true", help="lengths up to 1024, 3 repeats, no RSS check")
    p.add_argument("--record", action="store_true",
                   help="append one line per length (kind attention_cost) to the course's results file")
    p.add_argument("--rss-child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths = "64,128,256,512,1024"
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.rss = (not args.quick) if args.rss is None else args.rss
    return args


def record(args, lengths: list[int], median: dict, peak: dict) -> None:
    """One results line per length (kind ``attention_cost``): each version's median ms and peak tensor MB."""
    for N in lengths:
        append_result({
            "date": time.strftime("%Y-%m-%d"), "kind": "attention_cost",
            "settings": {"length": N, "batch": args.batch, "heads": args.heads, "dim": args.dim,
                         "pass": "forward + backward" if args.backward else "forward", "repeats": args.repeats},
            "metrics": {"ms": {i: round(1e3 * median[i, N], 4) for i in IMPLS},
                        "peak_mb": {i: round(peak[i, N] / MB, 3) for i in IMPLS}},
            "hardware": hardware_description(torch.device("cpu"))})
    print(f"recorded {len(lengths)} line(s); python -m course_lib.results shows them")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_torch(args)
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.batch, args.heads, args.dim, args.backward)
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    what = "forward + backward" if args.backward else "forward under no_grad"
    chunks = {n: p.default for n, p in inspect.signature(chunked_attention).parameters.items() if "chunk" in n}
    print(header(f"q, k, v [B={args.batch}, heads={args.heads}, N, d={args.dim}] float32", what,
                 f"chunked: {chunks['chunk_size']} queries x {chunks['key_chunk_size']} keys per block",
                 f"{args.repeats} interleaved repeats"), flush=True)

    calls = {(impl, N): functools.partial(run_once, impl, *make_inputs(N, args.batch, args.heads, args.dim,
                                                                      args.backward), args.backward)
             for N in lengths for impl in IMPLS}
    peak = {key: peak_memory(fn) for key, fn in calls.items()}
    print("  measured memory; timing", flush=True)
    median = time_per_call(calls, repeats=args.repeats, min_seconds=args.min_seconds)

    print()
    print(f"{'N':>5s} | {'time per call, ms (median)':^28s} | {'time / einsum':^15s} | "
          f"{'peak tensor memory, MB':^26s} | {'memory / einsum':^15s} | {'QK^T':>7s}")
    print(f"{'':>5s} | " + " ".join(f"{i:>8s}" for i in IMPLS) + " | " + " ".join(f"{i:>7s}" for i in IMPLS[1:])
          + " | " + " ".join(f"{i:>8s}" for i in IMPLS) + " | " + " ".join(f"{i:>7s}" for i in IMPLS[1:])
          + f" | {'MB':>7s}")
    print("-" * 114)
    for N in lengths:
        t = {i: median[i, N] for i in IMPLS}
        m = {i: peak[i, N] for i in IMPLS}
        scores_mb = args.batch * args.heads * N * N * 4 / MB  # one float32 [B, heads, N, N] matrix
        print(f"{N:5d} | " + " ".join(f"{1e3 * t[i]:8.2f}" for i in IMPLS)
              + " | " + " ".join(f"{t[i] / t['einsum']:7.2f}" for i in IMPLS[1:])
              + " | " + " ".join(f"{m[i] / MB:8.2f}" for i in IMPLS)
              + " | " + " ".join(f"{m[i] / m['einsum']:7.3f}" for i in IMPLS[1:])
              + f" | {scores_mb:7.2f}")
    print("\nQK^T MB = the size of one [B, heads, N, N] float32 score matrix.")
    if args.record:
        record(args, lengths, median, peak)

    if args.rss and not Path("/proc/self/clear_refs").exists():
        print("\n(RSS cross-check skipped: it needs Linux's /proc)")
    elif args.rss:
        N = lengths[-1]
        print(f"\nCross-check at N={N}: growth of the process's RSS high-water mark during one call "
              f"(fresh subprocess per version) against the profiler's peak:")
        for impl in IMPLS:
            print(f"  {impl:8s} RSS +{rss_growth(impl, N, args) / MB:8.1f} MB   profiler {peak[impl, N] / MB:8.1f} MB",
                  flush=True)


if __name__ == "__main__":
    main()
