"""Latents of a whole data set, encoded once: what chapter 4's latent diffusion model trains on.

A latent diffusion model (Rombach et al. 2022) never sees pixels while it trains: its data are the
scaled latents ``(z - shift_factor) * scaling_factor`` with ``z ~ q(z | x)``, the posterior of a frozen autoencoder
(:class:`~course_lib.autoencoder.AutoencoderKL`). Running the encoder inside the training loop would
repeat the same work every epoch, and on a CPU the encoder costs about as much as the small denoiser
itself. So, as fast-DiT does (its ``extract_features.py``), the data set is encoded once and cached.

What is cached are the posterior's *moments* (mean and log-variance, [N, 2C, h, w]) rather than one
sample: :class:`LatentSplit` then draws a fresh ``z = mean + std * eps`` for every batch, as an
uncached LDM would, from the batch's generator, so a batch stays a pure function of the step
(:class:`~course_lib.data.StepBatches`, exact resume). Each image is stored with its mirror image
(``flips=True``; DDPM's only augmentation, Ho et al. 2020), which doubles N instead of flipping latents:
a flipped latent is not the latent of the flipped image.

The cache is a safetensors file under ``data/cache/latents/`` (not committed) whose card names the
autoencoder checkpoint and the SHA-256 of its weights, the data source and split: :func:`cached_latents` rebuilds it
when any of them changes. Float16 storage: 8x8x8 moments of 100,000 images take 100 MB.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import config
from .checkpoint import read_card
from .data import TensorSplit, load_cifar10, source_tag
from .models import model_from_checkpoint

__all__ = ["LatentSplit", "encode_moments", "cached_latents", "latent_cache_path"]


class LatentSplit(TensorSplit):
    """Cached posterior moments and labels: ``batch`` draws scaled latents z ~ q(z | x), [B, C, h, w].

    moments:        [N, 2C, h, w], the encoder's mean and log-variance (``AutoencoderKL.encode``)
    labels:         [N] int64 class labels (captions are drawn from them, as in chapter 3)
    scaling_factor: the autoencoder's latent scaling factor, applied to every sample
    shift_factor:   the autoencoder's latent shift (SD3's; 0 for LDM's scaling alone), subtracted first
    """

    def __init__(self, moments: torch.Tensor, labels: torch.Tensor, *, scaling_factor: float, source: str,
                 card: dict | None = None, shift_factor: float = 0.0):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [N, 2C, h, w] (means, then log-variances), got {tuple(moments.shape)}")
        super().__init__(moments, labels, source=source)
        self.scaling_factor, self.shift_factor, self.card = float(scaling_factor), float(shift_factor), card or {}

    @property
    def moments(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c2, h, w = self.moments.shape[1:]
        return (c2 // 2, h, w)

    def latents(self, index: torch.Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> torch.Tensor:
        """The diffusion model's data for the items at ``index``: (z - shift_factor) * scaling_factor with
        z = mean + std * eps (``sample``) or the mean."""
        mean, logvar = self.moments[index].float().chunk(2, dim=1)  # [B, C, h, w] each
        if not sample:
            return (mean - self.shift_factor) * self.scaling_factor
        eps = torch.randn(mean.shape, generator=generator)
        return (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps - self.shift_factor) * self.scaling_factor

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None):
        """(latents [B, C, h, w] float32, labels [B]): fresh posterior samples drawn from ``generator``."""
        return self.latents(index, generator), self.labels[index]

    def _like(self, tensors: tuple[torch.Tensor, ...]) -> "LatentSplit":
        moments, labels = tensors
        return LatentSplit(moments, labels, scaling_factor=self.scaling_factor, source=self.source, card=self.card,
                           shift_factor=self.shift_factor)

    def __repr__(self) -> str:
        return (f"LatentSplit(n={len(self)}, latents {self.latent_shape}, scaling_factor={self.scaling_factor:.4f}, "
                f"source={self.source!r})")


@torch.no_grad()
def encode_moments(autoencoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 250,
                   progress: bool = True) -> torch.Tensor:
    """The posterior moments (mean, then clamped log-variance) of images [N, 3, H, W] in [-1, 1]: [N, 2C, h, w]."""
    device = next(autoencoder.parameters()).device
    was_training = autoencoder.training
    autoencoder.eval()
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="encoding", unit="batch", disable=not progress,
                      leave=False):
            posterior = autoencoder.encode(images[i:i + batch_size].to(device))
            out.append(torch.cat([posterior.mean, posterior.logvar], dim=1).float().cpu())  # [B, 2C, h, w]
    finally:
        autoencoder.train(was_training)
    return torch.cat(out)


def latent_cache_path(autoencoder_sha256: str, split: str, source: str, flips: bool) -> Path:
    """``data/cache/latents/cifar10-<split>-<source tag>[-flips]-ae<hash prefix>.safetensors``."""
    name = f"cifar10-{split}-{source_tag(source)}{'-flips' if flips else ''}-ae{autoencoder_sha256[:12]}"
    return config.cache_dir() / "latents" / f"{name}.safetensors"


def cached_latents(autoencoder_checkpoint: str | Path, split: str = "train", *, flips: bool = True,
                   device: str | torch.device = "cpu", batch_size: int = 250, progress: bool = True,
                   limit: int | None = None) -> LatentSplit:
    """The :class:`LatentSplit` of a CIFAR-10 split under an autoencoder checkpoint: read from the cache when its
    card names the same checkpoint hash, source and image count; else encoded (with mirror images when
    ``flips``: items N..2N-1 are the flipped images 0..N-1) and saved atomically. The cache holds the encoder's
    moments; the shift (a config value of the autoencoder, not a weight) is read from its card each time."""
    ae_card = read_card(autoencoder_checkpoint)
    digest = ae_card["sha256"]  # of the weights: a card edit keeps the cache
    shift_factor = float(ae_card.get("model_config", {}).get("shift_factor", 0.0))
    data = load_cifar10(split, limit=limit, verbose=False)
    path = latent_cache_path(digest, split, data.source, flips)
    if limit:
        path = path.with_name(path.stem + f"-{limit}.safetensors")
    expected = {"autoencoder_sha256": digest, "source": data.source, "split": split, "flips": flips,
                "images": len(data)}
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            card = json.loads(f.metadata()["card"])
            if all(card.get(k) == v for k, v in expected.items()):
                return LatentSplit(f.get_tensor("moments"), f.get_tensor("labels"),
                                   scaling_factor=card["scaling_factor"], source=card["what"], card=card,
                                   shift_factor=shift_factor)
    autoencoder, ae_card = model_from_checkpoint(autoencoder_checkpoint, device=device)
    start = time.perf_counter()
    images, labels = data.images, data.labels
    if flips:
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])  # [2N, 3, 32, 32], [2N]
    moments = encode_moments(autoencoder, images, batch_size, progress)  # [N or 2N, 2C, h, w]
    scaling_factor = float(autoencoder.scaling_factor)
    card = {**expected, "what": f"latents of CIFAR-10 {split} ({data.source}) under "
                                f"{config.portable_path(autoencoder_checkpoint)}",
            "autoencoder": config.portable_path(autoencoder_checkpoint), "autoencoder_step": ae_card.get("step"),
            "items": len(moments), "latent_shape": list(moments.shape[1:]), "scaling_factor": scaling_factor,
            "stored": "posterior mean and clamped log-variance (float16); LatentSplit samples z per batch",
            "seconds": round(time.perf_counter() - start, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: caches are shared
    save_file({"moments": moments.half().contiguous(), "labels": labels.contiguous()}, str(tmp),
              metadata={"card": json.dumps(card)})
    os.replace(tmp, path)
    return LatentSplit(moments.half(), labels, scaling_factor=scaling_factor, source=card["what"], card=card,
                       shift_factor=shift_factor)
