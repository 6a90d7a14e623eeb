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

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from course_lib import config  # noqa: E402
from course_lib.generation import Pipeline  # noqa: E402
from course_lib.mmdit import MMDiTConfig  # noqa: E402
from course_lib.processes import RectifiedFlowProcess  # noqa: E402
from course_lib.profiling import count_parameters, time_per_call  # noqa: E402
from course_lib.text2image import MINILM_DIM, Text2ImageConfig, TextToImageMMDiT, TextToImageUNet  # noqa: E402
from course_lib.trainer import hardware_description  # noqa: E402

from bench_latent import training_step  # noqa: E402  (this folder: the same timed step as chapter 4's benchmark)


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="d256-p1,d192-p1,d128-p1-2x6,d256-p2",
                        help="MM-DiT variants: d<width>-p<patch>[-<double>x<single>] (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=25)
    parser.add_argument("--steps", type=int, default=8, help="Euler steps for sampling (default 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    torch.manual_seed(0)
    process = RectifiedFlowProcess(time_sampling="logit_normal")
    models = {"unet": TextToImageUNet(Text2ImageConfig.latent_small_minilm())}
    for variant in args.variants.split(","):
        models[variant] = TextToImageMMDiT(Text2ImageConfig(mmdit=mmdit_variant(variant), text_encoder="minilm"))
    prompts = [f"a photo of a {c}" for c in ("cat", "ship", "horse", "truck", "bird")] * (args.sample_batch // 5 + 1)
    prompts = prompts[:args.sample_batch]
    bf16_ok = config.native_bf16("cpu")
    precisions = ["float32"] + (["bf16 autocast"] if bf16_ok else [])
    fns = {}
    for name, model in models.items():
        for precision in precisions:
            fns[f"{name}: train {precision}"] = training_step(model, process, args.batch_size,
                                                              bf16=precision != "float32")
        pipe = Pipeline(model.eval(), process)
        fns[f"{name}: sample"] = lambda pipe=pipe: pipe.generate(prompts, scale=3.0, num_steps=args.steps)
        model.train()
    seconds = time_per_call(fns, repeats=args.repeats, min_seconds=1.0)

    print(f"{hardware_description(torch.device('cpu'))}, torch {torch.__version__}, medians of {args.repeats} "
          f"interleaved runs, batch {args.batch_size}")
    header = f"{'model':16s} {'params':>8s} " + " ".join(f"{'img/s ' + p:>19s}" for p in precisions)
    print(header + f" {'ms/image sampling':>18s} {'img/s vs UNet':>14s}")
    base = args.batch_size / seconds["unet: train float32"]
    for name, model in models.items():
        rates = [args.batch_size / seconds[f"{name}: train {p}"] for p in precisions]
        ms = 1000 * seconds[f"{name}: sample"] / args.sample_batch
        print(f"{name:16s} {count_parameters(model) / 1e6:7.2f}M " + " ".join(f"{r:19.1f}" for r in rates)
              + f" {ms:18.1f} {rates[0] / base:13.2f}x")
    print(f"(sampling: {args.steps} Euler steps at w = 3, no decoder; MM-DiT variants d<width>-p<patch>-<double>x<single>)")


if __name__ == "__main__":
    main()
