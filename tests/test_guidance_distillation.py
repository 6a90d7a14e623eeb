"""Chapter 7's guidance distillation: the CFG target, the guidance embedding's zero start, one pass per step."""

import pytest
import torch

from conftest import randomize_zero_init
from course_lib.generation import Pipeline
from course_lib.guidance import ClassifierFreeGuidance, EmbeddedGuidance, guide
from course_lib.guidance_distillation import guidance_distillation_loss, teacher_guided_velocity
from course_lib.mmdit import MMDiTConfig
from course_lib.processes import RectifiedFlowProcess
from course_lib.text2image import Text2ImageConfig, TextToImageModel


def teacher_and_student(seed=0):
    torch.manual_seed(seed)
    teacher = randomize_zero_init(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny()), std=0.1).eval()
    config = Text2ImageConfig.latent_mmdit_tiny(denoiser=MMDiTConfig.tiny(context_dim=32, guidance_embed=True))
    student = TextToImageModel(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("mmdit.guidance_in") for name in missing)
    return teacher, student


def test_the_guided_target_takes_one_weight_per_image():
    cond, uncond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)
    assert torch.equal(guide(cond, uncond, 0.0), uncond)
    w = torch.tensor([0.0, 1.0, 3.0])
    per_image = guide(cond, uncond, w)
    torch.testing.assert_close(per_image[2], uncond[2] + 3 * (cond[2] - uncond[2]))
    torch.testing.assert_close(per_image[:2], torch.stack([uncond[0], cond[1]]))


def test_the_student_starts_as_its_teacher_and_needs_its_weight():
    teacher, student = teacher_and_student()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([200.0, 800.0])
    context = teacher.encode(["a photo of a cat", "a photo of a ship"])
    with torch.no_grad():
        reference = teacher(x, t, context)
        for w in (1.0, 3.0, 7.5):  # a zero guidance_in: every w gives the teacher's conditional prediction
            assert torch.equal(student(x, t, context, guidance=torch.full((2,), w)), reference)
    assert student.guidance_embedded and not teacher.guidance_embedded
    with pytest.raises(ValueError, match="give its weight"):
        student(x, t, context)
    with pytest.raises(ValueError, match="no guidance embedding"):
        teacher(x, t, context, guidance=torch.full((2,), 3.0))


def test_the_teachers_target_is_classifier_free_guidance_in_one_batch():
    teacher, _ = teacher_and_student()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 600.0])
    context, uncond = teacher.encode(["a photo of a cat", "a photo of a dog"]), teacher.encode(["", ""])
    w = torch.tensor([2.0, 4.0])
    target = teacher_guided_velocity(teacher, x, t, context, uncond, w)
    for i in range(2):
        cfg = ClassifierFreeGuidance(teacher, context.tokens[i:i + 1], context.mask[i:i + 1], uncond.tokens[:1],
                                     uncond.mask[:1], guidance=float(w[i]))
        torch.testing.assert_close(target[i:i + 1], cfg(x[i:i + 1], t[i:i + 1]), atol=1e-5, rtol=1e-5)


def test_distillation_moves_the_student_towards_the_guided_teacher():
    teacher, student = teacher_and_student(seed=1)
    process = RectifiedFlowProcess()
    base = torch.nn.functional.interpolate(torch.randn(64, 4, 2, 2), size=8, mode="bilinear")  # smooth 'latents'
    labels = torch.arange(64) % 10
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    probe_x, probe_t = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.full((8,), 500.0)
    probe_c, probe_u = teacher.encode(["a photo of a cat"] * 8), teacher.encode([""] * 8)
    w = torch.full((8,), 4.0)

    def gap():  # the student's distance to the teacher's guided velocity at w = 4 on fixed inputs
        with torch.no_grad():
            target = teacher_guided_velocity(teacher, probe_x, probe_t, probe_c, probe_u, w)
            return (student(probe_x, probe_t, student.encode(["a photo of a cat"] * 8), guidance=w) - target).pow(2).mean()

    before = gap()
    torch.manual_seed(0)
    for step in range(40):
        idx = torch.randint(0, 64, (16,))
        loss = guidance_distillation_loss(student, teacher, process, base[idx], labels[idx], w_range=(1.0, 5.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert gap() < 0.3 * before  # measured here: 0.118 -> 0.0099 (12x) in 40 steps
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is only read


def test_a_guidance_embedded_pipeline_takes_one_pass_a_step():
    _, student = teacher_and_student()
    pipe = Pipeline(student.eval(), RectifiedFlowProcess())
    assert isinstance(pipe.guided(["a photo of a cat"], 3.0), EmbeddedGuidance)
    with pipe.count_nfe() as nfe:
        images = pipe.generate(["a photo of a cat", "a photo of a dog"], guidance=3.0, num_steps=4)
    assert images.shape == (2, 4, 8, 8) and nfe.per_image == 4  # classifier-free guidance would count 8
