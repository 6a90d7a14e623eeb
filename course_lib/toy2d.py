"""Two-dimensional toys for chapter 5: data sets, small MLP denoisers, and the exact velocity of a mixture.

In 2-D every trajectory can be drawn, and for Gaussian-mixture data the rectified-flow velocity the
network should learn is known in closed form. That separates two reasons a learned flow's paths bend:
the *coupling* (independent noise-data pairs cross, so the average direction at a point turns as t
moves) and the *network* (an imperfect fit). Conventions as in ``course_lib.processes``: data at t = 0,
the source (noise, or another mixture) at t = 1.

Data: :class:`GaussianMixture2D` (``eight_gaussians``, ``two_gaussians``, ``standard_normal``),
:func:`two_moons`, :func:`checkerboard`. Models: :class:`ToyMLP`, used both as a velocity model (rectified
flow) and as an epsilon model (DDPM). :func:`toy_batches` turns a sampler into ``fit``'s step-indexed
batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .conditioning import timestep_embedding

__all__ = ["GaussianMixture2D", "two_moons", "checkerboard", "ToyMLP", "toy_batches", "exact_velocity"]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else generator


@dataclass(frozen=True)
class GaussianMixture2D:
    """A mixture of isotropic Gaussians in 2-D: component k has mean ``means[k]`` [2], standard deviation
    ``std`` and weight ``weights[k]`` (normalised here)."""

    means: torch.Tensor  # [K, 2]
    std: float
    weights: torch.Tensor  # [K]

    def __post_init__(self) -> None:
        if self.means.ndim != 2 or self.means.shape[1] != 2:
            raise ValueError(f"means must be [K, 2], got {tuple(self.means.shape)}")
        if self.weights.shape != (len(self.means),) or bool((self.weights < 0).any()) or self.weights.sum() <= 0:
            raise ValueError(f"weights must be {len(self.means)} non-negative numbers, one per component")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "means", self.means.double())
        object.__setattr__(self, "weights", (self.weights / self.weights.sum()).double())

    @classmethod
    def eight_gaussians(cls, radius: float = 2.5, std: float = 0.2) -> "GaussianMixture2D":
        """Eight equal components evenly spaced on a circle (the usual flow-matching toy)."""
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return cls(radius * torch.stack([angles.cos(), angles.sin()], dim=1), std, torch.ones(8))

    @classmethod
    def two_gaussians(cls, centre: tuple[float, float] = (0.0, 2.0), std: float = 0.3) -> "GaussianMixture2D":
        """Two equal components at +centre and -centre: with another pair as source, the mixture -> mixture toy."""
        c = torch.tensor(centre, dtype=torch.float64)
        return cls(torch.stack([c, -c]), std, torch.ones(2))

    @classmethod
    def standard_normal(cls) -> "GaussianMixture2D":
        """N(0, I) as a one-component mixture: the usual source of noise."""
        return cls(torch.zeros(1, 2), 1.0, torch.ones(1))

    def sample(self, n: int, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        """n points [n, 2] (float32)."""
        g = _generator(generator, seed)
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)  # [n]
        return (self.means[k] + self.std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


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


def toy_batches(sample: Callable[[int, torch.Generator], torch.Tensor], batch_size: int, seed: int = 0):
    """``fit``'s ``batches(step)``: a fresh batch ``(points,)`` [batch_size, 2] from ``sample(n, generator)``,
    seeded by the step (so a resumed or repeated run sees the same batches)."""
    def batches(step: int) -> tuple[torch.Tensor]:
        return (sample(batch_size, torch.Generator().manual_seed(seed * 1_000_003 + step)),)
    return batches


def exact_velocity(data: GaussianMixture2D, source: GaussianMixture2D, x: torch.Tensor,
                   t: torch.Tensor | float) -> torch.Tensor:
    """The marginal velocity of rectified flow between two Gaussian mixtures under the independent coupling:

        v*(x, t) = E[X_1 - X_0 | X_t = x],   X_t = (1 - t) X_0 + t X_1,   X_0 ~ data, X_1 ~ source independent

    (Liu et al. 2022: what a perfectly trained 1-rectified flow learns). Given components (k, j) of data and
    source, X_t is Gaussian with mean m = (1 - t) mu_k + t nu_j and variance s2 = (1 - t)^2 a^2 + t^2 b^2
    (a, b the stds), and by Gaussian conditioning

        E[X_1 - X_0 | x, k, j] = (nu_j - mu_k) + (t b^2 - (1 - t) a^2) / s2 (x - m);

    v* averages these with the posterior weights of (k, j): pi_k rho_j N(x; m, s2 I), normalised.
    x [B, 2], t a number or [B] in [0, 1] -> [B, 2] (float32). At t = 0 or 1 with a zero-width mixture this
    is undefined; the course's mixtures have positive stds.
    """
    x = x.double()
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1).expand(len(x), 1, 1)  # [B, 1, 1]
    mu, nu = data.means, source.means  # [K, 2], [J, 2]
    a2, b2 = data.std ** 2, source.std ** 2
    diff = nu[None, :, :] - mu[:, None, :]  # [K, J, 2]: nu_j - mu_k
    m = (1 - t[..., None]) * mu[None, :, None, :] + t[..., None] * nu[None, None, :, :]  # [B, K, J, 2]
    s2 = ((1 - t) ** 2 * a2 + t ** 2 * b2)[..., None]  # [B, 1, 1, 1]
    r = x[:, None, None, :] - m  # [B, K, J, 2]
    log_w = (data.weights.log()[:, None] + source.weights.log()[None, :])[None]  # [1, K, J]
    log_w = log_w - r.pow(2).sum(-1) / (2 * s2[..., 0]) - torch.log(s2[..., 0])  # isotropic 2-D Gaussian, up to a constant
    w = torch.softmax(log_w.flatten(1), dim=1).reshape(log_w.shape)  # [B, K, J]
    v_kj = diff[None] + ((t * b2 - (1 - t) * a2)[..., None] / s2) * r  # [B, K, J, 2]
    return (w[..., None] * v_kj).sum(dim=(1, 2)).float()  # [B, 2]
