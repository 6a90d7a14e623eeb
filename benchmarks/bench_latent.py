"""Benchmark pixel-space against latent-space text-to-image diffusion: training and sampling, side by side.

Chapter 4's claim is that an 8x8x4 latent buys more training per CPU-minute than a 32x32x3 image. This
script measures it in one run, interleaved (``course_lib.profiling.time_per_call``: medians of repeated
runs, every variant in each round), for

* ``pixel``: chapter 3's ``Text2ImageConfig.small()`` (cond-small) on 3x32x32 images;
* ``latent``: chapter 4's ``Text2ImageConfig.latent_small()`` (ldm-small) on 4x8x8 latents;

and prints, for each: parameters; training images/s (one optimizer step of the conditional loss on a
batch, float32 and bf16 autocast); sampling milliseconds per image (DDIM, classifier-free guidance,
the autoencoder's decoder included for the latent model); and the latent/pixel ratios. The latent
model's encoder is not timed for training: the latents are cached once (``course_lib.latents``).
Models are freshly initialised: speed does not depend on the weights.

    python benchmarks/bench_latent.py                        # torch's default threads
    python benchmarks/bench_latent.py --threads 1 --steps 25 --batch-size 64

This is a script, not a test: times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from course_lib import config  # noqa: E402
from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL  # noqa: E402
from course_lib.generation import Pipeline  # noqa: E402
from course_lib.processes import DDPMProcess  # noqa: E402
from course_lib.profiling import time_per_call  # noqa: E402
from course_lib.text2image import Text2ImageConfig, TextToImageUNet, text2image_loss  # noqa: E402
from course_lib.trainer import hardware_description  # noqa: E402


def training_step(model: TextToImageUNet, process: DDPMProcess, batch_size: int, bf16: bool):
    """One AdamW step of the conditional loss on a fixed random batch (what ``fit`` does per step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch_size) % 10

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = text2image_loss(model, process, x, labels, 0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64, as the recipes)")
    parser.add_argument("--sample-batch", type=int, default=25, help="images per sampling call (default 25)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3: two passes per step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    torch.manual_seed(0)
    process = DDPMProcess()
    models = {"pixel": TextToImageUNet(Text2ImageConfig.small()),
              "latent": TextToImageUNet(Text2ImageConfig.latent_small())}
    autoencoder = AutoencoderKL(AutoencoderConfig.small()).eval()
    pipes = {"pixel": Pipeline(models["pixel"], process),
             "latent": Pipeline(models["latent"], process, autoencoder)}
    prompts = [f"a photo of a {c}" for c in ("cat", "ship", "horse", "truck", "bird")] * (args.sample_batch // 5 + 1)
    prompts = prompts[:args.sample_batch]
    bf16_ok = config.native_bf16("cpu")

    fns = {}
    for name, model in models.items():
        fns[f"{name}: train float32"] = training_step(model, process, args.batch_size, bf16=False)
        if bf16_ok:
            fns[f"{name}: train bf16 autocast"] = training_step(model, process, args.batch_size, bf16=True)
    for name, pipe in pipes.items():
        fns[f"{name}: sample"] = (lambda pipe=pipe: pipe.generate(prompts, scale=args.guidance,
                                                                 num_steps=args.steps))
    seconds = time_per_call(fns, repeats=args.repeats, min_seconds=1.0)

    print(f"{hardware_description(torch.device('cpu'))}, torch {torch.__version__}, "
          f"medians of {args.repeats} interleaved runs")
    for name, model in models.items():
        print(f"{name:7s} {tuple(model.sample_shape)}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
              "parameters")
    print(f"{'':34s} {'pixel':>10s} {'latent':>10s} {'latent/pixel':>13s}")
    precisions = ["float32"] + (["bf16 autocast"] if bf16_ok else [])
    for precision in precisions:
        rate = {n: args.batch_size / seconds[f"{n}: train {precision}"] for n in models}
        print(f"{'training img/s, ' + precision:34s} {rate['pixel']:10.1f} {rate['latent']:10.1f} "
              f"{rate['latent'] / rate['pixel']:12.2f}x")
    ms = {n: 1000 * seconds[f"{n}: sample"] / args.sample_batch for n in models}
    print(f"{f'sampling ms/image ({args.steps} DDIM, w={args.guidance:g})':34s} {ms['pixel']:10.1f} "
          f"{ms['latent']:10.1f} {ms['latent'] / ms['pixel']:12.2f}x")
    print("(the latent model's sampling includes the decoder; its training reads cached latents)")


if __name__ == "__main__":
    main()
