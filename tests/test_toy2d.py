"""Chapter 5's 2-D toys: data sets, the MLP, and the exact mixture velocity against Monte Carlo."""

import math

import pytest
import torch

from course_lib.toy2d import GaussianMixture2D, ToyMLP, checkerboard, exact_velocity, toy_batches, two_moons


def _mixture_log_density(mix: GaussianMixture2D, x: torch.Tensor) -> torch.Tensor:
    d2 = (x.double()[:, None, :] - mix.means[None]).pow(2).sum(-1)  # [N, K]
    log_k = mix.weights.log()[None] - d2 / (2 * mix.std ** 2) - math.log(2 * math.pi * mix.std ** 2)
    return torch.logsumexp(log_k, dim=1)  # [N]


@pytest.mark.parametrize("source", [GaussianMixture2D.standard_normal(), GaussianMixture2D.two_gaussians((2.0, 0.0))])
def test_exact_velocity_matches_monte_carlo(source):
    """E[X_1 - X_0 | X_t = x] by importance sampling. Draw X_0 from the data: X_1 = (x - (1 - t) X_0) / t is then
    fixed, and each draw counts with the source density of that X_1; or the other way round. The test uses the
    direction whose weights are less degenerate (the larger effective sample size)."""
    data = GaussianMixture2D.eight_gaussians()
    x0_draws, x1_draws = data.sample(400_000, seed=0).double(), source.sample(400_000, seed=1).double()
    points = torch.tensor([[0.3, -0.2], [1.5, 1.0], [-2.0, 0.5]])
    for t in (0.3, 0.6, 0.9):
        exact = exact_velocity(data, source, points, t)
        for p, v in zip(points.double(), exact):
            estimates = []
            x1 = (p - (1 - t) * x0_draws) / t  # X_0 drawn, X_1 implied
            x0 = (p - t * x1_draws) / (1 - t)  # X_1 drawn, X_0 implied
            for w, a, b in [(torch.softmax(_mixture_log_density(source, x1), 0), x0_draws, x1),
                            (torch.softmax(_mixture_log_density(data, x0), 0), x0, x1_draws)]:
                estimates.append((1 / w.pow(2).sum(), (w[:, None] * (b - a)).sum(0)))
            ess, mc = max(estimates, key=lambda e: e[0])
            assert ess > 300, (t, p, float(ess))
            torch.testing.assert_close(v.double(), mc, atol=0.06, rtol=0.03)


def test_exact_velocity_of_single_gaussians():
    """Data N(mu, a^2 I), source N(nu, b^2 I): v*(x, t) = (nu - mu) + (t b^2 - (1 - t) a^2) / s2 (x - m). With a = b the
    correction vanishes at t = 1/2, where every point moves by nu - mu; elsewhere it does not: the independent
    coupling's paths bend even between two Gaussians of the same shape."""
    data = GaussianMixture2D(torch.tensor([[1.0, -2.0]]), 0.5, torch.ones(1))
    source = GaussianMixture2D(torch.tensor([[-1.0, 0.5]]), 0.5, torch.ones(1))
    x = torch.randn(10, 2)
    shift = torch.tensor([[-2.0, 2.5]]).expand(10, 2)
    torch.testing.assert_close(exact_velocity(data, source, x, 0.5), shift)
    t = 0.8
    m = (1 - t) * torch.tensor([1.0, -2.0]) + t * torch.tensor([-1.0, 0.5])
    s2 = ((1 - t) ** 2 + t ** 2) * 0.25
    torch.testing.assert_close(exact_velocity(data, source, x, t), shift + (t - (1 - t)) * 0.25 / s2 * (x - m))


def test_data_sets_have_the_stated_shapes_and_supports():
    mix = GaussianMixture2D.eight_gaussians(radius=2.5, std=0.2)
    x = mix.sample(4000, seed=1)
    assert x.shape == (4000, 2) and torch.equal(x, mix.sample(4000, seed=1))
    assert abs(x.norm(dim=1).mean() - 2.5) < 0.05
    board = checkerboard(4000, seed=0)
    assert board.abs().max() <= 2 and bool(((board.floor().sum(1)).remainder(2) == 0).all())  # dark squares only
    moons = two_moons(4000, seed=0)
    assert moons.shape == (4000, 2) and moons.abs().mean() < 2
    with pytest.raises(ValueError, match="weights must be"):
        GaussianMixture2D(torch.zeros(2, 2), 1.0, torch.ones(3))


def test_toy_mlp_and_batches():
    model = ToyMLP(hidden=32, depth=2)
    x = torch.randn(5, 2)
    assert model(x, torch.full((5,), 500.0)).shape == (5, 2)
    assert model(x, torch.tensor(3.0)).shape == (5, 2)  # one time for the whole batch
    batches = toy_batches(lambda n, g: GaussianMixture2D.eight_gaussians().sample(n, g), 16, seed=2)
    assert torch.equal(batches(7)[0], batches(7)[0]) and not torch.equal(batches(7)[0], batches(8)[0])
