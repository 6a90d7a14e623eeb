"""Chapter 6's conditioning ablation: three DiT variants with the MM-DiT's interface, matched in size."""

import pytest
import torch

from conftest import randomize_zero_init
from course_lib.dit import CONDITIONINGS, DiT, DiTConfig
from course_lib.mmdit import MMDiT, MMDiTConfig
from course_lib.text2image import MINILM_DIM, Text2ImageConfig


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_the_small_variants_match_mmdit_small_within_ten_percent():
    reference = count(MMDiT(Text2ImageConfig.latent_mmdit_small().denoiser))
    for conditioning in CONDITIONINGS:
        config = Text2ImageConfig.latent_dit_small(conditioning).denoiser
        assert (config.hidden_size, config.num_heads, config.patch_size, config.context_dim) == (256, 4, 2, MINILM_DIM)
        assert abs(count(DiT(config)) / reference - 1) < 0.10, conditioning


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_variant_starts_at_zero_reads_time_and_caption_and_ignores_padding(conditioning):
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny(conditioning))
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10.0, 500.0, 990.0])
    context, mask = torch.randn(3, 6, 32), torch.ones(3, 6, dtype=torch.bool)
    assert model.sample_shape == (4, 8, 8)
    assert torch.equal(model(x, t, context, mask), torch.zeros(3, 4, 8, 8))  # a zero final layer
    randomize_zero_init(model, std=0.1)
    out = model(x, t, context, mask)
    assert out.shape == x.shape and out.abs().mean() > 0
    assert not torch.allclose(model(x, t.flip(0), context, mask), out)  # time matters
    assert not torch.allclose(model(x, t, context.flip(0), mask), out)  # the caption matters
    mask[1, 4:] = False
    padded = context.clone()
    padded[1, 4:] = 100.0
    torch.testing.assert_close(model(x, t, padded, mask)[1], model(x, t, context, mask)[1])
    torch.testing.assert_close(model(x[:1], t[:1], context[:1], mask[:1]), model(x, t, context, mask)[:1],
                               atol=1e-5, rtol=1e-5)  # one context broadcast or per image: the same


def test_only_adaln_zero_reads_the_caption_through_its_mean_alone():
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 700.0])
    context = torch.randn(2, 6, 32)
    weights = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, -0.5])  # sum 0: the tokens change, their mean does not
    other = context + torch.randn(2, 1, 32) * weights[None, :, None]
    torch.testing.assert_close(other.mean(1), context.mean(1))
    for conditioning in CONDITIONINGS:
        model = randomize_zero_init(DiT(DiTConfig.tiny(conditioning)), std=0.1)
        same = torch.allclose(model(x, t, other), model(x, t, context), atol=1e-5)
        assert same == (conditioning == "adaln_zero"), conditioning  # token-level text: cross and in-context only


def test_a_dit_goes_through_the_denoiser_seam_and_its_config_round_trips():
    from course_lib.text2image import TextToImageModel

    config = Text2ImageConfig.latent_tiny(denoiser=DiTConfig.tiny("cross_attention"))
    again = Text2ImageConfig.from_dict(config.to_dict())
    assert again == config and again.kind == "dit" and again.denoiser.conditioning == "cross_attention"
    model = TextToImageModel(config)
    assert isinstance(model.dit, DiT) and model.sample_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="choose one of"):
        DiTConfig(conditioning="adaln")
