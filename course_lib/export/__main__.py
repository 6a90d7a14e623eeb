"""``python -m course_lib.export``: a course checkpoint to a diffusers folder, or a diffusers folder to a checkpoint.

    python -m course_lib.export CHECKPOINT OUT_DIR              # writes a folder diffusers' from_pretrained loads
    python -m course_lib.export --import FOLDER OUT.safetensors  # writes a course checkpoint with its card

An export that diffusers cannot compute exactly is refused with the differences named (exit status 2); a latent
model whose autoencoder does not export is written without ``vae/`` and the command says why.
"""

from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from .folders import export_checkpoint, import_folder
from .maps import LayoutError

_LOADING = {  # how diffusers reads what was written
    "DDPMPipeline": "DDPMPipeline.from_pretrained('{folder}')   (or DDIMPipeline.from_pretrained)",
    "unet": "{cls}.from_pretrained('{folder}', subfolder='unet')",
    "transformer": "{cls}.from_pretrained('{folder}', subfolder='transformer')",
    "scheduler": "{cls}.from_pretrained('{folder}', subfolder='scheduler')",
    "vae": "AutoencoderKL.from_pretrained('{folder}', subfolder='vae')",
    ".": "AutoencoderKL.from_pretrained('{folder}')",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.export",
                                     description="Export a course checkpoint as a diffusers folder, or (--import) "
                                                 "read a diffusers folder into a course checkpoint.")
    parser.add_argument("source", help="a course checkpoint (.safetensors), or with --import a diffusers folder")
    parser.add_argument("destination", help="the folder to write (a new one), or with --import the checkpoint "
                                            "to write (.safetensors)")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="read a diffusers folder (its own export, or a published model in a layout the course "
                             "computes) into a course checkpoint")
    parser.add_argument("--weights", choices=("model", "ema"), default="model",
                        help="which weights of a training state to export (an inference checkpoint has 'model')")
    parser.add_argument("--image-size", type=int,
                        help="the training resolution of a Flux transformer imported without a course card")
    args = parser.parse_args(argv)
    try:
        if args.import_:
            path = import_folder(args.source, args.destination, image_size=args.image_size)
            print(f"wrote {path} (card beside it, {path.with_suffix('.json').name}); sample from it with "
                  f"Pipeline.from_checkpoint('{path}'), score it with python -m course_lib.evaluation {path} "
                  "--num-samples 2000")
            return 0
        done = export_checkpoint(args.source, args.destination, weights=args.weights)
    except LayoutError as err:
        print(f"not converted: {err}")
        return 2
    except (CheckpointError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {done['folder']}: " + ", ".join(f"{part} ({cls})" for part, cls in done["written"].items()))
    for part, why in done["not_written"].items():
        print(f"not written: {part}: {why}")
    print("load it in diffusers with")
    for part, cls in ([("DDPMPipeline", None)] if done["pipeline"] else done["written"].items()):
        if part in _LOADING:
            print("    " + _LOADING[part].format(folder=done["folder"], cls=cls))
    if "UNet2DConditionModel" in done["written"].values():
        print("and encode prompts with the course's model: context = model.encode(prompts); then unet(x, t, "
              "encoder_hidden_states=context.tokens, encoder_attention_mask=context.mask)")
    if "FluxTransformer2DModel" in done["written"].values():
        print("and encode prompts with the course's model: context = model.encode(prompts); then "
              "transformer(**course_lib.export.flux_inputs(x, t, context.tokens, context.mask, patch_size=p))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
