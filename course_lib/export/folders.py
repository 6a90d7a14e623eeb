"""Course checkpoints as diffusers folders, and diffusers folders as course checkpoints.

A diffusers model lives in a folder: ``config.json`` (the constructor's arguments, ``_class_name`` first) beside
``diffusion_pytorch_model.safetensors``; a pipeline is a folder of such folders (``unet/``, ``scheduler/`` with
``scheduler_config.json``, ``vae/``, ...) named in ``model_index.json``. :func:`export_checkpoint` writes one for a
course checkpoint, :func:`import_folder` reads one back into the course's classes and writes a course checkpoint
with its card (``course_lib.checkpoint``), so that ``Pipeline.from_checkpoint``, the explorers, the classifier score
and the FID command work on it. What goes where:

    course checkpoint                         folder
    UNet (chapter 1) + DDPMProcess            model_index.json (DDPMPipeline), unet/ (UNet2DModel), scheduler/
                                              (DDPMScheduler; DDIMPipeline reads it too)
    UNet + RectifiedFlowProcess               unet/ (UNet2DModel), scheduler/ (FlowMatchEulerDiscreteScheduler)
    TextToImageModel, denoiser "unet"         unet/ (UNet2DConditionModel), scheduler/
    TextToImageModel, denoiser "mmdit"        transformer/ (FluxTransformer2DModel), scheduler/
    ... a latent model                        + vae/ (AutoencoderKL) when its autoencoder's layout exports
    AutoencoderKL (chapter 4)                 config.json + weights (a model folder)
    every export                              course_card.json: the checkpoint's card, what was written and what not
    a small (trained) text encoder            course_text_encoder.safetensors (the course's TextEncoder's weights)

The text encoders and tokenizers stay the course's: no diffusers pipeline class holds them, so text-conditional
folders have no model_index.json. A diffusers user encodes prompts with the course model (``context =
model.encode(prompts)``) and calls ``unet(x, t, encoder_hidden_states=context.tokens,
encoder_attention_mask=context.mask)`` (each of batch B), or ``transformer(**flux_inputs(x, t, context.tokens,
context.mask, patch_size=p))`` (``course_lib.export.mmdit``). :func:`to_diffusers` builds the diffusers twin of a
course model in memory, :func:`from_diffusers` the course twin of a diffusers model.

Writing is atomic (a temporary folder renamed at the end): a failed export leaves nothing behind. Nothing here
downloads; a published folder is fetched by the learner (``huggingface_hub.snapshot_download``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import config as course_config
from ..autoencoder import AutoencoderKL
from ..checkpoint import read_card, save_checkpoint
from ..mmdit import MMDiT, MMDiTConfig
from ..models import model_from_checkpoint
from ..processes import Process, RectifiedFlowProcess, process_from_card
from ..text2image import Text2ImageConfig, TextToImageModel
from ..unet import UNet, UNetConfig
from .autoencoder import autoencoder_from_diffusers, autoencoder_to_diffusers
from .maps import DIFFUSERS_VERSION, LayoutError, require_diffusers
from .mmdit import mmdit_from_diffusers, mmdit_to_diffusers
from .schedulers import process_from_scheduler, scheduler_for
from .unet import unet_diffusers_class, unet_from_diffusers, unet_to_diffusers

__all__ = ["WEIGHTS", "CONFIG", "SCHEDULER_CONFIG", "MODEL_INDEX", "COURSE_CARD", "TEXT_ENCODER", "diffusers_parts",
           "to_diffusers", "from_diffusers", "export_checkpoint", "read_folder", "load_folder", "import_folder"]

#: file names of a diffusers folder, and the course's additions
WEIGHTS, CONFIG, SCHEDULER_CONFIG, MODEL_INDEX = ("diffusion_pytorch_model.safetensors", "config.json",
                                                  "scheduler_config.json", "model_index.json")
COURSE_CARD, TEXT_ENCODER = "course_card.json", "course_text_encoder.safetensors"


# --------------------------------------------------------------------------- models in memory


def diffusers_parts(model: nn.Module) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """``(class name, config, state_dict)`` of the diffusers model computing what ``model`` computes: a course
    UNet, MMDiT or AutoencoderKL, or a TextToImageModel's denoiser (its text encoder stays the course's)."""
    if isinstance(model, TextToImageModel):
        model = model.backbone
    if isinstance(model, UNet):
        return (unet_diffusers_class(model.config), *unet_to_diffusers(model))
    if isinstance(model, MMDiT):
        return ("FluxTransformer2DModel", *mmdit_to_diffusers(model))
    if isinstance(model, AutoencoderKL):
        return ("AutoencoderKL", *autoencoder_to_diffusers(model))
    raise LayoutError(f"a {type(model).__name__} has no diffusers counterpart (the bridge takes UNets, MM-DiTs, "
                      "text-to-image models and autoencoders)")


def to_diffusers(model: nn.Module) -> nn.Module:
    """The diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ``FluxTransformer2DModel`` or
    ``AutoencoderKL``) holding ``model``'s weights, in eval mode. Needs diffusers (``pip install -e '.[bridge]'``)."""
    class_name, config, state_dict = diffusers_parts(model)
    theirs = getattr(require_diffusers(), class_name)(**config)
    theirs.load_state_dict(state_dict, strict=True)  # every tensor named, none left over
    return theirs.eval()


def from_diffusers(model: nn.Module, like=None, image_size: int | None = None) -> nn.Module:
    """The course model (UNet, MMDiT or AutoencoderKL) computing what a diffusers model object computes.
    ``like``: the course config it was exported from, for what diffusers does not store (see the importers)."""
    class_name, config, state_dict = type(model).__name__, dict(model.config), model.state_dict()
    return _course_model(class_name, config, state_dict, like, image_size)


def _course_model(class_name: str, config: dict, state_dict: dict, like=None, image_size: int | None = None):
    if class_name in ("UNet2DModel", "UNet2DConditionModel"):
        return unet_from_diffusers(class_name, config, state_dict, like if isinstance(like, UNetConfig) else None)
    if class_name == "FluxTransformer2DModel":
        return mmdit_from_diffusers(config, state_dict, like if isinstance(like, MMDiTConfig) else None, image_size)
    if class_name == "AutoencoderKL":
        return autoencoder_from_diffusers(config, state_dict)
    raise LayoutError(f"a {class_name} is not imported: the course reads UNet2DModel, UNet2DConditionModel, "
                      "FluxTransformer2DModel and AutoencoderKL")


# --------------------------------------------------------------------------- writing a folder


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_model(folder: Path, class_name: str, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """config.json and the weights of one diffusers model (tensors cloned: the maps' splits share memory)."""
    _write_json(folder / CONFIG, {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **config})
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})


def _named_autoencoder(card: dict, checkpoint: Path) -> tuple[Path | None, str]:
    """The autoencoder checkpoint a latent model's card names (beside the checkpoint or in the checkpoint folder,
    with the SHA-256 it was trained with), or None and why not."""
    named = card.get("training", {}).get("autoencoder")
    for folder in (checkpoint.parent, course_config.checkpoint_dir()):
        path = folder / Path(named["checkpoint"]).name
        if path.is_file() and read_card(path).get("sha256") == named["sha256"]:
            return path, ""
    return None, (f"the autoencoder it was trained with ({named['checkpoint']}, SHA-256 {named['sha256'][:12]}...) "
                  "is not in the checkpoint folder")


def _write_denoiser(tmp: Path, model: nn.Module, card: dict, checkpoint: Path) -> tuple[dict, dict, str | None]:
    """The denoiser's part of an export: its model folder, the scheduler of its process, the course's small text
    encoder, the autoencoder of a latent model, model_index.json for a DDPMPipeline. Returns (written,
    not_written, pipeline)."""
    class_name, model_config, state_dict = diffusers_parts(model)  # refuses first: nothing written yet
    latent = "autoencoder" in card.get("training", {})
    scheduler_class, scheduler_config = scheduler_for(process_from_card(card), latent=latent)
    part = "transformer" if class_name == "FluxTransformer2DModel" else "unet"
    _write_model(tmp / part, class_name, model_config, state_dict)
    _write_json(tmp / "scheduler" / SCHEDULER_CONFIG, {"_class_name": scheduler_class,
                                                       "_diffusers_version": DIFFUSERS_VERSION, **scheduler_config})
    written, not_written, pipeline = {part: class_name, "scheduler": scheduler_class}, {}, None
    if isinstance(model, TextToImageModel) and model.text_encoder is not None:
        encoder = model.text_encoder.state_dict()
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in encoder.items()}, str(tmp / TEXT_ENCODER))
        written[TEXT_ENCODER] = "the course's TextEncoder"
    if latent:
        path, why = _named_autoencoder(card, checkpoint)
        try:
            if path is None:
                raise LayoutError(why)
            _write_model(tmp / "vae", *diffusers_parts(model_from_checkpoint(path)[0]))
            written["vae"] = "AutoencoderKL"
        except LayoutError as err:  # vae-small: the denoiser is written, its decoder is the course's
            not_written["vae"] = str(err)
    if (class_name, scheduler_class) == ("UNet2DModel", "DDPMScheduler"):
        pipeline = "DDPMPipeline"
        _write_json(tmp / MODEL_INDEX, {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
                                        "scheduler": ["diffusers", scheduler_class], "unet": ["diffusers", class_name]})
    return written, not_written, pipeline


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, weights: str = "model") -> dict:
    """Write the diffusers folder of a course checkpoint (see the module docstring for the layout) and return
    what was done: ``{"folder", "written": {part: class}, "not_written": {part: why}, "pipeline"}``.

    Raises :class:`~course_lib.export.maps.LayoutError` naming the differences when the model (or its process)
    has no diffusers counterpart that computes the same; a latent model whose autoencoder does not export
    (``vae-small``) is written without ``vae/`` and says why under ``not_written``."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; export into a new one")
    model, card = model_from_checkpoint(checkpoint, weights=weights)
    tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"  # renamed to out_dir once complete
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if isinstance(model, AutoencoderKL):
            _write_model(tmp, *diffusers_parts(model))
            written, not_written, pipeline = {".": "AutoencoderKL"}, {}, None
        else:
            written, not_written, pipeline = _write_denoiser(tmp, model, card, checkpoint)
        export = {"from": course_config.portable_path(checkpoint), "weights": weights, "written": written,
                  "not_written": not_written, "pipeline": pipeline, "diffusers_version_checked": DIFFUSERS_VERSION}
        _write_json(tmp / COURSE_CARD, {"card": card, "export": export})
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": str(out_dir), "written": written, "not_written": not_written, "pipeline": pipeline}


# --------------------------------------------------------------------------- reading a folder


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A diffusers model folder's weights: safetensors, sharded safetensors, or an old PyTorch .bin."""
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    index = folder / (WEIGHTS + ".index.json")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    if (folder / "diffusion_pytorch_model.bin").is_file():
        return torch.load(folder / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has no {WEIGHTS} (nor a sharded or .bin copy): not a diffusers model folder")


def read_folder(folder: str | Path) -> dict[str, tuple[str, Path]]:
    """The parts of a diffusers folder: ``{name: (class name, folder holding its config)}``.

    A pipeline folder lists its parts in model_index.json, each in a subfolder of its name or, in older
    repositories (``google/ddpm-cifar10-32``), at the top; a model folder has config.json at the top; the course's
    text-conditional exports have only subfolders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the folder a diffusers model or pipeline was saved "
                                "in (huggingface_hub.snapshot_download returns one)")

    def config_of(where: Path) -> Path | None:
        return next((where / name for name in (CONFIG, SCHEDULER_CONFIG) if (where / name).is_file()), None)

    parts = {}
    if (folder / MODEL_INDEX).is_file():
        for name, value in json.loads((folder / MODEL_INDEX).read_text()).items():
            if name.startswith("_") or not isinstance(value, list) or value[1] is None:
                continue
            where = folder / name if (folder / name).is_dir() else folder
            parts[name] = (value[1], where)
    elif (folder / CONFIG).is_file():
        parts["model"] = (json.loads((folder / CONFIG).read_text())["_class_name"], folder)
        if (folder / SCHEDULER_CONFIG).is_file():
            parts["scheduler"] = (json.loads((folder / SCHEDULER_CONFIG).read_text())["_class_name"], folder)
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if (path := config_of(sub)) is not None:
                parts[sub.name] = (json.loads(path.read_text())["_class_name"], sub)
    if not parts:
        raise FileNotFoundError(f"{folder} holds no diffusers model: no {MODEL_INDEX}, no {CONFIG}, no subfolder "
                                "with one")
    return parts


def _config(where: Path, name: str = CONFIG) -> dict:
    return {k: v for k, v in json.loads((where / name).read_text()).items() if not k.startswith("_")}


def _same_process(card_process: Process, process: Process) -> bool:
    """Whether the card's process is the one the scheduler describes (the card may say more: how training drew t)."""
    if isinstance(process, RectifiedFlowProcess):
        return isinstance(card_process, RectifiedFlowProcess) and card_process.time_scale == process.time_scale
    return card_process == process


def load_folder(folder: str | Path, *, image_size: int | None = None) -> tuple[nn.Module, dict, nn.Module | None]:
    """``(model, card fields, autoencoder or None)`` from a diffusers folder: the course model computing what the
    folder's model computes, the card's ``step``, ``metrics`` and ``training`` (the process its scheduler
    describes, under ``training.imported_from`` what was read and the scheduler's sampling choices), and the
    course autoencoder of its ``vae/``. A course export's own card (course_card.json) supplies what diffusers does
    not store: the text encoder, the training record, the step and metrics. ``image_size``: the training resolution
    of a Flux transformer without a course card."""
    folder = Path(folder)
    parts = read_folder(folder)
    course_card = json.loads((folder / COURSE_CARD).read_text())["card"] if (folder / COURSE_CARD).is_file() else None
    denoisers = {name: part for name, part in parts.items()
                 if part[0] in ("UNet2DModel", "UNet2DConditionModel", "FluxTransformer2DModel")}
    autoencoders = {name: part for name, part in parts.items() if part[0] == "AutoencoderKL"}
    training = dict(course_card.get("training", {})) if course_card else {}
    training.pop("diffusion", None)  # older cards' name of the process: replaced by training.process below
    imported = {"folder": course_config.portable_path(folder), "parts": {name: cls for name, (cls, _) in parts.items()},
                "course_card": course_card is not None}
    vae = None
    if len(denoisers) > 1 or (not denoisers and len(autoencoders) != 1):
        raise LayoutError(f"{folder} holds {sorted(parts)}: the course imports one denoiser with its scheduler "
                          "(and autoencoder), or one autoencoder")
    if not denoisers:
        (class_name, where), = autoencoders.values()
        model = autoencoder_from_diffusers(_config(where), _load_weights(where))
    else:
        (class_name, where), = denoisers.values()
        if "scheduler" not in parts:
            raise LayoutError(f"{folder} has a {class_name} but no scheduler: the course needs its process (a "
                              f"scheduler/{SCHEDULER_CONFIG}) to sample from it")
        scheduler_class, scheduler_where = parts["scheduler"]
        process, hints = process_from_scheduler(scheduler_class, _config(scheduler_where, SCHEDULER_CONFIG))
        card_config = course_card["model_config"] if course_card else None
        model = _denoiser(class_name, _config(where), _load_weights(where), card_config, folder, image_size)
        if course_card and _same_process(process_from_card(course_card), process):
            process = process_from_card(course_card)
        training["process"] = process.to_dict()
        imported["sampler_hints"] = hints
        if autoencoders:
            (_, vae_where), = autoencoders.values()
            vae = autoencoder_from_diffusers(_config(vae_where), _load_weights(vae_where))
    training["imported_from"] = imported
    fields = {"step": course_card.get("step", 0) if course_card else 0,
              "metrics": course_card.get("metrics", {}) if course_card else {}, "training": training}
    return model, fields, vae


def _denoiser(class_name: str, config: dict, state_dict: dict, card_config: dict | None, folder: Path,
              image_size: int | None) -> nn.Module:
    """The course denoiser of a diffusers one: a UNet (UNet2DModel), or a TextToImageModel whose text encoder is
    the course's, named by the folder's course card (a published text-conditional model reads another encoder)."""
    if class_name == "UNet2DModel":
        like = UNetConfig.from_dict(card_config) if card_config and "base_channels" in card_config else None
        return unet_from_diffusers(class_name, config, state_dict, like)
    if card_config is None or "text_encoder" not in card_config:
        raise LayoutError(f"a {class_name} reads a text encoder's tokens, and this folder does not say which: the "
                          f"course imports one with the text encoder its export names ({COURSE_CARD}, and "
                          f"{TEXT_ENCODER} for a trained one); a published model's own text encoder (CLIP, T5) is "
                          "not one of the course's")
    t2i = Text2ImageConfig.from_dict(card_config)
    backbone = _course_model(class_name, config, state_dict, t2i.denoiser, image_size)
    model = TextToImageModel(dataclasses.replace(t2i, denoiser=backbone.config))
    model.backbone.load_state_dict(backbone.state_dict())
    if model.text_encoder is not None:
        if not (folder / TEXT_ENCODER).is_file():
            raise FileNotFoundError(f"{folder} has no {TEXT_ENCODER}: the weights of the course's small text encoder "
                                    "this model reads")
        model.text_encoder.load_state_dict(load_file(str(folder / TEXT_ENCODER)))
    return model.eval()


def import_folder(folder: str | Path, out: str | Path, *, image_size: int | None = None) -> Path:
    """Read a diffusers folder (:func:`load_folder`) and write it as a course checkpoint ``out`` (.safetensors) with
    its card. A folder with an autoencoder (``vae/``) gives a second checkpoint ``<out>-vae.safetensors`` that the
    denoiser's card names (keep both in the checkpoint folder, ``COURSE_CHECKPOINT_DIR``, for
    ``Pipeline.from_checkpoint``). Returns ``out``."""
    out = Path(out)
    model, fields, vae = load_folder(folder, image_size=image_size)
    if vae is not None:
        vae_path = save_checkpoint(out.with_name(f"{out.stem}-vae.safetensors"), vae,
                                   training={"imported_from": fields["training"]["imported_from"]})
        fields["training"]["autoencoder"] = {"checkpoint": vae_path.name, "sha256": read_card(vae_path)["sha256"],
                                             "scaling_factor": float(vae.scaling_factor),
                                             "shift_factor": vae.config.shift_factor}
    return save_checkpoint(out, model, step=fields["step"], metrics=fields["metrics"], training=fields["training"])
