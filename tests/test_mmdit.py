"""Chapter 6's MM-DiT blocks: patches, RoPE, QK-norm, identity at initialisation, joint and fused attention."""

import math

import pytest
import torch

from course_lib.attention import attention, merge_heads
from course_lib.mmdit import (MMDiT, DoubleStreamBlock, LastLayer, MMDiTConfig, QKNorm, SingleStreamBlock, apply_rope,
                              image_positions, patchify, rope_angles, unpatchify)
from conftest import randomize_zero_init

D, HEADS, AXES = 32, 2, (4, 6, 6)  # head_dim 16 = 4 + 6 + 6


def _inputs(B=2, L=5, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img, txt, vec = torch.randn(B, N, D, generator=g), torch.randn(B, L, D, generator=g), torch.randn(B, D, generator=g)
    positions = torch.cat([torch.zeros(L, 3), image_positions(4, 4)])  # text at (0, 0, 0), image (0, row, col)
    return img, txt, vec, rope_angles(positions, AXES)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_patchify_round_trip_and_layout(p):
    x = torch.randn(3, 4, 8, 8)
    tokens = patchify(x, p)
    assert tokens.shape == (3, (8 // p) ** 2, 4 * p * p)
    assert torch.equal(unpatchify(tokens, p, 8, 8), x)
    torch.testing.assert_close(tokens[:, 1].reshape(3, 4, p, p), x[:, :, :p, p:2 * p])  # token 1: row 0, column 1
    with pytest.raises(ValueError, match="cannot be cut"):
        patchify(torch.randn(1, 4, 8, 8), 3)


def test_rope_keeps_norms_and_scores_depend_only_on_the_offset():
    angles = rope_angles(torch.arange(12).float()[:, None], (16,))  # one axis: positions 0..11
    q, k = torch.randn(1, 1, 12, 16), torch.randn(1, 1, 12, 16)
    same_q, same_k = q[:, :, :1].expand(1, 1, 12, 16), k[:, :, :1].expand(1, 1, 12, 16)  # one vector at every position
    rq, rk = apply_rope(same_q, angles), apply_rope(same_k, angles)
    torch.testing.assert_close(rq.norm(dim=-1), same_q.norm(dim=-1))
    scores = (rq @ rk.transpose(-1, -2))[0, 0]  # [12, 12]
    for offset in (0, 1, 3, 7):  # every (m, m - offset) pair has the same score
        diagonal = torch.diagonal(scores, offset=-offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 0)[:1], torch.diagonal(scores, -3)[:1])  # offsets do matter
    # adjacent pairs rotate together: position 1 turns pair 0 by omega_0 = 1 radian
    x = torch.tensor([1.0, 0.0] + [0.0] * 14).reshape(1, 1, 1, 16)
    out = apply_rope(x, rope_angles(torch.ones(1, 1), (16,)))
    torch.testing.assert_close(out[0, 0, 0, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]))


def test_rope_axes_split_the_head_dimension():
    angles = rope_angles(image_positions(2, 3), AXES)  # [6, 8]
    assert angles.shape == (6, sum(AXES) // 2)
    assert torch.all(angles[:, :2] == 0)  # the index axis is 0 for every image token
    torch.testing.assert_close(angles[4, 2], torch.tensor(1.0))  # token 4 = row 1: the row axis' first pair, omega 1
    torch.testing.assert_close(angles[4, 5], torch.tensor(1.0))  # ... and column 1: the column axis' first pair
    with pytest.raises(ValueError, match="even"):
        rope_angles(image_positions(2, 2), (3, 6, 7))


def test_qk_norm_gives_unit_rms_before_its_scale():
    norm = QKNorm(16)
    q, k = 5 * torch.randn(2, 2, 7, 16) + 3, 0.1 * torch.randn(2, 2, 7, 16)  # large and small: both come out at RMS 1
    nq, nk = norm(q, k)
    torch.testing.assert_close(nq.pow(2).mean(-1), torch.ones(2, 2, 7), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nk.pow(2).mean(-1), torch.ones(2, 2, 7), atol=1e-3, rtol=1e-3)  # eps 1e-6 against 0.01


def test_every_block_is_the_identity_at_initialisation():
    img, txt, vec, angles = _inputs()
    double = DoubleStreamBlock(D, HEADS)
    out_img, out_txt = double(img, txt, vec, angles)
    assert torch.equal(out_img, img) and torch.equal(out_txt, txt)
    single = SingleStreamBlock(D, HEADS)
    x = torch.cat([txt, img], dim=1)
    assert torch.equal(single(x, vec, angles), x)
    assert torch.equal(LastLayer(D, 2, 4)(img, vec), torch.zeros(2, 16, 16))
    randomize_zero_init(double)  # once trained, the gates open and the block changes its inputs
    assert not torch.allclose(double(img, txt, vec, angles)[0], img)


def test_joint_attention_is_attention_over_the_concatenated_sequence():
    img, txt, vec, angles = _inputs()
    block = randomize_zero_init(DoubleStreamBlock(D, HEADS), std=0.2)
    mask = torch.ones(2, 1, 1, 5 + 16, dtype=torch.bool)
    mask[1, ..., 3:5] = False  # the second caption has two padding tokens
    out_img, out_txt = block(img, txt, vec, angles, mask)

    # by hand: both streams' q, k, v in one sequence [text, image], one attention, split back
    m_img1, m_img2 = block.img_mod(vec)
    m_txt1, m_txt2 = block.txt_mod(vec)
    def stream(attn, norm, x, m):
        return attn.split_qkv(norm(x) * (1 + m.scale) + m.shift)
    qi, ki, vi = stream(block.img_attn, block.img_norm1, img, m_img1)
    qt, kt, vt = stream(block.txt_attn, block.txt_norm1, txt, m_txt1)
    q, k, v = torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    joint = merge_heads(attention(apply_rope(q, angles), apply_rope(k, angles), v, mask, impl="einsum"))
    expected_img = img + m_img1.gate * block.img_attn.proj(joint[:, 5:])
    expected_img = expected_img + m_img2.gate * block.img_mlp(block.img_norm2(expected_img) * (1 + m_img2.scale)
                                                              + m_img2.shift)
    torch.testing.assert_close(out_img, expected_img, atol=1e-5, rtol=1e-5)
    expected_txt = txt + m_txt1.gate * block.txt_attn.proj(joint[:, :5])
    expected_txt = expected_txt + m_txt2.gate * block.txt_mlp(block.txt_norm2(expected_txt) * (1 + m_txt2.scale)
                                                              + m_txt2.shift)
    torch.testing.assert_close(out_txt, expected_txt, atol=1e-5, rtol=1e-5)
    # the image reads the text: another caption changes the image stream
    assert not torch.allclose(block(img, txt.flip(1), vec, angles, mask)[0], out_img)


def test_fused_linear1_equals_separate_qkv_and_mlp_projections():
    _, txt, vec, angles = _inputs(N=0)
    angles = angles[:5]
    block = randomize_zero_init(SingleStreamBlock(D, HEADS, mlp_ratio=2.0), std=0.2)
    W, b = block.linear1.weight, block.linear1.bias
    to_qkv, to_mlp = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, 2 * D)  # the same weights, in two layers
    with torch.no_grad():
        to_qkv.weight.copy_(W[:3 * D]), to_qkv.bias.copy_(b[:3 * D])
        to_mlp.weight.copy_(W[3 * D:]), to_mlp.bias.copy_(b[3 * D:])
    mod, _ = block.modulation(vec)
    h = block.pre_norm(txt) * (1 + mod.scale) + mod.shift
    q, k, v = to_qkv(h).reshape(2, 5, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k)
    out = merge_heads(attention(apply_rope(q, angles), apply_rope(k, angles), v, impl="einsum"))
    l2 = block.linear2  # linear2 = the attention's output projection and the MLP's second layer, side by side
    separate = out @ l2.weight[:, :D].T + torch.nn.functional.gelu(to_mlp(h), approximate="tanh") @ l2.weight[:, D:].T
    torch.testing.assert_close(block(txt, vec, angles), txt + mod.gate * (separate + l2.bias), atol=1e-5, rtol=1e-5)


def test_mmdit_starts_at_zero_has_the_unet_interface_and_ignores_padding():
    from course_lib.mmdit import MMDiT, MMDiTConfig

    torch.manual_seed(0)
    model = MMDiT(MMDiTConfig.tiny())
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10.0, 500.0, 990.0])
    context, mask = torch.randn(3, 6, 32), torch.ones(3, 6, dtype=torch.bool)
    assert model.sample_shape == (4, 8, 8)
    assert torch.equal(model(x, t, context, mask), torch.zeros(3, 4, 8, 8))  # adaLN-Zero: the final layer is 0
    randomize_zero_init(model, std=0.1)
    out = model(x, t, context, mask)
    assert out.shape == x.shape and out.abs().mean() > 0
    mask[1, 4:] = False  # padding: whatever stands there must not matter
    padded = context.clone()
    padded[1, 4:] = 100.0
    torch.testing.assert_close(model(x, t, padded, mask)[1], model(x, t, context, mask)[1])
    torch.testing.assert_close(model(x[:1], t[:1], context[:1], mask[:1]), model(x, t, context, mask)[:1],
                               atol=1e-5, rtol=1e-5)  # one context broadcast or per image: the same
    assert not torch.allclose(model(x, t.flip(0), context, mask), out)  # time matters
    with pytest.raises(ValueError, match="three even sizes"):
        MMDiTConfig(hidden_size=64, num_heads=2, rope_axes=(8, 8, 8))


def test_a_tiny_mmdit_learns_a_rectified_flow():
    """Seventy steps of the rectified-flow loss on structured 4x8x8 'latents' (smooth random fields)."""
    from course_lib.mmdit import MMDiT, MMDiTConfig
    from course_lib.processes import RectifiedFlowProcess

    torch.manual_seed(0)
    model, process = MMDiT(MMDiTConfig.tiny()), RectifiedFlowProcess()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    context = torch.randn(1, 4, 32)
    base = torch.nn.functional.interpolate(torch.randn(256, 4, 2, 2), size=8, mode="bilinear")  # [256, 4, 8, 8]
    losses = []
    for step in range(70):
        x0 = base[torch.randint(0, 256, (32,))]
        loss = process.loss(lambda x, t: model(x, t, context), x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)  # measured here: 1.67 -> 0.89 in 70 steps (0.57 in 150)


def test_joint_attention_can_be_captured_without_changing_a_bit():
    from course_lib.capture import capture_attention
    from course_lib.mmdit import MMDiT, MMDiTConfig

    torch.manual_seed(0)
    model = randomize_zero_init(MMDiT(MMDiTConfig.tiny()), std=0.1).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 900.0])
    context, mask = torch.randn(2, 6, 32), torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    before = model(x, t, context, mask)
    with capture_attention(model, kinds="self") as record:  # joint attention is attention of the sequence to itself
        during = model(x, t, context, mask)
    assert torch.equal(before, during)
    assert record.layers == ["double_blocks.0.attn", "single_blocks.0.attn"]
    for layer in record.layers:
        probs = record.select(layer)[0].probs  # [B, heads, L + N, L + N]
        assert probs.shape == (2, 2, 6 + 64, 6 + 64)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 70))
        assert torch.all(probs[1, :, :, 4:6] == 0)  # nobody reads the second caption's padding


def test_the_text_position_is_zero_by_default_and_moving_it_changes_only_the_rotations():
    torch.manual_seed(0)
    model = randomize_zero_init(MMDiT(MMDiTConfig.tiny(context_dim=8))).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 700.0])
    context = torch.randn(2, 5, 8)
    with torch.no_grad():
        default = model(x, t, context)
        model.text_position = (0.0, 0.0, 0.0)
        at_zero = model(x, t, context)  # Flux's position written out: the same rotations (none)
        model.text_position = (0.0, 1.5, 1.5)
        moved = model(x, t, context)
        model.text_position = None
    torch.testing.assert_close(at_zero, default, rtol=0, atol=0)
    assert (moved - default).abs().max() > 1e-4  # the text now sits at the grid's centre: scores change


def test_other_grids_get_their_own_rotations():
    torch.manual_seed(0)
    model = randomize_zero_init(MMDiT(MMDiTConfig.tiny(context_dim=8, patch_size=2))).eval()  # 8x8 latents: 4x4 patches
    assert torch.equal(model.grid_angles(4, 4), model.img_angles)  # the trained grid: the buffer
    wide = model.grid_angles(4, 8)  # a 8x16 latent: 4 x 8 patches
    torch.testing.assert_close(wide, rope_angles(image_positions(4, 8), model.config.rope_axes), rtol=0, atol=0)
    assert torch.equal(wide.view(4, 8, -1)[:, :4].reshape(16, -1), model.img_angles)  # its left half: the old grid
    x, t, context = torch.randn(2, 4, 8, 16), torch.tensor([100.0, 700.0]), torch.randn(2, 5, 8)
    with torch.no_grad():
        assert model(x, t, context).shape == (2, 4, 8, 16)
    with pytest.raises(ValueError, match="patch size that divides"):
        model(torch.randn(1, 4, 8, 9), t[:1], context[:1])


def test_without_qk_norm_the_logits_grow_with_the_weights_and_with_it_they_do_not():
    from course_lib.attention import attention_logit_stats

    def max_logit(qk_norm, scale):
        torch.manual_seed(0)
        model = randomize_zero_init(MMDiT(MMDiTConfig.tiny(context_dim=8, qk_norm=qk_norm))).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "qkv" in name or "linear1" in name:  # q and k (and v) scaled by `scale`
                    p.mul_(scale)
        x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 700.0]), torch.randn(2, 5, 8)
        return attention_logit_stats(model, lambda: model(x, t, context))["max_logit"]

    assert max_logit(False, 4.0) / max_logit(False, 1.0) > 8  # q . k grows with the square of the scale
    assert max_logit(True, 4.0) == pytest.approx(max_logit(True, 1.0), rel=0.02)  # RMSNorm undoes the scale
    assert not any("norm.query_norm" in n for n, _ in MMDiT(MMDiTConfig.tiny(qk_norm=False)).named_parameters())
