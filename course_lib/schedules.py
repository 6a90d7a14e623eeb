"""Noise schedules and the forward process q(x_t | x_0).

The forward (noising) process of a diffusion model (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models", eq. 2 and 4) adds Gaussian noise in ``T`` small steps:

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I)

and, because Gaussians compose, any step can be reached from the data in one jump:

    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s <= t} alpha_s
    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    x_t          = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

The signal-to-noise ratio of x_t is ``snr_t = alpha_bar_t / (1 - alpha_bar_t)`` (Kingma et al.
2021, "Variational Diffusion Models"); every schedule makes it fall from large to ~0.

Timestep convention
-------------------
Timesteps are **0-indexed integers** ``t = 0 .. T-1``. Index ``t`` here is the paper's step
``t + 1``: ``t = 0`` is the least noisy latent x_1 (alpha_bar_0 = 1 - beta_0, close to 1) and
``t = T-1`` is x_T (alpha_bar close to 0). ``alpha_bar_prev[t]`` is alpha_bar of the step
before, with ``alpha_bar_prev[0] = 1`` standing for the clean data x_0.

Schedules
---------
* ``linear``: beta rises linearly from 1e-4 to 0.02 over T = 1000 steps (Ho et al. 2020).
  For other T both ends are scaled by 1000 / T, as in Nichol & Dhariwal's code, so that a
  shorter chain still ends at (almost) pure noise (clipped at 0.999 for T < 20); at
  T = 1000 it is exactly Ho et al.'s.
* ``cosine``: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),
  s = 0.008, betas clipped at 0.999 (Nichol & Dhariwal 2021, "Improved Denoising Diffusion
  Probabilistic Models", eq. 17). It destroys information more slowly than the linear one.

All schedule arithmetic is done in float64 and stored as float32 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "linear_betas",
    "cosine_betas",
    "NoiseSchedule",
    "make_schedule",
    "gather",
    "SCHEDULES",
]


# --------------------------------------------------------------------------- beta schedules


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 max_beta: float = 0.999) -> torch.Tensor:
    """Ho et al. (2020): beta_t linear from ``beta_start`` to ``beta_end``; float64 [T].

    For ``T != 1000`` both ends are multiplied by ``1000 / T`` (as in Nichol & Dhariwal's
    code) so the chain still reaches alpha_bar_T ~ 0; for T < 20 that would push betas past
    1, so they are clipped at ``max_beta``.
    """
    _check_T(T)
    scale = 1000.0 / T
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17: betas from a cosine-shaped alpha_bar; float64 [T].

        f(u)        = cos^2( (u / T + s) / (1 + s) * pi / 2 )
        alpha_bar_u = f(u) / f(0)                    (u = 0 .. T, continuous step number)
        beta_t      = min(1 - alpha_bar_{t+1} / alpha_bar_t, max_beta)   for t = 0 .. T-1

    The clip at 0.999 avoids a singularity at the very end, where f(T) = 0.
    """
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]  # [T+1], alpha_bar[0] = 1 exactly
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=0.0, max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T (the number of diffusion steps) must be an integer >= 2, got {T!r}")


# --------------------------------------------------------------------------- gathering


def gather(values: torch.Tensor, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    """Pick ``values[t]`` for a batch of timesteps and shape it to broadcast over images.

    values: [T] per-timestep quantity;  t: [B] integer timesteps in 0..T-1.
    Returns [B, 1, 1, 1] for ``ndim = 4`` (in general [B] followed by ``ndim - 1`` ones),
    on ``t``'s device, so that ``gather(alpha_bar, t) * x`` works for x of shape [B, C, H, W].
    """
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"timesteps must be an integer tensor (0..T-1), got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got {tuple(t.shape)}")
    T = values.shape[0]
    # The range check reads t's values, which on an accelerator would stall the pipeline on every
    # call, so it runs on CPU tensors only (there a bad index is the usual notebook mistake).
    if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"timesteps must lie in 0..{T - 1}, got min {int(t.min())}, max {int(t.max())}")
    out = values.to(t.device)[t]  # [B]
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))  # [B, 1, 1, 1]


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Every per-timestep quantity of a discrete diffusion process, as float32 tensors [T].

    Build one with ``NoiseSchedule.linear(T)``, ``NoiseSchedule.cosine(T)``,
    ``make_schedule(name, T)`` or ``NoiseSchedule.from_betas(betas)``. Timesteps are
    0-indexed (see the module docstring).

    Fields (all [T]):
        betas              beta_t
        alphas             alpha_t = 1 - beta_t
        alpha_bar          prod_{s<=t} alpha_s
        alpha_bar_prev     alpha_bar_{t-1}, with 1 for t = 0
        snr                alpha_bar_t / (1 - alpha_bar_t)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar   the forward-process coefficients (from float64,
                           so 1 - alpha_bar keeps its precision near t = 0)
        posterior_variance beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        posterior_log_variance_clipped  log beta_tilde_t, with t = 0 replaced by t = 1 (beta_tilde_0 = 0)
        posterior_mean_coef_x0   beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
        posterior_mean_coef_xt   (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    snr: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor
    name: str = "custom"

    # ---- constructors

    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        """All derived quantities from betas [T] (computed in float64, stored as float32)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ValueError(f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie strictly between 0 and 1")
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        snr = alpha_bar / (1.0 - alpha_bar)
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde)   (Ho et al. 2020, eq. 6-7)
        posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        coef_x0 = betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar)
        coef_xt = (1.0 - alpha_bar_prev) * alphas.sqrt() / (1.0 - alpha_bar)
        f32 = lambda a: a.to(torch.float32)  # noqa: E731
        return cls(
            betas=f32(betas),
            alphas=f32(alphas),
            alpha_bar=f32(alpha_bar),
            alpha_bar_prev=f32(alpha_bar_prev),
            snr=f32(snr),
            sqrt_alpha_bar=f32(alpha_bar.sqrt()),
            sqrt_one_minus_alpha_bar=f32((1.0 - alpha_bar).sqrt()),
            posterior_variance=f32(posterior_variance),
            posterior_log_variance_clipped=f32(posterior_log_variance_clipped),
            posterior_mean_coef_x0=f32(coef_x0),
            posterior_mean_coef_xt=f32(coef_xt),
            name=name,
        )

    @classmethod
    def linear(cls, T: int = 1000) -> "NoiseSchedule":
        """Ho et al. (2020): betas linear in [1e-4, 0.02] (scaled by 1000/T when T != 1000)."""
        return cls.from_betas(linear_betas(T), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021): cosine alpha_bar with s = 0.008, betas clipped at 0.999."""
        return cls.from_betas(cosine_betas(T), name="cosine")

    # ---- basic facts

    @property
    def T(self) -> int:
        """Number of diffusion steps; valid timesteps are 0 .. T-1."""
        return int(self.betas.shape[0])

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T})"

    # ---- the forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in one jump (Ho et al. 2020, eq. 4):

            x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps

        x0: [B, ...] data;  t: [B] integer timesteps;  eps: noise like x0 (drawn with the
        global RNG if None). Returns x_t with x0's shape and dtype.
        """
        if eps is None:
            eps = torch.randn_like(x0)
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
        _check_batch(x0, t)
        t = t.to(x0.device)
        a = gather(self.sqrt_alpha_bar, t, x0.ndim).to(x0.dtype)  # [B, 1, 1, 1]
        b = gather(self.sqrt_one_minus_alpha_bar, t, x0.ndim).to(x0.dtype)  # [B, 1, 1, 1]
        return a * x0 + b * eps

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7):

            mean = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_0
                 + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) * x_t
            var  = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

        Returns (mean [B, ...], var [B, 1, 1, 1], log_var_clipped [B, 1, 1, 1]).
        """
        _check_batch(x_t, t)
        t = t.to(x_t.device)
        c0 = gather(self.posterior_mean_coef_x0, t, x_t.ndim).to(x_t.dtype)
        ct = gather(self.posterior_mean_coef_xt, t, x_t.ndim).to(x_t.dtype)
        mean = c0 * x0 + ct * x_t
        var = gather(self.posterior_variance, t, x_t.ndim).to(x_t.dtype)
        log_var = gather(self.posterior_log_variance_clipped, t, x_t.ndim).to(x_t.dtype)
        return mean, var, log_var

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every tensor on ``device`` (gathering also moves values on the fly)."""
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return NoiseSchedule(**fields)


def make_schedule(name: str = "linear", T: int = 1000) -> NoiseSchedule:
    """The schedule called ``name`` ("linear" or "cosine") with ``T`` steps."""
    key = name.strip().lower()
    if key not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return NoiseSchedule.from_betas(SCHEDULES[key](T), name=key)


def _check_batch(x: torch.Tensor, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0]:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"t must be a tensor of shape [B] = [{x.shape[0]}] (one timestep per example), got {shape}"
        )
