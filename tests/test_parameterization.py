"""epsilon / x0 / v: exact conversions, and the training loss."""

import pytest
import torch

from course_lib.parameterization import (
    diffusion_loss,
    eps_to_x0,
    eps_x0_to_v,
    predict_x0_eps,
    target_for,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from course_lib.schedules import NoiseSchedule, gather


def _batch(schedule, dtype, t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 3, 8, 8, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(len(t), 3, 8, 8, generator=g, dtype=dtype)
    ab = gather(schedule.alpha_bar, t).to(dtype)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return x0, eps, ab, x_t


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_round_trips_are_exact_in_float64_at_every_timestep(name):
    schedule = NoiseSchedule.linear(1000) if name == "linear" else NoiseSchedule.cosine(1000)
    t = torch.arange(0, 1000, 37).tolist() + [999]
    x0, eps, ab, x_t = _batch(schedule, torch.float64, torch.tensor(t))
    assert torch.allclose(x0_to_eps(eps_to_x0(eps, x_t, ab), x_t, ab), eps, atol=1e-5)
    assert torch.allclose(eps_to_x0(x0_to_eps(x0, x_t, ab), x_t, ab), x0, atol=1e-5)
    assert torch.allclose(eps_to_x0(eps, x_t, ab), x0, atol=1e-5)
    assert torch.allclose(x0_to_eps(x0, x_t, ab), eps, atol=1e-5)
    v = eps_x0_to_v(eps, x0, ab)
    assert torch.allclose(v_to_x0(v, x_t, ab), x0, atol=1e-5)
    assert torch.allclose(v_to_eps(v, x_t, ab), eps, atol=1e-5)


def test_round_trips_in_float32_away_from_the_extremes():
    schedule = NoiseSchedule.cosine(1000)
    x0, eps, ab, x_t = _batch(schedule, torch.float32, torch.tensor([1, 50, 200, 500, 800, 950]))
    assert torch.allclose(x0_to_eps(eps_to_x0(eps, x_t, ab), x_t, ab), eps, atol=1e-5)
    v = eps_x0_to_v(eps, x0, ab)
    assert torch.allclose(v_to_x0(v, x_t, ab), x0, atol=1e-5)
    assert torch.allclose(v_to_eps(v, x_t, ab), eps, atol=1e-5)


def test_v_is_the_rotated_pair_from_salimans_and_ho():
    # With a = cos(phi), b = sin(phi): x_t = cos(phi) x0 + sin(phi) eps and v = d x_t / d phi.
    phi = torch.tensor(0.6, dtype=torch.float64)
    ab = torch.cos(phi) ** 2
    x0, eps = torch.tensor([0.4], dtype=torch.float64), torch.tensor([-1.3], dtype=torch.float64)
    v = eps_x0_to_v(eps, x0, ab)
    assert v.item() == pytest.approx((-torch.sin(phi) * x0 + torch.cos(phi) * eps).item(), abs=1e-12)
    # The three targets have the same norm when x0 and eps are orthonormal: |v|^2 = a^2 + b^2 = 1 per unit pair.
    assert (eps_x0_to_v(torch.tensor([1.0]), torch.tensor([0.0]), ab) ** 2
            + eps_x0_to_v(torch.tensor([0.0]), torch.tensor([1.0]), ab) ** 2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_predict_x0_eps_recovers_both_from_an_exact_prediction(param):
    schedule = NoiseSchedule.linear(1000)
    t = torch.tensor([3, 300, 700])
    x0, eps, ab, x_t = _batch(schedule, torch.float32, t)
    output = target_for(param, x0, eps, ab)
    x0_hat, eps_hat = predict_x0_eps(output, x_t, t, schedule, param)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat, eps, atol=1e-4)


def test_target_for_and_bad_names():
    x0, eps = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(target_for("eps", x0, eps), eps)
    assert torch.equal(target_for("x0", x0, eps), x0)
    assert torch.allclose(target_for("v", x0, eps, torch.tensor(0.25)), -(0.75**0.5) * x0)
    with pytest.raises(ValueError, match="alpha_bar"):
        target_for("v", x0, eps)
    with pytest.raises(ValueError, match="unknown parameterization"):
        target_for("score", x0, eps)
    with pytest.raises(ValueError, match="shape"):
        predict_x0_eps(torch.zeros(2, 4), torch.zeros(2, 3), torch.tensor([1, 2]), NoiseSchedule.linear(10), "eps")


class HalfOfInput(torch.nn.Module):
    def forward(self, x, t):
        return 0.5 * x


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_loss_is_the_mse_to_the_right_target(param):
    schedule = NoiseSchedule.cosine(100)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 50, 99])
    noise = torch.randn_like(x0)
    loss = diffusion_loss(HalfOfInput(), schedule, x0, param, t=t, noise=noise)
    ab = gather(schedule.alpha_bar, t)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[param]
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(((0.5 * x_t - target) ** 2).mean().item(), rel=1e-5)


def test_loss_draws_t_and_noise_from_the_global_rng():
    schedule = NoiseSchedule.linear(1000)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    torch.manual_seed(123)
    first = diffusion_loss(HalfOfInput(), schedule, x0)
    torch.manual_seed(123)
    again = diffusion_loss(HalfOfInput(), schedule, x0)
    torch.manual_seed(124)
    other = diffusion_loss(HalfOfInput(), schedule, x0)
    assert first.item() == again.item()
    assert first.item() != other.item()


def test_loss_of_a_zero_predictor_is_the_target_power():
    # Predicting 0 costs E[eps^2] = 1 with the eps target: a sanity anchor for "the loss falls".
    torch.manual_seed(0)
    x0 = torch.rand(64, 3, 8, 8) * 2 - 1
    loss = diffusion_loss(lambda x, t: torch.zeros_like(x), NoiseSchedule.linear(1000), x0)
    assert loss.item() == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="shape"):
        diffusion_loss(lambda x, t: x[:, :1], NoiseSchedule.linear(1000), x0)
