"""Benchmark chapter 7's training steps against the flow-matching step they start from: what one step costs.

Chapter 7 reports each few-step method with its total CPU-minutes, so what a training step costs decides how
many a budget buys. For ``mmdit-small``'s network (freshly initialised: speed does not depend on the weights),
one AdamW step on a batch of latents, interleaved in one run (``course_lib.profiling.time_per_call``, medians):

* ``flow``: the rectified-flow step every chapter 5-6 model trains with (one forward, one backward);
* ``guidance distillation``: the frozen teacher on [z_t; z_t] (no gradient) beside the student's step
  (``course_lib.guidance_distillation``);
* ``meanflow``: the teacher's guided velocity as above, then the student's forward pass with tangents (the JVP,
  on the einsum attention path) and its backward pass (``course_lib.meanflow.meanflow_distillation_loss``).

    python benchmarks/bench_fewstep.py --threads 1

Prints milliseconds per step and the ratio to ``flow``, in bf16 autocast where the CPU has it natively (as the
recipes train) and float32. This is a script, not a test: times depend on the machine and on what else runs.
"""

from __future__ import annotations

import torch

from _common import benchmark_parser, header, precisions, setup_torch  # this folder's
from bench_latent import adamw_step  # this folder: the same timed step as chapters 4 and 6
from course_lib.guidance_distillation import guidance_distillation_loss
from course_lib.meanflow import meanflow_distillation_loss
from course_lib.processes import RectifiedFlowProcess
from course_lib.profiling import time_per_call
from course_lib.text2image import Text2ImageConfig, TextToImageModel, text2image_loss


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64, as the recipes)")
    args = parser.parse_args()
    setup_torch(args)
    torch.manual_seed(0)
    process = RectifiedFlowProcess(time_sampling="logit_normal")
    teacher = TextToImageModel(Text2ImageConfig.latent_mmdit_small()).eval().requires_grad_(False)
    students = {"flow": TextToImageModel(Text2ImageConfig.latent_mmdit_small()),
                "guidance distillation": TextToImageModel(Text2ImageConfig.latent_mmdit_small(guidance_embed=True)),
                "meanflow": TextToImageModel(Text2ImageConfig.latent_mmdit_small(interval_embed=True))}
    x = torch.randn(args.batch_size, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.batch_size) % 10
    losses = {"flow": lambda: text2image_loss(students["flow"], process, x, labels, 0.1),
              "guidance distillation": lambda: guidance_distillation_loss(students["guidance distillation"], teacher,
                                                                          process, x, labels),
              "meanflow": lambda: meanflow_distillation_loss(students["meanflow"], teacher, process, x, labels)}
    for precision in precisions():
        bf16 = precision != "float32"
        print(header(f"mmdit-small's network, batch {args.batch_size}", precision, f"{args.repeats} interleaved repeats"),
              flush=True)
        calls = {name: adamw_step(loss, students[name], bf16) for name, loss in losses.items()}
        for call in calls.values():  # warm up (MiniLM's encodings get cached)
            call()
        median = time_per_call(calls, repeats=args.repeats, min_seconds=2.0)
        for name, seconds in median.items():
            print(f"  {name:22s} {1e3 * seconds:8.1f} ms/step  {seconds / median['flow']:5.2f}x flow  "
                  f"{args.batch_size / seconds:6.1f} latents/s")


if __name__ == "__main__":
    main()
