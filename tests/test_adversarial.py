"""The adversarial decoder fine-tune (chapter 4): the patch discriminator, the hinge loss, taming's adaptive
weight, the frozen encoder, exact resume, the exported checkpoint and the command line's errors."""

import dataclasses

import pytest
import torch
from conftest import randomize_zero_init

from course_lib import adversarial
from course_lib.adversarial import (DecoderFinetune, DecoderPairs, FinetuneConfig, NLayerDiscriminator,
                                    adaptive_weight, decoder_loss, feature_matching_loss, finetune,
                                    hinge_d_loss, hinge_g_loss)
from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
from course_lib.checkpoint import load_checkpoint, read_card, save_checkpoint
from course_lib.latents import LatentSplit
from course_lib.unet import UNet, UNetConfig

# --------------------------------------------------------------------------- the discriminator


@pytest.mark.parametrize("num_layers, side", [(1, 14), (2, 6), (3, 2)])
def test_discriminator_gives_one_logit_per_patch(num_layers, side):
    disc = NLayerDiscriminator(3, channels=8, num_layers=num_layers)
    x = torch.randn(2, 3, 32, 32)
    logits, features = disc(x, return_features=True)
    assert logits.shape == (2, 1, side, side)
    assert len(features) == num_layers + 1
    assert features[0].shape == (2, 8, 16, 16)  # the first layer halves the image, without normalisation
    assert torch.equal(disc(x), logits)
    assert not isinstance(disc.layers[0][1], torch.nn.BatchNorm2d)
    assert all(isinstance(layer[1], torch.nn.BatchNorm2d) for layer in disc.layers[1:])


def test_spectral_discriminator_has_no_batch_norm_and_unit_spectral_norms():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(3, channels=8, num_layers=2, norm="spectral")
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules())
    for _ in range(20):  # power iterations (one per forward pass in training mode)
        disc(torch.randn(2, 3, 32, 32))
    conv = disc.layers[1][0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="norm must be"):
        NLayerDiscriminator(norm="instance")


def test_discriminator_starts_as_pix2pix_does():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(3, channels=64, num_layers=3)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert weights.std().item() == pytest.approx(0.02, rel=0.02) and abs(weights.mean().item()) < 1e-3
    norms = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert torch.cat([n.weight for n in norms]).mean().item() == pytest.approx(1.0, abs=0.01)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]  # doubling, capped at 8 x 64


# --------------------------------------------------------------------------- the losses


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2  -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2    -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0  # chance
    assert hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -3.0)).item() == 0.0  # past the margin
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_feature_matching_is_the_mean_l1_over_layers():
    real = [torch.zeros(2, 3, 4, 4), torch.ones(2, 5, 2, 2)]
    fake = [torch.full((2, 3, 4, 4), 0.5), torch.ones(2, 5, 2, 2)]
    assert feature_matching_loss(real, fake).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same non-zero number"):
        feature_matching_loss(real, fake[:1])


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    hidden, last = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)
    x, target = torch.randn(4, 5), torch.randn(4, 3)
    out = last(torch.tanh(hidden(x)))
    rec = (out - target).abs().mean()
    g = -(out ** 3).mean()
    lam = adaptive_weight(rec, g, last.weight)
    # by hand: the two gradients with respect to the last layer's weights, each on its own
    grad_rec = torch.autograd.grad(rec, last.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    assert lam.item() == pytest.approx((grad_rec.norm() / (grad_g.norm() + 1e-4)).item(), rel=1e-6)
    assert not lam.requires_grad
    assert adaptive_weight(rec, g, last.weight, max_weight=1e-3).item() == pytest.approx(1e-3)  # clamped
    assert hidden.weight.grad is None and last.weight.grad is None  # it only looks at gradients
    with_a_constant = adaptive_weight(3.0 * rec, g, last.weight)  # scale-free in L_rec: lambda scales along
    assert with_a_constant.item() == pytest.approx(3.0 * lam.item(), rel=1e-5)


def test_decoder_loss_balances_the_gradients_at_the_last_layer():
    torch.manual_seed(0)
    decoder = torch.nn.Conv2d(4, 3, 3, padding=1)
    disc = NLayerDiscriminator(3, channels=8, num_layers=2)
    disc.requires_grad_(False)
    images, z = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 4, 16, 16)
    loss, terms = decoder_loss(images, decoder(z), disc, decoder.weight, disc_weight=0.5)
    assert set(terms) == {"l1", "feature", "g", "lambda"} and terms["feature"] == 0
    assert loss.item() == pytest.approx((terms["l1"] + 0.5 * terms["lambda"] * terms["g"]).item(), rel=1e-6)
    # the weighted adversarial gradient at the last layer is disc_weight times the reconstruction's
    recon = decoder(z)
    l1 = (images - recon).abs().mean()
    g = hinge_g_loss(disc(recon))
    grad_l1 = torch.autograd.grad(l1, decoder.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(terms["lambda"] * g, decoder.weight)[0]
    assert grad_g.norm().item() == pytest.approx(grad_l1.norm().item(), rel=1e-3)
    loss, terms = decoder_loss(images, decoder(z), None, decoder.weight)  # before the adversarial start
    assert loss.item() == pytest.approx(terms["l1"].item()) and terms["lambda"] == 0


def test_adversarial_terms_start_at_disc_start_and_ramp_in():
    cfg = FinetuneConfig(autoencoder=AutoencoderConfig.tiny(), disc_start=2, disc_ramp_steps=4)
    assert [adversarial.adversarial_factor(cfg, s) for s in range(7)] == [0, 0, 0.25, 0.5, 0.75, 1, 1]
    switch = dataclasses.replace(cfg, disc_ramp_steps=0)
    assert [adversarial.adversarial_factor(switch, s) for s in range(4)] == [0, 0, 1, 1]


# --------------------------------------------------------------------------- the fine-tune


def tiny_source(path, seed=0):
    """A tiny AutoencoderKL checkpoint with random (non-zero) weights and a scaling factor, float16 like vae-small."""
    torch.manual_seed(seed)
    model = randomize_zero_init(AutoencoderKL(AutoencoderConfig.tiny()), std=0.05)
    model.set_scaling_factor(0.75)
    model.half()
    model.scaling_factor.data = model.scaling_factor.data.float()
    return save_checkpoint(path, model, step=7)


def test_pairs_give_each_latent_its_image_or_its_mirror():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    moments = torch.zeros(4, 2, 1, 1)  # mean 0, log-variance 0: z ~ N(0, 1)
    moments[:, 0] = torch.arange(4.0)[:, None, None] * 100  # item i's mean is 100 i
    pairs = DecoderPairs(LatentSplit(moments, torch.zeros(4, dtype=torch.long), scaling_factor=2.0, source="t"),
                         images)
    z, x = pairs.batch(torch.tensor([3, 0, 2]), torch.Generator().manual_seed(0))
    assert torch.equal(x[0], images[1].flip(-1)) and torch.equal(x[1], images[0])
    assert torch.equal(x[2], images[0].flip(-1))
    assert (z.flatten() / 2 - torch.tensor([300.0, 0.0, 200.0])).abs().max() < 5  # scaled samples near the means
    with pytest.raises(ValueError, match="flips=True"):
        DecoderPairs(LatentSplit(moments[:3], torch.zeros(3, dtype=torch.long), scaling_factor=1.0, source="t"),
                     images)


def run(source, state, **kwargs):
    options = dict(steps=3, limit=64, val_images=16, log_every=0, bf16=False,
                   settings=dict(batch_size=8, disc_channels=8, disc_layers=2, disc_start=1, disc_ramp_steps=2,
                                 feature_weight=1.0, warmup_steps=2, lr=1e-3, disc_lr=1e-3))
    return finetune(source, state, **{**options, **kwargs})


def test_finetune_trains_the_decoder_and_keeps_the_encoder_bit_identical(tmp_path, isolated_data):
    source = tiny_source(tmp_path / "vae.safetensors")
    state = run(source, tmp_path / "state.safetensors")
    card = read_card(state)
    assert card["step"] == 3 and card["model_class"] == "DecoderFinetune"
    assert card["training"]["source_sha256"] == read_card(source)["sha256"]
    assert card["training"]["initialisation"]["fresh_decoder_tensors"] == 0  # the source's decoder, warm
    history = load_checkpoint(state).train["history"]
    assert history.shape == (3, len(adversarial.TERMS))
    assert history[0, 3] == 0 and history[1:, 3].min() > 0  # lambda: 0 before disc_start, then > 0
    assert card["metrics"]["val_images"] == 16

    exported = adversarial.export(state, tmp_path / "sharp.safetensors", source, test_images=32,
                                  selection={"chosen_by": "a test", "fid": [1.0, 2.0]})
    theirs, ours = load_checkpoint(source).model, load_checkpoint(exported).model
    assert set(theirs) == set(ours)
    for name in theirs:
        if not name.startswith(("decoder.", "post_quant_conv.")):
            assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
        else:
            assert ours[name].dtype == theirs[name].dtype  # stored like the source's decoder
    assert not torch.equal(ours["decoder.conv_out.weight"], theirs["decoder.conv_out.weight"])  # it learnt
    out_card = read_card(exported)
    assert out_card["model_class"] == "AutoencoderKL" and out_card["kind"] == "inference"
    assert out_card["training"]["source_sha256"] == read_card(source)["sha256"]
    assert out_card["training"]["steps"] == 3 and out_card["training"]["exported_weights"] == "ema"
    assert out_card["training"]["selection"] == {"chosen_by": "a test", "fid": [1.0, 2.0]}
    assert out_card["metrics"]["test_images"] == 32 and 0 < out_card["metrics"]["test_psnr"] < 60
    model, _ = adversarial.load_autoencoder(exported)
    source_model, _ = adversarial.load_autoencoder(source)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encode(x).mean, source_model.encode(x).mean)  # the same latents


@pytest.mark.parametrize("norm", ["batch", "spectral"])
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, isolated_data, norm):
    source = tiny_source(tmp_path / "vae.safetensors")
    settings = dict(batch_size=8, disc_channels=8, disc_layers=2, disc_norm=norm, disc_start=1, disc_ramp_steps=2,
                    feature_weight=1.0, warmup_steps=2, lr=1e-3, disc_lr=1e-3)
    whole = run(source, tmp_path / "whole.safetensors", steps=4, settings=settings)
    parts = run(source, tmp_path / "parts.safetensors", steps=2, settings=settings)
    assert read_card(parts)["step"] == 2
    run(source, parts, steps=4, settings={})  # resumed: the state's own settings
    a, b = load_checkpoint(whole), load_checkpoint(parts)
    assert b.step == 4
    for name in a.model:  # decoder, EMA, discriminator (its batch statistics or power-iteration vectors too)
        assert torch.equal(a.model[name], b.model[name]), name
    for name in a.optim:
        assert torch.equal(a.optim[name], b.optim[name]), name
    assert torch.equal(a.train["history"], b.train["history"])
    with pytest.raises(ValueError, match="disc_weight: state 0.5 vs asked 2.0"):
        run(source, parts, steps=5, settings=dict(disc_weight=2.0))


def test_a_resumed_run_may_lower_its_learning_rates_and_keeps_snapshots(tmp_path, isolated_data):
    source = tiny_source(tmp_path / "vae.safetensors")
    state = run(source, tmp_path / "state.safetensors", steps=2, snapshot_steps=2)
    assert (tmp_path / "state-step2.safetensors").exists()
    run(source, state, steps=4, settings=dict(lr=1e-4, disc_lr=2e-4, ema_decay=0.99), snapshot_steps=2)
    card = read_card(state)
    assert card["step"] == 4 and card["training"]["changes"] == [dict(step=2, lr=1e-4, disc_lr=2e-4, ema_decay=0.99)]
    assert card["model_config"]["lr"] == 1e-4  # the state now holds the new rates (a later resume keeps them)
    assert [g["lr"] for g in card["optimizer"]["param_groups"]] == [1e-4, 2e-4]  # the steps after used them
    snap = read_card(tmp_path / "state-step4.safetensors")
    assert snap["step"] == 4 and read_card(tmp_path / "state-step2.safetensors")["step"] == 2
    with pytest.raises(ValueError, match=r"disc_start: state 1 vs asked 5.*may change only lr, disc_lr, ema_decay"):
        run(source, state, steps=5, settings=dict(disc_start=5, lr=1e-5))
    assert read_card(state)["step"] == 4  # refused before anything was written


def test_a_deeper_decoder_starts_as_the_source_decoder(tmp_path, isolated_data):
    source = tiny_source(tmp_path / "vae.safetensors")
    src, _ = adversarial.load_autoencoder(source)
    settings = dict(decoder_res_blocks=2)
    cfg = adversarial._settings_config(src.config, settings)
    assert cfg.autoencoder.decoder_num_res_blocks == 2 and cfg.autoencoder.decoder_base_channels is None
    model = DecoderFinetune(cfg)
    init = adversarial._initialise(model, src)
    assert init["fresh_decoder_tensors"] > 0
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.autoencoder.decode(z), src.decode(z), atol=1e-6)  # new blocks: identity
    wide = DecoderFinetune(adversarial._settings_config(src.config, dict(decoder_channels=32)))
    assert wide.config.autoencoder.decoder_base == 32 and wide.config.autoencoder.base_channels == 16
    same = adversarial._settings_config(src.config, dict(decoder_channels=16, decoder_res_blocks=1))
    assert same.autoencoder == src.config  # the source's own width and depth: the source's config


def test_config_round_trips_through_a_card():
    cfg = FinetuneConfig(autoencoder=AutoencoderConfig.tiny(decoder_base_channels=32), disc_weight=1.5)
    assert FinetuneConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown FinetuneConfig fields"):
        FinetuneConfig.from_dict({**dataclasses.asdict(cfg), "perceptual_weight": 1.0})
    with pytest.raises(ValueError, match="ema_decay"):
        FinetuneConfig(autoencoder=AutoencoderConfig.tiny(), ema_decay=1.0)


def test_a_checkpoint_that_is_not_an_autoencoder_is_a_clear_error(tmp_path, isolated_data):
    path = save_checkpoint(tmp_path / "unet.safetensors", UNet(UNetConfig(base_channels=8, channel_mult=(1,),
                                                                          attention_resolutions=(), num_groups=4)))
    with pytest.raises(ValueError, match="holds a UNet, not an AutoencoderKL"):
        adversarial.load_autoencoder(path)
    with pytest.raises(SystemExit) as err:
        adversarial.main([str(path), "--state", str(tmp_path / "s.safetensors"), "--steps", "1"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):  # no budget
        adversarial.main([str(path), "--state", str(tmp_path / "s.safetensors")])


def test_command_line_trains_and_exports(tmp_path, isolated_data, capsys):
    source = tiny_source(tmp_path / "vae.safetensors")
    out = tmp_path / "sharp.safetensors"
    assert adversarial.main([str(source), "--state", str(tmp_path / "state.safetensors"), "--export", str(out),
                             "--steps", "2", "--limit", "32", "--batch-size", "8", "--disc-channels", "8",
                             "--disc-layers", "1", "--val-images", "8", "--test-images", "8", "--no-bf16",
                             "--threads", "1"]) == 0
    card = read_card(out)
    assert card["training"]["commands"][0].startswith("python -m course_lib.adversarial")
    assert "--disc-channels 8" in card["training"]["commands"][0]
    assert card["training"]["finetune_config"]["disc_layers"] == 1
    assert card["training"]["hardware"] and card["training"]["wall_minutes"] >= 0
    assert "exported" in capsys.readouterr().out
