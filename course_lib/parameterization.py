"""What the network predicts: epsilon, x0 or v, the exact conversions, and the training loss.

Given x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, a network can be asked for any of
three targets; each determines the other two from x_t:

* ``"eps"``: the noise eps (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").
* ``"x0"``:  the clean data x_0.
* ``"v"``:   the velocity v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
             (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
             Models", Sec. 4 and Appendix D).

Writing a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar) (so a^2 + b^2 = 1):

    x_0 = (x_t - b eps) / a          eps = (x_t - a x_0) / b
    v   = a eps - b x_0              x_0 = a x_t - b v          eps = b x_t + a v

The conversion functions take ``alpha_bar`` already shaped to broadcast against x_t
(e.g. [B, 1, 1, 1] from ``schedules.gather``). ``x0`` from ``eps`` divides by a, which is tiny
at the last timesteps: that is why samplers usually clip the predicted x_0.

The training loss (Ho et al. 2020, Algorithm 1, "L_simple") is the plain mean squared error
between the network output and its target, with t ~ Uniform{0..T-1} and eps ~ N(0, I).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .schedules import NoiseSchedule, gather

__all__ = [
    "PARAMETERIZATIONS",
    "check_parameterization",
    "eps_to_x0",
    "x0_to_eps",
    "eps_x0_to_v",
    "v_to_x0",
    "v_to_eps",
    "target_for",
    "predict_x0_eps",
    "diffusion_loss",
]

PARAMETERIZATIONS = ("eps", "x0", "v")


def check_parameterization(parameterization: str) -> str:
    """Return ``parameterization`` if it is one of "eps", "x0", "v"; raise a clear error otherwise."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}"
        )
    return parameterization


def _ab(alpha_bar: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) in ``like``'s dtype and device."""
    alpha_bar = torch.as_tensor(alpha_bar).to(device=like.device, dtype=like.dtype)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def eps_to_x0(eps: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    a, b = _ab(alpha_bar, x_t)
    return (x_t - b * eps) / a


def x0_to_eps(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar)."""
    a, b = _ab(alpha_bar, x_t)
    return (x_t - a * x0) / b


def eps_x0_to_v(eps: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)."""
    a, b = _ab(alpha_bar, x0)
    return a * eps - b * x0


def v_to_x0(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v."""
    a, b = _ab(alpha_bar, x_t)
    return a * x_t - b * v


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v."""
    a, b = _ab(alpha_bar, x_t)
    return b * x_t + a * v


def target_for(
    parameterization: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | None = None
) -> torch.Tensor:
    """The regression target for the network: eps, x0, or v (v needs ``alpha_bar``, broadcastable)."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if alpha_bar is None:
        raise ValueError("the 'v' target needs alpha_bar (shaped to broadcast against x0)")
    return eps_x0_to_v(eps, x0, alpha_bar)


def predict_x0_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    parameterization: str = "eps",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into (x0_hat, eps_hat), whatever the network predicts.

    model_output, x_t: [B, ...];  t: [B] integer timesteps. Returns two tensors like x_t.
    """
    check_parameterization(parameterization)
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model output has shape {tuple(model_output.shape)} but x_t has {tuple(x_t.shape)}; "
            "the network must predict one value per input value"
        )
    model_output = model_output.to(x_t.dtype)
    ab = gather(schedule.alpha_bar, t.to(x_t.device), x_t.ndim)  # [B, 1, 1, 1]
    if parameterization == "eps":
        eps = model_output
        return eps_to_x0(eps, x_t, ab), eps
    if parameterization == "x0":
        x0 = model_output
        return x0, x0_to_eps(x0, x_t, ab)
    v = model_output
    return v_to_x0(v, x_t, ab), v_to_eps(v, x_t, ab)


def diffusion_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    parameterization: str = "eps",
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The simple diffusion loss (Ho et al. 2020, Algorithm 1 / eq. 14), for any parameterization:

        t ~ Uniform{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        L = mean || target - model(x_t, t) ||^2,   target = eps, x_0 or v

    x0: [B, C, H, W] clean data (in [-1, 1] for images). ``t`` and ``noise`` default to fresh
    draws from the **global** torch RNG (so a training loop that seeds the RNG each step
    resumes exactly). Returns a scalar float32 tensor.
    """
    check_parameterization(parameterization)
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (B,), device=x0.device)  # [B]
    if noise is None:
        noise = torch.randn_like(x0)  # [B, C, H, W]
    x_t = schedule.q_sample(x0, t, noise)
    ab = gather(schedule.alpha_bar, t.to(x0.device), x0.ndim)
    target = target_for(parameterization, x0, noise, ab)
    prediction = model(x_t, t)
    if prediction.shape != target.shape:
        raise ValueError(
            f"model output has shape {tuple(prediction.shape)}, expected {tuple(target.shape)} (same as x0)"
        )
    return F.mse_loss(prediction.float(), target.float())
