"""Latents encoded once: the cache, its key (the autoencoder's hash), flips, and per-batch posterior samples."""

import pytest
import torch

from course_lib import latents as lat
from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
from course_lib.checkpoint import save_checkpoint
from course_lib.data import StepBatches, load_cifar10
from course_lib.latents import LatentSplit, cached_latents, encode_moments


def _autoencoder_checkpoint(path, seed=0, scaling=0.5):
    torch.manual_seed(seed)
    model = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    model.set_scaling_factor(scaling)
    return save_checkpoint(path, model, kind="inference"), model


def test_cache_holds_the_moments_of_each_image_and_of_its_mirror(tmp_path, isolated_data):
    path, model = _autoencoder_checkpoint(tmp_path / "ae.safetensors")
    split = cached_latents(path, "train", limit=16, progress=False)
    images = load_cifar10("train", limit=16, verbose=False).images  # [16, 3, 32, 32]
    assert len(split) == 32 and split.latent_shape == (4, 8, 8) and split.scaling_factor == 0.5
    direct = encode_moments(model, torch.cat([images, images.flip(-1)]), progress=False)  # [32, 8, 8, 8]
    assert torch.allclose(split.moments.float(), direct, atol=2e-3, rtol=2e-3)  # stored in float16
    assert split.labels[:16].equal(split.labels[16:])
    mean = split.latents(torch.arange(32), sample=False)
    assert torch.allclose(mean, 0.5 * direct[:, :4], atol=2e-3, rtol=2e-3)  # scaled means
    from course_lib.checkpoint import read_card
    # keyed by the hash of the weights (the card's sha256), so editing the card keeps the cache
    assert split.card["autoencoder_sha256"] == read_card(path)["sha256"] and split.card["items"] == 32


def test_the_cache_is_reused_and_rebuilt_when_the_autoencoder_changes(tmp_path, isolated_data, monkeypatch):
    path, _ = _autoencoder_checkpoint(tmp_path / "ae.safetensors")
    first = cached_latents(path, "train", limit=8, progress=False)
    calls = []
    real_encode = lat.encode_moments
    monkeypatch.setattr(lat, "encode_moments", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    again = cached_latents(path, "train", limit=8, progress=False)
    assert calls == [] and again.moments.equal(first.moments)  # read back, bit for bit
    _autoencoder_checkpoint(path, seed=1)  # new weights in the same file: another hash
    rebuilt = cached_latents(path, "train", limit=8, progress=False)
    assert calls == [1] and not rebuilt.moments.equal(first.moments)
    assert not list((isolated_data / "data-root" / "cache" / "latents").glob("*.tmp"))


def test_batches_draw_fresh_posterior_samples_from_the_step_only(tmp_path, isolated_data):
    path, _ = _autoencoder_checkpoint(tmp_path / "ae.safetensors")
    split = cached_latents(path, "train", limit=32, progress=False)
    batches = StepBatches(split, batch_size=8, seed=3)
    z, y = batches(5)
    assert z.shape == (8, 4, 8, 8) and z.dtype == torch.float32 and y.shape == (8,)
    z_again, _ = StepBatches(split, batch_size=8, seed=3)(5)  # a resumed run sees the same batch
    assert z.equal(z_again)
    index = torch.zeros(20_000, dtype=torch.long)  # one item, sampled many times: mean and std of q(z|x)
    draws = split.latents(index, torch.Generator().manual_seed(0))  # [20000, 4, 8, 8]
    mean, logvar = split.moments[0].float().chunk(2, dim=0)
    assert torch.allclose(draws.mean(0), 0.5 * mean, atol=float(5 * draws.std(0).max() / 20_000 ** 0.5))  # 5 s.e.
    assert torch.allclose(draws.std(0), 0.5 * logvar.mul(0.5).exp(), rtol=0.05)


def test_bad_moments_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 2C, h, w\]"):
        LatentSplit(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), scaling_factor=1.0, source="x")


def test_a_shifted_autoencoder_reuses_the_moments_and_shifts_its_latents(tmp_path, isolated_data):
    """The shift is a config value, not a weight: an autoencoder with the same weights and shift 0.2 reads the same
    cached moments (same hash), and its latents are (z - 0.2) * scale, as its encode_latents gives."""
    import dataclasses

    path, model = _autoencoder_checkpoint(tmp_path / "ae.safetensors")
    plain = cached_latents(path, "train", limit=8, progress=False)
    shifted_model = AutoencoderKL(dataclasses.replace(model.config, shift_factor=0.2)).eval()
    shifted_model.load_state_dict(model.state_dict())
    shifted_path = save_checkpoint(tmp_path / "ae-shift.safetensors", shifted_model, kind="inference")
    shifted = cached_latents(shifted_path, "train", limit=8, progress=False)
    assert shifted.moments.equal(plain.moments) and (plain.shift_factor, shifted.shift_factor) == (0.0, 0.2)
    index = torch.arange(8)
    torch.testing.assert_close(shifted.latents(index, sample=False), plain.latents(index, sample=False) - 0.2 * 0.5)
    images = load_cifar10("train", limit=8, verbose=False).images
    with torch.no_grad():
        expected = shifted_model.encode_latents(images, sample_posterior=False)
    torch.testing.assert_close(shifted.latents(index, sample=False), expected, atol=3e-3, rtol=3e-3)  # float16 cache
