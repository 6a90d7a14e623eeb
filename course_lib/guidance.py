"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6).

One network learns both the conditional prediction eps(x_t, c) and the unconditional one
eps(x_t, empty): during training the caption is replaced by the empty caption "" a fraction p
of the time (``cfg_dropout``). At sampling time the two predictions are extrapolated away from
the unconditional one:

    eps_guided = eps_uncond + w (eps_cond - eps_uncond)

w = 0 is the unconditional model, w = 1 the conditional one, w > 1 follows the caption more
closely at the cost of diversity. (Ho & Salimans write (1 + w') eps_cond - w' eps_uncond; their
w' is our w - 1.)

The formula is linear in the prediction, so it applies unchanged whatever the network predicts:
eps, x0 and v are each affine in the other two given x_t (``course_lib.parameterization``), and
guiding any one of them gives the same guided x0 and eps.

``ClassifierFreeGuidance(model, context, ...)`` is a ``model(x, t)`` callable for every sampler in
``course_lib.samplers``; it runs the two predictions as one batched forward pass of [x; x] with
[cond; uncond] contexts.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

__all__ = ["guide", "ClassifierFreeGuidance", "EmbeddedGuidance", "BakedGuidance", "cfg_dropout"]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond) (Ho & Salimans 2022, eq. 6).

    ``scale``: one number, or one weight per image [B] (chapter 7's guidance distillation draws w per image),
    broadcast over the rest of each prediction."""
    if isinstance(scale, torch.Tensor) and scale.ndim == 1:
        scale = scale.to(cond.dtype).view(-1, *[1] * (cond.ndim - 1))  # [B, 1, 1, 1]
    return uncond + scale * (cond - uncond)


def _as_batch(name: str, x: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A context [1 or B, M, D] or mask [1 or B, M] expanded to ``batch`` (no copy)."""
    if x is None:
        return None
    if x.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {x.shape[0]} but x has {batch}; give one per image, "
                         "or a single one (batch size 1) for all images")
    return x.expand(batch, *x.shape[1:])


class ClassifierFreeGuidance:
    """``model(x, t)`` with classifier-free guidance, for the samplers of ``course_lib.samplers``.

        out = out_uncond + w * (out_cond - out_uncond)     (Ho & Salimans 2022), w = ``guidance``

    model:          a text-conditional network called as model(x, t, context, context_mask)
    context:        the caption's tokens [B or 1, M, D]; context_mask [B or 1, M] bool (True = real token) or None
    uncond_context: the empty caption's tokens [1 or B, M, D] (same M as ``context``); uncond_mask likewise
    guidance:       the guidance weight w; 1 = conditional only, 0 = unconditional only

    For 0 < w != 1 both predictions come from one forward pass on the batch [x; x] with the
    contexts [cond; uncond] (twice the batch, one call). w == 1 and w == 0 call the model once on
    x alone with the one context needed: exactly the conditional (unconditional) prediction, at
    half the cost. Guidance is linear, so it works for eps-, x0- and v-prediction models alike.
    Put the model in eval mode first (dropout off).
    """

    def __init__(self, model: Callable[..., torch.Tensor], context: torch.Tensor,
                 context_mask: torch.Tensor | None = None, uncond_context: torch.Tensor | None = None,
                 uncond_mask: torch.Tensor | None = None, guidance: float = 1.0):
        if context is None or context.ndim != 3:
            shape = None if context is None else tuple(context.shape)
            raise ValueError(f"context must be the caption's tokens [B, M, D], got {shape}")
        if guidance != 1.0:
            if uncond_context is None:
                raise ValueError(f"guidance with w={guidance} needs the unconditional prediction: pass "
                                 "uncond_context=<the empty caption's encoding> [1, M, D] (or use guidance=1)")
            if uncond_context.ndim != 3 or uncond_context.shape[1:] != context.shape[1:]:
                raise ValueError(f"uncond_context must have shape [1 or B, M, D] = [1, {context.shape[1]}, "
                                 f"{context.shape[2]}] like context {tuple(context.shape)}, got "
                                 f"{tuple(uncond_context.shape)}; pad both captions to the same length M "
                                 "(and pass masks that mark the padding)")
        self.model, self.guidance = model, float(guidance)
        self.context, self.context_mask = context, context_mask
        self.uncond_context, self.uncond_mask = uncond_context, uncond_mask
        self._warned = False

    def _masks(self, batch: int, M: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cond = _as_batch("context_mask", self.context_mask, batch)
        uncond = _as_batch("uncond_mask", self.uncond_mask, batch)
        if (cond is None) != (uncond is None):  # one caption is padded: the other one's tokens are all real
            full = torch.ones(batch, M, dtype=torch.bool, device=device)
            cond, uncond = (full if cond is None else cond), (full if uncond is None else uncond)
        return cond, uncond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self._warned and getattr(self.model, "training", False):
            warnings.warn("classifier-free guidance with a model in training mode (dropout on): "
                          "call model.eval() first", stacklevel=2)
            self._warned = True
        B = x.shape[0]
        if self.guidance == 1.0:
            return self.model(x, t, self.context, self.context_mask)
        if self.guidance == 0.0:
            return self.model(x, t, self.uncond_context, self.uncond_mask)
        M = self.context.shape[1]
        cond = _as_batch("context", self.context, B)  # [B, M, D]
        uncond = _as_batch("uncond_context", self.uncond_context, B)  # [B, M, D]
        cond_mask, uncond_mask = self._masks(B, M, x.device)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        out = self.model(torch.cat([x, x]), torch.cat([t, t]),  # [2B, ...]: one pass, both predictions
                         torch.cat([cond, uncond.to(cond.dtype)]),
                         None if cond_mask is None else torch.cat([cond_mask, uncond_mask]))
        out_cond, out_uncond = out.chunk(2)  # [B, ...] each
        return guide(out_cond, out_uncond, self.guidance)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(guidance={self.guidance}, context={tuple(self.context.shape)})"


class EmbeddedGuidance:
    """``model(x, t)`` of a guidance-distilled model (Meng et al. 2023; Flux-dev's guidance embedding): the weight
    w is an input, and one forward pass gives what classifier-free guidance needs two for,

        out = model(x, t, context, context_mask, guidance=w)        ~ out_uncond + w (out_cond - out_uncond)

    model: a network with a guidance input (``TextToImageModel.guidance_embedded``); context [B or 1, M, D];
    guidance: w, the same for every image.
    """

    def __init__(self, model: Callable[..., torch.Tensor], context: torch.Tensor,
                 context_mask: torch.Tensor | None = None, guidance: float = 3.0):
        if context is None or context.ndim != 3:
            shape = None if context is None else tuple(context.shape)
            raise ValueError(f"context must be the caption's tokens [B, M, D], got {shape}")
        self.model, self.guidance = model, float(guidance)
        self.context, self.context_mask = context, context_mask

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = torch.full((x.shape[0],), self.guidance, device=x.device)  # [B]
        return self.model(x, t, self.context, self.context_mask, guidance=w)

    def __repr__(self) -> str:
        return f"EmbeddedGuidance(guidance={self.guidance}, context={tuple(self.context.shape)})"


class BakedGuidance:
    """``model(x, t, **inputs)`` of a student that learned its teacher's guided ODE at one weight w (chapter 7's
    MeanFlow, distilled at w = 3): one conditional pass, the guidance already in the weights,

        out = model(x, t, context, context_mask, **inputs)     ~ the teacher's out_uncond + w (out_cond - out_uncond)

    ``inputs``: what the sampler adds (MeanFlow's ``interval``). context [B or 1, M, D].
    """

    def __init__(self, model: Callable[..., torch.Tensor], context: torch.Tensor,
                 context_mask: torch.Tensor | None = None):
        if context is None or context.ndim != 3:
            shape = None if context is None else tuple(context.shape)
            raise ValueError(f"context must be the caption's tokens [B, M, D], got {shape}")
        self.model, self.context, self.context_mask = model, context, context_mask

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        return self.model(x, t, self.context, self.context_mask, **inputs)

    def __repr__(self) -> str:
        return f"BakedGuidance(context={tuple(self.context.shape)})"


def cfg_dropout(captions: Sequence[str], p: float, generator: torch.Generator | None = None,
                empty: str = "") -> list[str]:
    """Caption dropout for classifier-free guidance training: each caption becomes ``empty`` with probability p.

    Ho & Salimans (2022) train one network for both predictions by dropping the condition
    (p = 0.1 or 0.2 in their experiments); the empty caption "" is the unconditional input.
    Text in, text out; the draws come from ``generator`` (deterministic when seeded), else the
    global torch RNG.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p is a probability, got {p}")
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings (a batch), got a single string; wrap it in a list")
    device = generator.device if generator is not None else None
    drop = (torch.rand(len(captions), generator=generator, device=device) < p).tolist()  # [N] bools
    return [empty if d else c for c, d in zip(captions, drop)]
