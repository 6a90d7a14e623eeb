"""Training speed of the CIFAR-10 classifier: fp32 against bf16 autocast, with and without channels_last.

One training step (random crop, forward, cross-entropy, backward, AdamW update) on a fixed batch,
timed after a warm-up, for each model size and each precision / memory-layout setting that
``course_lib.trainer.TrainConfig`` offers (``bf16``, ``channels_last``). Reported: parameters,
median ms per step and images per second.

    python benchmarks/bench_classifier.py                       # batch 128, 1 thread
    python benchmarks/bench_classifier.py --threads 2 --blocks 1,2 --repeats 10

This is a script, not a test. bf16 pays off on CPUs with native bf16 (AVX-512 BF16 / AMX) and on
GPUs; elsewhere autocast to bf16 can be slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from course_lib.classifier import CIFARClassifier, ClassifierConfig, classification_loss  # noqa: E402
from course_lib.config import setup_cpu_speedups  # noqa: E402

SETTINGS = [("fp32", False, False), ("bf16", True, False), ("bf16 + channels_last", True, True),
            ("fp32 + channels_last", False, True)]


def time_steps(config: ClassifierConfig, batch: int, bf16: bool, channels_last: bool, repeats: int) -> float:
    """Median seconds per training step after two warm-up steps."""
    torch.manual_seed(0)
    model = CIFARClassifier(config)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.randint(0, config.num_classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = classification_loss()
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, (x, y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", default="1", help="comma-separated blocks_per_stage values to compare")
    parser.add_argument("--widths", default="32,64,128")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_cpu_speedups()
    widths = tuple(int(w) for w in args.widths.split(","))
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}")
    for blocks in (int(b) for b in args.blocks.split(",")):
        config = ClassifierConfig(widths=widths, blocks_per_stage=blocks)
        n = sum(p.numel() for p in CIFARClassifier(config).parameters())
        for name, bf16, channels_last in SETTINGS:
            dt = time_steps(config, args.batch, bf16, channels_last, args.repeats)
            print(f"widths {widths} x{blocks} ({n / 1e6:.2f}M)  {name:22s} {1000 * dt:7.0f} ms/step "
                  f"{args.batch / dt:7.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
