"""Store an inference checkpoint's weights in float16, if its samples stay the same within a tolerance.

Every committed version of a weight file stays in the history every clone downloads, so a shipped
checkpoint is stored at half the bytes when that changes nothing a learner sees. The models still run
in float32: ``load_checkpoint`` copies the float16 values into the float32 model (the card says
``stored_dtype``). Rounding to float16 changes each weight by at most 2^-11 of its size; this script
measures what that does to the outputs before it replaces the file:

* a denoiser (``Pipeline``-able checkpoint): the same samples from the same noise, with its process's
  default sampler (DDIM for DDPM models, Euler for rectified flows) (class prompts
  for a text-to-image model, guidance 3), with the float32 and the float16-rounded weights; the mean
  and max absolute difference of the decoded images in [-1, 1] must stay below ``--tolerance``
  (default 2/255 mean: under one grey level of a uint8 image on average);
* otherwise the check is left to the caller (the script refuses).

    python tools/store_float16.py data/checkpoints/ldm-small.safetensors            # check, then replace
    python tools/store_float16.py data/checkpoints/ldm-small.safetensors --dry-run  # check only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib.captions import class_prompt  # noqa: E402
from course_lib.checkpoint import load_checkpoint, write_checkpoint  # noqa: E402
from course_lib.generation import Pipeline  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--tolerance", type=float, default=2 / 255, help="largest mean |difference| allowed")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    if any(v.dtype == torch.float16 for v in ckpt.model.values()):
        print(f"{args.checkpoint} is stored in float16 already")
        return 0
    pipe = Pipeline.from_checkpoint(args.checkpoint)
    shape = (args.images, *pipe.denoiser.sample_shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    prompts = [class_prompt(i % 10) for i in range(args.images)] if pipe.text_conditional else None
    kwargs = dict(guidance=3.0) if pipe.text_conditional else dict(num_images=args.images)

    def sample():
        return pipe.generate(prompts, num_steps=args.steps, x_T=x_T, **kwargs)

    before = sample()
    with torch.no_grad():
        for p in pipe.denoiser.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    after = sample()
    diff = (after - before).abs()
    print(f"{args.checkpoint}: float16-rounded weights change {args.images} samples ({args.steps} steps of the default sampler) by "
          f"mean {diff.mean():.2e}, max {diff.max():.2e} (images in [-1, 1]; tolerance mean {args.tolerance:.2e})")
    if diff.mean() > args.tolerance:
        print("above the tolerance: the file is left as it is")
        return 1
    if args.dry_run:
        return 0
    tensors = {f"model.{k}": (v.half() if v.is_floating_point() else v) for k, v in ckpt.model.items()}
    tensors |= {f"train.{k}": v for k, v in ckpt.train.items()}
    card = dict(ckpt.card)
    card["training"] = {**card.get("training", {}),
                        "stored_dtype": f"float16 weights, loaded into float32 (samples changed by mean "
                                        f"{diff.mean():.1e}, max {diff.max():.1e} in [-1, 1]; "
                                        "tools/store_float16.py)"}
    before_bytes = args.checkpoint.stat().st_size
    write_checkpoint(args.checkpoint, tensors, card)
    print(f"wrote {args.checkpoint}: {before_bytes / 2**20:.1f} MB -> {args.checkpoint.stat().st_size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
