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

from typing import Callable

import torch

from _common import benchmark_parser, header, precisions, sample_prompts, setup_torch  # this folder's
from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
from course_lib.generation import Pipeline
from course_lib.processes import DDPMProcess, Process
from course_lib.profiling import time_per_call
from course_lib.text2image import Text2ImageConfig, TextToImageModel, text2image_loss


def adamw_step(loss_of: Callable[[], torch.Tensor], model: torch.nn.Module, bf16: bool) -> Callable[[], None]:
    """One AdamW step of ``loss_of()`` (what ``fit`` does per step, without the EMA), in bf16 autocast if asked."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_step(model: TextToImageModel, process: Process, batch_size: int, bf16: bool) -> Callable[[], None]:
    """One AdamW step of the conditional loss on a fixed random batch (what ``fit`` does per step)."""
    x = torch.randn(batch_size, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch_size) % 10
    return adamw_step(lambda: text2image_loss(model, process, x, labels, 0.1), model, bf16)


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64, as the recipes)")
    parser.add_argument("--sample-batch", type=int, default=25, help="images per sampling call (default 25)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3: two passes per step)")
    args = parser.parse_args()
    setup_torch(args)
    torch.manual_seed(0)
    process = DDPMProcess()
    models = {"pixel": TextToImageModel(Text2ImageConfig.small()),
              "latent": TextToImageModel(Text2ImageConfig.latent_small())}
    autoencoder = AutoencoderKL(AutoencoderConfig.small()).eval()
    pipes = {"pixel": Pipeline(models["pixel"], process),
             "latent": Pipeline(models["latent"], process, autoencoder)}
    prompts = sample_prompts(args.sample_batch)
    trained_in = precisions("cpu")  # float32, and bf16 autocast where the CPU has native bf16

    fns = {}
    for name, model in models.items():
        for precision in trained_in:
            fns[f"{name}: train {precision}"] = training_step(model, process, args.batch_size,
                                                              bf16=precision != "float32")
    for name, pipe in pipes.items():
        fns[f"{name}: sample"] = (lambda pipe=pipe: pipe.generate(prompts, guidance=args.guidance,
                                                                 num_steps=args.steps))
    seconds = time_per_call(fns, repeats=args.repeats, min_seconds=1.0)

    print(header(f"medians of {args.repeats} interleaved runs"))
    for name, model in models.items():
        print(f"{name:7s} {tuple(model.sample_shape)}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
              "parameters")
    print(f"{'':34s} {'pixel':>10s} {'latent':>10s} {'latent/pixel':>13s}")
    for precision in trained_in:
        rate = {n: args.batch_size / seconds[f"{n}: train {precision}"] for n in models}
        print(f"{'training img/s, ' + precision:34s} {rate['pixel']:10.1f} {rate['latent']:10.1f} "
              f"{rate['latent'] / rate['pixel']:12.2f}x")
    ms = {n: 1000 * seconds[f"{n}: sample"] / args.sample_batch for n in models}
    print(f"{f'sampling ms/image ({args.steps} DDIM, w={args.guidance:g})':34s} {ms['pixel']:10.1f} "
          f"{ms['latent']:10.1f} {ms['latent'] / ms['pixel']:12.2f}x")
    print("(the latent model's sampling includes the decoder; its training reads cached latents)")


if __name__ == "__main__":
    main()
