"""What every name map of :mod:`course_lib.export` shares: the refusal, one plan read in both directions, the
two blocks every UNet-shaped model is made of, and diffusers itself, imported only where it is needed.

A name map is a list of :class:`Pair` s, ``(ours, theirs, kind)``: a course module, the diffusers module that
holds the same weights, and how the tensors under it are renamed or reshaped (a *converter*: a function for each
direction). :func:`apply_map` walks the list either way, so export and import cannot drift apart, and it uses
every tensor exactly once: a weight that no pair names, or that a converter does not know, is a
:class:`LayoutError`, never silently dropped. Converters only rename, reshape, split, join or reorder tensors (no
arithmetic), so a model that goes to diffusers and back comes back bit for bit.

The two shared blocks (course name -> diffusers name):

    ResBlock (course_lib.unet)                 ResnetBlock2D (diffusers.models.resnet)
        norm1, conv1, norm2, conv2                 norm1, conv1, norm2, conv2
        emb_proj     (Linear, the time step)       time_emb_proj
        shortcut     (1x1 conv, channels change)   conv_shortcut

    AttentionBlock (course_lib.unet)           Attention(_from_deprecated_attn_block=True)
        norm         (GroupNorm)                   group_norm
        qkv          (1x1 conv, [3C, C, 1, 1])     to_q, to_k, to_v  (Linear [C, C] each: the conv's rows in
                                                                      thirds, q then k then v, heads inside)
        proj_out     (1x1 conv, [C, C, 1, 1])      to_out.0          (Linear [C, C])

Old diffusers checkpoints (``google/ddpm-cifar10-32`` among them) name the attention's projections ``query``,
``key``, ``value`` and ``proj_attn``; :func:`modernise_attention_names` renames them as diffusers does on load
(``ModelMixin._fix_state_dict_keys_on_load``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["LayoutError", "refuse", "require_diffusers", "DIFFUSERS_VERSION", "Pair", "Converter", "apply_map",
           "same", "RESNET", "ATTENTION", "SAME", "swap_halves", "modernise_attention_names", "config_value"]

#: the diffusers release every map here was checked against (tests/test_export.py); written into the configs
DIFFUSERS_VERSION = "0.42.1"


class LayoutError(ValueError):
    """A model whose layout its counterpart in the other library cannot compute; the message names each difference.

    Raised by the exporters (a course model diffusers cannot express) and the importers (a diffusers model the
    course's classes cannot express): neither ever writes a model that loads and computes something else."""


def refuse(what: str, problems: list[str], consequence: str = "it would load there and compute something else, "
           "so it is not exported") -> None:
    """Raise :class:`LayoutError` naming every problem, if there is any: "<what>: p1; p2. <consequence>"."""
    if problems:
        raise LayoutError(f"{what}: " + "; ".join(problems) + f". {consequence[:1].upper()}{consequence[1:]}")


def require_diffusers():
    """The ``diffusers`` module, imported here and only here (it is the optional ``bridge`` extra, slow to import)."""
    if importlib.util.find_spec("diffusers") is None:
        raise ModuleNotFoundError("this needs diffusers, the course's optional bridge extra: pip install -e "
                                  "'.[bridge]' (exporting to a folder and importing one do not: only building a "
                                  "diffusers object in memory does)")
    return importlib.import_module("diffusers")


def config_value(config: dict, key: str, defaults: dict):
    """``config[key]``, or diffusers' default for a key an older config does not write (``defaults``: the
    constructor's defaults in diffusers 0.42, spelled out in each importer)."""
    return config[key] if key in config else defaults[key]


# --------------------------------------------------------------------------- the plan, read both ways

#: a converter: (tensors under the course module -> tensors under the diffusers module, and the inverse); each
#: takes a dict keyed by the names *below* the module, removes (pops) what it uses and returns the other side's
Converter = tuple[Callable[[dict], dict], Callable[[dict], dict]]


@dataclass(frozen=True)
class Pair:
    """One line of a name map: course module ``ours`` holds what diffusers module ``theirs`` holds; ``kind`` names
    the converter (a key of the converters :func:`apply_map` is given)."""

    ours: str
    theirs: str
    kind: str = "same"


def apply_map(pairs: list[Pair], tensors: dict[str, torch.Tensor], converters: dict[str, Converter],
              to_diffusers: bool) -> dict[str, torch.Tensor]:
    """Rename a whole state dict along ``pairs``: course -> diffusers (``to_diffusers``) or back.

    Every tensor must be claimed by exactly one pair and consumed by its converter; anything left over is a
    :class:`LayoutError` naming it (a published model with a part the course has no place for)."""
    remaining = dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for pair in pairs:
        src, dst = (pair.ours, pair.theirs) if to_diffusers else (pair.theirs, pair.ours)
        below = {key[len(src) + 1:]: remaining.pop(key) for key in list(remaining) if key.startswith(src + ".")}
        if not below:
            raise LayoutError(f"no weights under {src!r}, where the name map expects {dst!r}'s: the weights do not "
                              "belong to the layout their config describes")
        converted = converters[pair.kind][0 if to_diffusers else 1](below)
        if below:
            raise LayoutError(f"{src} holds weights the name map does not know: {sorted(below)}")
        out.update({f"{dst}.{key}": value for key, value in converted.items()})
    if remaining:
        names = sorted(remaining)
        raise LayoutError(f"{len(names)} weights belong to no module of the name map, e.g. {names[:6]}: a part the "
                          "other library's model does not have, so it is not converted")
    return out


def same(below: dict) -> dict:
    """The converter of modules whose tensors have the same names on both sides (convs, norms, Linears)."""
    out = dict(below)
    below.clear()
    return out


def _renamer(names: dict[str, str]) -> Converter:
    """A converter renaming the first component of each name (``emb_proj.weight`` -> ``time_emb_proj.weight``)."""
    inverse = {v: k for k, v in names.items()}

    def rename(table: dict[str, str]) -> Callable[[dict], dict]:
        def convert(below: dict) -> dict:
            out = {}
            for key in list(below):
                head, _, rest = key.partition(".")
                out[f"{table.get(head, head)}.{rest}"] = below.pop(key)
            return out
        return convert

    return rename(names), rename(inverse)


def _attention_to(below: dict) -> dict:
    """AttentionBlock -> diffusers' Attention: the fused 1x1 qkv conv split into three Linear layers."""
    out = {"group_norm.weight": below.pop("norm.weight"), "group_norm.bias": below.pop("norm.bias")}
    weights = below.pop("qkv.weight").flatten(1).chunk(3)  # 3 x [C, C]
    biases = below.pop("qkv.bias").chunk(3)  # 3 x [C]
    for name, w, b in zip(("to_q", "to_k", "to_v"), weights, biases):
        out[f"{name}.weight"], out[f"{name}.bias"] = w, b
    out["to_out.0.weight"] = below.pop("proj_out.weight").flatten(1)  # [C, C]
    out["to_out.0.bias"] = below.pop("proj_out.bias")
    return out


def _attention_back(below: dict) -> dict:
    """diffusers' Attention -> AttentionBlock: to_q, to_k, to_v stacked into the 1x1 qkv conv [3C, C, 1, 1]."""
    out = {"norm.weight": below.pop("group_norm.weight"), "norm.bias": below.pop("group_norm.bias")}
    w = torch.cat([below.pop(f"{name}.weight") for name in ("to_q", "to_k", "to_v")])  # [3C, C]
    out["qkv.weight"] = w[:, :, None, None]  # [3C, C, 1, 1]
    out["qkv.bias"] = torch.cat([below.pop(f"{name}.bias") for name in ("to_q", "to_k", "to_v")])  # [3C]
    out["proj_out.weight"] = below.pop("to_out.0.weight")[:, :, None, None]  # [C, C, 1, 1]
    out["proj_out.bias"] = below.pop("to_out.0.bias")
    return out


#: converters of the blocks every UNet-shaped model shares
SAME: Converter = (same, same)
RESNET: Converter = _renamer({"emb_proj": "time_emb_proj", "shortcut": "conv_shortcut"})
ATTENTION: Converter = (_attention_to, _attention_back)


def swap_halves(weight: torch.Tensor, half: int) -> torch.Tensor:
    """A Linear layer's weight [out, in] with its first two blocks of ``half`` input columns exchanged (a trailing
    odd column stays last): the layer after a sinusoid [sin, cos] then reads [cos, sin] (diffusers'
    ``flip_sin_to_cos``) and computes the same numbers; exchanging twice gives the weight back bit for bit."""
    return torch.cat([weight[:, half:2 * half], weight[:, :half], weight[:, 2 * half:]], dim=1)


def modernise_attention_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers attention names (``query``, ``key``, ``value``, ``proj_attn``) -> today's (``to_q``, ``to_k``,
    ``to_v``, ``to_out.0``), as diffusers renames them when it loads such a checkpoint."""
    new = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    out = {}
    for key, value in tensors.items():
        *path, module, param = key.split(".")
        if module in new and path and path[-2:-1] == ["attentions"]:
            key = ".".join([*path, new[module], param])
        out[key] = value
    return out
