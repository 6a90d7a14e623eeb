"""Guidance distillation: one network pass per step at any guidance weight (chapter 7).

A text-to-image flow guided by classifier-free guidance (Ho & Salimans 2022; chapter 3) runs its network twice
per step, once with the caption c and once with the empty caption:

    v_w(x_t, t, c) = v(x_t, t, "") + w (v(x_t, t, c) - v(x_t, t, ""))

Meng et al. (2023, "On Distillation of Guided Diffusion Models", stage one) train a student that takes w as an
input and predicts that combination in one pass; Flux-dev ships such a student (its ``guidance_in`` embedding,
``MMDiTConfig(guidance_embed=True)`` here). The objective, with the teacher frozen (sg: no gradient):

    x_t = (1 - t) x_0 + t eps,   w ~ U[w_min, w_max]
    L = E || v_S(x_t, t, c, w) - sg[ v_T(x_t, t, "") + w (v_T(x_t, t, c) - v_T(x_t, t, "")) ] ||^2

The student starts as a copy of the teacher whose guidance embedding is zero-initialised, so at step 0 it
predicts the teacher's conditional velocity (w = 1) whatever w it is given; training teaches it what w means.
Only the teacher's predictions are targets: no data term, so the student can be no better than its teacher's
guided sampler, and is cheaper by half.
"""

from __future__ import annotations

import torch
from torch import nn

from .captions import random_captions
from .guidance import cfg_dropout, guide
from .processes import RectifiedFlowProcess

__all__ = ["teacher_guided_velocity", "sample_guidance", "guidance_distillation_loss"]


@torch.no_grad()
def teacher_guided_velocity(teacher: nn.Module, x_t: torch.Tensor, t: torch.Tensor, context, uncond,
                            w: torch.Tensor) -> torch.Tensor:
    """The frozen teacher's guided velocity at (x_t, t) for captions ``context`` and the empty ``uncond`` (both
    ``TextContext``s of B tokens), one pass on the batch [x_t; x_t] as ``ClassifierFreeGuidance`` does.
    t: the model's time [B] (``process.model_time``); w [B]."""
    out = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context.tokens, uncond.tokens]),
                  torch.cat([context.mask, uncond.mask]))  # [2B, C, H, W]
    v_cond, v_uncond = out.chunk(2)
    return guide(v_cond, v_uncond, w)  # v_uncond + w (v_cond - v_uncond), w per image


def sample_guidance(batch: int, w_range: tuple[float, float], device: torch.device | str | None = None) -> torch.Tensor:
    """Guidance weights w ~ U[w_min, w_max], one per image [B] (from torch's global RNG)."""
    low, high = w_range
    if not 0 <= low <= high:
        raise ValueError(f"w_range=({low}, {high}) must satisfy 0 <= w_min <= w_max")
    return low + (high - low) * torch.rand(batch, device=device)


def guidance_distillation_loss(student: nn.Module, teacher: nn.Module, process: RectifiedFlowProcess,
                               x0: torch.Tensor, labels: torch.Tensor, w_range: tuple[float, float] = (1.0, 5.0),
                               p_uncond: float = 0.0) -> torch.Tensor:
    """The guidance-distillation loss of one batch (module docstring): latents x0 [B, C, H, W] and class labels
    [B]; captions drawn per image (dropped to "" with probability ``p_uncond``), then t, eps and w, all from
    torch's global RNG. ``student`` and ``teacher`` are ``TextToImageModel``s; the student reads w
    (``guidance_embedded``), the teacher is frozen. Returns a scalar float32 tensor."""
    if not getattr(student, "guidance_embedded", False):
        raise ValueError("the student needs a guidance input: Text2ImageConfig with MMDiTConfig(guidance_embed=True)")
    if len(labels) != len(x0):
        raise ValueError(f"{len(x0)} latents but {len(labels)} labels; pass one label per latent")
    B = len(x0)
    captions = cfg_dropout(random_captions(labels), p_uncond)
    t = process.sample_time(B, x0.device)
    noise = torch.randn_like(x0)
    w = sample_guidance(B, w_range, x0.device)
    x_t = process.corrupt(x0, t, noise)  # [B, C, H, W]
    target = teacher_guided_velocity(teacher, x_t, process.model_time(t), teacher.encode(captions),
                                     teacher.encode([""] * B), w)
    context = student.encode(captions)
    prediction = student(x_t, process.model_time(t), context.tokens, context.mask, guidance=w)
    return (prediction.float() - target.float()).pow(2).mean()
