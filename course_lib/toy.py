"""Toy data whose every quantity is known exactly: Gaussian mixtures, their scores, and the best
possible denoiser and flow velocity, in closed form; plus the 2-D data sets and small MLP of chapter 5.

With such data a sampler can be run with a *perfect* model, so that every error seen is the
sampler's (chapter 1: few-step DDIM samples come out too narrow), and a trained network can be
compared with the function it should have learned (chapter 5: the rectified-flow velocity). In 2-D
every trajectory can be drawn, which separates two reasons a learned flow's paths bend: the *coupling*
(independent noise-data pairs cross, so the average direction at a point turns as t moves) and the
*network* (an imperfect fit).

A mixture of K Gaussians with diagonal covariances in D dimensions (:class:`GaussianMixture`),

    p(x) = sum_k w_k N(x; mu_k, diag(s_k^2)),

stays a mixture of Gaussians under both forward processes of the course, because a Gaussian plus
independent Gaussian noise is Gaussian:

* DDPM (Ho et al. 2020), x_t = a x_0 + b eps with a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar):
  component k becomes N(a mu_k, a^2 s_k^2 + b^2) with the same weight w_k;
* rectified flow (Liu et al. 2022; data at t = 0 and the source at t = 1, as in SD3, Esser et al. 2024),
  x_t = (1 - t) x_0 + t x_1: with x_1 ~ N(0, I), component k becomes N((1 - t) mu_k, (1 - t)^2 s_k^2 + t^2);
  with x_1 from another mixture (components nu_j, r_j), each pair (k, j) is a Gaussian component.

The network targets are then conditional expectations with closed forms:

* the noise prediction (Tweedie's formula, Efron 2011; Song et al. 2021):
  E[eps | x_t] = -b grad log p_t(x_t) = -sqrt(1 - alpha_bar) score_t(x_t);
* the velocity of rectified flow, E[x_1 - x_0 | x_t], the average over the components' posterior
  weights of each Gaussian component's own linear regression (:meth:`GaussianMixture.flow_velocity`,
  :func:`exact_velocity`).

Data: :func:`eight_gaussians`, ``GaussianMixture.two_gaussians`` and ``GaussianMixture.standard_normal``,
:func:`two_moons`, :func:`checkerboard`. Models: :func:`gaussian_eps_model` (the one-dimensional,
one-component case as a ``model(x, t)`` for the samplers of ``course_lib.samplers``) and :class:`ToyMLP`,
a small network used both as a velocity model (rectified flow) and as an epsilon model (DDPM);
:func:`toy_batches` turns a sampler into ``fit``'s step-indexed batches.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .conditioning import timestep_embedding
from .schedules import NoiseSchedule, gather

__all__ = ["GaussianMixture", "eight_gaussians", "exact_velocity", "gaussian_eps_model", "two_moons", "checkerboard",
           "ToyMLP", "ToyMeanFlowMLP", "toy_batches"]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """A fresh generator seeded with ``seed`` when given, else ``generator`` (None: torch's global RNG)."""
    return torch.Generator().manual_seed(seed) if seed is not None else generator

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

    @classmethod
    def two_gaussians(cls, centre: Sequence[float] = (0.0, 2.0), std: float = 0.3) -> "GaussianMixture":
        """Two equal isotropic components at +centre and -centre: with another pair as source, the
        mixture -> mixture toy of chapter 5."""
        c = torch.as_tensor(centre, dtype=torch.float64)
        return cls(torch.ones(2), torch.stack([c, -c]), std)

    @classmethod
    def standard_normal(cls, dim: int = 2) -> "GaussianMixture":
        """N(0, I) in ``dim`` dimensions as a one-component mixture: the usual source of noise."""
        return cls(torch.ones(1), torch.zeros(1, dim), 1.0)

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

    def sample(self, n: int, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        """n points [n, D] (float32): a component k ~ w, then x = mu_k + s_k * z, z ~ N(0, I). Random numbers
        from ``generator``, or from a fresh generator seeded with ``seed``, else from torch's global RNG."""
        generator = _generator(generator, seed)
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

    def flow_velocity(self, x_t: torch.Tensor, t: float | torch.Tensor,
                      source: "GaussianMixture | None" = None) -> torch.Tensor:
        """The marginal velocity of rectified flow, E[x_1 - x_0 | x_t], for x_t = (1 - t) x_0 + t x_1 with
        x_0 ~ this mixture (the data) and x_1 ~ ``source`` drawn independently (None: N(0, I), x_1 = eps).

        Given components k of the data (mu_k, a_k^2) and j of the source (nu_j, b_j^2), x_t is Gaussian with
        mean m = (1 - t) mu_k + t nu_j and variance v = (1 - t)^2 a_k^2 + t^2 b_j^2 (per dimension), and by
        Gaussian conditioning (a linear regression)

            E[x_1 - x_0 | x_t, k, j] = (nu_j - mu_k) + (t b_j^2 - (1 - t) a_k^2) / v (x_t - m);

        the velocity averages these with the posterior weights of (k, j), w_k r_j N(x_t; m, v), normalised.
        With the N(0, I) source: at t = 0 it is -x_0; at t = 1, x_1 - E[x_0]. x_t [N, D]; t one number or one
        per point [N] -> [N, D], computed in x_t's dtype.
        """
        self._check(x_t)
        source = GaussianMixture.standard_normal(self.dim) if source is None else source
        if source.dim != self.dim:
            raise ValueError(f"the source has {source.dim} dimensions, the data {self.dim}")
        log_w, mu, a2 = self._params(x_t)  # [K], [K, D], [K, D]
        log_r, nu, b2 = source._params(x_t)  # [J], [J, D], [J, D]
        t = _per_item(t, x_t, "t")[..., None]  # [1 or N, 1, 1, 1]: broadcasts over [N, K, J, D]
        pairs = len(log_w) * len(log_r)
        mean_t = ((1 - t) * mu[:, None] + t * nu[None]).flatten(1, 2)  # [1 or N, K * J, D]
        var_t = ((1 - t) ** 2 * a2[:, None] + t**2 * b2[None]).flatten(1, 2)  # [1 or N, K * J, D]
        gain = (t * b2[None] - (1 - t) * a2[:, None]).flatten(1, 2)  # [1 or N, K * J, D]
        shift = (nu[None] - mu[:, None]).reshape(pairs, -1)  # [K * J, D]: nu_j - mu_k
        r = _mixture(x_t, (log_w[:, None] + log_r[None]).reshape(pairs), mean_t, var_t)[2]  # [N, K * J]
        velocity = shift + gain * (x_t[:, None] - mean_t) / var_t  # [N, K * J, D]: E[x_1 - x_0 | x_t, k, j]
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


def eight_gaussians(radius: float = 2.5, std: float = 0.2) -> GaussianMixture:
    """Eight equally weighted Gaussians on a circle (the classic 2-D toy of flow and diffusion papers):
    means radius (cos 2 pi k / 8, sin 2 pi k / 8), k = 0..7, isotropic std ``std``. The defaults are chapter 5's
    data; chapter 1 draws a tighter ring, ``eight_gaussians(radius=2.0, std=0.15)``."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [8, 2]
    return GaussianMixture(torch.ones(8), means, std)


def exact_velocity(data: GaussianMixture, source: GaussianMixture, x: torch.Tensor,
                   t: torch.Tensor | float) -> torch.Tensor:
    """The marginal velocity of rectified flow between two Gaussian mixtures under the independent coupling,

        v*(x, t) = E[X_1 - X_0 | X_t = x],   X_t = (1 - t) X_0 + t X_1,   X_0 ~ data, X_1 ~ source independent

    (Liu et al. 2022: what a perfectly trained 1-rectified flow learns), computed in float64
    (:meth:`GaussianMixture.flow_velocity` gives the formula). x [B, D], t a number or [B] in [0, 1] ->
    [B, D] (float32): a ``v(y, t)`` for ``course_lib.flow.flow_sample``. The course's mixtures have positive
    stds, so it is defined at t = 0 and 1 too.
    """
    return data.flow_velocity(x.double(), t, source).float()


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


# --------------------------------------------------------------------------- 2-D data sets and the toy MLP


def two_moons(n: int, noise: float = 0.08, generator: torch.Generator | None = None,
              seed: int | None = None) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's ``make_moons``), centred and scaled: [n, 2]."""
    g = _generator(generator, seed)
    upper = torch.rand(n, generator=g) < 0.5  # [n]
    angle = math.pi * torch.rand(n, generator=g)
    x = torch.where(upper, angle.cos(), 1 - angle.cos())
    y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
    points = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6  # centred, spread about like N(0, I)
    return points + noise * torch.randn(n, 2, generator=g)


def checkerboard(n: int, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 checkerboard over [-2, 2]^2: [n, 2]."""
    g = _generator(generator, seed)
    x = 4 * torch.rand(n, generator=g) - 2
    y = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g)  # [-2, 1): one of two unit rows
    y = y + torch.floor(x).remainder(2)  # shift every other column by one square
    return torch.stack([x, y], dim=1)


class ToyMLP(nn.Module):
    """v_theta(x, t) or eps_theta(x, t) for 2-D points: an MLP on [x, emb(t)].

        h = SiLU(W_1 [x, emb(t)]),  h = SiLU(W_k h) (depth - 1 times),  out = W_out h      x [B, 2] -> [B, 2]

    ``t`` is what the process gives the network (``Process.model_time``: DDPM's integer step, or 1000 t
    for rectified flow), embedded sinusoidally (``conditioning.timestep_embedding``).
    """

    def __init__(self, hidden: int = 128, depth: int = 3, time_dim: int = 32, dim: int = 2):
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t.reshape(-1).expand(len(x)), self.time_dim)  # [B, time_dim]
        return self.net(torch.cat([x, emb.to(x.dtype)], dim=1))  # [B, 2]


class ToyMeanFlowMLP(nn.Module):
    """u_theta(z, r, t) for 2-D points, MeanFlow's average velocity over [r, t] (``course_lib.meanflow``): an MLP on
    [z, emb(s t), emb(s (t - r))], the time and the interval's length embedded (the paper's choice of inputs).

        h = SiLU(W_1 [z, emb(t), emb(t - r)]),  h = SiLU(W_k h) (depth - 1 times),  out = W_out h     z [B, 2] -> [B, 2]

    ``time_scale`` s is 1 here, not the course's 1000: MeanFlow's target differentiates the network in t (the JVP),
    and the fastest sinusoids of emb(1000 t) make that derivative large and the target unstable. Measured on a 2-D
    Gaussian (tests/test_meanflow.py's toy, 400 steps): one-step error 0.75 with s = 1000, 0.16 with s = 1.
    """

    def __init__(self, hidden: int = 128, depth: int = 3, time_dim: int = 32, dim: int = 2, time_scale: float = 1.0):
        super().__init__()
        self.time_dim, self.time_scale = time_dim, time_scale
        layers: list[nn.Module] = [nn.Linear(dim + 2 * time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r, t = r.reshape(-1).expand(len(z)), t.reshape(-1).expand(len(z))
        emb = torch.cat([timestep_embedding(t, self.time_dim, time_scale=self.time_scale),
                         timestep_embedding(t - r, self.time_dim, time_scale=self.time_scale)], dim=1)  # [B, 2 time_dim]
        return self.net(torch.cat([z, emb.to(z.dtype)], dim=1))  # [B, 2]


def toy_batches(sample: Callable[[int, torch.Generator], torch.Tensor], batch_size: int, seed: int = 0):
    """``fit``'s ``batches(step)``: a fresh batch ``(points,)`` [batch_size, 2] from ``sample(n, generator)``,
    seeded by the step (so a resumed or repeated run sees the same batches)."""
    def batches(step: int) -> tuple[torch.Tensor]:
        return (sample(batch_size, torch.Generator().manual_seed(seed * 1_000_003 + step)),)
    return batches
