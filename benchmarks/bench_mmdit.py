"""Benchmark chapter 6's MM-DiT against the latent UNet it is compared with: training and sampling speed.

Chapter 6 compares the two at equal training CPU-minutes, so what a model costs per image decides how
many images it sees. A UNet on an 8x8 latent keeps most of its parameters at 4x4 and 2x2, where a
convolution touches few positions; a transformer applies every block's weights to every token (64 image
and 16 text tokens with patch size 1; 16 + 16 with patch size 2). This script measures, interleaved in one
run (``course_lib.profiling.time_per_call``, medians), for the UNet baseline (``latent_small_minilm``,
rf-small's network) and MM-DiT variants (width, depth, patch size):

* parameters; training images/s (one AdamW step of the conditional rectified-flow loss on a batch of
  cached latents, float32 and, where the CPU has native bf16, bf16 autocast);
* sampling milliseconds per image (Euler, classifier-free guidance, the decoder not included).

Models are freshly initialised (speed does not depend on the weights) and read the frozen MiniLM, whose
encodings are cached after the first batch (as in training).

    python benchmarks/bench_mmdit.py --threads 1
    python benchmarks/bench_mmdit.py --threads 1 --variants d256-p1,d192-p1,d256-p2

This is a script, not a test: times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import torch

from _common import benchmark_parser, header, precisions, sample_prompts, setup_torch  # this folder's
from bench_latent import training_step  # this folder: the same timed step as chapter 4's benchmark
from course_lib.generation import Pipeline
from course_lib.mmdit import MMDiTConfig
from course_lib.processes import RectifiedFlowProcess
from course_lib.profiling import count_parameters, time_per_call
from course_lib.text2image import MINILM_DIM, Text2ImageConfig, TextToImageModel


def mmdit_variant(name: str) -> MMDiTConfig:
    """"d256-p1" -> 256 wide (heads of 64), patch 1, 2 double + 4 single blocks; "d192-p1-2x3": 2 double + 3 single."""
    parts = name.split("-")
    width, patch = int(parts[0][1:]), int(parts[1][1:])
    double, single = (int(v) for v in parts[2].split("x")) if len(parts) > 2 else (2, 4)
    if width % 64:
        raise SystemExit(f"variant {name}: the width must be a multiple of 64 (heads of 64)")
    return MMDiTConfig(hidden_size=width, num_heads=width // 64, rope_axes=(16, 24, 24), patch_size=patch,
                       depth_double=double, depth_single=single, context_dim=MINILM_DIM)


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--variants", default="d256-p1,d192-p1,d128-p1-2x6,d256-p2",
                        help="MM-DiT variants: d<width>-p<patch>[-<double>x<single>] (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=25)
    parser.add_argument("--steps", type=int, default=8, help="Euler steps for sampling (default 8)")
    args = parser.parse_args()
    setup_torch(args)
    torch.manual_seed(0)
    process = RectifiedFlowProcess(time_sampling="logit_normal")
    models = {"unet": TextToImageModel(Text2ImageConfig.latent_small_minilm())}
    for variant in args.variants.split(","):
        models[variant] = TextToImageModel(Text2ImageConfig(denoiser=mmdit_variant(variant), text_encoder="minilm"))
    prompts = sample_prompts(args.sample_batch)
    trained_in = precisions("cpu")  # float32, and bf16 autocast where the CPU has native bf16
    fns = {}
    for name, model in models.items():
        for precision in trained_in:
            fns[f"{name}: train {precision}"] = training_step(model, process, args.batch_size,
                                                              bf16=precision != "float32")
        pipe = Pipeline(model.eval(), process)
        fns[f"{name}: sample"] = lambda pipe=pipe: pipe.generate(prompts, guidance=3.0, num_steps=args.steps)
        model.train()
    seconds = time_per_call(fns, repeats=args.repeats, min_seconds=1.0)

    print(header(f"medians of {args.repeats} interleaved runs", f"batch {args.batch_size}"))
    columns = f"{'model':16s} {'params':>8s} " + " ".join(f"{'img/s ' + p:>19s}" for p in trained_in)
    print(columns + f" {'ms/image sampling':>18s} {'img/s vs UNet':>14s}")
    base = args.batch_size / seconds["unet: train float32"]
    for name, model in models.items():
        rates = [args.batch_size / seconds[f"{name}: train {p}"] for p in trained_in]
        ms = 1000 * seconds[f"{name}: sample"] / args.sample_batch
        print(f"{name:16s} {count_parameters(model) / 1e6:7.2f}M " + " ".join(f"{r:19.1f}" for r in rates)
              + f" {ms:18.1f} {rates[0] / base:13.2f}x")
    print(f"(sampling: {args.steps} Euler steps at w = 3, no decoder; MM-DiT variants d<width>-p<patch>-<double>x<single>)")


if __name__ == "__main__":
    main()
