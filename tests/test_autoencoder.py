"""Chapter 4's KL autoencoder: shapes, the posterior (KL, reparameterisation, clamping), the latent
scaling factor, that it learns on real images, and the recipe's export."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_zero_init
from torch.distributions import Normal, kl_divergence

from course_lib import models, train
from course_lib.autoencoder import (AutoencoderConfig, AutoencoderKL, DiagonalGaussianDistribution,
                                    autoencoder_loss, latent_scaling_factor, psnr, reconstruction_psnr)
from course_lib.checkpoint import read_card
from course_lib.data import StepBatches, load_cifar10
from course_lib.profiling import count_parameters
from course_lib.trainer import TrainConfig, fit
from course_lib.unet import AdaGNResBlock, ResBlock


def moments_of(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Encoder output [B, 2C, h, w] for the given mean and log-variance [B, C, h, w]."""
    return torch.cat([mean, logvar], dim=1)


# --------------------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize("channel_mult, factor", [((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
@pytest.mark.parametrize("latent_channels", [4, 8])
def test_encoder_and_decoder_shapes(channel_mult, factor, latent_channels):
    config = AutoencoderConfig(latent_channels=latent_channels, base_channels=8, channel_mult=channel_mult,
                               num_groups=4)
    assert config.downsample_factor == factor
    assert config.latent_shape == (latent_channels, 32 // factor, 32 // factor)
    model = AutoencoderKL(config)
    x = torch.randn(2, 3, 32, 32)
    assert model.encoder(x).shape == (2, 2 * latent_channels, 32 // factor, 32 // factor)
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, latent_channels, 32 // factor, 32 // factor)
    assert model.decode(posterior.sample()).shape == (2, 3, 32, 32)
    recon, _ = model(torch.randn(1, 3, 16, 24))  # any size divisible by the factor
    assert recon.shape == (1, 3, 16, 24)


def test_module_names_follow_latent_diffusion():
    model = AutoencoderKL(AutoencoderConfig.tiny())
    names = set(model.state_dict())
    for name in ["scaling_factor", "encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight",
                 "encoder.down.0.downsample.conv.weight", "encoder.mid.block_1.norm1.weight",
                 "encoder.mid.attn_1.qkv.weight", "encoder.mid.block_2.conv2.weight", "encoder.norm_out.weight",
                 "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
                 "decoder.conv_in.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.up.0.block.1.conv2.weight",
                 "decoder.up.2.upsample.conv.weight", "decoder.conv_out.weight"]:
        assert name in names, name
    assert not any("emb_proj" in n for n in names)  # ResBlocks without a timestep embedding
    assert "encoder.down.2.downsample.conv.weight" not in names and "decoder.up.0.upsample.conv.weight" not in names
    assert len(model.encoder.down[0].block) == 1 and len(model.decoder.up[0].block) == 2  # decoder: one more
    assert model.quant_conv.kernel_size == model.post_quant_conv.kernel_size == (1, 1)


def test_presets_are_the_sizes_they_claim():
    assert count_parameters(AutoencoderKL(AutoencoderConfig.tiny())) == 242_327
    assert count_parameters(AutoencoderKL(AutoencoderConfig.small())) == 1_695_271
    assert AutoencoderConfig.small().latent_shape == (4, 8, 8)


def test_config_round_trip_and_errors():
    config = AutoencoderConfig.small()
    assert AutoencoderConfig.from_dict({**config.__dict__, "channel_mult": list(config.channel_mult)}) == config
    with pytest.raises(ValueError, match="unknown AutoencoderConfig fields"):
        AutoencoderConfig.from_dict({"z_channels": 4})
    with pytest.raises(ValueError, match="num_groups=32 must divide"):
        AutoencoderConfig(base_channels=48)
    with pytest.raises(ValueError, match="image_size=20 must be divisible"):
        AutoencoderConfig(image_size=20, channel_mult=(1, 2, 2, 2))
    model = AutoencoderKL(AutoencoderConfig.tiny())
    with pytest.raises(ValueError, match="built for 4"):
        model.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        model.encode(torch.randn(1, 3, 30, 30))


# --------------------------------------------------------------------------- the posterior


def test_kl_has_the_closed_form_values():
    # KL(N(m, v) || N(0, 1)) = 0.5 (m^2 + v - 1 - log v): m = 1, v = 1 -> 0.5; m = 0, v = e -> (e - 2) / 2;
    # m = 0, v = 1 -> 0 (the prior itself). Summed over the latent numbers of each image.
    mean = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    logvar = torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3, 1, 1)
    kl = DiagonalGaussianDistribution(moments_of(mean, logvar)).kl()
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(0.5 + (math.e - 2) / 2, rel=1e-6)


def test_kl_matches_torch_distributions_and_a_monte_carlo_estimate():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    q = DiagonalGaussianDistribution(moments_of(mean, logvar))
    reference = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(), reference, rtol=1e-5, atol=1e-5)

    # KL = E_q[log q(z) - log p(z)], estimated from 20,000 samples per image
    n = 20_000
    z = torch.stack([q.sample(torch.Generator().manual_seed(i)) for i in range(n)])  # [n, 3, 4, 2, 2]
    log_ratio = (Normal(mean, (0.5 * logvar).exp()).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(dim=(2, 3, 4))
    estimate, std_error = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)  # [3] each
    assert ((estimate - q.kl()).abs() < 5 * std_error).all(), (estimate, q.kl(), std_error)
    assert (std_error < 0.05 * q.kl()).all()  # precise enough that a wrong KL would fail


def test_reparameterised_samples_have_the_posterior_mean_and_variance():
    mean = torch.tensor([2.0, -1.0, 0.0]).reshape(1, 3, 1, 1)
    var = torch.tensor([4.0, 0.25, 1e-2]).reshape(1, 3, 1, 1)
    n = 40_000
    q = DiagonalGaussianDistribution(moments_of(mean.expand(n, 3, 1, 1), var.log().expand(n, 3, 1, 1)))
    z = q.sample(torch.Generator().manual_seed(0))  # [n, 3, 1, 1]
    sample_mean, sample_var = z.mean(0).flatten(), z.var(0).flatten()
    # standard errors: sqrt(var / n) for the mean, var * sqrt(2 / n) for the variance (0.7% of it)
    assert ((sample_mean - mean.flatten()).abs() < 5 * (var.flatten() / n).sqrt()).all(), sample_mean
    assert ((sample_var / var.flatten() - 1).abs() < 5 * math.sqrt(2 / n)).all(), sample_var
    assert torch.equal(q.mode(), q.mean)
    torch.testing.assert_close(q.std, var.sqrt().expand(n, 3, 1, 1))
    # the same generator seed draws the same latent
    assert torch.equal(z, q.sample(torch.Generator().manual_seed(0)))


def test_sample_is_differentiable_in_mean_and_logvar():
    mean = torch.zeros(1, 2, 1, 1, requires_grad=True)
    logvar = torch.full((1, 2, 1, 1), math.log(4.0), requires_grad=True)
    q = DiagonalGaussianDistribution(moments_of(mean, logvar))
    z = q.sample(torch.Generator().manual_seed(0))
    z.sum().backward()
    eps = z.detach() / 2.0  # z = 0 + 2 eps
    torch.testing.assert_close(mean.grad, torch.ones_like(mean))  # dz/dmean = 1
    torch.testing.assert_close(logvar.grad, 0.5 * 2.0 * eps)  # dz/dlogvar = 0.5 std eps


def test_logvar_is_clamped_to_minus_30_and_20():
    logvar = torch.tensor([-1e4, -31.0, 5.0, 21.0, 1e4]).reshape(1, 5, 1, 1)
    q = DiagonalGaussianDistribution(moments_of(torch.zeros_like(logvar), logvar))
    assert q.logvar.flatten().tolist() == [-30.0, -30.0, 5.0, 20.0, 20.0]
    assert torch.isfinite(q.var).all() and (q.var > 0).all() and torch.isfinite(q.kl()).all()
    assert q.var.flatten()[-1].item() == pytest.approx(math.exp(20.0), rel=1e-5)


def test_bf16_moments_give_a_float32_posterior():
    q = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4, dtype=torch.bfloat16))
    assert q.mean.dtype == q.logvar.dtype == q.sample().dtype == torch.float32


# --------------------------------------------------------------------------- loss, metrics, scaling


def test_psnr_of_a_known_error():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.02)])
    # MSE 0.04 and 0.0004, range 2: 10 log10(4 / 0.04) = 20 dB, 10 log10(4 / 0.0004) = 40 dB
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 40.0]))
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:1])


def test_loss_is_squared_error_plus_weighted_kl():
    torch.manual_seed(0)
    model = randomize_zero_init(AutoencoderKL(AutoencoderConfig.tiny()), std=0.05)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss0, terms = autoencoder_loss(model, x, 0.0, generator=torch.Generator().manual_seed(3), return_terms=True)
    recon, posterior = model(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss0, F.mse_loss(recon, x))  # the same noise draws the same reconstruction
    torch.testing.assert_close(terms["kl"], posterior.kl().mean())
    loss1 = autoencoder_loss(model, x, 1.0, generator=torch.Generator().manual_seed(3))
    # KL is per image (summed over 4 x 8 x 8 latent numbers), the loss per image number (3 x 32 x 32)
    torch.testing.assert_close(loss1 - loss0, terms["kl"] / 3072)


def test_scaling_factor_gives_unit_variance_latents(isolated_data):
    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    with torch.no_grad():
        model.quant_conv.weight[:4].mul_(20.0)  # means (the first 4 output channels) far from unit scale
        model.quant_conv.bias[:4].add_(3.0)
    images = load_cifar10("train", limit=64, verbose=False).images
    factor = latent_scaling_factor(model, images, batch_size=32)
    assert factor < 0.5
    model.set_scaling_factor(factor)
    with torch.no_grad():
        z = model.encode_latents(images, generator=torch.Generator().manual_seed(1))  # other noise, same images
        assert z.std().item() == pytest.approx(1.0, abs=0.01)  # with means only it would be 1.06
        x = model.decode(z / factor)
        torch.testing.assert_close(model.decode_latents(z), x)


def test_scaling_factor_uses_posterior_samples_not_means():
    model = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    with torch.no_grad():  # every posterior is N(0, 9): the means have no spread at all
        model.quant_conv.weight.zero_()
        model.quant_conv.bias.copy_(torch.tensor([0.0] * 4 + [math.log(9.0)] * 4))
    factor = latent_scaling_factor(model, torch.randn(32, 3, 32, 32))
    assert factor == pytest.approx(1 / 3, rel=0.02)
    with pytest.raises(ValueError, match="positive"):
        model.set_scaling_factor(0.0)


def test_tiny_autoencoder_learns_to_reconstruct_real_images(isolated_data):
    torch.manual_seed(0)
    train_split = load_cifar10("train", hflip=True, verbose=False)
    test_images = load_cifar10("test", limit=100, verbose=False).images
    model = AutoencoderKL(AutoencoderConfig.tiny())
    before = reconstruction_psnr(model, test_images).mean().item()
    result = fit(model, lambda m, batch: autoencoder_loss(m, batch[0], 1e-3), StepBatches(train_split, 16),
                 TrainConfig(max_steps=40, lr=3e-3, warmup_steps=5, ema_decay=0.9, progress=False), device="cpu")
    after = reconstruction_psnr(model, test_images).mean().item()  # held-out images, in dB: 11.9 -> 17.2
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5])
    assert after > before + 3.0 and after > 15.0, (before, after)


# --------------------------------------------------------------------------- the recipe


@pytest.mark.slow
def test_recipe_export_stores_scaling_factor_and_test_psnr(tmp_path, isolated_data):
    state, export = tmp_path / "state.safetensors", tmp_path / "vae.safetensors"
    assert train.main(["vae-tiny", "--steps", "2", "--state", str(state), "--export", str(export),
                       "--device", "cpu"]) == 0
    card = read_card(export)
    assert card["kind"] == "inference" and card["model_class"] == "AutoencoderKL" and card["step"] == 2
    assert card["training"]["task"] == "autoencoder" and card["training"]["kl_weight"] == 1e-3
    assert card["training"]["latent_scaling"]["images"] == 500  # fast mode
    metrics = card["metrics"]
    assert metrics["test_images"] == 500 and metrics["test_source"].startswith("bundled sample")
    assert 5.0 < metrics["test_psnr"] < 40.0
    model, _ = models.model_from_checkpoint(export)
    assert isinstance(model, AutoencoderKL)
    assert model.scaling_factor.item() == pytest.approx(metrics["scaling_factor"], rel=1e-5)
    assert metrics["scaling_factor"] != 1.0


# --------------------------------------------------------------------------- ResBlock without an embedding


def test_res_block_without_embedding_is_the_block_with_a_zero_embedding():
    torch.manual_seed(0)
    with_emb = randomize_zero_init(ResBlock(8, 16, emb_dim=6, num_groups=4))
    assert list(with_emb.state_dict()) == [  # the names the shipped checkpoints use
        "norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "emb_proj.weight", "emb_proj.bias",
        "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias", "shortcut.weight", "shortcut.bias"]
    plain = ResBlock(8, 16, emb_dim=None, num_groups=4)
    assert plain.emb_proj is None and not any("emb_proj" in n for n in plain.state_dict())
    missing, unexpected = plain.load_state_dict(with_emb.state_dict(), strict=False)
    assert missing == [] and unexpected == ["emb_proj.weight", "emb_proj.bias"]
    with torch.no_grad():
        with_emb.emb_proj.weight.zero_()
        with_emb.emb_proj.bias.zero_()
    x = torch.randn(2, 8, 4, 4)
    out = plain(x)
    torch.testing.assert_close(out, with_emb(x, torch.randn(2, 6)))
    assert out.shape == (2, 16, 4, 4) and not torch.allclose(out, with_emb.shortcut(x))


def test_res_block_embedding_errors():
    with pytest.raises(ValueError, match="takes none"):
        ResBlock(8, 8, emb_dim=None, num_groups=4)(torch.randn(1, 8, 4, 4), torch.randn(1, 6))
    with pytest.raises(ValueError, match="call it as block\\(x, emb\\)"):
        ResBlock(8, 8, emb_dim=6, num_groups=4)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="give emb_dim"):
        AdaGNResBlock(8, 8, emb_dim=None, num_groups=4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_autoencoder_runs_in_any_floating_dtype(dtype):
    from conftest import assert_runs_in_dtype

    torch.manual_seed(0)
    model = randomize_zero_init(AutoencoderKL(AutoencoderConfig.tiny()), std=0.2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert_runs_in_dtype(model, lambda m, dt: m.decode(m.encode(x.to(dt)).mode()), dtype)


# --------------------------------------------------------------------------- a decoder wider or deeper than the encoder


def test_decoder_width_and_depth_default_to_the_encoders():
    config = AutoencoderConfig.small()
    assert config.decoder_base_channels is None and config.decoder_num_res_blocks is None
    assert config.decoder_base == 32 and config.decoder_res_blocks == 1
    written_before = {k: v for k, v in dataclasses.asdict(config).items() if not k.startswith("decoder_")}
    assert AutoencoderConfig.from_dict(written_before) == config


def test_decoder_only_width_and_depth_leave_the_encoder_alone():
    torch.manual_seed(0)
    base = AutoencoderKL(AutoencoderConfig.tiny())
    wide = AutoencoderKL(AutoencoderConfig.tiny(decoder_base_channels=32, decoder_num_res_blocks=2))
    assert count_parameters(wide.encoder) == count_parameters(base.encoder)
    assert count_parameters(wide.decoder) > 3 * count_parameters(base.decoder)
    assert [len(up.block) for up in wide.decoder.up] == [3, 3, 3] and len(wide.encoder.down[0].block) == 1
    assert wide.decoder.conv_in.out_channels == 64 and wide.decoder.norm_out.num_channels == 32
    wide.encoder.load_state_dict(base.encoder.state_dict())  # the encoder is the same network
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert not torch.equal(wide.encode(x).mean, base.encode(x).mean)  # quant_conv differs (fresh init)
    wide.quant_conv.load_state_dict(base.quant_conv.state_dict())
    assert torch.equal(wide.encode(x).mean, base.encode(x).mean)
    recon, posterior = wide(x)
    assert recon.shape == x.shape and posterior.mean.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="decoder_base_channels=20"):
        AutoencoderConfig.tiny(decoder_base_channels=20)
    with pytest.raises(ValueError, match="decoder_num_res_blocks must be >= 1"):
        AutoencoderConfig.tiny(decoder_num_res_blocks=0)


def test_vae_small_checkpoint_without_the_decoder_fields_loads_unchanged():
    path = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "vae-small.safetensors"
    model, card = models.model_from_checkpoint(path)
    assert "decoder_base_channels" not in card["model_config"]  # written before the fields existed
    assert model.config.decoder_base == model.config.base_channels == 32
    assert count_parameters(model) == card["parameters"] == 1_695_271


def test_the_latent_shift_is_subtracted_before_scaling_and_added_back_after():
    """SD3 / Flux: data = (z - shift) * scale; decode_latents inverts it exactly (shift 0: LDM's scaling alone)."""
    from course_lib.autoencoder import latent_shift_factor

    torch.manual_seed(0)
    plain = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    plain.set_scaling_factor(0.5)
    shifted = AutoencoderKL(dataclasses.replace(plain.config, shift_factor=0.3)).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = plain.encode(x).mode()
        torch.testing.assert_close(plain.encode_latents(x, sample_posterior=False), 0.5 * z)
        torch.testing.assert_close(shifted.encode_latents(x, sample_posterior=False), 0.5 * (z - 0.3))
        torch.testing.assert_close(shifted.decode_latents(0.5 * (z - 0.3)), plain.decode(z), atol=1e-5, rtol=1e-5)
        mean = latent_shift_factor(plain, x, seed=0)
        torch.testing.assert_close(torch.tensor(mean), plain.encode(x).sample(torch.Generator().manual_seed(0)).mean())
