"""Noise schedules against their closed forms, and the forward process's statistics."""

import math

import pytest
import torch

from course_lib.schedules import NoiseSchedule, cosine_betas, gather, linear_betas, make_schedule


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return make_schedule(request.param, 1000)


def float64_quantities(schedule):
    """Reference values recomputed in float64 from the float64 betas (float32 loses 1 - alpha_bar near t = 0)."""
    betas = {"linear": linear_betas, "cosine": cosine_betas}[schedule.name](schedule.T)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return betas, alpha_bar, alpha_bar_prev


def test_alpha_bar_is_the_cumulative_product_of_alphas(schedule):
    betas = schedule.betas.double()
    assert torch.allclose(schedule.alphas.double(), 1 - betas, atol=1e-7)
    expected = torch.cumprod(1 - betas, dim=0)
    assert torch.allclose(schedule.alpha_bar.double(), expected, rtol=1e-5, atol=1e-9)
    assert schedule.alpha_bar_prev[0] == 1.0
    assert torch.equal(schedule.alpha_bar_prev[1:], schedule.alpha_bar[:-1])
    assert schedule.T == len(schedule) == 1000
    for name in ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "snr", "posterior_variance"):
        assert getattr(schedule, name).dtype == torch.float32


def test_linear_schedule_endpoints_follow_ho_et_al():
    s = NoiseSchedule.linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    steps = s.betas.double().diff()
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), rtol=1e-4)
    # Ho et al. chose these so that x_T is almost pure noise: alpha_bar_T ~ 4e-5.
    assert s.alpha_bar[-1].item() == pytest.approx(4.04e-5, rel=0.02)


def test_linear_schedule_scales_for_shorter_chains():
    s = NoiseSchedule.linear(100)
    assert s.betas[0].item() == pytest.approx(1e-3, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.2, rel=1e-6)
    assert s.alpha_bar[-1].item() < 1e-4  # still ends at (almost) pure noise


def test_cosine_schedule_matches_its_closed_form():
    T, s = 1000, 0.008
    sched = NoiseSchedule.cosine(T)
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar at 0-indexed step t is the paper's alpha_bar(t + 1) = f(t + 1) / f(0);
    # only the last beta is clipped (at 0.999), so every other step follows the formula.
    for t in [0, 1, 10, 250, 500, 750, 990, 998]:
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5, abs=1e-10)
    assert sched.alpha_bar[0].item() > 0.9999  # alpha_bar_0 ~ 1
    assert sched.alpha_bar[-1].item() < 1e-8  # alpha_bar_T ~ 0
    assert sched.betas.max().item() == pytest.approx(0.999, rel=1e-6)
    assert cosine_betas(T).max().item() <= 0.999


def test_cosine_destroys_information_more_slowly_than_linear():
    lin, cos = NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)
    # Nichol & Dhariwal's motivation: the linear schedule is almost pure noise well before T.
    assert lin.alpha_bar[700].item() < 0.01 < cos.alpha_bar[700].item()


def test_snr_is_alpha_bar_over_one_minus_alpha_bar_and_strictly_decreasing(schedule):
    _, ab, _ = float64_quantities(schedule)
    assert torch.allclose(schedule.snr.double(), ab / (1 - ab), rtol=1e-5)
    assert bool((schedule.snr[1:] < schedule.snr[:-1]).all())
    assert schedule.snr[0] > 1e3 and schedule.snr[-1] < 1e-4


def test_q_sample_is_the_closed_form_and_has_the_right_statistics(schedule):
    torch.manual_seed(0)
    x0 = torch.full((4, 3, 32, 32), 0.7)
    t = torch.tensor([0, 100, 500, 999])
    eps = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, eps)
    ab = schedule.alpha_bar[t].view(4, 1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-6)
    # Monte Carlo: x_t | x_0 ~ N(sqrt(ab) x0, (1 - ab) I), checked per example over 3072 values.
    for i in range(4):
        sample = schedule.q_sample(x0[i:i + 1].expand(64, -1, -1, -1), t[i].repeat(64))
        assert sample.mean().item() == pytest.approx(0.7 * ab[i].sqrt().item(), abs=0.01)
        assert sample.std().item() == pytest.approx((1 - ab[i]).sqrt().item(), rel=0.02, abs=2e-3)


def test_posterior_matches_bayes_rule(schedule):
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of Gaussians."""
    t = torch.tensor([1, 10, 300, 999])
    x0 = torch.tensor([0.3, -0.8, 0.5, 0.1]).view(4, 1)
    x_t = torch.tensor([0.1, 0.4, -1.2, 2.0]).view(4, 1)
    mean, var, log_var = schedule.q_posterior(x0, x_t, t)
    betas, _, alpha_bar_prev = float64_quantities(schedule)
    beta = betas[t].view(4, 1)
    alpha = 1 - beta
    ab_prev = alpha_bar_prev[t].view(4, 1)
    precision = alpha / beta + 1 / (1 - ab_prev)
    expected_var = 1 / precision
    expected_mean = expected_var * (alpha.sqrt() * x_t.double() / beta + ab_prev.sqrt() * x0.double() / (1 - ab_prev))
    assert torch.allclose(var.double(), expected_var, rtol=1e-4)
    assert torch.allclose(mean.double(), expected_mean, rtol=1e-4, atol=1e-6)
    assert torch.allclose(log_var.double(), expected_var.log(), atol=1e-4)


def test_posterior_at_t0_returns_x0_and_clips_the_log_variance(schedule):
    x0, x_t = torch.tensor([[0.25]]), torch.tensor([[3.0]])
    mean, var, log_var = schedule.q_posterior(x0, x_t, torch.tensor([0]))
    assert mean.item() == pytest.approx(0.25, abs=1e-6)
    assert var.item() == 0.0
    assert log_var.item() == pytest.approx(math.log(schedule.posterior_variance[1].item()), rel=1e-5)


def test_gather_broadcasts_and_rejects_bad_timesteps():
    values = torch.arange(10.0)
    out = gather(values, torch.tensor([3, 7]))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [3.0, 7.0]
    assert gather(values, torch.tensor([1]), ndim=2).shape == (1, 1)
    with pytest.raises(ValueError, match="0..9"):
        gather(values, torch.tensor([10]))
    with pytest.raises(TypeError, match="integer"):
        gather(values, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[B\]"):
        gather(values, torch.tensor([[1]]))


def test_make_schedule_names_and_errors():
    assert torch.equal(make_schedule("cosine", 50).alpha_bar, NoiseSchedule.cosine(50).alpha_bar)
    assert torch.equal(make_schedule("Linear", 50).betas, linear_betas(50).float())
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_schedule("sigmoid", 50)
    with pytest.raises(ValueError, match="T"):
        make_schedule("linear", 1)
    with pytest.raises(ValueError, match="shape"):
        NoiseSchedule.linear(20).q_sample(torch.zeros(2, 3), torch.tensor([1, 2, 3]))
    moved = NoiseSchedule.linear(20).to("meta")
    assert moved.alpha_bar.device.type == "meta" and moved.T == 20
    # very short linear chains: the scaled betas are clipped at 0.999 instead of exceeding 1
    assert NoiseSchedule.linear(10).betas.max().item() == pytest.approx(0.999)
