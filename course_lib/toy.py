"""Toy data whose every quantity is known exactly: Gaussian mixtures, their scores, and the best
possible denoiser and flow velocity, in closed form.

With such data a sampler can be run with a *perfect* model, so that every error seen is the
sampler's (chapter 1: few-step DDIM samples come out too narrow), and a trained network can be
compared with the function it should have learned (chapter 5: the rectified-flow velocity).

A mixture of K Gaussians with diagonal covariances in D dimensions,

    p(x) = sum_k w_k N(x; mu_k, diag(s_k^2)),

stays a mixture of Gaussians under both forward processes of the course, because a Gaussian plus
independent Gaussian noise is Gaussian:

* DDPM (Ho et al. 2020), x_t = a x_0 + b eps with a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar):
  component k becomes N(a mu_k, a^2 s_k^2 + b^2) with the same weight w_k;
* rectified flow (Liu et al. 2022; data at t = 0 and noise at t = 1, as in SD3, Esser et al. 2024),
  x_t = (1 - t) x_0 + t eps: component k becomes N((1 - t) mu_k, (1 - t)^2 s_k^2 + t^2).

The network targets are then conditional expectations with closed forms:

* the noise prediction (Tweedie's formula, Efron 2011; Song et al. 2021):
  E[eps | x_t] = -b grad log p_t(x_t) = -sqrt(1 - alpha_bar) score_t(x_t);
* the velocity of rectified flow, E[eps - x_0 | x_t], the average over the components' posterior
  weights r_k(x_t) of each Gaussian component's own linear regression.

:func:`gaussian_eps_model` wraps the one-dimensional, one-component case as a ``model(x, t)`` for the
samplers of ``course_lib.samplers``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .schedules import NoiseSchedule, gather

__all__ = ["GaussianMixture", "eight_gaussians", "gaussian_eps_model"]


def _per_item(value: float | torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """A number, a 0-d tensor, [N] or [N, 1, ...] -> [1 or N, 1, 1] in x's dtype, to broadcast over [N, K, D]."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(-1)
    if len(v) not in (1, len(x)):
        raise ValueError(f"{name} must be one number or one per item ({len(x)}), got {len(v)} values")
    return v[:, None, None]  # [1 or N, 1, 1]


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, diag(s_k^2)) in D dimensions.

    weights [K] (normalised here; non-negative, not all zero); means [K, D]; stds [K] (isotropic:
    s_k the same in every dimension), [K, D] (diagonal) or one number for all. Everything is
    computed in the dtype and on the device of the points ``x`` it is asked about.
    """

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: Sequence | torch.Tensor,
                 stds: float | Sequence | torch.Tensor):
        means = torch.as_tensor(means, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D] (one row per component), got shape {tuple(means.shape)}; "
                             "for one-dimensional data use [[mu_1], [mu_2], ...]")
        K, D = means.shape
        if len(weights) != K:
            raise ValueError(f"{len(weights)} weights for {K} components (rows of means)")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {weights.tolist()}")
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0 or stds.shape == (K,):
            stds = stds.reshape(-1, 1).expand(K, D)  # isotropic
        if stds.shape != (K, D):
            raise ValueError(f"stds must be one number, [K] = [{K}] (isotropic) or [K, D] = [{K}, {D}] (diagonal), "
                             f"got shape {tuple(stds.shape)}")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        self.weights = weights / weights.sum()  # [K]
        self.means = means  # [K, D]
        self.stds = stds.clone()  # [K, D]

    @property
    def num_components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"points must be [N, D] = [N, {self.dim}], got shape {tuple(x.shape)}")

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log w [K], mu [K, D], s^2 [K, D]) in x's dtype and on its device."""
        to = dict(dtype=x.dtype, device=x.device)
        return self.weights.log().to(**to), self.means.to(**to), self.stds.square().to(**to)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points [n, D] (float32): a component k ~ w, then x = mu_k + s_k * z, z ~ N(0, I)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # [n, D]
        return (self.means[k] + self.stds[k] * z).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for points x [N, D] -> [N]."""
        self._check(x)
        log_w, mu, var = self._params(x)
        return _mixture(x, log_w, mu[None], var[None])[0]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / s_k^2, r_k(x) = p(k | x): [N, D] -> [N, D]."""
        self._check(x)
        log_w, mu, var = self._params(x)
        return _mixture(x, log_w, mu[None], var[None])[1]

    # ------------------------------------------------------------------ DDPM: x_t = a x_0 + b eps

    def noised(self, alpha_bar: float) -> "GaussianMixture":
        """The exact marginal of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, for one alpha_bar:
        the mixture with means sqrt(alpha_bar) mu_k and variances alpha_bar s_k^2 + 1 - alpha_bar."""
        ab = float(alpha_bar)
        if not 0.0 <= ab <= 1.0:
            raise ValueError(f"alpha_bar must lie in [0, 1], got {ab}")
        return GaussianMixture(self.weights, math.sqrt(ab) * self.means,
                               (ab * self.stds.square() + (1 - ab)).sqrt())

    def noised_score(self, x_t: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
        """grad log p_t(x_t) of the DDPM marginal: x_t [N, D], alpha_bar one number or one per point [N]."""
        self._check(x_t)
        log_w, mu, var = self._params(x_t)
        ab = _per_item(alpha_bar, x_t, "alpha_bar")  # [1 or N, 1, 1]
        return _mixture(x_t, log_w, ab.sqrt() * mu, ab * var + (1 - ab))[1]  # means, variances [1 or N, K, D]

    def eps_prediction(self, x_t: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
        """The best possible noise prediction, E[eps | x_t] = -sqrt(1 - alpha_bar) grad log p_t(x_t)
        (Tweedie's formula): what a network trained with the DDPM loss converges to. [N, D] -> [N, D]."""
        ab = _per_item(alpha_bar, x_t, "alpha_bar")[:, :, 0]  # [1 or N, 1]
        return -(1 - ab).sqrt() * self.noised_score(x_t, alpha_bar)

    # ------------------------------------------------------------------ rectified flow: x_t = (1 - t) x_0 + t eps

    def interpolated(self, t: float) -> "GaussianMixture":
        """The exact marginal of x_t = (1 - t) x_0 + t eps (t in [0, 1); at t = 1 it is N(0, I)): the
        mixture with means (1 - t) mu_k and variances (1 - t)^2 s_k^2 + t^2."""
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return GaussianMixture(self.weights, (1 - t) * self.means, ((1 - t) ** 2 * self.stds.square() + t**2).sqrt())

    def flow_velocity(self, x_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The marginal velocity of rectified flow, E[eps - x_0 | x_t], for x_t = (1 - t) x_0 + t eps.

        Per component k (a Gaussian, so the regression is linear), with v_k = (1 - t)^2 s_k^2 + t^2:

            E[eps | x_t, k] = t (x_t - (1 - t) mu_k) / v_k
            E[x_0 | x_t, k] = mu_k + (1 - t) s_k^2 (x_t - (1 - t) mu_k) / v_k

        and the velocity is their difference averaged with r_k(x_t) = p(k | x_t). At t = 0 it is
        -x_0; at t = 1, x_1 - E[x_0]. x_t [N, D]; t one number or one per point [N] -> [N, D].
        """
        self._check(x_t)
        log_w, mu, var = self._params(x_t)
        t = _per_item(t, x_t, "t")  # [1 or N, 1, 1]
        mean_t, var_t = (1 - t) * mu, (1 - t) ** 2 * var + t**2  # [1 or N, K, D]
        r = _mixture(x_t, log_w, mean_t, var_t)[2]  # [N, K]
        residual = (x_t[:, None] - mean_t) / var_t  # [N, K, D]
        velocity = (t - (1 - t) * var) * residual - mu  # [N, K, D]: E[eps | x_t, k] - E[x_0 | x_t, k]
        return (r[..., None] * velocity).sum(dim=1)  # [N, D]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"


def _mixture(x: torch.Tensor, log_w: torch.Tensor, means: torch.Tensor,
             var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x) [N], grad log p(x) [N, D] and the posterior weights r_k(x) [N, K] of
    sum_k w_k N(x; means_k, diag(var_k)); means and var broadcast to [N, K, D]."""
    diff = x[:, None] - means  # [N, K, D]
    log_comp = log_w - 0.5 * (diff.square() / var + torch.log(2 * math.pi * var)).sum(dim=-1)  # [N, K]
    log_p = torch.logsumexp(log_comp, dim=1)  # [N]
    r = torch.softmax(log_comp, dim=1)  # [N, K]
    score = (r[..., None] * (-diff / var)).sum(dim=1)  # [N, D]
    return log_p, score, r


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equally weighted Gaussians on a circle (the classic 2-D toy of flow and diffusion papers):
    means radius (cos 2 pi k / 8, sin 2 pi k / 8), k = 0..7, isotropic std ``std``."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [8, 2]
    return GaussianMixture(torch.ones(8), means, std)


def gaussian_eps_model(mu: float, s: float,
                       schedule: NoiseSchedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The perfect noise predictor for one-dimensional data N(mu, s^2): ``model(x [B, 1], t [B])``, the
    exact E[eps | x_t] (a formula, not a network) at the schedule's integer timesteps t:

        E[eps | x_t] = sqrt(1 - alpha_bar_t) (x_t - sqrt(alpha_bar_t) mu) / (alpha_bar_t s^2 + 1 - alpha_bar_t).

    A :class:`GaussianMixture` with one component; give it to ``ddim_sample`` or ``ddpm_sample``.
    """
    data = GaussianMixture([1.0], [[mu]], s)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"x must be [B, 1] (one-dimensional data), got shape {tuple(x.shape)}")
        alpha_bar = gather(schedule.alpha_bar.to(x.device), t, x.ndim)  # [B, 1]
        return data.eps_prediction(x, alpha_bar)  # [B, 1]

    return model
