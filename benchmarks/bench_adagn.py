"""AdaGN against additive timestep conditioning at an equal budget: same seed, data order, steps.

Two UNets that differ only in ``UNetConfig.resblock`` ("additive": DDPM's ResBlock adds the time
embedding before the second GroupNorm; "adagn": AdaGNResBlock scales and shifts after it) are
trained with ``course_lib.trainer.fit`` on ``course_lib.data.load_cifar10("train")`` (the bundled
3,000-image sample unless a full copy is configured) with ``StepBatches``. The AdaGN model starts
from the additive model's weights wherever the shapes agree (``diagnostics.copy_shared_weights``:
everything but the twice-as-wide ``emb_proj``). fit seeds torch's RNG
from (seed, step), so both models see the same batches, timesteps and noise at every step; the
per-step loss difference is therefore a paired comparison, much less noisy than either loss.

Training runs in segments that alternate between the two models (fit resumes exactly from its
training state), so that the machine's slow drifts hit both alike when their speeds are compared.

Reported per model: parameters, training loss smoothed over the last ``--window`` steps, held-out
loss of the EMA and the raw weights on fixed test images, timesteps and noise, and ms per step;
then the paired difference adagn - additive over the last ``--window`` steps (mean +- standard error).

    python benchmarks/bench_adagn.py                               # tiny UNet, 400 steps, batch 32, seed 0
    python benchmarks/bench_adagn.py --config small --steps 300 --seeds 0,1 --threads 1

This is a script, not a test: a few hundred steps show early training, not final quality.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from _common import benchmark_parser, header, setup_torch  # this folder's; puts the checkout on sys.path
from course_lib.data import StepBatches, load_cifar10
from course_lib.diagnostics import copy_shared_weights, held_out_loss
from course_lib.parameterization import diffusion_loss
from course_lib.profiling import count_parameters
from course_lib.schedules import NoiseSchedule
from course_lib.trainer import TrainConfig, fit
from course_lib.unet import UNet, UNetConfig

VARIANTS = ("additive", "adagn")


def train_pair(args, seed: int, data, schedule: NoiseSchedule, state_dir: Path) -> dict:
    """Train both variants for ``args.steps`` steps in alternating segments; return their results."""
    base = TrainConfig(max_steps=0, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                       ema_decay=args.ema_decay, seed=seed, checkpoint_minutes=None, progress=False)
    batches = StepBatches(data, args.batch, seed)

    def loss_fn(model, batch):
        images, _labels = batch
        return diffusion_loss(model, schedule, images)

    runs = {v: {"seconds": 0.0} for v in VARIANTS}
    ends = list(range(args.segment, args.steps, args.segment)) + [args.steps]
    torch.manual_seed(seed)
    initial = {v: UNet(getattr(UNetConfig, args.config)(resblock=v)) for v in VARIANTS}
    copy_shared_weights(initial["additive"], initial["adagn"])  # equal everywhere but the wider emb_proj
    for end in ends:
        for v in VARIANTS:
            model = copy.deepcopy(initial[v])  # fit resumes from the state file after the first segment
            result = fit(model, loss_fn, batches, dataclasses.replace(base, max_steps=end),
                         checkpoint_path=state_dir / f"{v}-seed{seed}.safetensors", device="cpu")
            runs[v].update(model=model, ema=result.ema, losses=result.losses, params=count_parameters(model))
            runs[v]["seconds"] += result.seconds
        print(f"  seed {seed}: step {end}/{args.steps}  " + "  ".join(
            f"{v} {statistics.fmean(runs[v]['losses'][-50:]):.4f}" for v in VARIANTS), flush=True)
    return runs


def parse_args(argv=None):
    p = benchmark_parser(__doc__, repeats=None)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "paper"], help="UNetConfig constructor")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each trains both variants")
    p.add_argument("--segment", type=int, default=50, help="steps per alternating segment")
    p.add_argument("--window", type=int, default=100, help="steps averaged for the final training loss")
    p.add_argument("--eval-images", type=int, default=500, help="test images for the held-out loss")
    p.add_argument("--eval-draws", type=int, default=2, help="(t, noise) draws per test image")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_torch(args)
    data = load_cifar10("train", hflip=True, verbose=False)
    test = load_cifar10("test", limit=args.eval_images, verbose=False).images
    schedule = NoiseSchedule.linear(1000)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(header(f"UNetConfig.{args.config}", f"{args.steps} steps of batch {args.batch}",
                 f"lr {args.lr:g} (warm-up {args.warmup})", f"EMA {args.ema_decay}",
                 f"train data: {data.source} ({len(data)} images)",
                 f"held-out: {len(test)} test images x {args.eval_draws} (t, noise) draws"), flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            runs = train_pair(args, seed, data, schedule, Path(tmp))
            for v in VARIANTS:
                r = runs[v]
                rows.append(dict(seed=seed, variant=v, params=r["params"],
                                 train=statistics.fmean(r["losses"][-args.window:]),
                                 ema=held_out_loss(r["ema"], schedule, test, args.eval_draws),
                                 raw=held_out_loss(r["model"], schedule, test, args.eval_draws),
                                 ms=1e3 * r["seconds"] / args.steps))
            diff = [a - b for a, b in zip(runs["adagn"]["losses"][-args.window:],
                                          runs["additive"]["losses"][-args.window:])]
            rows[-1]["diff"] = (statistics.fmean(diff), statistics.stdev(diff) / len(diff) ** 0.5)

    print(f"\n{'seed':>4s} {'resblock':>9s} {'params':>8s} | {'train loss':>10s} | {'held-out loss':^17s} | "
          f"{'ms/step':>7s} | paired diff adagn - additive (train, last {args.window} steps)")
    print(f"{'':>4s} {'':>9s} {'':>8s} | {'last ' + str(args.window):>10s} | {'EMA':>8s} {'raw':>8s} | "
          f"{'':>7s} |")
    print("-" * 110)
    for row in rows:
        diff = f"{row['diff'][0]:+.4f} +- {row['diff'][1]:.4f}" if "diff" in row else ""
        print(f"{row['seed']:4d} {row['variant']:>9s} {row['params'] / 1e6:7.3f}M | {row['train']:10.4f} | "
              f"{row['ema']:8.4f} {row['raw']:8.4f} | {row['ms']:7.1f} | {diff}")
    if len(seeds) > 1:
        for v in VARIANTS:
            mine = [r for r in rows if r["variant"] == v]
            print(f"mean {v:>9s} {'':8s} | {statistics.fmean(r['train'] for r in mine):10.4f} | "
                  f"{statistics.fmean(r['ema'] for r in mine):8.4f} {statistics.fmean(r['raw'] for r in mine):8.4f} |")
    print("\nSame initial weights (except AdaGN's wider emb_proj), same batches, timesteps and noise for both "
          "models at every step. Held-out: the same "
          "fixed test images, timesteps and noise for every model. +- is one standard error of the mean.")


if __name__ == "__main__":
    main()
