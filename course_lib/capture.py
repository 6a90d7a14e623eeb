"""Where does the image look? Recording attention maps while a model runs.

Inside a text-conditional UNet every cross-attention layer computes, for each image position i
and text token j, the weight

    P[i, j] = softmax_j(q_i . k_j / sqrt(d))         (masked tokens: weight 0)

with q from the image and k from the caption (``course_lib.spatial_transformer``). Read as a
picture, column j of P says where in the image the word j is "looked at". ``capture_attention``
records P for every attention layer of a model (every ``HookableAttention``: the
``MultiHeadAttention``s of a SpatialTransformer or a text encoder, and the self-attention
``AttentionBlock``s of the chapter 1-2 UNets), per layer, head, call and timestep:

    with capture_attention(unet, kinds=("cross",)) as record:
        ddim_sample(ClassifierFreeGuidance(unet, ...), schedule, shape, num_steps=20)
    record.layers                                   # names of the layers that attended
    record.timesteps                                # t of every forward pass of unet
    record.maps("middle.1.blocks.0.attn2", t=999)   # [B, H, W, M]: one map per text token

The probabilities are computed on the side, with ``course_lib.attention.attention_weights``
from the same q and k the layer uses (``HookableAttention.register_attention_hook``): the
model computes exactly what it computes without the capture, bit for bit. Records go to the
CPU; ``max_batch`` keeps only the first images of each batch to bound memory (with classifier-
free guidance the model sees [x; x]: the first B images are the conditional half). Hooks are
removed when the ``with`` block ends, also when it ends with an exception.

An MM-DiT (chapter 6) has no cross-attention: its joint attention runs over one sequence [text, image],
recorded with ``kinds="self"``. :func:`quadrant_mass` splits such a matrix into its four quadrants
(:data:`QUADRANTS`: text→text, text→image, image→text, image→image).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from einops import rearrange
from torch import nn

from .attention import HookableAttention, attention_weights

__all__ = ["AttentionCall", "AttentionRecord", "capture_attention", "QUADRANTS", "quadrant_mass"]

KINDS = ("self", "cross")


@dataclass
class AttentionCall:
    """One forward call of one attention layer.

    layer:    the layer's name in ``model.named_modules()``
    kind:     "self" or "cross"
    call:     index of the model's forward pass it happened in (-1: outside any)
    timestep: t of that forward pass (of its first image), or None when not known
    probs:    [b, heads, Nq, Nk] float32 on the CPU, rows sum to 1 (0 for masked keys);
              b = the batch size, or ``max_batch`` when smaller
    """

    layer: str
    kind: str
    call: int
    timestep: float | int | None
    probs: torch.Tensor


@dataclass
class AttentionRecord:
    """What :func:`capture_attention` recorded: a list of :class:`AttentionCall` and the model's timesteps."""

    calls: list[AttentionCall] = field(default_factory=list)
    model_t: list[torch.Tensor] = field(default_factory=list)  # [B] timesteps of each model forward, CPU

    @property
    def layers(self) -> list[str]:
        """Names of the layers that were recorded, in the order they first ran."""
        return list(dict.fromkeys(c.layer for c in self.calls))

    @property
    def timesteps(self) -> list[float | int | None]:
        """The timestep of each forward pass of the model, in order (a sampler's t_S, ..., t_1)."""
        return [_first(t) for t in self.model_t]

    def select(self, layer: str, t: float | int | None = None) -> list[AttentionCall]:
        """The calls of ``layer`` (all of them, or those at timestep ``t``)."""
        if layer not in self.layers:
            raise ValueError(f"no attention recorded for layer {layer!r}; recorded layers: {self.layers}")
        calls = [c for c in self.calls if c.layer == layer]
        if t is not None:
            calls = [c for c in calls if c.timestep == t]
            if not calls:
                seen = sorted({c.timestep for c in self.calls if c.layer == layer and c.timestep is not None})
                raise ValueError(f"layer {layer!r} has no record at t={t}; recorded timesteps: {seen}")
        return calls

    def probs(self, layer: str, t: float | int | None = None, head: int | str | None = "mean") -> torch.Tensor:
        """Attention probabilities of ``layer``: [B, Nq, Nk] (head="mean" or an int) or [B, heads, Nq, Nk] (None).

        t=None averages over every recorded call of the layer (e.g. over all sampling steps);
        a number picks the calls at that timestep (averaged if there are several).
        """
        calls = self.select(layer, t)
        shapes = {tuple(c.probs.shape) for c in calls}
        if len(shapes) > 1:
            raise ValueError(f"the calls of {layer!r} have different shapes {sorted(shapes)} (different batches); "
                             "pick one timestep with t=..., or capture one run at a time")
        p = torch.stack([c.probs for c in calls]).mean(dim=0)  # [B, heads, Nq, Nk]
        if head is None:
            return p
        if head == "mean":
            return p.mean(dim=1)  # [B, Nq, Nk]
        if isinstance(head, int) and -p.shape[1] <= head < p.shape[1]:
            return p[:, head]  # [B, Nq, Nk]
        raise ValueError(f"head must be 'mean', None (all heads) or an int in 0..{p.shape[1] - 1}, got {head!r}")

    def maps(self, layer: str, t: float | int | None = None, head: int | str | None = "mean",
             size: tuple[int, int] | None = None) -> torch.Tensor:
        """Attention maps of ``layer`` as pictures: [B, H, W, M] (or [B, heads, H, W, M] with head=None).

        ``[..., j]`` is where in the image text token j is attended to (cross-attention), or, for
        self-attention, where position j is. The image tokens are reshaped to the feature map:
        square (H = W = sqrt(Nq)) unless ``size=(H, W)`` is given. ``t`` and ``head`` as in :meth:`probs`.
        """
        p = self.probs(layer, t, head)  # [B, (heads,) Nq, Nk]
        n = p.shape[-2]
        if size is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"layer {layer!r} attends over {n} image tokens, not a square feature map; "
                                 "pass size=(H, W)")
            size = (side, side)
        H, W = size
        if H * W != n:
            raise ValueError(f"size={size} has {H * W} positions but layer {layer!r} has {n} image tokens")
        return rearrange(p, "... (h w) m -> ... h w m", h=H, w=W)

    def kl_from_uniform(self, layer: str, t: float | int | None = None) -> float:
        """How far the attention of ``layer`` is from uniform over the real tokens, in nats.

        For every recorded row P_i (image, head, query position) over the n real keys (masked keys
        have weight exactly 0 in every row and are left out),

            KL(P_i || U_n) = sum_j P_ij log(n P_ij) = log n - H(P_i),

        0 when every real token gets 1/n (the position reads all words alike), log n when it reads
        one token only. Returns the mean over rows and calls (all calls of the layer, or those at
        timestep ``t``). Each call's rows are measured before any averaging: the mean of the maps
        over steps or heads is closer to uniform than the maps themselves.
        """
        total, rows = 0.0, 0
        for c in self.select(layer, t):
            p = c.probs.double()  # [b, heads, Nq, Nk]
            real = (p > 0).flatten(1, 2).any(dim=1)  # [b, Nk]: keys that got weight anywhere (not masked)
            n = real.sum(dim=-1).clamp(min=1).double()  # [b]
            entropy = -torch.xlogy(p, p).sum(dim=-1)  # [b, heads, Nq]
            kl = n.log()[:, None, None] - entropy  # [b, heads, Nq]
            total, rows = total + float(kl.sum()), rows + kl.numel()
        return total / rows

    def kl_from_uniform_table(self, layers: Iterable[str] | None = None) -> tuple[list[str], list, torch.Tensor]:
        """:meth:`kl_from_uniform` for every layer and timestep: (layers, timesteps, table [layers, timesteps]).

        ``layers`` defaults to every recorded layer; the timesteps are those of the model's forward
        passes in sampling order. A layer not called at some timestep gets NaN there.
        """
        layers = self.layers if layers is None else list(layers)
        timesteps = [t for t in dict.fromkeys(self.timesteps) if t is not None]
        if not timesteps:
            raise ValueError("the record holds no timesteps: capture a sampling run of a model called as "
                             "model(x, t, ...)")
        table = torch.full((len(layers), len(timesteps)), float("nan"), dtype=torch.float64)
        for i, layer in enumerate(layers):
            seen = {c.timestep for c in self.select(layer)}
            for j, t in enumerate(timesteps):
                if t in seen:
                    table[i, j] = self.kl_from_uniform(layer, t)
        return layers, timesteps, table


def _first(t: torch.Tensor) -> float | int | None:
    """The first timestep of a call as a Python number (samplers give every image the same t)."""
    return t[0].item() if t.numel() else None


@contextmanager
def capture_attention(model: nn.Module, kinds: Iterable[str] | str = ("cross",), *, max_batch: int | None = None,
                      layers: Iterable[str] | None = None) -> Iterator[AttentionRecord]:
    """Record softmax(Q K^T / sqrt(d)) of the model's attention layers while the block runs.

    The layers are the model's ``HookableAttention`` modules (``course_lib.attention``): the
    ``MultiHeadAttention``s of SpatialTransformers and text encoders, and the UNet's ``AttentionBlock``s.

    kinds:     which attention to record: "cross" (image -> text, the default), "self", or both;
               an unconditional UNet (chapters 1-2) has self-attention only: pass kinds="self"
    max_batch: keep only the first ``max_batch`` images of every batch (memory: a 16x16 self-attention
               map is 256 KB per image and head, per step)
    layers:    only these layer names (default: every attention layer in the model)

    The timestep of each forward pass is read from the model's second argument (``model(x, t, ...)``)
    when that is a number or a [B] tensor.
    Yields an :class:`AttentionRecord` that fills up as the model runs; outputs are unchanged bit for bit.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture_attention needs the network (an nn.Module), got {type(model).__name__}; "
                        "for a ClassifierFreeGuidance wrapper pass its .model")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    targets = {name: m for name, m in model.named_modules() if isinstance(m, HookableAttention)}
    if not targets:
        raise ValueError(f"{type(model).__name__} has no attention layer (HookableAttention) to record; attention "
                         "maps come from a UNet's AttentionBlocks (kinds='self') or from the SpatialTransformers "
                         "of a text-conditional UNet (UNetConfig(context_dim=...))")
    if layers is not None:
        layers = list(layers)
        unknown = [n for n in layers if n not in targets]
        if unknown:
            raise ValueError(f"unknown attention layers {unknown}; the model has {list(targets)}")
        targets = {n: targets[n] for n in layers}
    if "self" not in kinds and all(m.self_attention_only for m in targets.values()):
        kinds_of = sorted({type(m).__name__ for m in targets.values()})
        raise ValueError(f"kinds={kinds} asks for cross-attention, but the attention layers of {type(model).__name__} "
                         f"({len(targets)} {'/'.join(kinds_of)}) attend to themselves only: nothing would be "
                         "recorded; pass kinds='self', or capture a text-conditional model")

    record = AttentionRecord()
    state = {"call": -1, "inside": False, "timestep": None}

    def before_forward(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("t")
        if isinstance(t, (int, float)) or (isinstance(t, torch.Tensor) and t.ndim <= 1):
            t = torch.as_tensor(t).detach().reshape(-1).cpu()  # [B] (or [1] for a scalar t)
        else:
            t = None  # not a model(x, t, ...) call: no timestep to record
        if t is not None and max_batch is not None:
            t = t[:max_batch]
        state.update(call=state["call"] + 1, inside=True, timestep=None if t is None else _first(t))
        record.model_t.append(t if t is not None else torch.empty(0))

    def after_forward(module, args, kwargs, output):
        state.update(inside=False, timestep=None)

    def on_attention(name, module, q, k, mask, cross):
        kind = "cross" if cross else "self"
        if kind not in kinds:
            return
        with torch.no_grad():
            b = q.shape[0] if max_batch is None else min(max_batch, q.shape[0])
            if mask is not None and mask.ndim == 4 and mask.shape[0] == q.shape[0]:
                mask = mask[:b]
            probs = attention_weights(q[:b].detach(), k[:b].detach(), mask)  # [b, heads, Nq, Nk]
        call = state["call"] if state["inside"] else -1
        record.calls.append(AttentionCall(name, kind, call, state["timestep"], probs.float().cpu()))

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(before_forward, with_kwargs=True))
        handles.append(model.register_forward_hook(after_forward, with_kwargs=True))
        for name, module in targets.items():
            handles.append(module.register_attention_hook(
                lambda m, q, k, mask, cross, name=name: on_attention(name, m, q, k, mask, cross)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- joint attention (chapter 6)

#: the four quadrants of a joint-attention matrix over [text, image], as "queries→keys"
QUADRANTS = ("text→text", "text→image", "image→text", "image→image")


def quadrant_mass(probs: torch.Tensor, num_text: int) -> dict[str, float]:
    """How an MM-DiT's joint attention splits between the two streams.

    ``probs`` [..., n, n] over the sequence [text (num_text real tokens), image] (padding already removed),
    rows summing to 1. For queries of one kind, the mean over those queries of the attention they give to
    keys of each kind: ``text→image`` is the share of a text token's attention that goes to image patches
    (text→text + text→image = 1, image→text + image→image = 1). Returns {quadrant: share} over
    :data:`QUADRANTS`, the leading dimensions of ``probs`` (batch, heads) averaged first.
    """
    p = probs.reshape(-1, *probs.shape[-2:]).double().mean(0)  # [n, n]
    if not 0 < num_text < p.shape[-1]:
        raise ValueError(f"num_text={num_text} must leave both text and image tokens in a sequence of {p.shape[-1]}")
    text, image = slice(0, num_text), slice(num_text, None)
    return {"text→text": float(p[text, text].sum(-1).mean()), "text→image": float(p[text, image].sum(-1).mean()),
            "image→text": float(p[image, text].sum(-1).mean()), "image→image": float(p[image, image].sum(-1).mean())}
