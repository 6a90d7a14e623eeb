"""Checkpoints: one ``.safetensors`` file plus a JSON card beside it, written atomically.

Layout of ``name.safetensors`` (tensors, by key prefix):

- ``model.*``  the model's state dict (for an inference export: the EMA weights);
- ``ema.*``    the exponential moving average of the weights (training states only);
- ``optim.*``  the optimizer's tensors (Adam moments; training states only);
- ``train.*``  training history (``train.loss_history``).

The card (a JSON dict: model class and config, step, metrics, how it was trained, the optimizer's
non-tensor state, and ``sha256``: the hash of the tensor data) is stored twice: inside the file's
safetensors metadata, which is the authoritative copy, and as ``name.json`` beside it, for people
to read. Keeping the authoritative card inside the one file makes a save a single atomic
``os.replace`` of a fully written temporary file: a crash at any moment leaves either the old
checkpoint or the new one, never half of each.

Loading checks the tensor data against the card's hash and the model's class and config against
the card, and says what to do when either fails.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from . import config

FORMAT = "course_lib.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or does not fit the model; the message says what to do."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read: the card and the tensors grouped by prefix."""

    path: Path
    card: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    optim: dict[str, torch.Tensor] = field(default_factory=dict)
    train: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.card.get("step", 0))


def card_path(path: str | Path) -> Path:
    """The JSON card beside a ``.safetensors`` file."""
    return Path(path).with_suffix(".json")


def config_dict(cfg) -> dict:
    """A config dataclass as plain JSON (its ``to_dict()`` when it has one, else ``dataclasses.asdict``)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"a model's config must be a dataclass, got {type(cfg).__name__}")
    plain = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(plain))  # tuples -> lists, as JSON stores them


def model_config_dict(model: torch.nn.Module) -> dict:
    """The model's config (a dataclass at ``model.config``) as plain JSON, or {} when it has none."""
    cfg = getattr(model, "config", None)
    return {} if cfg is None else config_dict(cfg)


def config_from_dict(config_class: type, d: dict):
    """A config dataclass from a card's dict: ``config_class.from_dict(d)`` when the class has one (it reads
    older layouts too), else ``config_class(**d)``; fields missing from ``d`` take their defaults."""
    return config_class.from_dict(d) if hasattr(config_class, "from_dict") else config_class(**d)


def class_names(model_class: type) -> tuple[str, ...]:
    """The names a card may give ``model_class``: its own and its ``card_aliases`` (names of older versions)."""
    return (model_class.__name__, *getattr(model_class, "card_aliases", ()))


# ----------------------------------------------------------------------------- optimizer state

def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors for safetensors, the rest as JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # JSON turned tuples (Adam's betas) into lists; give them back as tuples
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- saving

def _data_hash(blob: bytes) -> str:
    """sha256 of the tensor data of a serialized safetensors blob (everything after the header)."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(memoryview(blob)[8 + header_len:]).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, step: int = 0,
                    ema: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    train_tensors: dict[str, torch.Tensor] | None = None,
                    metrics: dict | None = None, training: dict | None = None,
                    kind: str | None = None) -> Path:
    """Save ``model`` (and optionally its EMA copy, optimizer state, training history) atomically.

    ``metrics`` and ``training`` (how it was trained: config, wall time, hardware, data) go into
    the card as given. ``kind`` is ``"training_state"`` when an optimizer is saved, else
    ``"inference"``, unless stated. Returns the path written.
    """
    path = Path(path)

    def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # clone: safetensors refuses tensors that share memory (tied weights, views)
        return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}

    tensors = prefixed("model", model.state_dict())
    if ema is not None:
        tensors |= prefixed("ema", ema.state_dict())
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _split_optimizer_state(optimizer)
        tensors |= prefixed("optim", {k[len("optim."):]: v for k, v in optim_tensors.items()})
    if train_tensors:
        tensors |= prefixed("train", train_tensors)

    card = {
        "format": FORMAT,
        "kind": kind or ("training_state" if optimizer is not None else "inference"),
        "model_class": type(model).__name__,
        "model_config": model_config_dict(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step": int(step),
        "has_ema": ema is not None,
        "optimizer": optim_meta,
        "metrics": metrics or {},
        "training": training or {},
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    return write_checkpoint(path, tensors, card)


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Serialize prefixed tensors with the card (and its data hash) in the metadata; replace the file atomically."""
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint paths end in .safetensors, got {path.name!r}")
    # The data section does not depend on the metadata, so hash it from a first serialization,
    # then write the final one with the hash in its metadata.
    card["sha256"] = _data_hash(_st_save(tensors))
    blob = _st_save(tensors, metadata={"card": json.dumps(card)})
    assert _data_hash(blob) == card["sha256"]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, blob)
    atomic_write(card_path(path), (json.dumps(card, indent=2) + "\n").encode())
    return path


# ----------------------------------------------------------------------------- loading

def read_card(path: str | Path) -> dict:
    """The card stored inside a checkpoint (reads only the header, not the tensors)."""
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is empty or truncated; delete it and train or copy it again")
        (header_len,) = struct.unpack("<Q", head)
        header = f.read(header_len) if header_len < 100_000_000 else b""
    return _card_from_header(path, header, header_len)


def _check_exists(path: Path) -> None:
    if not path.exists():
        hint = ""
        if path.parent.exists():
            found = sorted(p.name for p in path.parent.glob("*.safetensors"))
            hint = f" (that folder has: {', '.join(found) or 'no checkpoints'})"
        raise CheckpointError(f"no checkpoint at {path}{hint}; train one with "
                              "`python -m course_lib.train --help`, or check COURSE_CHECKPOINT_DIR")


def _card_from_header(path: Path, header: bytes, header_len: int) -> dict:
    try:
        if len(header) != header_len:
            raise ValueError("header truncated")
        card = json.loads(json.loads(header)["__metadata__"]["card"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a readable course checkpoint ({err}); it is truncated, "
                              "damaged or not made by course_lib: delete it and train or copy it again") from err
    if card.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {card.get('format')!r}, this course reads {FORMAT!r}")
    return card


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None, *,
                    weights: str = "model", ema: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Checkpoint:
    """Read and verify a checkpoint; optionally load it into ``model``, ``ema`` and ``optimizer``.

    ``weights`` picks what goes into ``model``: ``"model"`` (the raw weights) or ``"ema"``.
    Raises :class:`CheckpointError` when the file is missing, damaged (hash mismatch), or its
    model class / config / tensor shapes do not fit the model given.
    """
    path = Path(path)
    _check_exists(path)
    blob = path.read_bytes()
    if len(blob) < 8:
        raise CheckpointError(f"{path} is empty or truncated; delete it and train or copy it again")
    (header_len,) = struct.unpack("<Q", blob[:8])
    card = _card_from_header(path, blob[8:8 + header_len], header_len)
    if _data_hash(blob) != card.get("sha256"):
        raise CheckpointError(f"{path} is damaged: its tensor data does not match the hash in its card "
                              "(a partial copy or a changed file); delete it and train or copy it again")
    try:
        tensors = _st_load(blob)
    except Exception as err:
        raise CheckpointError(f"{path} is damaged ({err}); delete it and train or copy it again") from err

    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "train": {}}
    for key, value in tensors.items():
        prefix, name = key.split(".", 1)
        groups.setdefault(prefix, {})[name] = value
    ckpt = Checkpoint(path=path, card=card, model=groups["model"], ema=groups["ema"],
                      optim=groups["optim"], train=groups["train"])

    side = card_path(path)
    if side.exists():
        try:
            if json.loads(side.read_text()).get("sha256") != card["sha256"]:
                warnings.warn(f"{side} does not describe {path.name} (stale card); "
                              "the card stored inside the checkpoint is used", stacklevel=2)
        except ValueError:
            warnings.warn(f"{side} is not valid JSON; the card stored inside the checkpoint is used", stacklevel=2)

    if model is not None:
        _load_into(ckpt, model, weights)
    if ema is not None:
        if not ckpt.ema:
            raise CheckpointError(f"{path} holds no EMA weights (kind {card['kind']!r})")
        _load_into(ckpt, ema, "ema")
    if optimizer is not None:
        if card.get("optimizer") is None:
            raise CheckpointError(f"{path} holds no optimizer state (kind {card['kind']!r}); "
                                  "it cannot resume training, only initialise a model")
        if card["optimizer"]["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{path} was trained with {card['optimizer']['class']}, "
                                  f"not {type(optimizer).__name__}")
        optimizer.load_state_dict(_join_optimizer_state(ckpt.optim, card["optimizer"]))
    return ckpt


def check_model_matches(card: dict, model: torch.nn.Module, path: Path | str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every difference between the card and ``model``.

    The card's config is read as the model's config class reads it (:func:`config_from_dict`), so a field
    added to the class after the checkpoint was written takes its default: the checkpoint was made with what
    the default describes."""
    if card["model_class"] not in class_names(type(model)):
        raise CheckpointError(f"{path} holds a {card['model_class']}, not a {type(model).__name__}")
    cfg = getattr(model, "config", None)
    ours = model_config_dict(model)
    try:
        saved = ours if cfg is None else config_dict(config_from_dict(type(cfg), card["model_config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}'s model config does not describe a {type(model).__name__}: {err}") from err
    if saved != ours:
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs model {ours.get(k)!r}"
                 for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
        raise CheckpointError(f"{path} was made for another {card['model_class']} config: "
                              + "; ".join(diffs) + ". Build the model from the checkpoint's config "
                              "(course_lib.models.model_from_checkpoint) or pick the matching checkpoint")


def _load_into(ckpt: Checkpoint, model: torch.nn.Module, weights: str) -> None:
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    check_model_matches(ckpt.card, model, ckpt.path)
    sd = ckpt.ema if weights == "ema" else ckpt.model
    if not sd:
        raise CheckpointError(f"{ckpt.path} holds no {weights!r} weights")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(ours[k].shape)}"
             for k in sorted(set(sd) & set(ours)) if sd[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{ckpt.path} does not fit this {type(model).__name__}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:5]}")
    model.load_state_dict(sd)


def export_inference(src: str | Path, dst: str | Path, *, weights: str = "ema",
                     metrics: dict | None = None) -> Path:
    """Write the inference-only checkpoint (by default the EMA weights) of a training state.

    The result holds only ``model.*`` tensors (no optimizer moments), small enough to commit.
    """
    ckpt = load_checkpoint(src)
    sd = ckpt.ema if weights == "ema" else ckpt.model
    if not sd:
        raise CheckpointError(f"{src} holds no {weights!r} weights to export")
    card = dict(ckpt.card)
    card.update(kind="inference", has_ema=False, optimizer=None, exported_weights=weights,
                exported_from=Path(src).name,
                saved_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if metrics:
        card["metrics"] = {**card.get("metrics", {}), **metrics}
    tensors = {f"model.{k}": v for k, v in sd.items()}
    if "loss_history" in ckpt.train:
        tensors["train.loss_history"] = ckpt.train["loss_history"]
    return write_checkpoint(Path(dst), tensors, card)


def transplant_weights(path: str | Path, model: torch.nn.Module) -> dict:
    """Copy into ``model`` every tensor of checkpoint ``path`` whose name and shape match; the rest
    of ``model`` keeps its fresh initialisation.

    This is how a model with a different part starts from a trained relative, the way Stable
    Diffusion 2 reused SD 1's UNet when it swapped CLIP for OpenCLIP: cond-small-minilm takes
    cond-small's UNet, and only the cross-attention key/value projections (they read 384-wide
    MiniLM vectors instead of 128-wide ones) and nothing else start from scratch. Unlike
    :func:`load_checkpoint` it does not require the same model class or config.

    Returns a summary for the checkpoint card: the source and its step, how many tensors and
    parameters were copied, and the names of those that were not (new here, or another shape).
    Raises :class:`CheckpointError` when nothing at all matches (the wrong checkpoint).
    """
    ckpt = load_checkpoint(path)
    ours = model.state_dict()
    same = {k: v for k, v in ckpt.model.items() if k in ours and ours[k].shape == v.shape}
    if not same:
        raise CheckpointError(f"{path} shares no tensor (same name and shape) with this "
                              f"{type(model).__name__}: pick a checkpoint of a related model")
    model.load_state_dict(same, strict=False)
    fresh = sorted(set(ours) - set(same))
    return {"from": config.portable_path(path), "step": ckpt.step, "model_class": ckpt.card["model_class"],
            "weights": ckpt.card.get("exported_weights", "model"),
            "copied_tensors": len(same), "copied_parameters": sum(v.numel() for v in same.values()),
            "fresh_tensors": fresh,
            "fresh_parameters": sum(ours[k].numel() for k in fresh),
            "unused_tensors": len(set(ckpt.model) - set(same))}
