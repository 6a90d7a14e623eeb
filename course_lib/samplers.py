"""Turning noise into data: ancestral DDPM sampling and DDIM.

Both samplers take any ``model(x, t) -> output`` (a UNet, or a wrapper such as
classifier-free guidance), whatever it predicts ("eps", "x0" or "v"; see
``parameterization.py``), and a ``NoiseSchedule``. Timesteps are 0-indexed (0..T-1).

* ``ddpm_sample`` (Ho et al. 2020, Algorithm 2): all T steps, each a draw from
      p(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_hat), sigma_t^2 I),
  the posterior q(x_{t-1} | x_t, x_0) with the predicted x0_hat in place of x_0, and
  sigma_t^2 = beta_tilde_t (default) or beta_t (the two extremes discussed in Sec. 3.2).
* ``ddim_sample`` (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12):
  any increasing subset tau_1 < ... < tau_S of the timesteps, and noise level eta:
      x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z
      sigma  = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * sqrt(1 - alpha_bar / alpha_bar_prev)
  eta = 0 is deterministic (an ODE solver); eta = 1 with all T steps is ancestral DDPM.

Call the samplers with the model in eval mode (dropout off). Randomness comes from
``generator`` if given (any device; draws are moved to the sampling device), else from the
global torch RNG.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .parameterization import check_parameterization, predict_x0_eps
from .schedules import NoiseSchedule

__all__ = ["SamplerOutput", "ddpm_sample", "ddim_sample", "ddim_timesteps", "SPACINGS"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerOutput:
    """What a sampler returns when ``return_trajectory=True``.

    sample:      [B, ...] the final x_0 (on the sampling device)
    trajectory:  [S+1, B, ...] x at every step, starting with x_T and ending with the sample
    x0_preds:    [S, B, ...] the predicted x_0 at every step
    timesteps:   [S] the integer timestep of each model call (decreasing)
    times:       [S+1] float64, the continuous time in [0, 1] of each ``trajectory`` entry: (t + 1) / T for
                 the state the model is called on at step t (the paper's step t + 1), 0 for the sample.
                 Every process of the course (``course_lib.processes``) puts noise at 1 and data at 0,
                 so trajectories of different processes share this axis.

    ``trajectory`` and ``x0_preds`` are kept on the CPU, for plotting and so that a long chain
    does not fill accelerator memory: S = 1000 steps of 16 CIFAR images take ~400 MB.
    """

    sample: torch.Tensor
    trajectory: torch.Tensor
    x0_preds: torch.Tensor
    timesteps: torch.Tensor
    times: torch.Tensor


def _randn(shape: Sequence[int], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Standard normal noise from ``generator`` (drawn on the generator's device, then moved)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def start_noise(shape, x_T, generator, device, dtype) -> torch.Tensor:
    """A sampler's starting point: ``x_T`` itself (checked against ``shape``), else fresh noise of ``shape``."""
    if x_T is not None:
        if shape is not None and tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
        return x_T.to(device=device if device is not None else x_T.device, dtype=dtype)
    if shape is None:
        raise ValueError("give either shape=(B, C, H, W) or a starting noise x_T")
    return _randn(shape, generator, device if device is not None else "cpu", dtype)


def warn_if_training(model) -> None:
    """Warn when a sampler is handed a module in training mode (dropout would randomise its predictions)."""
    if isinstance(model, nn.Module) and model.training:
        warnings.warn("sampling with a model in training mode (dropout on): call model.eval() first",
                      stacklevel=3)


def _predict(model: ModelFn, x: torch.Tensor, t: int, schedule: NoiseSchedule, parameterization: str,
             clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) at integer timestep t; with clipping, eps_hat is recomputed from the clipped x0_hat."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # [B]
    out = model(x, t_batch)
    x0, eps = predict_x0_eps(out.to(x.dtype), x, t_batch, schedule, parameterization)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        ab = float(schedule.alpha_bar[t])
        eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
    return x0, eps


def _finish(x, xs, x0s, ts, T, return_trajectory):
    if not return_trajectory:
        return x
    times = torch.tensor([(t + 1) / T for t in ts] + [0.0], dtype=torch.float64)  # [S+1], 1 -> 0
    return SamplerOutput(sample=x, trajectory=torch.stack(xs), x0_preds=torch.stack(x0s),
                         timesteps=torch.tensor(ts, dtype=torch.long), times=times)


@torch.no_grad()
def ddpm_sample(
    model: ModelFn,
    schedule: NoiseSchedule,
    shape: Sequence[int] | None = None,
    *,
    parameterization: str = "eps",
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    variance: str = "beta_tilde",
    clip_x0: bool = True,
    return_trajectory: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | SamplerOutput:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) through all T steps, t = T-1 .. 0:

        x0_hat, eps_hat = prediction at (x_t, t)          (x0_hat clipped to [-1, 1] if clip_x0)
        x_{t-1} = mu_tilde(x_t, x0_hat) + sigma_t z,   z ~ N(0, I), no noise at the last step
        mu_tilde = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x0_hat
                 + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t
        sigma_t^2 = beta_tilde_t (variance="beta_tilde") or beta_t (variance="beta")

    shape: (B, C, H, W) of the samples, or give ``x_T`` (then shape may be None).
    Returns the samples [B, C, H, W], or a ``SamplerOutput`` with the whole trajectory.
    """
    check_parameterization(parameterization)
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")
    warn_if_training(model)
    x = start_noise(shape, x_T, generator, device, dtype)
    sigma2 = schedule.posterior_variance if variance == "beta_tilde" else schedule.betas  # [T]
    xs, x0s, ts = ([x.cpu()] if return_trajectory else []), [], []
    for t in tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
        x0, _ = _predict(model, x, t, schedule, parameterization, clip_x0)
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean, _, _ = schedule.q_posterior(x0, x, t_batch)
        if t > 0:
            x = mean + float(sigma2[t]) ** 0.5 * _randn(x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        if return_trajectory:
            xs.append(x.cpu())
            x0s.append(x0.cpu())
            ts.append(t)
    return _finish(x, xs, x0s, ts, schedule.T, return_trajectory)


#: how :func:`ddim_timesteps` spaces its grid (diffusers calls this ``timestep_spacing``)
SPACINGS = ("linspace", "trailing")


def ddim_timesteps(T: int, num_steps: int, spacing: str = "linspace") -> list[int]:
    """``num_steps`` timesteps in 0..T-1, in *decreasing* order, starting at T-1.

    ``"linspace"`` (the course's default, chapter 1): evenly spaced with both ends included, T-1, ..., 0; the last
    step evaluates the model at t = 0, where x_t is already the data up to noise of std sqrt(beta_1) ~ 0.01, and
    moves x almost nowhere: one of ``num_steps`` network evaluations is nearly wasted.
    ``"trailing"`` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2;
    diffusers' ``timestep_spacing="trailing"``): T - 1 - k T / num_steps for k = 0 .. num_steps - 1, i.e.
    T-1, ..., T/num_steps - 1; the grid ends one stride above 0 and the last step jumps from there to x_0.
    ``num_steps = T`` gives every step (T-1, ..., 0) either way.
    """
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be between 1 and T={T}, got {num_steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if num_steps == 1:
        return [T - 1]
    if spacing == "trailing":
        steps = (T - torch.arange(num_steps, dtype=torch.float64) * T / num_steps).round().long() - 1
        return sorted(set(steps.tolist()), reverse=True)
    steps = torch.linspace(0, T - 1, num_steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(steps), reverse=True)


@torch.no_grad()
def ddim_sample(
    model: ModelFn,
    schedule: NoiseSchedule,
    shape: Sequence[int] | None = None,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    parameterization: str = "eps",
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    return_trajectory: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    timesteps: Sequence[int] | None = None,
    spacing: str = "linspace",
) -> torch.Tensor | SamplerOutput:
    """DDIM sampling (Song et al. 2021, eq. 12) over ``num_steps`` timesteps spaced by ``spacing``
    (:func:`ddim_timesteps`: "linspace", both ends included, or "trailing").

    From tau_i to tau_{i-1} (alpha_bar_prev = 1 after the last step, i.e. x_0):

        x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z
        sigma  = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_prev)

    eta = 0: deterministic; eta = 1 and num_steps = T: the same chain as ``ddpm_sample``.
    ``timesteps`` (decreasing) overrides the evenly spaced choice.
    Returns the samples, or a ``SamplerOutput`` with the whole trajectory.
    """
    check_parameterization(parameterization)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    warn_if_training(model)
    taus = list(timesteps) if timesteps is not None else ddim_timesteps(schedule.T, num_steps, spacing)
    if any(b >= a for a, b in zip(taus, taus[1:])) or taus[0] >= schedule.T or taus[-1] < 0:
        raise ValueError(f"timesteps must be strictly decreasing within 0..{schedule.T - 1}, got {taus}")
    x = start_noise(shape, x_T, generator, device, dtype)
    alpha_bar = schedule.alpha_bar.double()  # [T], coefficients in float64
    xs, x0s, ts = ([x.cpu()] if return_trajectory else []), [], []
    for i, t in enumerate(tqdm(taus, desc="DDIM", disable=not progress, leave=False)):
        x0, eps = _predict(model, x, t, schedule, parameterization, clip_x0)
        ab = float(alpha_bar[t])
        ab_prev = float(alpha_bar[taus[i + 1]]) if i + 1 < len(taus) else 1.0
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        dir_coef = max(1 - ab_prev - sigma**2, 0.0) ** 0.5
        x = ab_prev**0.5 * x0 + dir_coef * eps
        if sigma > 0:
            x = x + sigma * _randn(x.shape, generator, x.device, x.dtype)
        if return_trajectory:
            xs.append(x.cpu())
            x0s.append(x0.cpu())
            ts.append(t)
    return _finish(x, xs, x0s, ts, schedule.T, return_trajectory)
