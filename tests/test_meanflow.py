"""MeanFlow (chapter 7): the exact average velocity on Gaussian data, the identity, the JVP target, one step."""

import pytest
import torch

from course_lib.attention import plain_attention
from course_lib.meanflow import (gaussian_average_velocity, meanflow_loss, meanflow_sample, meanflow_target,
                                 sample_interval)
from course_lib.toy import GaussianMixture, ToyMeanFlowMLP

MEAN, STD = torch.tensor([1.5, -0.5]), 0.3


def exact_u(z, r, t):
    return gaussian_average_velocity(z, r, t, MEAN, STD)


def test_the_closed_form_is_the_ode_integrated_and_at_r_equal_t_the_velocity():
    data = GaussianMixture(torch.ones(1), MEAN[None], torch.full((1, 2), STD))
    z1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    z, n = z1.double(), 2000  # Euler on the exact instantaneous velocity, 2,000 steps a unit, from t = 1 to 0.4
    for k in range(int(0.6 * n)):
        z = z - data.flow_velocity(z, 1 - k / n) / n
    ones = torch.ones(64)
    torch.testing.assert_close(z1 - 0.6 * exact_u(z1, 0.4 * ones, ones), z.float(), atol=2e-3, rtol=0)
    z, t = z.float(), torch.full((64,), 0.4)
    torch.testing.assert_close(exact_u(z, t, t), data.flow_velocity(z, t), atol=1e-5, rtol=1e-5)
    one_step = z1 - exact_u(z1, 0 * ones, ones)  # the exact transport: mean + std * z1
    torch.testing.assert_close(one_step, MEAN + STD * z1, atol=1e-5, rtol=1e-5)


def test_the_exact_average_velocity_satisfies_the_meanflow_identity():
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    t = torch.rand(32, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.1
    r = t * torch.rand(32, generator=torch.Generator().manual_seed(3))
    v = exact_u(z, t, t)  # the marginal velocity at (z, t)
    u, u_tgt = meanflow_target(exact_u, z, r, t, v)  # with the true u and v the target is u itself
    torch.testing.assert_close(u_tgt, u, atol=1e-4, rtol=1e-4)
    swapped = meanflow_target(exact_u, z, t, r, v)[1]  # the likely mistake: r and t exchanged
    assert (swapped - u).abs().max() > 0.05


def test_sample_interval_orders_the_pair_and_keeps_the_flow_share():
    torch.manual_seed(0)
    r, t = sample_interval(20_000, flow_ratio=0.75)
    assert (r <= t).all() and ((r > 0) & (t < 1)).all()
    assert abs((r == t).float().mean().item() - 0.75) < 0.02
    with pytest.raises(ValueError, match="share"):
        sample_interval(4, flow_ratio=1.5)


def test_a_trained_toy_meanflow_lands_near_the_exact_transport_in_one_step():
    torch.manual_seed(0)
    model = ToyMeanFlowMLP(hidden=64, depth=2, time_dim=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(400):
        x0 = MEAN + STD * torch.randn(256, 2)
        loss = meanflow_loss(model, x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    z1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
    error = (meanflow_sample(model, z1, 1) - (MEAN + STD * z1)).norm(dim=1).mean()
    naive = (z1 - model(z1, torch.ones(2000), torch.ones(2000)).detach() - (MEAN + STD * z1)).norm(dim=1).mean()
    assert error < 0.3, error  # measured here over 5 seeds: 0.11-0.18 (the data's spread is 0.3 per axis)
    assert error < 0.4 * naive  # one Euler step with the instantaneous velocity u(z, 1, 1): 0.70-0.80


def test_the_jvp_through_attention_on_the_plain_path_matches_finite_differences():
    from conftest import randomize_zero_init
    from course_lib.mmdit import MMDiT, MMDiTConfig

    torch.manual_seed(0)
    net = randomize_zero_init(MMDiT(MMDiTConfig.tiny(context_dim=8)), std=0.1).double()
    context = torch.randn(2, 3, 8, dtype=torch.float64)

    def u(z, r, t):  # the MM-DiT as an average-velocity model, a smooth function of r and t (for the check)
        return net(z, 2 * t - r, context)

    z, v = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    r, t = torch.tensor([0.2, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.9], dtype=torch.float64)
    tangents = (v, torch.zeros_like(r), torch.ones_like(t))
    with plain_attention(net):  # torch 2.14's fused SDPA kernel on CPU has no forward-mode rule (NotImplementedError)
        _, du_dt = torch.func.jvp(u, (z, r, t), tangents)
    assert all(m.impl == "sdpa" for m in net.modules() if hasattr(m, "impl"))  # restored afterwards
    eps = 1e-3
    with torch.no_grad():  # d/dt u(z + eps v, r, t + eps) by central differences
        finite = (u(z + eps * v, r, t + eps) - u(z - eps * v, r, t - eps)) / (2 * eps)
    torch.testing.assert_close(du_dt, finite, atol=1e-4, rtol=1e-4)  # measured here: 2e-5 at most


def test_a_text_student_starts_as_its_teacher_and_its_distillation_loss_trains_only_itself():
    from conftest import randomize_zero_init
    from course_lib.meanflow import meanflow_distillation_loss, text_average_velocity
    from course_lib.processes import RectifiedFlowProcess
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    torch.manual_seed(0)
    teacher = randomize_zero_init(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny()), std=0.1).eval()
    student = TextToImageModel(Text2ImageConfig.latent_mmdit_tiny(interval_embed=True))
    missing, _ = student.load_state_dict(teacher.state_dict(), strict=False)
    assert missing and all(name.startswith("mmdit.interval_in") for name in missing)
    context = teacher.encode(["a photo of a cat", "a photo of a ship"])
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([0.9, 0.4])
    u = text_average_velocity(student, context)
    with torch.no_grad():
        for r in (t, torch.zeros(2)):  # a zero interval embedding: u(z, r, t) = v(z, t) for every r
            assert torch.equal(u(z, r, t), teacher(z, 1000 * t, context))
    teacher.requires_grad_(False)
    loss = meanflow_distillation_loss(student, teacher, RectifiedFlowProcess(), torch.randn(4, 4, 8, 8),
                                      torch.tensor([3, 8, 1, 0]))
    loss.backward()
    assert torch.isfinite(loss) and student.mmdit.interval_in[2].weight.grad.abs().sum() > 0
    assert all(m.impl == "sdpa" for m in student.modules() if hasattr(m, "impl"))  # back on the fused path


def test_a_meanflow_pipeline_takes_one_conditional_pass_a_step_at_its_trained_w():
    from conftest import randomize_zero_init
    from course_lib.generation import Pipeline
    from course_lib.guidance import BakedGuidance
    from course_lib.meanflow import text_average_velocity
    from course_lib.processes import MeanFlowProcess, process_from_dict
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    torch.manual_seed(0)
    student = randomize_zero_init(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny(interval_embed=True)),
                                  std=0.1).eval()
    process = MeanFlowProcess(time_sampling="logit_normal")
    assert process_from_dict(process.to_dict()) == process and process.samplers == ("meanflow",)
    pipe = Pipeline(student, process, card={"training": {"meanflow": {"guidance": 3.0}}})
    prompts = ["a photo of a cat", "a photo of a dog"]
    assert isinstance(pipe.guided(prompts, 3.0), BakedGuidance)
    z1 = torch.randn(2, 4, 8, 8)
    with pipe.count_nfe() as nfe_one:
        one = pipe.generate(prompts, guidance=3.0, x_T=z1)  # the default: one step
    with pipe.count_nfe() as nfe_four:
        four = pipe.generate(prompts, guidance=3.0, x_T=z1, num_steps=4)
    assert (nfe_one.per_image, nfe_four.per_image) == (1, 4)  # no second (unconditional) pass
    u = text_average_velocity(student, student.encode(prompts))
    with torch.no_grad():
        torch.testing.assert_close(one, z1 - u(z1, torch.zeros(2), torch.ones(2)))  # z_0 = z_1 - u(z_1, 0, 1)
    assert four.shape == one.shape and not torch.allclose(four, one)
    with pytest.raises(ValueError, match="guidance=3"):
        pipe.generate(prompts, guidance=5.0, x_T=z1)
    with pytest.raises(ValueError, match="samples with 'meanflow'"):
        pipe.generate(prompts, guidance=3.0, x_T=z1, sampler="euler")


def test_the_target_skips_the_jvp_where_r_equals_t_and_gives_what_one_jvp_gives():
    from conftest import randomize_zero_init
    from course_lib.meanflow import text_average_velocity
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    torch.manual_seed(0)
    toy = ToyMeanFlowMLP(hidden=32, depth=2)
    text = randomize_zero_init(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny(interval_embed=True)), std=0.1)
    context = text.encode(["a photo of a cat", "a ship", "a dog", "a frog", "a truck"])
    r, t = torch.tensor([0.2, 0.5, 0.1, 0.7, 0.3]), torch.tensor([0.9, 0.5, 0.1, 0.8, 0.3])  # rows 1, 2, 4: r = t
    for model, shape in ((toy, (5, 2)), (text_average_velocity(text, context), (5, 4, 8, 8))):
        z, v = torch.randn(shape), torch.randn(shape)
        with plain_attention(text):
            u, u_tgt = meanflow_target(model, z, r, t, v)  # split: a plain pass for rows 1, 2, 4
            u_all, u_tgt_all = meanflow_target(lambda *a: model(*a), z, r, t, v)  # a bare function: one JVP
        # float32 sums differ a little with the batch's size: 1.4e-5 measured at most
        torch.testing.assert_close(u, u_all, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(u_tgt, u_tgt_all, atol=1e-4, rtol=1e-4)
        assert torch.equal(u_tgt[[1, 2, 4]], v[[1, 2, 4]]) and u.requires_grad and not u_tgt.requires_grad
