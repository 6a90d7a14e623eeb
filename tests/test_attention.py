"""Attention three ways (einsum, SDPA, chunked): one function, one mask convention, one set of answers."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_zero_init

from course_lib.attention import (
    ATTENTION_IMPLS,
    HookableAttention,
    MultiHeadAttention,
    attention,
    attention_weights,
    chunked_attention,
    einsum_attention,
    merge_heads,
    split_heads,
)
from course_lib.unet import AttentionBlock, UNet, UNetConfig

IMPLS = sorted(ATTENTION_IMPLS)


def _qkv(B, heads, Nq, Nk, d=16, d_v=None, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, Nq, d, generator=g)
    k = torch.randn(B, heads, Nk, d, generator=g)
    v = torch.randn(B, heads, Nk, d_v or d, generator=g)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def _random_mask(shape, seed=1, p=0.6):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


def _small_chunks(q, k, v, mask=None):
    """Several query and key blocks, sized so that the last ones are usually partial."""
    Nq, Nk = q.shape[-2], k.shape[-2]
    return chunked_attention(q, k, v, mask, chunk_size=Nq // 4 + 3, key_chunk_size=Nk // 3 + 2)


VERSIONS = {**ATTENTION_IMPLS, "chunked-small": _small_chunks}


# --------------------------------------------------------------------------- the three agree


@pytest.mark.parametrize("heads", [1, 3, 4])
@pytest.mark.parametrize("Nq, Nk", [(1, 1), (17, 17), (64, 64), (33, 65), (100, 7), (257, 129)])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_versions_agree_in_float32(heads, Nq, Nk, masked):
    q, k, v = _qkv(2, heads, Nq, Nk, d=16, d_v=8)
    mask = _random_mask((2, 1, Nq, Nk)) if masked else None  # broadcast over heads
    reference = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                 attn_mask=mask)
    if mask is not None:
        reference = reference.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows with no key -> 0
    for name, fn in VERSIONS.items():
        out = fn(q, k, v, mask)
        assert out.shape == (2, heads, Nq, 8) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mask_shape", [(16, 24), (2, 1, 1, 24), (2, 3, 16, 24), (1, 16, 24)],
                         ids=["[Nq,Nk]", "key-padding", "full", "[1,Nq,Nk]"])
def test_masks_of_every_broadcastable_shape(mask_shape):
    q, k, v = _qkv(2, 3, 16, 24)
    mask = _random_mask(mask_shape, seed=3)
    expected = einsum_attention(q, k, v, mask.broadcast_to(2, 3, 16, 24).contiguous())
    for name, fn in VERSIONS.items():
        torch.testing.assert_close(fn(q, k, v, mask), expected, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_causal_mask_matches_sdpa_is_causal():
    q, k, v = _qkv(1, 2, 31, 31)
    causal = torch.ones(31, 31, dtype=torch.bool).tril()  # query i sees keys 0..i
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for name, fn in VERSIONS.items():
        torch.testing.assert_close(fn(q, k, v, causal), expected, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_the_dispatcher():
    q, k, v = _qkv(1, 2, 9, 11)
    for impl in IMPLS:
        torch.testing.assert_close(attention(q, k, v, impl=impl), einsum_attention(q, k, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(attention(q, k, v, impl="chunked", chunk_size=2, key_chunk_size=3),
                               einsum_attention(q, k, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked_attention(q, k, v, key_chunk_size=None), einsum_attention(q, k, v),
                               atol=1e-5, rtol=0)  # query chunking only


# --------------------------------------------------------------------------- the mask convention


def test_masked_keys_get_exactly_zero_weight():
    """Changing the keys and values at masked positions must change nothing, bit for bit."""
    q, k, v = _qkv(2, 2, 13, 20)
    mask = _random_mask((2, 1, 1, 20), seed=4)  # key padding: the same keys hidden from every query
    hidden = ~mask.transpose(-1, -2)  # [B, 1, Nk, 1]
    k2 = torch.where(hidden, 100 * torch.randn_like(k), k)
    v2 = torch.where(hidden, 1e6 * torch.randn_like(v), v)
    for name, fn in VERSIONS.items():
        assert torch.equal(fn(q, k, v, mask), fn(q, k2, v2, mask)), name
    weights = attention_weights(q, k, mask)
    assert torch.all(weights.masked_select(~mask.broadcast_to(weights.shape)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 13))


def test_a_query_with_every_key_masked_outputs_zero_and_has_finite_gradients():
    q, k, v = _qkv(1, 2, 6, 10, requires_grad=True)
    mask = _random_mask((1, 1, 6, 10), seed=5)
    mask[..., 0, :] = True
    mask[..., 2, :] = False  # query 2 may attend to nothing
    outs = {}
    for name, fn in VERSIONS.items():
        out = fn(q, k, v, mask)
        assert torch.isfinite(out).all(), name
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2])), name
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads), name
        assert torch.equal(grads[0][:, :, 2], torch.zeros_like(grads[0][:, :, 2])), name
        outs[name] = out.detach()
    assert torch.equal(attention_weights(q, k, mask)[:, :, 2], torch.zeros(1, 2, 10))
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["einsum"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_gradients_agree(masked):
    """Chunked attention recomputes its blocks in the backward pass (checkpointing): same gradients."""
    mask = _random_mask((2, 1, 19, 23), seed=6) if masked else None
    grads = {}
    for name, fn in VERSIONS.items():
        q, k, v = _qkv(2, 2, 19, 23, requires_grad=True)
        out = fn(q, k, v, mask)
        grads[name] = torch.autograd.grad((out * torch.linspace(-1, 1, 16)).sum(), (q, k, v))
    for name, g in grads.items():
        for a, b in zip(g, grads["einsum"]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- clear errors


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 2, 4, 5)
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="need q \\[B, heads, Nq, d\\]"):
        attention(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="mask must be boolean with True = attend"):
        attention(q, k, v, torch.ones(4, 5))
    with pytest.raises(ValueError, match="does not broadcast to \\[B, heads, Nq, Nk\\]"):
        attention(q, k, v, torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk sizes must be >= 1"):
        chunked_attention(q, k, v, chunk_size=0)
    with pytest.raises(TypeError):
        attention(q, k, v, impl="sdpa", chunk_size=4)  # chunk options belong to "chunked" only


# --------------------------------------------------------------------------- the layers


def test_split_and_merge_heads_are_inverse():
    x = torch.randn(2, 7, 12)
    assert split_heads(x, 3).shape == (2, 3, 7, 4)
    assert torch.equal(split_heads(x, 3)[:, 1], x[:, :, 4:8])
    assert torch.equal(merge_heads(split_heads(x, 3)), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_multi_head_attention_equals_torch_with_the_opposite_mask_convention(impl):
    torch.manual_seed(0)
    dim, heads = 24, 3
    ours = MultiHeadAttention(dim, heads, impl=impl)
    theirs = torch.nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.to_q.weight, ours.to_k.weight, ours.to_v.weight]))
        theirs.out_proj.weight.copy_(ours.to_out.weight)
        ours.to_out.bias.zero_()
    x = torch.randn(2, 10, dim)
    keep = _random_mask((2, 10), seed=7)
    keep[:, 0] = True
    expected, _ = theirs(x, x, x, key_padding_mask=~keep, need_weights=False)  # torch: True = ignore
    torch.testing.assert_close(ours(x, mask=keep[:, None, None, :]), expected, atol=1e-5, rtol=0)


def test_multi_head_cross_attention_shapes():
    layer = MultiHeadAttention(32, num_heads=4, context_dim=20)
    x, text = torch.randn(2, 64, 32), torch.randn(2, 7, 20)  # 8x8 image tokens attend to 7 text tokens
    assert layer(x, context=text).shape == (2, 64, 32)
    assert "impl='sdpa'" in repr(layer)


def test_unet_gives_the_same_output_with_every_attention_impl():
    base = randomize_zero_init(UNet(UNetConfig.tiny(num_heads=2)).eval(), std=0.05)  # so that attention matters
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 600])
    with torch.no_grad():
        expected = base(x, t)
        for impl in IMPLS:
            model = UNet(UNetConfig.tiny(num_heads=2, attention_impl=impl)).eval()
            model.load_state_dict(base.state_dict())  # the impl adds no parameters
            blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
            assert blocks and all(b.impl == impl for b in blocks)
            torch.testing.assert_close(model(x, t), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        UNetConfig.tiny(attention_impl="flash")


# --------------------------------------------------------------------------- one hookable path


def _mha_and_inputs():
    g = torch.Generator().manual_seed(0)
    layer = MultiHeadAttention(16, num_heads=2, context_dim=8, impl="einsum")
    return layer, (torch.randn(2, 9, 16, generator=g), torch.randn(2, 5, 8, generator=g))  # 9 tokens, 5 of context


def _attention_block_and_inputs():
    layer = AttentionBlock(16, num_heads=2, num_groups=4, impl="einsum")
    return layer, (torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(0)),)  # 3x3 = 9 positions


@pytest.mark.parametrize("make", [_mha_and_inputs, _attention_block_and_inputs], ids=["MultiHeadAttention",
                                                                                     "AttentionBlock"])
def test_both_layers_show_q_and_k_to_their_hooks_and_compute_the_same(make):
    """Hooks see the split heads just before attention, in order; the output is the same bits with or without them."""
    layer, inputs = make()
    assert isinstance(layer, HookableAttention)
    randomize_zero_init(layer)  # AttentionBlock's proj_out starts at zero
    names = set(layer.state_dict())
    seen = []
    with torch.no_grad():
        plain = layer(*inputs)
        handles = [layer.register_attention_hook(lambda m, q, k, mask, cross, i=i: seen.append((i, m, q, k, cross)))
                   for i in range(2)]
        hooked = layer(*inputs)
        assert set(layer.state_dict()) == names  # hooks are not state: checkpoints are unchanged
        for handle in handles:
            handle.remove()
        layer(*inputs)
    assert torch.equal(hooked, plain)
    assert len(seen) == 2  # one call with both hooks; none after .remove()
    (i0, m, q, k, cross), (i1, *_) = seen
    assert (i0, i1) == (0, 1) and m is layer
    is_cross = isinstance(layer, MultiHeadAttention)  # it was given a context
    assert cross is is_cross and q.shape == (2, 2, 9, 8) and k.shape == (2, 2, 5 if is_cross else 9, 8)


def test_attention_block_attends_through_its_impl():
    """``impl`` is read at call time: changing it on a built block switches the version and nothing else."""
    block = randomize_zero_init(AttentionBlock(16, num_heads=2, num_groups=4, impl="einsum"))
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        expected = block(x)
        for impl in IMPLS:
            block.impl = impl
            torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        AttentionBlock(16, num_groups=4, impl="flash")


def test_attention_logit_stats_on_known_attention():
    from course_lib.attention import MultiHeadAttention, attention_logit_stats

    layer = MultiHeadAttention(8, 2)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        layer.to_q.weight.zero_()  # q = 0 (no bias): every logit 0, every row uniform over its keys
    stats = attention_logit_stats(layer, lambda: layer(x))
    assert stats["max_logit"] == 0 and stats["entropy"] == pytest.approx(math.log(5), abs=1e-5)
    assert stats["max_entropy"] == pytest.approx(math.log(5), abs=1e-5)
    mask = torch.tensor([True, True, False, False, False])[None, None, None, :]  # 2 keys left
    masked = attention_logit_stats(layer, lambda: layer(x, mask=mask))
    assert masked["entropy"] == pytest.approx(math.log(2), abs=1e-5) == masked["max_entropy"]
    with pytest.raises(ValueError, match="no attention layers"):
        attention_logit_stats(torch.nn.Linear(2, 2), lambda: None)
