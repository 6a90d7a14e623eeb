"""Write a copy of an autoencoder checkpoint that shifts its latents as SD3 and Flux do: (z - shift) * scale.

The weights stay the same (so the latent cache and the reconstructions are shared with the original); the
config gains ``shift_factor``, the mean of posterior samples over training images
(``course_lib.autoencoder.latent_shift_factor``), and the scaling factor stays 1 / std about that mean (the
original's, measured the same way). Chapter 4's shift ablation trains ``ldm-shift`` on such a copy of vae-small::

    python tools/shift_autoencoder.py data/checkpoints/vae-small.safetensors data/runs/sweep/ckpt/vae-small-shift.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_lib import config  # noqa: E402
from course_lib.autoencoder import AutoencoderKL, latent_shift_factor  # noqa: E402
from course_lib.checkpoint import save_checkpoint  # noqa: E402
from course_lib.data import fixed_shuffle, load_cifar10  # noqa: E402
from course_lib.models import model_from_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="an AutoencoderKL checkpoint")
    parser.add_argument("target", type=Path, help="where the shifted copy goes (.safetensors)")
    parser.add_argument("--images", type=int, default=5000, help="training images to measure the mean on")
    args = parser.parse_args()
    model, card = model_from_checkpoint(args.source)
    if not isinstance(model, AutoencoderKL):
        parser.error(f"{args.source} holds a {card['model_class']}, not an autoencoder")
    train = load_cifar10("train", verbose=False)
    images = train.images[fixed_shuffle(len(train), config.pick(500, args.images))]
    shift = latent_shift_factor(model, images, seed=0)
    shifted = AutoencoderKL(dataclasses.replace(model.config, shift_factor=round(shift, 6))).eval()
    shifted.load_state_dict(model.state_dict())
    training = {**card.get("training", {}), "latent_shift": {
        "from": config.portable_path(args.source), "source_sha256": card["sha256"], "images": len(images),
        "shift_factor": round(shift, 6), "what": "mean of posterior samples z ~ q(z|x) (seed 0), every number pooled"}}
    path = save_checkpoint(args.target, shifted, step=card.get("step", 0), kind="inference",
                           metrics=card.get("metrics", {}), training=training)
    print(f"{path}: shift_factor {shift:.4f} (mean of z over {len(images)} training images), scaling factor "
          f"{float(shifted.scaling_factor):.4f} kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
