"""SpatialTransformer (self-attention, cross-attention to text, GEGLU feed-forward) and the text-conditional UNet."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_zero_init

from course_lib.checkpoint import CheckpointError, check_model_matches
from course_lib.profiling import count_parameters
from course_lib.spatial_transformer import GEGLU, BasicTransformerBlock, FeedForward, SpatialTransformer
from course_lib.unet import AttentionBlock, UNet, UNetConfig

CONTEXT_DIM = 24


def tiny_conditional_config(**overrides) -> UNetConfig:
    """Two levels of 16/32 channels, cross-attention at 8x8 and in the middle: 0.25M parameters."""
    return UNetConfig(**{**dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                                image_size=16, num_groups=8, num_heads=2, dropout=0.0, context_dim=CONTEXT_DIM),
                         **overrides})


def _inputs(B=2, M=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 32, 4, 4, generator=g)
    context = torch.randn(B, M, CONTEXT_DIM, generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[0, 3:] = False  # the first caption has 3 real tokens and 2 of padding
    return x, context, mask


# --------------------------------------------------------------------------- the layers


def test_geglu_is_a_times_gelu_of_the_gate():
    torch.manual_seed(0)
    layer = GEGLU(8, 6)
    x = torch.randn(3, 8)
    h = layer.proj(x)
    assert torch.allclose(layer(x), h[:, :6] * F.gelu(h[:, 6:]), atol=1e-6)
    ff = FeedForward(8, mult=4)
    assert ff(torch.randn(2, 5, 8)).shape == (2, 5, 8)
    assert ff.net[0].proj.out_features == 2 * 32  # gated: twice the inner width


def test_spatial_transformer_keeps_the_shape_and_starts_as_the_identity():
    x, context, mask = _inputs()
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, depth=2, num_groups=8)
    out = layer(x, context, mask)
    assert out.shape == x.shape
    assert torch.equal(out, x)  # proj_out is zero-initialised
    assert len(layer.blocks) == 2 and all(isinstance(b, BasicTransformerBlock) for b in layer.blocks)


def test_the_image_asks_and_the_text_answers():
    """Cross-attention: the output depends on the text, and each position on the whole image (self-attention)."""
    x, context, mask = _inputs()
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, num_groups=8)
    randomize_zero_init(layer)
    out = layer(x, context, mask)
    assert (layer(x, torch.randn_like(context), mask) - out).abs().max() > 1e-3
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    assert (layer(x2, context, mask) - out)[:, :, 3, 3].abs().max() > 1e-5


@pytest.mark.parametrize("impl", ["einsum", "sdpa", "chunked"])
@torch.no_grad()  # inference: "chunked" would otherwise checkpoint for the backward pass
def test_padded_text_tokens_change_nothing(impl):
    x, context, mask = _inputs()
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, num_groups=8, impl=impl)
    randomize_zero_init(layer)
    out = layer(x, context, mask)
    other = context.clone()
    other[0, 3:] = 100 * torch.randn(2, CONTEXT_DIM)  # new content at the padded positions only
    assert torch.allclose(layer(x, other, mask), out, atol=1e-6, rtol=0)
    # ... whereas the same change at real token positions matters
    other[1, 3:] = 100 * torch.randn(2, CONTEXT_DIM)
    assert (layer(x, other, mask) - out)[1].abs().max() > 1e-3


def test_no_mask_is_the_same_as_an_all_true_mask_and_impls_agree():
    x, context, _ = _inputs()
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, num_groups=8)
    randomize_zero_init(layer)
    out = layer(x, context)
    assert torch.allclose(layer(x, context, torch.ones(2, 5, dtype=torch.bool)), out, atol=1e-6)
    for block in layer.blocks:
        block.attn1.impl = block.attn2.impl = "einsum"
    assert torch.allclose(layer(x, context), out, atol=1e-5)


def test_a_single_caption_is_shared_by_the_batch():
    x, context, mask = _inputs()
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, num_groups=8)
    randomize_zero_init(layer)
    shared = layer(x, context[:1], mask[:1])
    assert torch.allclose(shared, layer(x, context[:1].expand(2, -1, -1), mask[:1].expand(2, -1)), atol=1e-6)


@pytest.mark.parametrize(
    "context, mask, error, message",
    [
        (None, None, ValueError, "pass context=\\[B, M, 24\\]"),
        (torch.zeros(5, CONTEXT_DIM), None, ValueError, "3-D tensor \\[B, M, context_dim\\]"),
        (torch.zeros(2, 5, 16), None, ValueError, "16 channels per token but this model was built for context_dim=24"),
        (torch.zeros(3, 5, CONTEXT_DIM), None, ValueError, "batch size 3 but x has 2"),
        (torch.zeros(2, 5, CONTEXT_DIM, dtype=torch.long), None, TypeError, "encode the token ids first"),
        (torch.zeros(2, 5, CONTEXT_DIM), torch.ones(2, 5), TypeError, "mask.bool\\(\\)"),
        (torch.zeros(2, 5, CONTEXT_DIM), torch.ones(2, 4, dtype=torch.bool), ValueError, "\\[B, M\\] = \\[2, 5\\]"),
    ],
)
def test_bad_context_raises_clear_errors(context, mask, error, message):
    layer = SpatialTransformer(32, num_heads=4, context_dim=CONTEXT_DIM, num_groups=8)
    with pytest.raises(error, match=message):
        layer(torch.zeros(2, 32, 4, 4), context, mask)


# --------------------------------------------------------------------------- the text-conditional UNet


def test_conditional_unet_has_a_spatial_transformer_at_every_attention_position():
    config = tiny_conditional_config(transformer_depth=2)
    model = UNet(config).eval()
    transformers = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
    assert len(transformers) == 1 + 1 + 2  # 8x8 down (1 res block), middle, 8x8 up (2 blocks)
    assert all(len(m.blocks) == 2 for m in transformers)
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())
    randomize_zero_init(model)
    x = torch.randn(2, 3, 16, 16)
    context, mask = torch.randn(2, 6, CONTEXT_DIM), torch.ones(2, 6, dtype=torch.bool)
    out = model(x, torch.tensor([10, 500]), context, mask)
    assert out.shape == x.shape
    assert (model(x, torch.tensor([10, 500]), torch.randn_like(context), mask) - out).abs().max() > 1e-4
    assert torch.allclose(model(x, torch.tensor([10, 500]), context), out, atol=1e-5)  # mask None = all real


@pytest.mark.parametrize(
    "conditional, kwargs, message",
    [
        (True, {}, "text-conditional \\(context_dim=24\\): call model\\(x, t, context, context_mask\\)"),
        (True, {"context": torch.zeros(2, 4, 8)}, "8 channels per token but this model was built for context_dim=24"),
        (True, {"context": torch.zeros(2, 4, CONTEXT_DIM), "context_mask": torch.ones(2, 3, dtype=torch.bool)},
         "context_mask must have shape \\[B, M\\] = \\[2, 4\\]"),
        (False, {"context": torch.zeros(2, 4, CONTEXT_DIM)}, "unconditional \\(UNetConfig.context_dim=None\\)"),
    ],
)
def test_conditional_and_unconditional_unets_say_what_they_need(conditional, kwargs, message):
    model = UNet(tiny_conditional_config(context_dim=CONTEXT_DIM if conditional else None))
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(2, 3, 16, 16), torch.zeros(2), **kwargs)


def test_unconditional_unet_is_unchanged():
    with torch.device("meta"):  # counts and configs only: no memory for weights
        assert count_parameters(UNet(UNetConfig.paper())) == 35_746_307
        small = UNet(UNetConfig.small())
        assert count_parameters(small) == 2_245_763
        assert not any(isinstance(m, SpatialTransformer) for m in small.modules())
        # chapter 1's checkpoints have no context_dim / transformer_depth in their cards: they still fit
        card = {"model_class": "UNet", "model_config": json.loads(json.dumps(dataclasses.asdict(UNetConfig.small())))}
        del card["model_config"]["context_dim"], card["model_config"]["transformer_depth"]
        check_model_matches(card, small)
        with pytest.raises(CheckpointError, match="context_dim"):
            check_model_matches(card, UNet(UNetConfig.small(context_dim=32)))


def test_conditional_config_survives_a_json_round_trip_and_validates():
    config = tiny_conditional_config(transformer_depth=2)
    assert UNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="context_dim must be a positive int"):
        tiny_conditional_config(context_dim=0)
    with pytest.raises(ValueError, match="transformer_depth must be >= 1"):
        tiny_conditional_config(transformer_depth=0)


def test_conditional_unet_trains_on_text():
    """A few Adam steps: the loss of a denoiser given the right caption falls."""
    torch.manual_seed(0)
    model = UNet(tiny_conditional_config(channel_mult=(1,), attention_resolutions=(16,)))
    x = torch.randn(4, 3, 16, 16)
    context = torch.randn(4, 3, CONTEXT_DIM)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.mse_loss(model(x, torch.full((4,), 10), context), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    attn2 = next(m for m in model.modules() if isinstance(m, SpatialTransformer)).blocks[0].attn2
    assert attn2.to_k.weight.grad is not None and attn2.to_k.weight.grad.abs().max() > 0
