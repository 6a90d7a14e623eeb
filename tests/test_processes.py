"""The process seam: DDPMProcess against the chapter-1 functions, cards, and a stand-in process."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from course_lib.flow import ddpm_flow_velocity
from course_lib.parameterization import diffusion_loss
from course_lib.processes import (PROCESSES, DDPMProcess, NoProcessError, Process, RectifiedFlowProcess,
                                  process_from_card, process_from_dict, register_process)
from course_lib.samplers import ddim_sample, ddpm_sample


def _model(x, t):
    """A fixed, non-trivial network stand-in: depends on x and t."""
    return 0.3 * x + 0.001 * t.float().reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_ddpm_loss_is_diffusion_loss_bit_for_bit(parameterization):
    process = DDPMProcess("cosine", 200, parameterization)
    x0 = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    ours = process.loss(_model, x0)
    torch.manual_seed(5)
    reference = diffusion_loss(_model, process.noise_schedule, x0, parameterization)
    assert torch.equal(ours, reference)
    assert ours.dtype == torch.float32 and ours.ndim == 0


def test_ddpm_pieces_are_the_forward_process():
    process = DDPMProcess("linear", 1000, "v")
    x0, noise = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0, 10, 500, 999])
    a = process.noise_schedule.alpha_bar[t].sqrt()[:, None]
    b = (1 - process.noise_schedule.alpha_bar[t]).sqrt()[:, None]
    torch.testing.assert_close(process.corrupt(x0, t, noise), a * x0 + b * noise)
    torch.testing.assert_close(process.target(x0, noise, t), a * noise - b * x0)  # v (Salimans & Ho 2022)
    torch.manual_seed(0)
    ts = process.sample_time(10_000)
    assert ts.dtype == torch.long and int(ts.min()) == 0 and int(ts.max()) == 999


def test_ddpm_sample_is_the_chapter_1_samplers():
    process = DDPMProcess("linear", 50, "eps")
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    ddim = process.sample(_model, x_T=x_T, num_steps=7)
    assert torch.equal(ddim, ddim_sample(_model, process.noise_schedule, x_T=x_T, num_steps=7, progress=False))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    ddpm = process.sample(_model, (3, 2), sampler="ddpm", generator=g())
    assert torch.equal(ddpm, ddpm_sample(_model, process.noise_schedule, (3, 2), generator=g(), progress=False))
    with pytest.raises(ValueError, match="runs all T=50 steps"):
        process.sample(_model, (3, 2), sampler="ddpm", num_steps=10)
    with pytest.raises(ValueError, match="'ddim' or 'ddpm', not 'euler'"):
        process.sample(_model, (3, 2), sampler="euler")


def test_trajectory_times_are_continuous_from_noise_to_data():
    process = DDPMProcess("linear", 100)
    out = process.sample(_model, (2, 2), num_steps=5, return_trajectory=True,
                         generator=torch.Generator().manual_seed(0))
    assert out.timesteps.tolist() == [99, 74, 50, 25, 0]
    assert out.times.tolist() == [1.0, 0.75, 0.51, 0.26, 0.01, 0.0]  # (t + 1) / T, then the sample at 0
    assert len(out.times) == len(out.trajectory)
    assert torch.equal(process.time(out.timesteps), out.times[:-1])


def test_to_dict_round_trip_and_legacy_cards():
    process = DDPMProcess("cosine", 500, "x0")
    assert process.to_dict() == {"name": "ddpm", "schedule": "cosine", "T": 500, "parameterization": "x0"}
    assert process_from_dict(process.to_dict()) == process
    assert process_from_card({"training": {"process": process.to_dict()}}) == process
    # the chapter 1-3 checkpoints were written before processes existed
    legacy = {"training": {"diffusion": {"schedule": "linear", "T": 1000, "parameterization": "eps"}}}
    assert process_from_card(legacy) == DDPMProcess()
    with pytest.raises(NoProcessError, match="not a denoiser"):
        process_from_card({"model_class": "CIFARClassifier", "training": {"recipe": "cifar-classifier"}})
    with pytest.raises(NoProcessError, match="unknown process 'flow'"):
        process_from_dict({"name": "flow"})
    with pytest.raises(NoProcessError, match="no settings \\['steps'\\]"):
        process_from_dict({"name": "ddpm", "steps": 3})
    with pytest.raises(ValueError, match="unknown noise schedule"):
        DDPMProcess("quadratic")
    with pytest.raises(ValueError, match="unknown parameterization"):
        DDPMProcess(parameterization="score")


@dataclass(frozen=True)
class LinearBlend(Process):
    """A stand-in second process: x_t = (1 - t) x_0 + t noise with t in [0, 1], target noise - x_0,
    one Euler step per ``num_steps``. (Written here only to show the seam; chapter 5 builds the real one.)"""

    name: ClassVar[str] = "test-linear-blend"
    samplers: ClassVar[tuple[str, ...]] = ("euler",)

    def sample_time(self, batch, device=None):
        return torch.rand(batch, device=device)

    def corrupt(self, x0, t, noise):
        t = t.reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - t) * x0 + t * noise

    def target(self, x0, noise, t):
        return noise - x0

    def sample(self, model, shape=None, *, x_T=None, sampler=None, num_steps=None, generator=None,
               return_trajectory=False, progress=False, device=None, **options):
        self.check_sampler(sampler)
        x = x_T if x_T is not None else torch.randn(tuple(shape), generator=generator)
        x = x.to(device or x.device)
        n = num_steps or 4
        for i in range(n, 0, -1):
            t = torch.full((x.shape[0],), i / n, device=x.device)
            x = x - model(x, t) / n
        return x


def test_a_new_process_is_one_registered_class(tmp_path):
    """Register the class; a recipe's card, a checkpoint and the generation path then work with it unchanged."""
    from course_lib.checkpoint import save_checkpoint
    from course_lib.generation import Pipeline
    from course_lib.recipes import DenoiserRecipe
    from course_lib.trainer import TrainConfig
    from course_lib.unet import UNet, UNetConfig

    register_process(LinearBlend)
    try:
        recipe = DenoiserRecipe("test-blend", "a stand-in", UNetConfig.tiny, TrainConfig, process=LinearBlend())
        assert recipe.card_info()["process"] == {"name": "test-linear-blend"}
        process = process_from_card({"training": recipe.card_info()})
        assert process == LinearBlend()
        torch.manual_seed(0)
        unet = UNet(UNetConfig.tiny(image_size=16)).eval()
        path = save_checkpoint(tmp_path / "blend.safetensors", unet, training=recipe.card_info())
        pipe = Pipeline.from_checkpoint(path)
        x_T = torch.randn(2, 3, 16, 16)
        assert pipe.process == LinearBlend()
        assert torch.equal(pipe.generate(x_T=x_T, num_steps=2), process.sample(unet, x_T=x_T, num_steps=2))
        torch.manual_seed(0)
        x0 = torch.randn(4, 3)
        assert torch.isfinite(process.loss(_model, x0))
        exact = lambda x, t: x  # noqa: E731  # the velocity field of data x_0 = 0: straight paths to the origin
        assert process.sample(exact, x_T=torch.ones(2, 3), num_steps=1).abs().max() == 0
        with pytest.raises(TypeError, match="dataclass subclass of Process"):
            register_process(int)
    finally:
        PROCESSES.pop(LinearBlend.name, None)


def test_velocity_field_is_each_process_s_probability_flow_ode():
    """process.velocity_field(model): v(x, t) on the flow axis (data at 0, noise at 1) for any process."""
    seen = []
    flow_model = lambda x, t: (seen.append(t), 2 * x)[1]  # noqa: E731
    v = RectifiedFlowProcess(time_scale=1000.0).velocity_field(flow_model)
    x = torch.randn(3, 2)
    torch.testing.assert_close(v(x, torch.tensor(0.25)), 2 * x)  # the model itself ...
    assert seen[-1].tolist() == [250.0] * 3  # ... told time_scale * t, one time per point
    v(x, torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(seen[-1], torch.tensor([100.0, 200.0, 300.0]))

    ddpm = DDPMProcess("linear", 1000)
    y = torch.randn(4, 2)
    torch.testing.assert_close(ddpm.velocity_field(_model)(y, torch.tensor(0.4)),
                               ddpm_flow_velocity(_model, ddpm.noise_schedule)(y, torch.tensor(0.4)))
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731  # eps = 0: x0_hat = x / alpha, v = -y / (1 - s)
    torch.testing.assert_close(ddpm.velocity_field(zero_eps)(y, torch.tensor(0.5)), -y / 0.5)
    with pytest.raises(ValueError, match="epsilon model"):
        DDPMProcess("linear", 1000, "v").velocity_field(_model)
    with pytest.raises(NotImplementedError, match="LinearBlend"):
        LinearBlend().velocity_field(_model)

