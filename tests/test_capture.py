"""Attention capture: outputs unchanged bit for bit, probabilities that are probabilities, timesteps, hooks removed."""

import math

import pytest
import torch
from conftest import randomize_zero_init

from course_lib.attention import HookableAttention, MultiHeadAttention
from course_lib.capture import QUADRANTS, AttentionCall, AttentionRecord, capture_attention, quadrant_mass
from course_lib.guidance import ClassifierFreeGuidance
from course_lib.samplers import ddim_sample, ddim_timesteps
from course_lib.schedules import make_schedule
from course_lib.spatial_transformer import SpatialTransformer
from course_lib.unet import UNet, UNetConfig

CONTEXT_DIM, M = 24, 5


@pytest.fixture(scope="module")
def setup(conditional_unet):
    model = conditional_unet(CONTEXT_DIM)
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, M, CONTEXT_DIM, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x_T = torch.randn(2, 3, 16, 16, generator=g)
    return model, context, mask, x_T


def _hook_count(model):
    return sum(len(m._attention_hooks) for m in model.modules() if isinstance(m, HookableAttention)) + len(
        model._forward_pre_hooks) + len(model._forward_hooks)


def test_capture_changes_no_output_bit_and_records_every_step(setup):
    model, context, mask, x_T = setup
    schedule = make_schedule("linear", 1000)
    sample = lambda: ddim_sample(lambda x, t: model(x, t, context, mask), schedule, x_T=x_T, num_steps=4,
                                 progress=False)
    plain = sample()
    with capture_attention(model, kinds=("self", "cross")) as record:
        captured = sample()
    assert torch.equal(captured, plain)
    steps = ddim_timesteps(1000, 4)
    assert record.timesteps == steps
    cross = [n for n in record.layers if n.endswith("attn2")]
    selfs = [n for n in record.layers if n.endswith("attn1")]
    assert len(cross) == len(selfs) == 4  # one SpatialTransformer at 8x8 down, middle, 2 at 8x8 up
    for layer in record.layers:
        calls = record.select(layer)
        assert [c.timestep for c in calls] == steps and [c.call for c in calls] == [0, 1, 2, 3]
        assert {c.kind for c in calls} == {"cross" if layer in cross else "self"}
    assert _hook_count(model) == 0


def test_rows_are_probabilities_and_padded_tokens_get_zero(setup):
    model, context, mask, x_T = setup
    layer = "middle.1.blocks.0.attn2"
    attn = model.get_submodule(layer)
    inputs = []
    handle = attn.register_forward_pre_hook(lambda module, args: inputs.append(args))
    try:
        with torch.no_grad(), capture_attention(model) as record:
            model(x_T, torch.tensor([700, 700]), context, mask)
    finally:
        handle.remove()
    assert record.layers and all(c.kind == "cross" for c in record.calls)
    for call in record.calls:
        p = call.probs  # [B, heads, Nq, M]
        assert p.shape[0] == 2 and p.shape[1] == 2 and p.shape[-1] == M and p.device.type == "cpu"
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5)
        assert torch.equal(p[0, :, :, 3:], torch.zeros_like(p[0, :, :, 3:]))  # padding of the first caption
        assert (p[1, :, :, 3:] > 0).all()
    # the recorded weights are the layer's own softmax(q k^T / sqrt(d)), recomputed here from its inputs
    (x, text, key_mask), = inputs
    with torch.no_grad():
        q = attn.to_q(x).reshape(2, 64, 2, 16).transpose(1, 2)  # [B, heads, 64, d]: 2 heads of 16 channels
        k = attn.to_k(text).reshape(2, M, 2, 16).transpose(1, 2)  # [B, heads, M, d]
        scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~key_mask, float("-inf"))
    probs = record.probs(layer, t=700, head=None)  # [B, heads, 64, M]
    assert probs.shape == (2, 2, 64, M)
    assert torch.allclose(probs, scores.softmax(-1), atol=1e-6)
    maps = record.maps(layer, t=700)  # [B, 8, 8, M]: the middle block works at 8x8
    assert maps.shape == (2, 8, 8, M)
    assert torch.allclose(maps, probs.mean(1).reshape(2, 8, 8, M))
    assert torch.equal(record.maps(layer, head=1), probs[:, 1].reshape(2, 8, 8, M))
    assert record.maps(layer, head=None).shape == (2, 2, 8, 8, M)


def test_maps_follow_the_query_that_matches_a_token():
    """A layer whose query of one position equals a token's key attends there: the map lights up at that position."""
    attn = MultiHeadAttention(4, 1, context_dim=4, impl="sdpa")
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k):
            lin.weight.copy_(10 * torch.eye(4))
    x = torch.zeros(1, 9, 4)  # a 3x3 "image" of zeros ...
    x[0, 4] = torch.tensor([1.0, 0, 0, 0])  # ... with the centre matching token 2
    text = torch.tensor([[[0.0, 1, 0, 0], [0, 0, 1, 0], [1.0, 0, 0, 0]]])
    with capture_attention(attn) as record:
        attn(x, text)
    maps = record.maps("", head=0)[0]  # [3, 3, 3]; the top-level module's name is ""
    assert maps[1, 1].argmax() == 2 and maps[1, 1, 2] > 0.99
    assert torch.allclose(maps[0, 0], torch.full((3,), 1 / 3))  # a zero query attends uniformly
    assert record.timesteps == [None]


def test_kl_from_uniform_is_zero_for_uniform_rows_and_log_n_for_one_hot_rows():
    """Two images, 3 and 2 real tokens of 4 (the rest masked): uniform rows give 0, one-hot rows log n."""
    uniform = torch.zeros(2, 1, 6, 4)  # [b, heads, Nq, Nk]
    uniform[0, :, :, :3], uniform[1, :, :, :2] = 1 / 3, 1 / 2
    one_hot = torch.zeros(2, 1, 6, 4)
    one_hot[0, :, :, 1] = one_hot[1, :, :, 0] = 1.0
    one_hot[0, :, 0, :3], one_hot[1, :, 0, :2] = 1 / 3, 1 / 2  # row 0 uniform: every real key gets weight somewhere
    record = AttentionRecord(calls=[AttentionCall("a", "cross", 0, 999, uniform),
                                    AttentionCall("a", "cross", 1, 0, one_hot),
                                    AttentionCall("b", "cross", 0, 999, one_hot)],
                             model_t=[torch.tensor([999]), torch.tensor([0])])
    assert record.kl_from_uniform("a", t=999) == pytest.approx(0.0, abs=1e-6)  # float32 probabilities
    # per image: 5 of 6 rows one-hot over n real tokens (KL = log n), 1 row uniform (KL = 0)
    expected = (5 * math.log(3) + 5 * math.log(2)) / 12
    assert record.kl_from_uniform("a", t=0) == pytest.approx(expected)
    assert record.kl_from_uniform("a") == pytest.approx(expected / 2)  # the mean over both calls' rows
    layers, timesteps, table = record.kl_from_uniform_table()
    assert layers == ["a", "b"] and timesteps == [999, 0]
    assert table[0].tolist() == pytest.approx([0.0, expected], abs=1e-6) and table[1, 0] == pytest.approx(expected)
    assert table[1, 1].isnan()  # layer b was not called at t = 0


def test_kl_from_uniform_of_a_captured_run_is_within_its_bounds(setup):
    model, context, mask, x_T = setup
    schedule = make_schedule("linear", 1000)
    with capture_attention(model) as record:
        ddim_sample(lambda x, t: model(x, t, context, mask), schedule, x_T=x_T, num_steps=2, progress=False)
    layers, timesteps, table = record.kl_from_uniform_table()
    assert len(timesteps) == 2 and table.shape == (len(layers), 2) and not table.isnan().any()
    assert (table >= -1e-9).all() and (table <= math.log(M) + 1e-9).all()
    p = record.select(layers[0], timesteps[0])[0].probs.double()  # [2, heads, Nq, M]: images with 3 and 5 tokens
    n = mask.sum(dim=1).double()  # [2]
    direct = (p * (p * n[:, None, None, None]).log().nan_to_num(neginf=0.0)).sum(-1).mean()
    assert table[0, 0].item() == pytest.approx(direct.item())


def test_max_batch_kinds_and_classifier_free_guidance(setup):
    model, context, mask, x_T = setup
    uncond, uncond_mask = torch.zeros(1, M, CONTEXT_DIM), torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool)
    guided = ClassifierFreeGuidance(model, context, mask, uncond, uncond_mask, guidance=3.0)
    with torch.no_grad(), capture_attention(model, kinds="self", max_batch=2) as record:
        guided(x_T, torch.tensor([10, 10]))  # the model sees [x; x]: 4 images, the first 2 conditional
    assert record.layers and all(c.kind == "self" and c.probs.shape[0] == 2 for c in record.calls)
    assert record.model_t[0].tolist() == [10, 10]
    maps = record.maps(record.layers[0], t=10)
    assert maps.shape == (2, 8, 8, 64)  # self-attention at 8x8: each position attends over 64 positions


def test_hooks_are_removed_even_when_the_block_raises(setup):
    model, context, mask, x_T = setup
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model, kinds=("self", "cross")):
            assert _hook_count(model) > 0
            raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_capture_errors_say_what_to_do(setup):
    model, context, mask, x_T = setup
    with pytest.raises(ValueError, match="kinds must be"):
        with capture_attention(model, kinds=("crosss",)):
            pass
    with pytest.raises(ValueError, match="no attention layer \\(HookableAttention\\) to record"):
        with capture_attention(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8))):
            pass
    with pytest.raises(ValueError, match="4 AttentionBlock\\) attend to themselves only: .* pass kinds='self'"):
        with capture_attention(UNet(UNetConfig.tiny())):  # kinds=("cross",) by default
            pass
    with pytest.raises(TypeError, match="pass its .model"):
        with capture_attention(ClassifierFreeGuidance(model, context, mask)):
            pass
    with pytest.raises(ValueError, match="unknown attention layers"):
        with capture_attention(model, layers=["nope"]):
            pass
    with torch.no_grad(), capture_attention(model, layers=["middle.1.blocks.0.attn2"]) as record:
        model(x_T, torch.tensor([5, 5]), context, mask)
    assert record.layers == ["middle.1.blocks.0.attn2"]
    with pytest.raises(ValueError, match="recorded timesteps: \\[5\\]"):
        record.maps("middle.1.blocks.0.attn2", t=6)
    with pytest.raises(ValueError, match="recorded layers"):
        record.maps("middle.1.blocks.0.attn1")
    assert any(isinstance(m, SpatialTransformer) for m in model.modules())


def test_maps_of_a_non_square_token_grid_need_a_size():
    attn = MultiHeadAttention(4, 1, context_dim=4)
    with capture_attention(attn) as record:
        attn(torch.randn(1, 6, 4), torch.randn(1, 2, 4))
    assert record.maps("", size=(2, 3)).shape == (1, 2, 3, 2)
    with pytest.raises(ValueError, match="not a square feature map; pass size=\\(H, W\\)"):
        record.maps("")
    with pytest.raises(ValueError, match="size=\\(2, 2\\) has 4 positions"):
        record.maps("", size=(2, 2))


def test_capture_of_an_unconditional_unets_self_attention():
    """Chapter 1's UNet: every AttentionBlock is recorded (16x16: 256 positions attend to 256), rows sum to 1,
    the weights are softmax(q k^T / sqrt(d)) of the block's own 1x1-conv q and k, and no output bit changes."""
    model = randomize_zero_init(UNet(UNetConfig.tiny(num_heads=2)).eval(), std=0.05)
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([250, 250])
    inputs = []
    handle = model.middle[1].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        try:
            plain = model(x, t)
            inputs.clear()
            with capture_attention(model, kinds="self") as record:
                captured = model(x, t)
        finally:
            handle.remove()
    assert torch.equal(captured, plain)
    assert _hook_count(model) == 0
    assert record.layers == ["down.2.1", "middle.1", "up.0.1", "up.1.1"]  # the 16x16 level and the middle
    assert record.timesteps == [250] and all(c.kind == "self" and c.call == 0 for c in record.calls)
    for call in record.calls:
        assert call.probs.shape == (2, 2, 256, 256)
        torch.testing.assert_close(call.probs.sum(-1), torch.ones(2, 2, 256), atol=1e-5, rtol=0)
        assert (call.probs >= 0).all()
    # recompute the middle block's weights from its input: GroupNorm, the qkv conv, heads of 16 channels
    (h,) = inputs
    block = model.middle[1]
    with torch.no_grad():
        qkv = block.qkv(block.norm(h)).reshape(2, 3, 2, 16, 256)  # [B, (q k v), heads, d, H*W]
        q, k = qkv[:, 0].transpose(-1, -2), qkv[:, 1].transpose(-1, -2)  # [B, heads, 256, d]
        expected = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)
    torch.testing.assert_close(record.probs("middle.1", t=250, head=None), expected, atol=1e-6, rtol=0)
    assert record.maps("middle.1").shape == (2, 16, 16, 256)  # where each of the 256 positions is attended from


def test_quadrant_mass_splits_each_query_row():
    p = torch.softmax(torch.randn(2, 3, 10, 10), dim=-1)  # [B, heads, n, n]
    q = quadrant_mass(p, num_text=4)
    assert tuple(q) == QUADRANTS
    assert q["text→text"] + q["text→image"] == pytest.approx(1.0)
    assert q["image→text"] + q["image→image"] == pytest.approx(1.0)
    mean = p.mean((0, 1)).double()
    assert q["image→text"] == pytest.approx(float(mean[4:, :4].sum(-1).mean()))
    with pytest.raises(ValueError, match="num_text=10"):
        quadrant_mass(p, num_text=10)
