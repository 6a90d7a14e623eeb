"""Train chapter 2's paired experiment (additive vs AdaGN ResBlock) and save both runs for the notebook.

Exactly what ``notebooks/02_adagn_attention.py`` trains when ``COURSE_LONG=1``: two tiny UNets that
differ only in ``UNetConfig.resblock``, with the same initial weights (``diagnostics.paired_unets``),
trained one after the other by ``course_lib.trainer.fit`` with ``diagnostics.paired_train_config()``
(1,500 steps of 32 images) on the same batches, timesteps and noise (``diagnostics.train_pair``).
Each run is saved as an inference checkpoint (EMA weights, float32, and the per-step loss history;
``diagnostics.save_pair_run``): ``ch2-additive.safetensors`` and ``ch2-adagn.safetensors`` with their
JSON cards. The notebook loads them unless ``COURSE_LONG=1``.

    OMP_NUM_THREADS=1 python tools/train_chapter2_pair.py                      # ~40 min on one CPU thread
    python tools/train_chapter2_pair.py --steps 5 --batch-size 4 --out /tmp/ch2  # a smoke test

Data: ``course_lib.data.load_cifar10("train", hflip=True)``: set ``COURSE_CIFAR10_DIR`` to the full set
(otherwise the bundled 3,000-image sample is used, and the cards say so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from course_lib import config  # noqa: E402
from course_lib.data import load_cifar10  # noqa: E402
from course_lib.diagnostics import (PAIR_FILES, paired_train_config, paired_unets, save_pair_run,  # noqa: E402
                                    train_pair)
from course_lib.schedules import NoiseSchedule  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for the two checkpoints (default: config.checkpoint_dir())")
    p.add_argument("--steps", type=int, default=None, help="override the 1,500 steps (for a smoke test)")
    p.add_argument("--batch-size", type=int, default=None, help="override the 32 images per step (smoke test)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the shipped runs: 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    device = torch.device("cpu")  # the shipped runs are CPU runs; the card records the hardware
    overrides = {k: v for k, v in (("max_steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    cfg = paired_train_config(fast=False, device=device, **overrides)
    data = load_cifar10("train", hflip=True)
    schedule = NoiseSchedule.linear(1000)
    models, _different = paired_unets()
    print(f"training the pair: {cfg.max_steps} steps of {cfg.batch_size} images per model on {data.source} "
          f"({len(data)} images), {torch.get_num_threads()} thread(s); expect ~19 min per model at 1,500 steps "
          "on one CPU thread", flush=True)
    start = time.time()
    runs = train_pair(models, data, schedule, cfg, device=device)
    out = Path(args.out) if args.out else config.checkpoint_dir()
    command = config.portable_command("python tools/train_chapter2_pair.py", argv or sys.argv[1:])
    paths = {}
    for kind, result in runs.items():
        paths[kind] = save_pair_run(out / PAIR_FILES[kind], kind, result, cfg, data_source=data.source,
                                    data_images=len(data), device=device, command=command)
        print(f"{kind:>8s}: {result.step} steps in {result.seconds / 60:.1f} min, last-100 loss "
              f"{sum(result.losses[-100:]) / len(result.losses[-100:]):.4f} -> {paths[kind]}")
    print(f"done in {(time.time() - start) / 60:.1f} min")
    return paths


if __name__ == "__main__":
    main()
