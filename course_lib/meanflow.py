"""MeanFlow: one-step generation by learning the average velocity (Geng et al. 2025, "Mean Flows for One-step
Generative Modeling"; chapter 7).

Rectified flow (chapter 5) learns the instantaneous velocity v(z_t, t) of the path z_t = (1 - t) x_0 + t eps
(data at t = 0, noise at t = 1) and integrates it step by step. MeanFlow learns the **average velocity** over an
interval [r, t] along the ODE's trajectory,

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds,       so that  z_r = z_t - (t - r) u(z_t, r, t)

exactly, for any r < t: one step from noise, z_0 = z_1 - u(z_1, 0, 1), is the whole ODE. Differentiating
(t - r) u(z_t, r, t) = integral_r^t v ds in t (r held fixed) gives the **MeanFlow identity**

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),      d/dt u = v . grad_z u + d_t u,

and with the conditional velocity v_t = eps - x_0 in place of v (as flow matching does) a regression target:

    u_tgt = v_t - (t - r) (v_t . grad_z u_theta + d_t u_theta),      L = || u_theta(z_t, r, t) - sg(u_tgt) ||^2

sg: stop-gradient (the target uses the network but is not differentiated through). The total derivative is one
**Jacobian-vector product**, jvp(u_theta, (z_t, r, t), (v_t, 0, 1)), a forward pass carrying tangents
(``torch.func.jvp``): about the cost of a second forward pass, and no second-order backward. At r = t the target
is v_t and the loss is flow matching's. How often r = t is a setting: the paper's best on ImageNet was r = t for
75 % of each batch (its CIFAR-10 code: 25 %); this module's default is ImageNet's. The paper also weights each
example by 1 / (||u - u_tgt||^2 + c)^p, sg on the weight ("adaptive"; p = 1 best in its ablation, c e.g. 1e-3);
the network reads t and the interval t - r, the embedding the paper found best.

PyTorch's fused attention kernels (``scaled_dot_product_attention``) have no forward-mode derivative:
:func:`course_lib.attention.plain_attention` switches a model's attention layers to the written-out einsum path for the JVP.

Parts, kept apart as in ``facebookresearch/flow_matching``: the exact target on Gaussian data
(:func:`gaussian_average_velocity`, the toy's closed form), the target (:func:`meanflow_target`), the loss
(:func:`meanflow_loss`) and the sampler (:func:`meanflow_sample`). A model is called ``model(z, r, t)`` with r, t
in [0, 1] (the networks scale them by 1000, as the course's times).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import plain_attention
from .captions import random_captions
from .flow import average_velocity_sample
from .guidance import cfg_dropout
from .guidance_distillation import teacher_guided_velocity
from .processes import RectifiedFlowProcess
from .text import TextContext

__all__ = ["gaussian_average_velocity", "meanflow_target", "sample_interval", "meanflow_loss",
           "meanflow_sample", "TextAverageVelocity", "text_average_velocity", "meanflow_distillation_loss"]

AverageVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # u(z [B, ...], r [B], t [B])


def _per_item(t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    """A time, a number or [B], shaped [B, 1, ...] to broadcast over z."""
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(-1)
    return t.reshape(-1, *[1] * (z.ndim - 1))


def gaussian_average_velocity(z_t: torch.Tensor, r: torch.Tensor | float, t: torch.Tensor | float,
                              mean: torch.Tensor | float, std: float) -> torch.Tensor:
    """The exact average velocity u(z_t, r, t) when the data are N(mean, std^2 I) and the noise N(0, I).

    The marginal of z_t is N(m_t, sigma_t^2 I) with m_t = (1 - t) mean and sigma_t^2 = (1 - t)^2 std^2 + t^2, and
    the probability-flow ODE keeps each point's standardised position: z_s = m_s + sigma_s xi with
    xi = (z_t - m_t) / sigma_t for every s. So z_r is known in closed form and u = (z_t - z_r) / (t - r);
    at r = t it is the instantaneous velocity dz/dt = -mean + sigma_t' xi.
    """
    mean = torch.as_tensor(mean, dtype=z_t.dtype, device=z_t.device)
    t, r = _per_item(t, z_t), _per_item(r, z_t)

    def sigma(s):
        return ((1 - s) ** 2 * std ** 2 + s ** 2).sqrt()

    xi = (z_t - (1 - t) * mean) / sigma(t)  # the point's standardised position, the same all along its path
    gap = t - r
    same = gap.abs() < 1e-6
    z_r = (1 - r) * mean + sigma(r) * xi
    d_sigma = (t - (1 - t) * std ** 2) / sigma(t)  # sigma_t' at r = t
    instantaneous = -mean + d_sigma * xi
    return torch.where(same, instantaneous, (z_t - z_r) / torch.where(same, torch.ones_like(gap), gap))


def meanflow_target(model: AverageVelocity, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                    v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u_theta(z_t, r, t) and the MeanFlow target sg(v - (t - r) d/dt u_theta), d/dt u_theta = jvp with tangents
    (v, 0, 1) for (z, r, t). Returns (u [B, ...] with its graph, u_tgt [B, ...] detached). r, t: [B].

    Where r = t the target is v itself, whatever the derivative: those rows take a plain forward pass and only the
    others the JVP (about twice a forward pass), when the model can be called on a part of the batch: a module (a
    toy network), or a :class:`TextAverageVelocity` (its ``rows``). The result is the same as one JVP over the
    whole batch (tests/test_meanflow.py)."""
    moving = t != r  # [B]: the rows whose interval has a length
    if isinstance(model, TextAverageVelocity):
        part = model.rows
    elif isinstance(model, nn.Module):
        def part(index):  # a network without per-row state: any part of the batch
            return model
    else:
        part = None
    if part is None or bool(moving.all()) or not bool(moving.any()):
        u, du_dt = torch.func.jvp(model, (z_t, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        return u, (v - _per_item(t - r, z_t) * du_dt).detach()
    still, moves = (~moving).nonzero().squeeze(1), moving.nonzero().squeeze(1)
    u_still = part(still)(z_t[still], r[still], t[still])  # r = t: flow matching's rows
    u_moves, du_dt = torch.func.jvp(part(moves), (z_t[moves], r[moves], t[moves]),
                                    (v[moves], torch.zeros_like(r[moves]), torch.ones_like(t[moves])))
    order = torch.argsort(torch.cat([still, moves]))  # back to the batch's order
    u = torch.cat([u_still, u_moves])[order]
    u_tgt = torch.cat([v[still], v[moves] - _per_item(t[moves] - r[moves], du_dt) * du_dt])[order]
    return u, u_tgt.detach()


def sample_interval(batch: int, flow_ratio: float = 0.75, logit_mean: float = -0.4, logit_std: float = 1.0,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t) for a batch: two logit-normal times sorted so that r <= t, and r = t for a share ``flow_ratio`` of the
    batch (plain flow matching there). The defaults are the paper's ImageNet setting (its official code:
    logit-normal (-0.4, 1.0), 75 % with r = t); its CIFAR-10 code draws wider times and r = t for 25 %."""
    if not 0.0 <= flow_ratio <= 1.0:
        raise ValueError(f"flow_ratio={flow_ratio} is a share of the batch, in [0, 1]")
    times = torch.sigmoid(logit_mean + logit_std * torch.randn(2, batch, device=device))  # [2, B]
    r, t = times.min(dim=0).values, times.max(dim=0).values
    same = torch.rand(batch, device=device) < flow_ratio
    return torch.where(same, t, r), t


def meanflow_loss(model: AverageVelocity, x0: torch.Tensor, noise: torch.Tensor | None = None, *,
                  flow_ratio: float = 0.75, adaptive_p: float = 1.0, adaptive_c: float = 1e-3,
                  velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The MeanFlow loss of one batch x0 [B, ...] (noise, r and t from torch's global RNG): per example
    ||u_theta - sg(u_tgt)||^2 summed over its numbers, divided by sg(that + c)^p (the paper's adaptive weight;
    p = 0 is the plain squared error), averaged over the batch.

    ``velocity``: v(z_t, t) to use instead of the conditional velocity eps - x0, e.g. a frozen teacher's guided
    velocity (:func:`meanflow_distillation_loss`): u then learns the average velocity of the teacher's ODE."""
    noise = torch.randn_like(x0) if noise is None else noise
    r, t = sample_interval(len(x0), flow_ratio, device=x0.device)
    z_t = (1 - _per_item(t, x0)) * x0 + _per_item(t, x0) * noise  # [B, ...]
    v = noise - x0 if velocity is None else velocity(z_t, t).detach()
    u, u_tgt = meanflow_target(model, z_t, r, t, v)
    error = (u.float() - u_tgt.float()).pow(2).flatten(1).sum(dim=1)  # [B]
    weight = (error.detach() + adaptive_c).pow(adaptive_p)
    return (error / weight).mean()


@torch.no_grad()
def meanflow_sample(model: AverageVelocity, z1: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
    """From noise z1 [B, ...] to data in ``num_steps`` average-velocity steps on a uniform grid 1 = t_0 > ... > 0:
    z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, t_{i+1}, t_i). One step: z_0 = z_1 - u(z_1, 0, 1).
    (``course_lib.flow.average_velocity_sample`` with ``model(z, r, t)`` called at r = t - interval.)"""
    return average_velocity_sample(lambda z, t, interval: model(z, t - interval, t), x_T=z1, num_steps=num_steps,
                                   device=z1.device, dtype=z1.dtype)


class TextAverageVelocity:
    """u(z, r, t) of a text-to-image model with an interval input (``MMDiTConfig(interval_embed=True)``), for the
    captions ``context`` (a ``TextContext``, one caption per row): model(z, s t, context, interval=s (t - r)), s the
    process's time scale. ``rows(index)``: the same for a part of the batch (its captions)."""

    def __init__(self, model: nn.Module, context, time_scale: float = 1000.0):
        self.model, self.context, self.time_scale = model, context, time_scale

    def __call__(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.time_scale
        return self.model(z, s * t, self.context.tokens, self.context.mask, interval=s * (t - r))

    def rows(self, index: torch.Tensor) -> "TextAverageVelocity":
        part = TextContext(self.context.tokens[index], self.context.mask[index])
        return TextAverageVelocity(self.model, part, self.time_scale)


def text_average_velocity(model: nn.Module, context, time_scale: float = 1000.0) -> TextAverageVelocity:
    """u(z, r, t) of a text-to-image model with an interval input, for the captions ``context``
    (:class:`TextAverageVelocity`)."""
    return TextAverageVelocity(model, context, time_scale)


def meanflow_distillation_loss(student: nn.Module, teacher: nn.Module, process: RectifiedFlowProcess,
                               x0: torch.Tensor, labels: torch.Tensor, guidance: float = 3.0, p_uncond: float = 0.0,
                               flow_ratio: float = 0.75, adaptive_p: float = 1.0) -> torch.Tensor:
    """MeanFlow on a text-to-image flow's latents, with a frozen teacher's guided velocity as v (chapter 7):

        v(z_t, t) = v_T(z_t, t, "") + w (v_T(z_t, t, c) - v_T(z_t, t, "")),   u_tgt = v - (t - r) d/dt u_S

    so that one step of the student, z_0 = z_1 - u_S(z_1, 0, 1 | c), aims at where the teacher's guided ODE
    takes z_1. Captions come from ``labels`` (dropped with ``p_uncond``); the JVP runs on the plain attention
    path. ``student``: a ``TextToImageModel`` with an interval input, started from the teacher's weights."""
    B = len(x0)
    captions = cfg_dropout(random_captions(labels), p_uncond)
    context, teacher_context = student.encode(captions), teacher.encode(captions)
    uncond = teacher.encode([""] * B)
    w = torch.full((B,), float(guidance), device=x0.device)

    def velocity(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return teacher_guided_velocity(teacher, z_t, process.model_time(t), teacher_context, uncond, w)

    with plain_attention(student):
        return meanflow_loss(text_average_velocity(student, context, process.time_scale), x0,
                             flow_ratio=flow_ratio, adaptive_p=adaptive_p, velocity=velocity)
