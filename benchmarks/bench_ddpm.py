"""Benchmark the chapter-1 DDPM UNet on this machine: training and sampling throughput.

For each UNet config (tiny, small, paper) and each precision mode

* ``fp32``:     plain float32, contiguous (NCHW) tensors;
* ``fp32+cl``:  float32 with the channels_last (NHWC) memory format;
* ``bf16+cl``:  ``torch.autocast("cpu"/"cuda", dtype=torch.bfloat16)`` and channels_last memory format,

it measures

* training images/s: forward + backward + AdamW step on a batch of ``--batch`` images;
* sampling images/s: one denoising step (a forward pass under ``torch.no_grad``) on the same batch,
  and from it the time one DDIM-50 sample costs when sampled in batches of that size.

Runs are interleaved (repeat 1 of every config and mode, then repeat 2, ...) so that slow drifts of
the machine (other processes, thermal limits) hit every variant alike; the table shows medians.
bf16 pays off only where the hardware has it natively (``course_lib.config.native_bf16``: GPUs, CPUs
with AVX-512 BF16 or AMX); on an AVX2-only CPU it is emulated and much slower than float32, and the
header line says which kind of machine this is.
``torch.set_flush_denormal(True)`` is on, as in the course (denormal floats are ~3x slower on CPUs).

    python benchmarks/bench_ddpm.py                                   # tiny, small, paper; 3 repeats
    python benchmarks/bench_ddpm.py --configs tiny,small --repeats 5 --batch 64 --threads 2
    python benchmarks/bench_ddpm.py --configs small --modes fp32,fp32+cl   # leave the slow bf16 out

This is a script, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from _common import benchmark_parser, header, setup_torch  # this folder's; puts the checkout on sys.path
from course_lib.config import native_bf16
from course_lib.parameterization import diffusion_loss
from course_lib.profiling import count_parameters
from course_lib.schedules import NoiseSchedule
from course_lib.unet import UNet, UNetConfig

MODES = ("fp32", "fp32+cl", "bf16+cl")
DDIM_STEPS = 50


class Variant:
    """One model in one precision mode, with its optimizer and a fixed batch."""

    def __init__(self, config_name: str, mode: str, batch: int, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.config_name, self.mode, self.batch, self.device = config_name, mode, batch, device
        config = getattr(UNetConfig, config_name)()
        self.model = UNet(config).to(device)
        self.params = count_parameters(self.model)
        self.memory_format = torch.channels_last if mode.endswith("+cl") else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.schedule = NoiseSchedule.linear(1000)
        shape = (batch, config.in_channels, config.image_size, config.image_size)
        self.x0 = torch.randn(shape, device=device).clamp(-1, 1).contiguous(memory_format=self.memory_format)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.iters = {"train": 1, "sample": 1}  # steps per timed run, set by warm_up

    def autocast(self):
        if self.mode.startswith("bf16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> None:
        self.model.train()
        with self.autocast():
            loss = diffusion_loss(self.model, self.schedule, self.x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample_step(self) -> None:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            self.model(self.x0, self.t)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time_run(self, kind: str) -> float:
        """Seconds per step, averaged over ``self.iters[kind]`` steps."""
        step = self.train_step if kind == "train" else self.sample_step
        n = self.iters[kind]
        self._sync()
        start = time.perf_counter()
        for _ in range(n):
            step()
        self._sync()
        return (time.perf_counter() - start) / n

    def warm_up(self, min_seconds: float) -> None:
        """Run each kind twice (allocations, autocast caches), then pick steps per run to last >= min_seconds."""
        for kind in ("train", "sample"):
            self.time_run(kind)
            seconds = self.time_run(kind)
            self.iters[kind] = max(1, round(min_seconds / max(seconds, 1e-6)))


def parse_args(argv=None):
    p = benchmark_parser(__doc__, repeats=3, device=True)
    p.add_argument("--configs", default="tiny,small,paper",
                   help="comma-separated UNetConfig constructors (default: tiny,small,paper)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="each timed run repeats the step until it lasts about this long (default 1.0)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_torch(args)
    device = torch.device(args.device)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for c in configs:
        if not hasattr(UNetConfig, c):
            raise SystemExit(f"unknown config {c!r}; try tiny, small, paper")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {MODES}")

    emulated = [] if native_bf16(device) else ["bf16 is emulated here (slow)"]
    print(header(f"device {device}", "flush_denormal on", f"batch {args.batch}", f"{args.repeats} repeats", *emulated,
                 device=device), flush=True)
    variants = {}
    for c in configs:
        for m in modes:
            v = Variant(c, m, args.batch, device)
            v.warm_up(args.min_seconds)
            variants[c, m] = v
            print(f"  warmed up {c:6s} {m:8s} ({v.params / 1e6:.2f}M params; "
                  f"{v.iters['train']} train / {v.iters['sample']} sample steps per run)", flush=True)

    times = {(c, m, k): [] for c in configs for m in modes for k in ("train", "sample")}
    for r in range(args.repeats):
        for c in configs:
            for m in modes:
                for k in ("train", "sample"):
                    times[c, m, k].append(variants[c, m].time_run(k))
        print(f"  repeat {r + 1}/{args.repeats} done", flush=True)

    B = args.batch
    print()
    columns = (f"{'config':7s} {'params':>7s} | {'train img/s':>23s} | {'one denoising step img/s':>26s} | "
              f"{'DDIM-50 s/img':>18s}")
    sub = (f"{'':7s} {'':>7s} | " + " ".join(f"{m:>7s}" for m in modes) + f" {'ratio':>7s} | "
           + " ".join(f"{m:>8s}" for m in modes) + f" {'ratio':>8s} | " + " ".join(f"{m:>8s}" for m in modes))
    print(columns)
    print(sub)
    print("-" * len(columns))
    for c in configs:
        train = [B / statistics.median(times[c, m, "train"]) for m in modes]
        sample = [B / statistics.median(times[c, m, "sample"]) for m in modes]
        ddim = [DDIM_STEPS / s for s in sample]  # seconds per image, sampled in batches of B
        ratio_t = f"{train[-1] / train[0]:7.2f}" if len(modes) > 1 else f"{'':>7s}"
        ratio_s = f"{sample[-1] / sample[0]:8.2f}" if len(modes) > 1 else f"{'':>8s}"
        print(f"{c:7s} {variants[c, modes[0]].params / 1e6:6.2f}M | "
              + " ".join(f"{x:7.1f}" for x in train) + f" {ratio_t} | "
              + " ".join(f"{x:8.1f}" for x in sample) + f" {ratio_s} | "
              + " ".join(f"{x:8.3f}" for x in ddim))
    spread = max((max(v) - min(v)) / statistics.median(v) for v in times.values())
    print(f"\nratio = {modes[-1]} / {modes[0]}. DDIM-50 s/img = {DDIM_STEPS} denoising steps per image, "
          f"batches of {B}. Largest spread between repeats: {100 * spread:.0f}% of the median.")


if __name__ == "__main__":
    main()
