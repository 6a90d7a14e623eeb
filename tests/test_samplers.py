"""DDPM and DDIM samplers on a toy problem whose optimal denoiser is known in closed form.

Data: x0 ~ N(mu, diag(s^2)) in 2-D. Then x_t = a x0 + b eps (a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar))
is Gaussian too, with variance var_t = a^2 s^2 + b^2 per coordinate, and the ideal predictions are

    E[eps | x_t] = b / var_t * (x_t - a mu)
    E[x0  | x_t] = mu + a s^2 / var_t * (x_t - a mu)

Both samplers are then linear maps plus Gaussian noise, so the mean and standard deviation of
what they produce can also be computed exactly by a short recursion (``chain_std`` below, an
independent re-derivation). The tests compare the samplers' output both with the data and with
that recursion: the first says "lands on the data distribution", the second catches small
mistakes that a loose tolerance would let through.
"""

import pytest
import torch

from course_lib.samplers import SamplerOutput, ddim_sample, ddim_timesteps, ddpm_sample
from course_lib.schedules import NoiseSchedule, gather
from course_lib.unet import UNet, UNetConfig

MU = torch.tensor([1.0, -0.5])
STD = torch.tensor([0.5, 0.8])
N = 20_000  # samples: the standard error of a std estimate is ~0.5%, of a mean ~0.005


class GaussianOracle:
    """The exact minimum-MSE predictor for Gaussian data, in any parameterization."""

    def __init__(self, schedule, mu=MU, std=STD, parameterization="eps"):
        self.schedule, self.mu, self.std, self.parameterization = schedule, mu.double(), std.double(), parameterization

    def __call__(self, x, t):
        ab = gather(self.schedule.alpha_bar, t, x.ndim).double()
        a, b = ab.sqrt(), (1 - ab).sqrt()
        var = a**2 * self.std**2 + b**2
        r = x.double() - a * self.mu
        eps = b / var * r
        x0 = self.mu + a * self.std**2 / var * r
        out = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.parameterization]
        return out.to(x.dtype)


def chain_std(schedule, s, sampler, steps=None, eta=0.0):
    """Exact output std of the sampler on N(mu, s^2) data, started from x_T ~ N(0, 1) (float64 recursion).

    Each step maps the deviation d = x - a mu linearly: d_prev = k d + sigma z, so var_prev = k^2 var + sigma^2.
    """
    ab = schedule.alpha_bar.double()
    var = torch.tensor(1.0, dtype=torch.float64)
    if sampler == "ddpm":
        betas = schedule.betas.double()
        for t in range(schedule.T - 1, -1, -1):
            a2, a2p = ab[t], (ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
            v = a2 * s**2 + (1 - a2)
            x0_gain = a2.sqrt() * s**2 / v  # d x0_hat / d x_t
            # posterior mean = c0 x0_hat + ct x_t (Ho et al. eq. 7)
            c0 = betas[t] * a2p.sqrt() / (1 - a2)
            ct = (1 - a2p) * (1 - betas[t]).sqrt() / (1 - a2)
            k = c0 * x0_gain + ct
            var = k**2 * var + (betas[t] * (1 - a2p) / (1 - a2) if t > 0 else 0.0)
        return float(var.sqrt())
    taus = ddim_timesteps(schedule.T, steps)
    for i, t in enumerate(taus):
        a2 = ab[t]
        a2p = ab[taus[i + 1]] if i + 1 < len(taus) else torch.tensor(1.0, dtype=torch.float64)
        v = a2 * s**2 + (1 - a2)
        sigma2 = eta**2 * (1 - a2p) / (1 - a2) * (1 - a2 / a2p)
        k = (a2p.sqrt() * a2.sqrt() * s**2 + (1 - a2p - sigma2).sqrt() * (1 - a2).sqrt()) / v
        var = k**2 * var + sigma2
    return float(var.sqrt())


def assert_matches(x, mean, std, rel_std, abs_mean=0.02):
    """Sample mean within abs_mean of ``mean`` and sample std within rel_std of ``std``, per coordinate."""
    got_mean, got_std = x.mean(0), x.std(0)
    assert torch.allclose(got_mean, torch.as_tensor(mean, dtype=x.dtype), atol=abs_mean), (got_mean, mean)
    std = torch.as_tensor(std, dtype=x.dtype)
    assert ((got_std - std).abs() / std).max() < rel_std, (got_std, std)


@pytest.fixture(scope="module")
def schedule():
    # A short chain keeps the tests fast; cosine keeps its discretisation error small (~2%).
    return NoiseSchedule.cosine(200)


def test_ddpm_and_ddim_eta1_all_steps_land_on_the_data_distribution(schedule):
    model = GaussianOracle(schedule)
    ddpm = ddpm_sample(model, schedule, (N, 2), generator=torch.Generator().manual_seed(0),
                       clip_x0=False, progress=False)
    ddim = ddim_sample(model, schedule, (N, 2), num_steps=schedule.T, eta=1.0,
                       generator=torch.Generator().manual_seed(1), clip_x0=False, progress=False)
    for x in (ddpm, ddim):
        assert_matches(x, MU, STD, rel_std=0.04)  # against the data itself
        exact = [chain_std(schedule, s.item(), "ddpm") for s in STD]
        assert_matches(x, MU, exact, rel_std=0.015)  # against the exact law of the discrete chain
    # the two samplers' outputs have the same law: compare them with each other too
    assert torch.allclose(ddpm.std(0), ddim.std(0), rtol=0.02)


def test_ddim_eta1_all_steps_is_the_ddpm_chain_draw_for_draw(schedule):
    """With the same generator seed both draw the same noise in the same order: same samples."""
    model = GaussianOracle(schedule)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))
    ddpm = ddpm_sample(model, schedule, x_T=x_T, generator=torch.Generator().manual_seed(7), progress=False)
    ddim = ddim_sample(model, schedule, x_T=x_T, num_steps=schedule.T, eta=1.0,
                       generator=torch.Generator().manual_seed(7), progress=False)
    assert torch.allclose(ddpm, ddim, atol=1e-4)


def test_ddpm_with_beta_variance_is_also_right(schedule):
    x = ddpm_sample(GaussianOracle(schedule), schedule, (N, 2), variance="beta",
                    generator=torch.Generator().manual_seed(3), clip_x0=False, progress=False)
    assert_matches(x, MU, STD, rel_std=0.04)


def test_ddim_eta0_is_deterministic(schedule):
    model = GaussianOracle(schedule)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(model, schedule, x_T=x_T, num_steps=10, eta=0.0, generator=torch.Generator().manual_seed(1),
                    progress=False)
    b = ddim_sample(model, schedule, x_T=x_T, num_steps=10, eta=0.0, generator=torch.Generator().manual_seed(2),
                    progress=False)
    assert torch.equal(a, b)
    # ...while eta > 0 does use the generator
    c = ddim_sample(model, schedule, x_T=x_T, num_steps=10, eta=0.5, generator=torch.Generator().manual_seed(1),
                    progress=False)
    d = ddim_sample(model, schedule, x_T=x_T, num_steps=10, eta=0.5, generator=torch.Generator().manual_seed(2),
                    progress=False)
    assert not torch.allclose(c, d)


def test_ddim_eta0_with_few_steps_lands_where_the_ode_discretisation_says(schedule):
    """Few-step DDIM gets the mean right and the spread slightly too small; more steps close the gap.

    DDIM (eta = 0) is a first-order solver of the probability-flow ODE: with 10 steps on this data its
    std is ~15% low (exactly what the recursion predicts), with all 200 steps within ~1% of the data's.
    """
    model = GaussianOracle(schedule)
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    gaps = []
    for steps in (10, 50, schedule.T):
        x = ddim_sample(model, schedule, x_T=x_T, num_steps=steps, eta=0.0, clip_x0=False, progress=False)
        exact = torch.tensor([chain_std(schedule, s.item(), "ddim", steps) for s in STD])
        assert_matches(x, MU, exact, rel_std=0.015)
        gaps.append(((x.std(0) - STD).abs() / STD).max().item())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02  # all steps: on the data distribution
    assert gaps[1] < 0.06  # 50 steps: close
    assert gaps[0] < 0.2  # 10 steps: right mean, a somewhat narrow spread


@pytest.mark.parametrize("param", ["x0", "v"])
def test_samplers_accept_any_parameterization(schedule, param):
    """The same ideal denoiser expressed as x0 or v gives the same samples as the eps version."""
    x_T = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    ref = ddim_sample(GaussianOracle(schedule), schedule, x_T=x_T, num_steps=20, clip_x0=False, progress=False)
    got = ddim_sample(GaussianOracle(schedule, parameterization=param), schedule, x_T=x_T, num_steps=20,
                      parameterization=param, clip_x0=False, progress=False)
    assert torch.allclose(got, ref, atol=1e-3)
    ref = ddpm_sample(GaussianOracle(schedule), schedule, x_T=x_T, generator=torch.Generator().manual_seed(1),
                      clip_x0=False, progress=False)
    got = ddpm_sample(GaussianOracle(schedule, parameterization=param), schedule, x_T=x_T,
                      generator=torch.Generator().manual_seed(1), parameterization=param, clip_x0=False,
                      progress=False)
    assert torch.allclose(got, ref, atol=1e-3)


def test_trajectory_is_returned_for_plotting(schedule):
    model = GaussianOracle(schedule)
    out = ddim_sample(model, schedule, (8, 2), num_steps=5, return_trajectory=True, progress=False,
                      generator=torch.Generator().manual_seed(0))
    assert isinstance(out, SamplerOutput)
    assert out.trajectory.shape == (6, 8, 2) and out.x0_preds.shape == (5, 8, 2)
    assert out.timesteps.tolist() == ddim_timesteps(schedule.T, 5) == [199, 149, 100, 50, 0]
    assert torch.equal(out.trajectory[-1], out.sample)
    # the predicted x0 gets better as t falls: the last prediction is the sample itself (alpha_bar_prev = 1)
    assert torch.allclose(out.x0_preds[-1], out.sample)
    full = ddpm_sample(model, schedule, (8, 2), return_trajectory=True, progress=False)
    assert full.trajectory.shape == (schedule.T + 1, 8, 2) and full.timesteps[0] == schedule.T - 1


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(100, 101)


def test_samplers_run_a_tiny_unet_clip_and_check_their_inputs():
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny()).eval()
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.5)  # a wild (untrained) model: predictions need clipping
    schedule = NoiseSchedule.linear(1000)
    x = ddim_sample(model, schedule, (2, 3, 32, 32), num_steps=3, progress=False)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1  # the last DDIM step lands on the clipped x0 prediction
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(model, schedule, None, progress=False)
    with pytest.raises(ValueError, match="unknown parameterization"):
        ddim_sample(model, schedule, (1, 3, 32, 32), parameterization="score", progress=False)
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(model, schedule, (1, 3, 32, 32), variance="learned", progress=False)
    with pytest.warns(UserWarning, match="eval"):
        ddim_sample(model.train(), schedule, (1, 3, 32, 32), num_steps=1, progress=False)


def test_trailing_spacing_skips_the_wasted_step_at_t_0():
    """"trailing" (Lin et al. 2024): T-1 - k T/n, ending one stride above 0; "linspace" (the default) ends at 0."""
    from course_lib.samplers import ddim_timesteps

    assert ddim_timesteps(1000, 4) == [999, 666, 333, 0]
    assert ddim_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert ddim_timesteps(1000, 1000, "trailing") == list(range(999, -1, -1)) == ddim_timesteps(1000, 1000)
    assert ddim_timesteps(10, 1, "trailing") == [9]
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddim_timesteps(1000, 4, "leading")


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 25, 50, 333, 1000])
def test_trailing_spacing_is_diffusers_timestep_spacing_trailing(num_steps):
    diffusers = pytest.importorskip("diffusers", reason="the bridge extra (pip install -e '.[bridge]') is not "
                                                        "installed: diffusers' DDIMScheduler is the reference")
    from course_lib.samplers import ddim_timesteps

    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    scheduler.set_timesteps(num_steps)
    assert scheduler.timesteps.tolist() == ddim_timesteps(1000, num_steps, "trailing")
