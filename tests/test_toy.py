"""Toy data with exact quantities: the mixture's density and score, the exact DDPM noise prediction
and rectified-flow velocity (checked against Monte Carlo), chapter 1's perfect 1-D model, and chapter 5's
2-D toys: data sets, the MLP, and the exact mixture-to-mixture velocity against Monte Carlo."""

import math

import pytest
import torch

from course_lib.schedules import NoiseSchedule, gather
from course_lib.toy import (GaussianMixture, ToyMLP, checkerboard, eight_gaussians, exact_velocity,
                            gaussian_eps_model, toy_batches, two_moons)

POINTS = torch.tensor([[1.0, 0.5], [-1.5, 1.2], [0.3, -2.0]], dtype=torch.float64)  # x_t to ask about


@pytest.fixture(scope="module")
def mixture():
    """Three components with unequal weights and diagonal stds, so that no symmetry hides a mistake."""
    return GaussianMixture([0.5, 0.3, 0.2], [[1.5, 0.0], [-1.0, 1.0], [0.0, -1.5]], [[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]])


@pytest.fixture(scope="module")
def x0(mixture):
    return mixture.sample(400_000, torch.Generator().manual_seed(0)).double()  # [M, 2]


def posterior_mean(x0, x_t, a, b, target):
    """Monte Carlo E[target(x0, eps) | x_t] for x_t = a x0 + b eps: x0 ~ p (a sample) weighted by the
    likelihood N(x_t; a x0, b^2 I) (self-normalised importance sampling), with its standard error."""
    eps = (x_t - a * x0) / b  # [M, D]: the noise that would have produced x_t from each x0
    w = torch.softmax(-0.5 * eps.square().sum(dim=1), dim=0)  # [M]
    f = target(x0, eps)  # [M, D]
    mean = (w[:, None] * f).sum(dim=0)  # [D]
    stderr = (w[:, None].square() * (f - mean).square()).sum(dim=0).sqrt()  # [D]
    return mean, stderr


def test_density_integrates_to_one_and_score_is_its_gradient(mixture):
    h = 0.02
    grid = torch.arange(-4.0, 4.0, h, dtype=torch.float64)
    xy = torch.cartesian_prod(grid, grid)  # [160000, 2]
    assert mixture.log_prob(xy).exp().sum() * h**2 == pytest.approx(1.0, abs=1e-6)
    x = mixture.sample(64, torch.Generator().manual_seed(1)).double().requires_grad_()
    (autograd,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    torch.testing.assert_close(mixture.score(x), autograd, rtol=1e-10, atol=1e-12)
    # one component: the Gaussian's own score (mu - x) / s^2 and log density
    single = GaussianMixture([1.0], [[0.3]], 0.5)
    x1 = torch.tensor([[1.3], [-0.2]], dtype=torch.float64)
    torch.testing.assert_close(single.score(x1), (0.3 - x1) / 0.25)
    assert single.log_prob(torch.tensor([[0.3]])).item() == pytest.approx(-math.log(0.5 * math.sqrt(2 * math.pi)))


def test_samples_have_the_mixture_s_moments(mixture, x0):
    w, mu, s = mixture.weights, mixture.means, mixture.stds
    mean = (w[:, None] * mu).sum(0)  # [2]
    second = (w[:, None, None] * (mu[:, :, None] * mu[:, None, :] + torch.diag_embed(s**2))).sum(0)  # [2, 2]
    torch.testing.assert_close(x0.mean(0), mean, atol=0.006, rtol=0)  # ~5 standard errors of 400,000 draws
    torch.testing.assert_close(x0.T @ x0 / len(x0), second, atol=0.01, rtol=0)


@pytest.mark.parametrize("alpha_bar", [0.1, 0.5, 0.9])
def test_eps_prediction_is_the_posterior_mean_of_the_noise(mixture, x0, alpha_bar):
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    exact = mixture.eps_prediction(POINTS, alpha_bar)  # [3, 2]
    # the same, with alpha_bar given per point, and as -b * score of the noised marginal (Tweedie)
    torch.testing.assert_close(mixture.eps_prediction(POINTS, torch.full((3,), alpha_bar)), exact)
    torch.testing.assert_close(-b * mixture.noised(alpha_bar).score(POINTS), exact)
    # a wrong answer the test must reject: one Gaussian with the mixture's mean and covariance
    mean, cov = x0.mean(0), torch.cov(x0.T)
    wrong = b * torch.linalg.solve(alpha_bar * cov + (1 - alpha_bar) * torch.eye(2), (POINTS - a * mean).T).T
    for x_t, e, bad in zip(POINTS, exact, wrong):
        mc, se = posterior_mean(x0, x_t, a, b, lambda x0_, eps: eps)
        assert se.max() < 0.01, se  # a tight estimate
        assert ((e - mc).abs() < 4 * se + 1e-4).all(), (x_t, e, mc, se)
        assert ((bad - mc).abs() > 10 * se).any(), (x_t, bad, mc, se)  # the tolerance tells mixtures apart


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_flow_velocity_is_the_posterior_mean_of_eps_minus_x0(mixture, x0, t):
    exact = mixture.flow_velocity(POINTS, t)  # [3, 2]
    torch.testing.assert_close(mixture.flow_velocity(POINTS, torch.full((3,), t)), exact)
    for x_t, v in zip(POINTS, exact):
        mc, se = posterior_mean(x0, x_t, 1 - t, t, lambda x0_, eps: eps - x0_)
        assert se.max() < 0.02, se
        assert ((v - mc).abs() < 4 * se + 1e-4).all(), (x_t, t, v, mc, se)
    # the same through the score of the interpolated marginal (Tweedie for x_t = (1 - t) x_0 + t eps):
    # E[eps | x_t] = -t score, E[x_0 | x_t] = (x_t + t^2 score) / (1 - t)
    score = mixture.interpolated(t).score(POINTS)
    torch.testing.assert_close(exact, -t * score - (POINTS + t**2 * score) / (1 - t))


def test_flow_velocity_at_the_ends(mixture):
    torch.testing.assert_close(mixture.flow_velocity(POINTS, 0.0), -POINTS)  # x_0 itself, no noise: v = -x_0
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    torch.testing.assert_close(mixture.flow_velocity(POINTS, 1.0), POINTS - mean)  # pure noise: v = x_1 - E[x_0]


def test_eight_gaussians():
    m = eight_gaussians(radius=2.0, std=0.1)
    assert m.num_components == 8 and m.dim == 2
    torch.testing.assert_close(m.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(m.means[2], torch.tensor([0.0, 2.0], dtype=torch.float64), atol=1e-12, rtol=0)
    x = m.sample(8000, torch.Generator().manual_seed(0))
    assert x.shape == (8000, 2) and (x.norm(dim=1) - 2).abs().max() < 0.6


def test_gaussian_eps_model_is_chapter_1_s_formula():
    schedule = NoiseSchedule.linear(1000)
    MU, S = 0.3, 0.5
    model = gaussian_eps_model(MU, S, schedule)
    x = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(1))
    ab = gather(schedule.alpha_bar, t, x.ndim)  # [B, 1]
    notebook = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)  # notebook 01's perfect_eps
    out = model(x, t)
    assert out.shape == (4096, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out, notebook, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 1\]"):
        model(torch.zeros(4, 2), t[:4])


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        GaussianMixture([1.0], [0.0], 1.0)
    with pytest.raises(ValueError, match="2 weights for 1 components"):
        GaussianMixture([0.5, 0.5], [[0.0]], 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture([-1.0, 2.0], [[0.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="stds must be"):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        eight_gaussians().score(torch.zeros(3))
    with pytest.raises(ValueError, match="one per item"):
        eight_gaussians().eps_prediction(torch.zeros(3, 2), torch.full((2,), 0.5))


# --------------------------------------------------------------------------- chapter 5's 2-D toys


@pytest.mark.parametrize("source", [GaussianMixture.standard_normal(), GaussianMixture.two_gaussians((2.0, 0.0))])
def test_exact_velocity_matches_monte_carlo(source):
    """E[X_1 - X_0 | X_t = x] by importance sampling. Draw X_0 from the data: X_1 = (x - (1 - t) X_0) / t is then
    fixed, and each draw counts with the source density of that X_1; or the other way round. The test uses the
    direction whose weights are less degenerate (the larger effective sample size)."""
    data = eight_gaussians()
    x0_draws, x1_draws = data.sample(400_000, seed=0).double(), source.sample(400_000, seed=1).double()
    points = torch.tensor([[0.3, -0.2], [1.5, 1.0], [-2.0, 0.5]])
    for t in (0.3, 0.6, 0.9):
        exact = exact_velocity(data, source, points, t)
        for p, v in zip(points.double(), exact):
            estimates = []
            x1 = (p - (1 - t) * x0_draws) / t  # X_0 drawn, X_1 implied
            x0 = (p - t * x1_draws) / (1 - t)  # X_1 drawn, X_0 implied
            for w, a, b in [(torch.softmax(source.log_prob(x1), 0), x0_draws, x1),
                            (torch.softmax(data.log_prob(x0), 0), x0, x1_draws)]:
                estimates.append((1 / w.pow(2).sum(), (w[:, None] * (b - a)).sum(0)))
            ess, mc = max(estimates, key=lambda e: e[0])
            assert ess > 300, (t, p, float(ess))
            torch.testing.assert_close(v.double(), mc, atol=0.06, rtol=0.03)


def test_exact_velocity_of_single_gaussians():
    """Data N(mu, a^2 I), source N(nu, b^2 I): v*(x, t) = (nu - mu) + (t b^2 - (1 - t) a^2) / s2 (x - m). With a = b the
    correction vanishes at t = 1/2, where every point moves by nu - mu; elsewhere it does not: the independent
    coupling's paths bend even between two Gaussians of the same shape."""
    data = GaussianMixture(torch.ones(1), [[1.0, -2.0]], 0.5)
    source = GaussianMixture(torch.ones(1), [[-1.0, 0.5]], 0.5)
    x = torch.randn(10, 2)
    shift = torch.tensor([[-2.0, 2.5]]).expand(10, 2)
    torch.testing.assert_close(exact_velocity(data, source, x, 0.5), shift)
    t = 0.8
    m = (1 - t) * torch.tensor([1.0, -2.0]) + t * torch.tensor([-1.0, 0.5])
    s2 = ((1 - t) ** 2 + t ** 2) * 0.25
    torch.testing.assert_close(exact_velocity(data, source, x, t), shift + (t - (1 - t)) * 0.25 / s2 * (x - m))


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_exact_velocity_from_noise_is_the_mixture_s_flow_velocity(mixture, t):
    """From N(0, I), the mixture-to-mixture velocity is the noise-to-data one (one formula, two entry points)."""
    exact = exact_velocity(mixture, GaussianMixture.standard_normal(), POINTS.float(), torch.full((3,), t))
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact, mixture.flow_velocity(POINTS, t).float())
    with pytest.raises(ValueError, match="the source has 1 dimensions"):
        mixture.flow_velocity(POINTS, t, GaussianMixture.standard_normal(1))


def test_data_sets_have_the_stated_shapes_and_supports():
    mix = eight_gaussians(radius=2.5, std=0.2)
    x = mix.sample(4000, seed=1)
    assert x.shape == (4000, 2) and torch.equal(x, mix.sample(4000, seed=1))
    assert abs(x.norm(dim=1).mean() - 2.5) < 0.05
    board = checkerboard(4000, seed=0)
    assert board.abs().max() <= 2 and bool(((board.floor().sum(1)).remainder(2) == 0).all())  # dark squares only
    moons = two_moons(4000, seed=0)
    assert moons.shape == (4000, 2) and moons.abs().mean() < 2
    with pytest.raises(ValueError, match="3 weights for 2 components"):
        GaussianMixture(torch.ones(3), torch.zeros(2, 2), 1.0)


def test_toy_mlp_and_batches():
    model = ToyMLP(hidden=32, depth=2)
    x = torch.randn(5, 2)
    assert model(x, torch.full((5,), 500.0)).shape == (5, 2)
    assert model(x, torch.tensor(3.0)).shape == (5, 2)  # one time for the whole batch
    batches = toy_batches(lambda n, g: eight_gaussians().sample(n, g), 16, seed=2)
    assert torch.equal(batches(7)[0], batches(7)[0]) and not torch.equal(batches(7)[0], batches(8)[0])
