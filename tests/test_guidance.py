"""Classifier-free guidance: the formula, its two ends, one batched pass, samplers, and caption dropout."""

import pytest
import torch

from course_lib.guidance import ClassifierFreeGuidance, cfg_dropout, guide
from course_lib.samplers import ddim_sample, ddpm_sample
from course_lib.schedules import make_schedule

CONTEXT_DIM, M = 24, 4


@pytest.fixture(scope="module")
def setup(conditional_unet):
    model = conditional_unet(CONTEXT_DIM)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([999, 500, 3])
    context = torch.randn(3, M, CONTEXT_DIM, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    uncond = torch.randn(1, M, CONTEXT_DIM, generator=g)  # the empty caption: one start token ...
    uncond_mask = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)  # ... and padding
    with torch.no_grad():
        cond_out = model(x, t, context, mask)
        uncond_out = model(x, t, uncond.expand(3, -1, -1), uncond_mask.expand(3, -1))
    return model, x, t, context, mask, uncond, uncond_mask, cond_out, uncond_out


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x, t, context=None, context_mask=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, context, context_mask)


def test_scale_one_is_the_conditional_and_zero_the_unconditional_prediction(setup):
    model, x, t, context, mask, uncond, uncond_mask, cond_out, uncond_out = setup
    counting = CountingModel(model).eval()
    with torch.no_grad():
        out1 = ClassifierFreeGuidance(counting, context, mask, uncond, uncond_mask, guidance=1.0)(x, t)
        out0 = ClassifierFreeGuidance(counting, context, mask, uncond, uncond_mask, guidance=0.0)(x, t)
    assert torch.equal(out1, cond_out)
    assert torch.equal(out0, uncond_out)
    assert counting.batches == [3, 3]  # one pass of B images each: the other prediction is skipped


@pytest.mark.parametrize("scale", [3.0, -0.5, 7.5])
def test_guided_prediction_is_the_formula_from_one_batched_pass(setup, scale):
    model, x, t, context, mask, uncond, uncond_mask, cond_out, uncond_out = setup
    counting = CountingModel(model).eval()
    with torch.no_grad():
        out = ClassifierFreeGuidance(counting, context, mask, uncond, uncond_mask, guidance=scale)(x, t)
    expected = uncond_out + scale * (cond_out - uncond_out)
    # float32 rounding: a batch of 6 and two batches of 3 take different conv kernels; on an AVX2 CPU the
    # predictions differ by up to ~1e-5 (outputs of size ~7), and guidance multiplies that by up to |w| + |1 - w|
    tol = 1e-4 * max(1.0, abs(scale))
    assert (cond_out - uncond_out).abs().max() > 100 * tol  # a swapped or mixed-up half would be seen
    assert torch.allclose(out, expected, atol=tol, rtol=1e-5)
    assert counting.batches == [6]  # [x; x] in one forward pass
    assert torch.equal(guide(cond_out, uncond_out, scale), expected)


def test_masks_may_be_given_for_one_caption_only(setup):
    model, x, t, context, mask, uncond, uncond_mask, cond_out, _ = setup
    with torch.no_grad():
        uncond_nomask = model(x, t, uncond)
        out = ClassifierFreeGuidance(model, context, mask, uncond, None, guidance=2.0)(x, t)
    assert (cond_out - uncond_nomask).abs().max() > 0.1
    assert torch.allclose(out, 2 * cond_out - uncond_nomask, atol=2e-4)  # float32 rounding, as above


def test_guidance_inside_ddim_and_ddpm_samplers(setup):
    model, _, _, context, mask, uncond, uncond_mask, _, _ = setup
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    runs = {}
    for scale in (0.0, 1.0, 4.0):
        guided = ClassifierFreeGuidance(model, context, mask, uncond, uncond_mask, guidance=scale)
        runs[scale] = ddim_sample(guided, schedule, x_T=x_T, num_steps=4, progress=False)
        assert runs[scale].shape == x_T.shape and torch.isfinite(runs[scale]).all()
    plain = ddim_sample(lambda x, t: model(x, t, context, mask), schedule, x_T=x_T, num_steps=4, progress=False)
    assert torch.equal(runs[1.0], plain)
    assert (runs[4.0] - runs[1.0]).abs().max() > 1e-3 and (runs[0.0] - runs[1.0]).abs().max() > 1e-3
    short = make_schedule("linear", 3)  # ancestral sampling through every step of a short chain
    guided = ClassifierFreeGuidance(model, context[:1], mask[:1], uncond, uncond_mask, guidance=2.0)
    assert ddpm_sample(guided, short, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                       progress=False).shape == (2, 3, 16, 16)


def test_guidance_errors_name_the_fix(setup):
    model, x, t, context, mask, uncond, _, _, _ = setup
    with pytest.raises(ValueError, match="pass uncond_context="):
        ClassifierFreeGuidance(model, context, mask, guidance=3.0)
    with pytest.raises(ValueError, match="pad both captions to the same length M"):
        ClassifierFreeGuidance(model, context, mask, uncond[:, :2], guidance=3.0)
    with pytest.raises(ValueError, match="batch size 2 but x has 3"):
        ClassifierFreeGuidance(model, context[:2], mask[:2], uncond, guidance=3.0)(x, t)
    model.train()
    try:
        with pytest.warns(UserWarning, match="model.eval"), torch.no_grad():
            ClassifierFreeGuidance(model, context, mask, uncond, guidance=1.0)(x, t)
    finally:
        model.eval()


def test_caption_dropout_is_deterministic_and_drops_about_p():
    captions = [f"a photo of a cat number {i}" for i in range(2000)]
    a = cfg_dropout(captions, 0.2, torch.Generator().manual_seed(0))
    b = cfg_dropout(captions, 0.2, torch.Generator().manual_seed(0))
    c = cfg_dropout(captions, 0.2, torch.Generator().manual_seed(1))
    assert a == b and a != c
    dropped = sum(s == "" for s in a)
    assert 340 < dropped < 460  # 400 +- 5 standard deviations
    assert all(s == "" or s == orig for s, orig in zip(a, captions))
    assert cfg_dropout(captions[:5], 0.0) == captions[:5]
    assert cfg_dropout(captions[:5], 1.0, empty="<empty>") == ["<empty>"] * 5
    with pytest.raises(ValueError, match="probability"):
        cfg_dropout(captions, 1.5)
    with pytest.raises(TypeError, match="wrap it in a list"):
        cfg_dropout("a cat", 0.1)
