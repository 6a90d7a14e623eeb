"""Training speed of the CIFAR-10 classifier: fp32 against bf16 autocast, with and without channels_last.

One training step (random crop, forward, cross-entropy, backward, AdamW update) on a fixed batch,
for each model size and each precision / memory-layout setting that ``course_lib.trainer.TrainConfig``
offers (``bf16``, ``channels_last``), timed after a warm-up in runs interleaved across the settings
(``course_lib.profiling.time_per_call``). Reported: parameters, median ms per step and images per second.

    python benchmarks/bench_classifier.py                       # batch 128, 1 thread
    python benchmarks/bench_classifier.py --threads 2 --blocks 1,2 --repeats 10

This is a script, not a test. bf16 pays off on CPUs with native bf16 (AVX-512 BF16 / AMX) and on
GPUs; elsewhere autocast to bf16 can be slower than fp32.
"""

from __future__ import annotations

from typing import Callable

import torch

from _common import benchmark_parser, header, setup_torch  # this folder's; puts the checkout on sys.path
from course_lib.classifier import CIFARClassifier, ClassifierConfig, classification_loss
from course_lib.profiling import time_per_call

SETTINGS = [("fp32", False, False), ("bf16", True, False), ("bf16 + channels_last", True, True),
            ("fp32 + channels_last", False, True)]


def training_step(config: ClassifierConfig, batch: int, bf16: bool, channels_last: bool) -> Callable[[], None]:
    """One AdamW step of the classification loss on a fixed random batch, as a function to time."""
    torch.manual_seed(0)
    model = CIFARClassifier(config)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.randint(0, config.num_classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = classification_loss()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, (x, y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=5, threads=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--blocks", default="1", help="comma-separated blocks_per_stage values to compare")
    parser.add_argument("--widths", default="32,64,128")
    args = parser.parse_args()
    setup_torch(args)
    widths = tuple(int(w) for w in args.widths.split(","))
    print(header(f"batch {args.batch}", f"medians of {args.repeats} interleaved runs"), flush=True)
    for blocks in (int(b) for b in args.blocks.split(",")):
        config = ClassifierConfig(widths=widths, blocks_per_stage=blocks)
        n = sum(p.numel() for p in CIFARClassifier(config).parameters())
        steps = {name: training_step(config, args.batch, bf16, channels_last) for name, bf16, channels_last in SETTINGS}
        seconds = time_per_call(steps, repeats=args.repeats)
        for name, dt in seconds.items():
            print(f"widths {widths} x{blocks} ({n / 1e6:.2f}M)  {name:22s} {1000 * dt:7.0f} ms/step "
                  f"{args.batch / dt:7.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
