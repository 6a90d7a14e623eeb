"""Rectified flow's samplers and path measures (course_lib.flow) and the process (RectifiedFlowProcess)."""

import math

import pytest
import torch

from course_lib.flow import flow_sample, flow_time_grid, path_chord_ratio, straightness
from course_lib.processes import RectifiedFlowProcess, process_from_dict


def test_interpolation_endpoints_and_velocity_target():
    process = RectifiedFlowProcess()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(process.corrupt(x0, torch.zeros(3), noise), x0)  # t = 0: data
    assert torch.equal(process.corrupt(x0, torch.ones(3), noise), noise)  # t = 1: noise
    t = torch.tensor([0.25, 0.5, 0.9])
    x_t = process.corrupt(x0, t, noise)
    torch.testing.assert_close(x_t, (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise)
    torch.testing.assert_close(process.target(x0, noise, t), noise - x0)
    h = 1e-3  # the target is the time derivative of the path
    torch.testing.assert_close(process.target(x0, noise, t),
                               (process.corrupt(x0, t + h, noise) - process.corrupt(x0, t - h, noise)) / (2 * h),
                               atol=1e-3, rtol=1e-3)


def test_loss_gives_the_network_scaled_time_and_is_zero_for_the_true_velocity():
    process = RectifiedFlowProcess(time_scale=1000.0)
    seen = []
    x0 = torch.randn(16, 2)

    def exact_for_one_point(x, t):  # data x0 = 0 for every sample: v = eps - 0 = x_t / t
        seen.append(t.clone())
        return x / (t / 1000.0)[:, None]

    loss = process.loss(exact_for_one_point, torch.zeros(16, 2))
    assert loss < 1e-10 and seen[0].min() >= 0 and seen[0].max() <= 1000 and seen[0].max() > 1  # scaled times
    assert process.loss(lambda x, t: torch.zeros_like(x), x0) > 0.5


def test_time_sampling_uniform_and_logit_normal():
    torch.manual_seed(0)
    uniform = RectifiedFlowProcess().sample_time(20000)
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(uniform.var() - 1 / 12) < 0.003
    logit = RectifiedFlowProcess(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.7).sample_time(20000)
    n = torch.logit(logit.double())  # back to the normal it was drawn from
    assert abs(n.mean() - 0.5) < 0.02 and abs(n.std() - 0.7) < 0.02
    with pytest.raises(ValueError, match="uniform' or 'logit_normal"):
        RectifiedFlowProcess(time_sampling="beta")
    assert process_from_dict(RectifiedFlowProcess(time_sampling="logit_normal").to_dict()) == \
        RectifiedFlowProcess(time_sampling="logit_normal")


def test_euler_is_exact_in_one_step_on_a_constant_field():
    c = torch.randn(4, 3)
    x_T = torch.randn(4, 3)
    out = flow_sample(lambda x, t: c, x_T=x_T, num_steps=1)
    torch.testing.assert_close(out, x_T - c)  # x(0) = x(1) - int_0^1 v dt
    traj = RectifiedFlowProcess().sample(lambda x, t: c, x_T=x_T, num_steps=1, return_trajectory=True)
    assert traj.trajectory.shape == (2, 4, 3) and traj.times.tolist() == [1.0, 0.0]
    torch.testing.assert_close(traj.x0_preds[0], x_T - c)  # x - t v at t = 1


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2)])
def test_sampler_order_on_a_linear_ode(sampler, order):
    """dx/dt = a x from t = 1 to 0 has x(0) = x(1) exp(-a): the error falls by 2^order when the steps double."""
    a, x_T = 1.5, torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(-a)
    errors = [abs(float(flow_sample(lambda x, t: a * x, x_T=x_T, num_steps=n, sampler=sampler, dtype=torch.float64))
                  - exact) for n in (8, 16, 32)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(abs(r - 2 ** order) < 0.25 * 2 ** order for r in ratios), ratios


def test_heun_calls_the_model_twice_per_step_but_not_at_t_0():
    """2N - 1 evaluations for N steps: the last step, to t = 0, is Euler's (Karras et al. 2022; diffusers'
    FlowMatchHeunDiscreteScheduler), so the model is never asked at t = 0."""
    times = []
    flow_sample(lambda x, t: (times.append(float(t[0])), torch.zeros_like(x))[1], x_T=torch.zeros(2, 3),
                num_steps=3, sampler="heun", time_scale=9.0)
    assert times == pytest.approx([9.0, 6.0, 6.0, 3.0, 3.0])


def test_time_grid_and_bad_grids():
    assert flow_time_grid(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow_time_grid(4, shift=3.0)  # SD3's shift: more of the grid at high noise
    assert shifted[0] == 1 and shifted[-1] == 0 and shifted[2] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="decrease from 1"):
        flow_sample(lambda x, t: x, x_T=torch.zeros(1, 2), times=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unknown sampler"):
        flow_sample(lambda x, t: x, x_T=torch.zeros(1, 2), sampler="rk4")
    with pytest.raises(ValueError, match="euler\\' or \\'heun|samples with"):
        RectifiedFlowProcess().sample(lambda x, t: x, x_T=torch.zeros(1, 2), sampler="ddim")


def test_straight_paths_have_zero_straightness():
    times = flow_time_grid(10)
    start, end = torch.randn(5, 3), torch.randn(5, 3)
    trajectory = torch.stack([(1 - t) * end + t * start for t in times.float()])  # x(t) on the chord
    assert straightness(trajectory, times) < 1e-12
    assert path_chord_ratio(trajectory) == pytest.approx(1.0)


def test_straightness_of_a_quarter_circle_matches_the_closed_form():
    """x(t) = (cos(pi t / 2), sin(pi t / 2)): S = (int |v|^2 dt - |chord|^2) / |chord|^2 = (pi^2 / 4 - 2) / 2,
    and the path is a quarter circle: length pi / 2 over a chord of sqrt(2)."""
    times = flow_time_grid(2000)
    angle = math.pi / 2 * times
    trajectory = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)[:, None, :]  # [N + 1, 1, 2]
    assert float(straightness(trajectory, times)) == pytest.approx((math.pi ** 2 / 4 - 2) / 2, rel=1e-4)
    assert float(path_chord_ratio(trajectory)) == pytest.approx(math.pi / 2 / math.sqrt(2), rel=1e-5)
    with pytest.raises(ValueError, match="states for"):
        straightness(trajectory[:-1], times)


def test_ddim_paths_in_flow_coordinates_are_straight_for_one_data_point():
    """With data a single point x*, the exact eps is (x - alpha x*) / sigma and DDIM stays on the line from x* to the
    starting noise; mapped to flow coordinates, that line is the straight path (1 - s) x* + s eps."""
    from course_lib.processes import DDPMProcess
    from course_lib.flow import ddpm_path_as_flow

    process = DDPMProcess("linear", 1000)
    alpha_bar = process.noise_schedule.alpha_bar
    target = torch.tensor([[1.5, -0.5]])

    def exact_eps(x, t):
        a = alpha_bar[t.long()].reshape(-1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    noise = torch.randn(6, 2)
    out = process.sample(exact_eps, x_T=noise, num_steps=20, return_trajectory=True, clip_x0=False)
    path, s = ddpm_path_as_flow(out, process.noise_schedule)
    assert s[0] > 0.99 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    torch.testing.assert_close(path[-1].float(), target.expand(6, 2), atol=1e-4, rtol=1e-4)
    assert float(straightness(path, s)) < 1e-8
    eps_0 = (path[0] - (1 - s[0]) * target.double()) / s[0]  # the noise of the straight line through x_T
    for x, si in zip(path, s):
        torch.testing.assert_close(x, (1 - si) * target.double() + si * eps_0, atol=1e-5, rtol=1e-5)  # float32 sampling


def test_ddpm_flow_velocity_of_an_exact_eps_model_is_the_straight_line():
    """For data a single point x*, the exact eps makes every flow path straight towards x*: v(y, s) = (y - x*) / s,
    and Euler in one step from pure noise lands on x*."""
    from course_lib.processes import DDPMProcess
    from course_lib.flow import ddpm_flow_velocity

    process = DDPMProcess("linear", 1000)
    alpha_bar = process.noise_schedule.alpha_bar.double()
    target = torch.tensor([[1.5, -0.5]])

    def exact_eps(x, t):  # fractional t: interpolate alpha_bar like the velocity does
        lo = t.double().floor().long().clamp(0, 998)
        frac = (t.double() - lo).reshape(-1, 1)
        a = (alpha_bar[lo] * (1 - frac[:, 0]) + alpha_bar[lo + 1] * frac[:, 0]).reshape(-1, 1)
        return ((x.double() - a.sqrt() * target) / (1 - a).sqrt()).float()

    v = ddpm_flow_velocity(exact_eps, process.noise_schedule)
    y = torch.randn(5, 2)
    for s in (0.2, 0.5, 0.9):
        torch.testing.assert_close(v(y, torch.tensor(s)), (y - target) / s, atol=2e-3, rtol=2e-3)
    out = flow_sample(v, x_T=torch.randn(5, 2), num_steps=3)
    torch.testing.assert_close(out, target.expand(5, 2), atol=2e-3, rtol=2e-3)
