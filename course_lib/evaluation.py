"""Samples judged by the course's CIFAR-10 classifier: prompt accuracy and classifier score.

Does a sample show what its prompt asked for? Generate from class prompts, classify, count.

For a text-to-image model conditioned on CIFAR-10 captions, the *prompt accuracy* at guidance scale
w is the fraction of images generated from the prompt of class c (``class_prompt(c)``) that a
classifier trained on real CIFAR-10 images (:mod:`course_lib.classifier`) assigns to class c:

    acc(w) = 1/N sum_i [ argmax_k p_clf(k | x_i) = c_i ],   x_i ~ sampler(model, prompt(c_i), w).

At w = 0 the prompt is ignored (the unconditional model), so acc(0) is the baseline: about 10 %, not
exactly, because the classifier has favourite classes for the images this model makes. w = 1 is the
plain conditional model, w > 1 classifier-free guidance (Ho & Salimans 2022). Every scale starts from
the same noise, so the scales differ only in the guidance. The number depends on the classifier as
much as on the generator: it is a check that conditioning works, not a quality score such as FID.

Command line (the course's classifier checks a text-to-image checkpoint; each guidance weight and seed is
a line of ``data/results.jsonl``)::

    python -m course_lib.evaluation data/checkpoints/cond-small.safetensors --per-class 30 --guidance 0,1,3

For an unconditional model (chapter 1's UNet) there is no prompt to follow, only the question whether
a sample shows *some* CIFAR-10 object. The same classifier answers it with its *classifier score*,
the Inception Score of Salimans et al. (2016) computed with the course's classifier in place of
Inception v3:

    IS = exp( E_x KL( p(y | x) || p(y) ) ),   p(y) = E_x p(y | x),

which is 1 when every image gets the same class distribution (all alike, or all ambiguous) and at
most 10 when each image is confidently one class and the classes come equally often. Beside it: the
mean confidence max_k p(k | x). Both mean something only next to real test images scored by the same
classifier, which the command line scores beside the samples::

    python -m course_lib.evaluation data/checkpoints/ddpm-small.safetensors --samples 200 --steps 100

Sample quality against real data (FID, KID, precision/recall, FD_clf)
-------------------------------------------------------------------

With ``--num-samples`` (or ``--metrics``) the command measures instead how close the distribution of
``N`` generated images is to CIFAR-10's training split (:mod:`course_lib.metrics` has the equations,
:mod:`course_lib.features` the feature extractors)::

    python -m course_lib.evaluation data/checkpoints/ddpm-small.safetensors --num-samples 2000 --steps 25 \
        --metrics fid,kid,pr,fd_clf --save-samples samples.npz

* ``fid``: Fréchet distance of Inception-v3 features to the training split's statistics (all of it:
  50,000 images with the full data set, shipped in ``data/reference_stats``), reported as FID-N: at
  N below 50,000 the estimate is biased upwards (Bińkowski et al. 2018; Chong & Forsyth 2020), so FIDs are comparable only at
  the same N;
* ``kid``: kernel Inception distance to N real training images (mean ± std over subsets), unbiased;
* ``pr``: improved precision (are the samples on the real manifold?) and recall (do the samples cover
  it?) of Kynkäänniemi et al. 2019 against N real training images, k = 3;
* ``fd_clf``: Fréchet distance in the 128 features of the course's classifier, with its precision and
  recall: always available, fast, comparable only with itself.

Text-to-image models are asked with class prompts, N/10 per class (``--guidance`` sets w). The
checkpoint ``cifar10:test`` scores real test images instead of samples (the sanity row of the results);
an autoencoder checkpoint (``vae-small``) scores its reconstructions decode(mode(q(z|x))) of the same
first N test images (the *reconstruction FID*: what the decoder loses before any diffusion; read it
against the ``cifar10:test`` row at the same N).

Seeds, settings, cost. ``--seeds K`` measures K sampling seeds (``--seed``, ``--seed`` + 1, ...), each with
its own noise; ``--decoder PATH`` (repeatable) decodes each seed's latents with every decoder named, so the
decoders are compared on the same samples. Every (seed, decoder) appends one line to ``data/results.jsonl``
(``--results``, or ``--no-record``) with every setting that changes the images (``settings``), the NFE
counted while sampling, the seconds it took and the machine; ``python -m course_lib.results`` merges the
seeds into mean ± standard deviation and writes ``docs/results.md``.

``--prompts unseen`` asks with :func:`~course_lib.captions.unseen_prompt` instead ("a photo of a kitten":
a word no training caption has), which is where a frozen pretrained text encoder (cond-small-minilm)
and the small one trained from the captions (cond-small, which reads "a photo of a <unk>") part ways.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import config
from .autoencoder import psnr
from .captions import class_prompt, unseen_prompt
from .classifier import confusion_matrix, per_class_accuracy, predict
from .checkpoint import read_card
from .data import CIFAR10_CLASSES, describe_source, load_cifar10, to_uint8
from .features import (ClassifierFeatures, FeatureStats, InceptionFeatures, MissingExtraError, WeightsChecksumError,
                       extract_features, inception_weights_path, real_features, reference_statistics, sha256_file)
from .flow import flow_time_grid
from .generation import Pipeline
from .metrics import frechet_distance, kid, precision_recall
from .models import model_from_checkpoint
from .processes import NoProcessError, RectifiedFlowProcess
from .results import append_result, fid_label
from .samplers import SPACINGS

#: the prompt sets of the command line: class index -> prompt
PROMPTS: dict[str, Callable[[int], str]] = {"class": class_prompt, "unseen": unseen_prompt}


@dataclass
class PromptAccuracy:
    """The classifier's verdict on the images generated at one guidance weight w."""

    guidance: float
    labels: torch.Tensor       # [N] the class each prompt asked for
    predicted: torch.Tensor    # [N] the class the classifier saw
    images: torch.Tensor       # [N, 3, H, W] the samples, in [-1, 1], on the CPU

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return (self.predicted == self.labels).float().mean().item()

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy, sqrt(p (1 - p) / N)."""
        p = self.accuracy
        return math.sqrt(p * (1 - p) / self.n)

    @property
    def confusion(self) -> torch.Tensor:
        """C[i, j]: images prompted as class i that the classifier calls class j (int64 [10, 10])."""
        return confusion_matrix(self.predicted, self.labels)

    @property
    def per_class(self) -> torch.Tensor:
        """Accuracy for each prompted class ([10], float64)."""
        return per_class_accuracy(self.confusion)

    def __str__(self) -> str:
        return (f"w = {self.guidance:g}: the classifier finds the prompted class in {100 * self.accuracy:.1f}% "
                f"(± {100 * self.stderr:.1f}) of {self.n} images")


@dataclass
class ClassifierScore:
    """The classifier's class probabilities for a set of images, and what they say about the set."""

    probs: torch.Tensor  # [N, K] p(y | x_i), softmax of the classifier

    @property
    def n(self) -> int:
        return len(self.probs)

    @property
    def confidence(self) -> float:
        """Mean over images of max_k p(k | x): 1 when every image is clearly some class."""
        return self.probs.max(dim=-1).values.mean().item()

    @property
    def class_share(self) -> torch.Tensor:
        """p(y) = mean_i p(y | x_i), the classes the set is made of ([K], sums to 1)."""
        return self.probs.mean(dim=0)

    @property
    def inception_score(self) -> float:
        """exp(mean_i KL(p(y | x_i) || p(y))) (Salimans et al. 2016), between 1 and K."""
        p = self.probs.double().clamp_min(1e-12)  # [N, K]; 0 log 0 = 0 up to 1e-12 log 1e-12
        kl = (p * (p.log() - self.class_share.double().clamp_min(1e-12).log())).sum(dim=-1)  # [N]
        return kl.mean().exp().item()

    def __str__(self) -> str:
        return (f"classifier score {self.inception_score:.2f} (of at most {self.probs.shape[1]}), "
                f"mean confidence {100 * self.confidence:.1f}%, over {self.n} images")


def classifier_score(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> ClassifierScore:
    """Classify ``images`` (in [-1, 1]) and return their :class:`ClassifierScore`."""
    _, probs = predict(classifier, images, batch_size)
    return ClassifierScore(probs)


@torch.no_grad()
def prompt_accuracy(pipeline: Pipeline, classifier: nn.Module, guidances: Sequence[float] = (0.0, 1.0, 3.0), *,
                    per_class: int = 10, num_steps: int = 25, seed: int = 1, batch_size: int = 50,
                    prompt: Callable[[int], str] = class_prompt, num_classes: int = len(CIFAR10_CLASSES),
                    sampler: str | None = None, size: tuple[int, int] | None = None,
                    **sampler_options) -> dict[float, PromptAccuracy]:
    """Generate ``per_class`` images from each class's prompt at every guidance weight and classify them.

    ``size``: the (H, W) grid to sample in the denoiser's space instead of its trained one (chapter 6: a larger
    latent grid); images larger than the classifier's 32 x 32 are averaged down to it (area interpolation)
    before they are classified.

    ``pipeline`` is a text-to-image :class:`~course_lib.generation.Pipeline`; it samples with ``sampler``
    (default: its process's first, DDIM for DDPM, Euler for a flow) over ``num_steps`` steps in batches of
    ``batch_size``. The starting noise is drawn once from ``seed`` and shared by all weights. Returns
    ``{w: PromptAccuracy}`` in the order of ``guidances``.
    """
    if per_class < 1 or batch_size < 1 or num_steps < 1:
        raise ValueError(f"per_class, batch_size and num_steps must be >= 1, got {per_class}, {batch_size}, "
                         f"{num_steps}")
    if not guidances:
        raise ValueError("give at least one guidance weight, e.g. guidances=(0.0, 1.0, 3.0)")
    if not pipeline.text_conditional:
        raise ValueError(f"prompt accuracy needs a text-to-image pipeline; {type(pipeline.denoiser).__name__} reads "
                         "no prompts (use classifier_score on its samples)")
    labels = torch.arange(num_classes).repeat_interleave(per_class)  # [N]
    prompts = [prompt(int(y)) for y in labels]
    channels, *grid = pipeline.denoiser.sample_shape
    grid = tuple(size) if size is not None else tuple(grid)
    noise = torch.randn(len(labels), channels, *grid,
                        generator=torch.Generator().manual_seed(seed))  # [N, C, H, W], one draw for every w
    results = {}
    for w in guidances:
        images = torch.cat([pipeline.generate(prompts[i:i + batch_size], guidance=float(w), sampler=sampler,
                                              num_steps=num_steps, x_T=noise[i:i + batch_size].to(pipeline.device),
                                              size=size, **sampler_options).cpu()
                            for i in range(0, len(labels), batch_size)])  # [N, C, H, W]
        larger = max(images.shape[-2:]) > 32  # a larger grid's pictures: averaged down to the classifier's 32 x 32
        seen = F.interpolate(images, size=(32, 32), mode="area") if larger else images
        predicted, _ = predict(classifier, seen)
        results[float(w)] = PromptAccuracy(float(w), labels, predicted, images)
    return results


# --------------------------------------------------------------------------- sample quality vs real data

#: what ``--metrics`` accepts: fid, kid and pr use Inception-v3 features, fd_clf the course classifier's
METRICS = ("fid", "kid", "pr", "fd_clf")
REAL_PREFIX = "cifar10:"


@dataclass
class SampleRun:
    """What :func:`sample_images` made: uint8 images per decoder, the NFE per image and the seconds it took."""

    images: list[torch.Tensor]   # one [N, 3, H, W] uint8 tensor per decoder (one tensor for a pixel model)
    nfe: float                   # denoiser forward passes per image (course_lib.generation.NFECount)
    seconds: float               # sampling and decoding, wall time


@torch.no_grad()
def sample_images(pipeline: Pipeline, num_samples: int, *, num_steps: int, sampler: str | None = None,
                  guidance: float = 1.0, seed: int = 1, batch_size: int = 100, progress: bool = True,
                  decoders: Sequence[nn.Module] | None = None, **sampler_options) -> SampleRun:
    """``num_samples`` generated images as uint8 [N, 3, H, W], quantised as a PNG file would store them.

    Text-to-image pipelines are asked with class prompts, the classes in turn (image i shows class i mod 10),
    at guidance ``guidance``. The starting noise comes from ``seed``, one draw for all N images. A latent
    pipeline's samples are decoded by each of ``decoders`` (default: the pipeline's own autoencoder), so
    several decoders are compared on exactly the same latents. ``sampler_options`` go to the sampler
    (``times=`` for a flow's shifted grid, for example).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    if not pipeline.text_conditional and guidance != 1.0:
        raise ValueError(f"--guidance {guidance:g}: {type(pipeline.denoiser).__name__} is unconditional; "
                         "guidance needs a text-to-image checkpoint")
    if decoders and pipeline.autoencoder is None:
        raise ValueError("decoders were given, but this pipeline samples pixels: only a latent model has a decoder")
    decoders = list(decoders) if decoders else [pipeline.autoencoder]
    start = time.perf_counter()
    noise = torch.randn(num_samples, *pipeline.denoiser.sample_shape,
                        generator=torch.Generator().manual_seed(seed))  # [N, C, H, W]
    out: list[list[torch.Tensor]] = [[] for _ in decoders]
    bar = tqdm(total=num_samples, desc=f"sampling ({num_steps} steps)", unit="img", disable=not progress,
               leave=False)
    with pipeline.count_nfe() as nfe:
        for i in range(0, num_samples, batch_size):
            x_T = noise[i:i + batch_size].to(pipeline.device)
            if pipeline.text_conditional:
                prompts = [class_prompt(k % len(CIFAR10_CLASSES)) for k in range(i, i + len(x_T))]
                z = pipeline.generate(prompts, guidance=guidance, sampler=sampler, num_steps=num_steps, x_T=x_T,
                                      decode=False, **sampler_options)
            else:
                z = pipeline.generate(x_T=x_T, sampler=sampler, num_steps=num_steps, decode=False, **sampler_options)
            for images, decoder in zip(out, decoders):
                images.append(to_uint8(pipeline.decode(z, decoder).float().cpu()))
            bar.update(len(x_T))
    bar.close()
    return SampleRun([torch.cat(images) for images in out], nfe.per_image, time.perf_counter() - start)


def save_samples(path: str | Path, images_uint8: torch.Tensor) -> Path:
    """Write images [N, 3, H, W] uint8 to ``path`` (.npz) as ``images``: uint8 [N, H, W, 3]; atomically."""
    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--save-samples writes a NumPy .npz file; give a path ending in .npz, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
        np.savez(f, images=images_uint8.permute(0, 2, 3, 1).contiguous().numpy())
    os.replace(tmp, path)
    return path


@dataclass
class QualityReport:
    """The metrics of one evaluation run, with everything needed to read them (printed and recorded)."""

    metrics: dict           # name -> value (fid, kid_mean, kid_std, precision, recall, fd_clf, ...)
    reference: dict         # what the samples were compared with
    seconds: dict           # where the time went: sampling, inception, classifier

    def lines(self, n: int) -> list[str]:
        m, ref = self.metrics, self.reference
        label = fid_label(n)
        out = []
        if "fid" in m:
            out.append(f"{label}: {m['fid']:.2f}   (Inception-v3 pool3; {n} images vs the statistics of "
                       f"{ref['fid_n']} {ref['split']} images, {ref['source']})")
        if "kid_mean" in m:
            out.append(f"KID: {1000 * m['kid_mean']:.2f} ± {1000 * m['kid_std']:.2f} x 1e-3   ({n} vs {ref['real_n']} "
                       f"real images, subsets of {m['kid_subset_size']})")
        if "precision" in m:
            out.append(f"precision {m['precision']:.3f}, recall {m['recall']:.3f}   (Inception, k = 3, {n} vs "
                       f"{ref['real_n']} real images)")
        if "fd_clf" in m:
            out.append(f"FD_clf: {m['fd_clf']:.3f}, precision {m['precision_clf']:.3f}, recall {m['recall_clf']:.3f}   "
                       f"(classifier features; vs {ref['fd_clf_n']} / {ref['real_n']} real {ref['split']} images)")
        return out


def sample_quality(images_uint8: torch.Tensor, metrics: Sequence[str] = METRICS, *, split: str = "train",
                   device: torch.device | str = "cpu", progress: bool = True, kid_subset_size: int = 1000,
                   classifier: str | Path | None = None) -> QualityReport:
    """Compare generated (or real) uint8 images [N, 3, H, W] with the configured CIFAR-10 source's ``split``.

    FID and FD_clf use the statistics of the whole split (cached once; :func:`reference_statistics`),
    KID and precision/recall N real images of the split (the fixed-shuffle prefix). ``classifier``: the
    checkpoint of FD_clf's classifier (default: the shipped ``cifar-classifier``).
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    n = len(images_uint8)
    if n < 2:
        raise ValueError(f"need at least 2 images to compare distributions, got {n}")
    values, seconds = {}, {}
    reference = {"split": split, "source": describe_source(), "real_n": n}
    if {"fid", "kid", "pr"} & set(metrics):
        start = time.perf_counter()
        inception = InceptionFeatures(device)
        fake = extract_features(inception, images_uint8, progress=progress, desc="Inception features")
        seconds["inception"] = round(time.perf_counter() - start, 1)
        if "fid" in metrics:
            stats = reference_statistics(inception, split, progress=progress)
            values["fid"] = frechet_distance(FeatureStats.of(fake), stats)
            reference["fid_n"] = stats.n
        if {"kid", "pr"} & set(metrics):
            real = real_features(inception, n, split, progress=progress)
            reference["real_n"] = len(real)
            if "kid" in metrics:
                result = kid(real, fake, subset_size=min(kid_subset_size, n, len(real)))
                values.update(kid_mean=result.mean, kid_std=result.std, kid_subset_size=result.subset_size)
            if "pr" in metrics:
                pr = precision_recall(real, fake, k=3)
                values.update(precision=pr.precision, recall=pr.recall)
        seconds["inception_total"] = round(time.perf_counter() - start, 1)
    if "fd_clf" in metrics:
        start = time.perf_counter()
        clf = ClassifierFeatures(classifier, device=device)
        fake = extract_features(clf, images_uint8, progress=progress, desc="classifier features")
        stats = reference_statistics(clf, split, progress=progress)
        real = real_features(clf, n, split, progress=progress)
        pr = precision_recall(real, fake, k=3)
        values.update(fd_clf=frechet_distance(FeatureStats.of(fake), stats), precision_clf=pr.precision,
                      recall_clf=pr.recall)
        reference["fd_clf_n"] = stats.n
        reference["real_n"] = len(real)
        seconds["classifier"] = round(time.perf_counter() - start, 1)
    return QualityReport(values, reference, seconds)


# --------------------------------------------------------------------------- what a results line says


def decoder_sha256(autoencoder: nn.Module) -> str:
    """SHA-256 of the weights that turn latents into images: every tensor of the autoencoder's state dict
    except the encoder's (``encoder.*``, ``quant_conv.*``), in key order. Two decoders with the same hash make
    the same images from the same latents; an encoder fine-tune does not change it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        if not name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def sampling_settings(pipeline: Pipeline, *, num_samples: int | None, steps: int, sampler: str,
                      guidance: float | None, seed: int, shift: float | None,
                      decoder: tuple[str, nn.Module] | None, spacing: str = "linspace") -> dict:
    """Everything that changes a sampled point's images, for its results line: samples, sampler, steps,
    guidance, the time grid (``spacing``; ``shift`` for a flow), the seed and the decoder's name and hash."""
    settings = {"num_samples": num_samples, "steps": steps, "sampler": sampler,
                "guidance": guidance if pipeline.text_conditional else None, "seed": seed, "spacing": spacing,
                "shift": shift if isinstance(pipeline.process, RectifiedFlowProcess) else None,
                "decoder": None, "decoder_sha256": None}
    if decoder is not None:
        settings.update(decoder=decoder[0], decoder_sha256=decoder_sha256(decoder[1]))
    return settings


def checkpoint_entry(checkpoint: str, card: dict) -> dict:
    """What a results line says about the checkpoint it scored: path, file hash, name, step, training time."""
    training = card.get("training", {})
    return {"checkpoint": config.portable_path(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
            "model": Path(checkpoint).stem, "model_class": card.get("model_class"), "step": card.get("step"),
            "training_minutes": round(training.get("wall_seconds_total", 0) / 60, 1),
            "training_hardware": training.get("hardware")}


def _record(kind: str, entry: dict, settings: dict, metrics: dict, device: torch.device, **more) -> dict:
    return dict(date=time.strftime("%Y-%m-%d"), kind=kind, **entry, settings=settings, metrics=metrics, **more,
                hardware=config.hardware_description(device), torch=torch.__version__)


# --------------------------------------------------------------------------- the command line


def _reconstructions(checkpoint: str, n: int, device: torch.device) -> tuple[torch.Tensor, dict, dict, dict]:
    """An autoencoder's deterministic reconstructions decode(mode(q(z|x))) of the first ``n`` CIFAR-10 test
    images as uint8 [n, 3, 32, 32] (the same images as ``cifar10:test`` with ``--num-samples n``: compare
    the two rows to see what the autoencoder loses), with the record's entry and settings, and what the
    pixels alone tell: the mean per-image PSNR and the posterior means' statistics (their std before and after
    the card's scale and shift, and the largest channel mean), for comparing autoencoders (chapter 4's channel
    sweep)."""
    autoencoder, card = model_from_checkpoint(checkpoint, device=device)
    data = load_cifar10("test", limit=n, verbose=False)
    recon, means = [], []
    with torch.no_grad():
        for batch in data.images.split(250):
            posterior = autoencoder.encode(batch.to(device))
            means.append(posterior.mode().float().cpu())  # [b, C, h, w]
            recon.append(autoencoder.decode(posterior.mode()).clamp(-1, 1).cpu())  # [b, 3, 32, 32]
    recon, mu = torch.cat(recon), torch.cat(means)
    scaled = (mu - autoencoder.config.shift_factor) * float(autoencoder.scaling_factor)
    extra = {"psnr": float(psnr(recon, data.images).mean()), "latent_channels": int(mu.shape[1]),
             "latent_std": float(mu.std()), "scaled_latent_std": float(scaled.std()),
             "scaled_latent_max_channel_mean": float(scaled.mean(dim=(0, 2, 3)).abs().max())}
    entry = checkpoint_entry(checkpoint, card)
    settings = {"num_samples": len(recon), "reconstruction": "decode(mode(q(z|x))) of CIFAR-10 test images",
                "decoder_sha256": decoder_sha256(autoencoder)}
    print(f"{checkpoint}: reconstructions of {len(recon)} CIFAR-10 test images from {data.source}; PSNR "
          f"{extra['psnr']:.2f} dB; {extra['latent_channels']} latent channels, posterior means' std "
          f"{extra['latent_std']:.3f} ({extra['scaled_latent_std']:.3f} scaled, largest channel mean "
          f"{extra['scaled_latent_max_channel_mean']:.3f})")
    return to_uint8(recon), entry, settings, extra


def _floats(text: str, parser: argparse.ArgumentParser, flag: str) -> list[float]:
    try:
        values = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        values = []
    if not values:
        parser.error(f"{flag} takes numbers separated by commas, e.g. 0,1,3; got {text!r}")
    return values


def _seeds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[int]:
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    return [args.seed + i for i in range(args.seeds)]


def _pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser, device: torch.device) -> Pipeline:
    try:
        pipeline = Pipeline.from_checkpoint(args.checkpoint, device=device)
    except (NoProcessError, TypeError) as err:
        parser.error(f"{args.checkpoint}: {err}")
    if args.sampler and args.sampler not in pipeline.process.samplers:
        parser.error(f"--sampler {args.sampler}: this checkpoint's process offers {', '.join(pipeline.process.samplers)}")
    if args.shift is not None and not isinstance(pipeline.process, RectifiedFlowProcess):
        parser.error("--shift is the time shift of a rectified flow's grid; this checkpoint samples a "
                     f"{type(pipeline.process).__name__}")
    if args.spacing != "linspace" and (isinstance(pipeline.process, RectifiedFlowProcess)
                                       or (args.sampler or pipeline.process.samplers[0]) != "ddim"):
        parser.error(f"--spacing {args.spacing} spaces DDIM's timesteps; this checkpoint's sampler is "
                     f"{args.sampler or pipeline.process.samplers[0]} (a flow's grid takes --shift)")
    return pipeline


def _decoders(args: argparse.Namespace, parser: argparse.ArgumentParser, pipeline: Pipeline,
              device: torch.device) -> list[tuple[str, nn.Module]] | list[None]:
    """(name, autoencoder) of each decoder to score (``--decoder``, else the pipeline's), or [None] for pixels."""
    if not args.decoder:
        if pipeline.autoencoder is None:
            return [None]
        name = pipeline.autoencoder_name or Path(pipeline.card["training"]["autoencoder"]["checkpoint"]).stem
        return [(name, pipeline.autoencoder)]
    if pipeline.autoencoder is None:
        parser.error("--decoder: this checkpoint samples pixels; only a latent model's samples are decoded")
    out = []
    for path in args.decoder:
        model, card = model_from_checkpoint(path, device=device)
        if card["model_class"] != "AutoencoderKL":
            parser.error(f"--decoder {path} holds a {card['model_class']}, not an autoencoder")
        out.append((Path(path).stem, model))
    return out


def _sampler_options(args: argparse.Namespace, pipeline: Pipeline) -> dict:
    if args.shift is not None:
        return {"times": flow_time_grid(args.steps, args.shift)}
    return {"spacing": args.spacing} if args.spacing != "linspace" else {}


def _quality_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The command line's sample-quality mode (``--num-samples`` / ``--metrics``)."""
    metrics = [m.strip() for m in (args.metrics or ",".join(METRICS)).split(",") if m.strip()]
    if sorted(set(metrics) - set(METRICS)) or not metrics:
        parser.error(f"--metrics takes a comma-separated subset of {','.join(METRICS)}, got {args.metrics!r}")
    if {"fid", "kid", "pr"} & set(metrics):  # say so before sampling for half an hour, not after
        try:
            inception_weights_path()
        except MissingExtraError as err:
            parser.error(str(err))
    if args.save_samples and Path(args.save_samples).suffix != ".npz":
        parser.error(f"--save-samples writes a NumPy .npz file; give a path ending in .npz, got {args.save_samples}")
    device = config.get_device()
    seeds = _seeds(args, parser)
    runs = []  # (kind, images, entry, settings, nfe, sampling seconds)
    if args.checkpoint.startswith(REAL_PREFIX):
        split = args.checkpoint[len(REAL_PREFIX):]
        if split not in ("train", "test"):
            parser.error(f"{args.checkpoint}: real images are cifar10:test or cifar10:train")
        start = time.perf_counter()
        data = load_cifar10(split, limit=args.num_samples, verbose=False)
        entry = {"checkpoint": args.checkpoint, "model": f"CIFAR-10 {split} images"}
        print(f"{len(data)} real CIFAR-10 {split} images from {data.source}")
        runs.append(("real", to_uint8(data.images), entry, {"num_samples": len(data)}, None,
                     time.perf_counter() - start))
    elif _model_class(args.checkpoint) == "AutoencoderKL":
        if args.num_samples is None:
            parser.error("give --num-samples N: how many test images to reconstruct (2,000 to compare with FID-2k rows)")
        start = time.perf_counter()
        images, entry, settings, pixel_metrics = _reconstructions(args.checkpoint, args.num_samples, device)
        runs.append(("reconstructions", images, entry, settings, None, time.perf_counter() - start))
    else:
        pipeline = _pipeline(args, parser, device)
        if args.num_samples is None:
            parser.error("give --num-samples N (at least 2,000 for a FID worth quoting)")
        guidances = _floats(args.guidance or "1", parser, "--guidance")
        if not pipeline.text_conditional and guidances != [1.0]:
            parser.error(f"--guidance {args.guidance}: {type(pipeline.denoiser).__name__} is unconditional; "
                         "guidance needs a text-to-image checkpoint")
        sampler = args.sampler or pipeline.process.samplers[0]
        decoders = _decoders(args, parser, pipeline, device)
        entry = checkpoint_entry(args.checkpoint, pipeline.card)
        print(f"{args.checkpoint}: step {pipeline.card.get('step')}, {entry['training_minutes']:.0f} training minutes; "
              f"{args.num_samples} samples, {sampler} {args.steps} steps"
              + (", class prompts in turn" if pipeline.text_conditional else "")
              + f", noise seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
        for w in guidances:
            for seed in seeds:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="unknown words replaced")
                    run = sample_images(pipeline, args.num_samples, num_steps=args.steps, sampler=sampler, guidance=w,
                                        seed=seed, batch_size=args.batch_size,
                                        decoders=[d[1] for d in decoders] if decoders != [None] else None,
                                        **_sampler_options(args, pipeline))
                for images, decoder in zip(run.images, decoders):
                    settings = sampling_settings(pipeline, num_samples=args.num_samples, steps=args.steps,
                                                 sampler=sampler, guidance=w, seed=seed, shift=args.shift or 1.0,
                                                 decoder=decoder, spacing=args.spacing)
                    runs.append(("samples", images, entry, settings, run.nfe, run.seconds / len(run.images)))
    for number, (kind, images, entry, settings, nfe, sampling_seconds) in enumerate(runs):
        if args.save_samples:
            target = Path(args.save_samples)
            if len(runs) > 1:  # one file per (w, seed, decoder): samples-0.npz, samples-1.npz, ...
                target = target.with_name(f"{target.stem}-{number}.npz")
            print(f"saved {len(images)} images to {save_samples(target, images)} (key 'images', uint8 [N, 32, 32, 3])")
        what = ", ".join(f"{k} {v}" for k, v in settings.items() if k in ("guidance", "seed", "decoder") and v is not None)
        if what:
            print(f"-- {what}" + (f", NFE {nfe:g}" if nfe is not None else ""))
        try:
            report = sample_quality(images, metrics, device=device, classifier=args.classifier)
        except (MissingExtraError, WeightsChecksumError) as err:
            parser.error(str(err))
        for line in report.lines(len(images)):
            print(line)
        seconds = dict(sampling=round(sampling_seconds, 1), **report.seconds)
        threads = torch.get_num_threads()
        print(f"time: sampling {seconds['sampling']:.0f} s, features and metrics "
              f"{sum(v for k, v in seconds.items() if k in ('inception_total', 'classifier')):.0f} s on {device} "
              f"({threads} thread{'s' if threads > 1 else ''})")
        if not args.no_record:
            extra = {"nfe": nfe} if nfe is not None else {}
            measured = {**report.metrics, **(pixel_metrics if kind == "reconstructions" else {})}
            path = append_result(_record(kind, entry, settings, measured, device, **extra,
                                         reference=report.reference, seconds=seconds), args.results)
            print(f"recorded in {path}")
    return 0


def _accuracy_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The command line's prompt-accuracy mode: each guidance weight and seed one results line."""
    device = config.get_device()
    pipeline = _pipeline(args, parser, device)
    classifier, _ = model_from_checkpoint(args.classifier or config.checkpoint_dir() / "cifar-classifier.safetensors",
                                          device=device)
    if not pipeline.text_conditional:
        return _score_unconditional(pipeline, classifier, args)
    guidances = _floats(args.guidance or "0,1,3", parser, "--guidance")
    seeds = _seeds(args, parser)
    sampler = args.sampler or pipeline.process.samplers[0]
    card = pipeline.card
    print(f"{args.checkpoint}: step {card['step']}, {card.get('training', {}).get('wall_seconds_total', 0) / 60:.0f} "
          f"training minutes; {sampler} {args.steps} steps, {args.per_class} images per class, noise seed"
          f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; prompts like {PROMPTS[args.prompts](3)!r}")
    model = pipeline.denoiser
    if model.config.text_encoder == "small":  # say once which words it reads as <unk>, not in every batch
        prompts = [PROMPTS[args.prompts](k) for k in range(len(CIFAR10_CLASSES))]
        unknown = sorted({w for words in model.tokenizer.encode(prompts).unknown for w in words})
        if unknown:
            print(f"words the model's tokenizer does not know (read as <unk>): {', '.join(unknown)}")
    decoder = _decoders(args, parser, pipeline, device)
    if len(decoder) > 1:
        parser.error("prompt accuracy takes one --decoder at a time")
    if decoder != [None]:
        pipeline.autoencoder = decoder[0][1]
    for seed in seeds:
        for w in guidances:  # one w at a time, so that the NFE counted is that w's; the noise is the seed's for all
            start = time.perf_counter()
            with warnings.catch_warnings(), pipeline.count_nfe() as nfe:
                warnings.filterwarnings("ignore", message="unknown words replaced")
                r = prompt_accuracy(pipeline, classifier, [w], per_class=args.per_class, num_steps=args.steps,
                                    seed=seed, prompt=PROMPTS[args.prompts], sampler=sampler, size=args.size,
                                    **_sampler_options(args, pipeline))[w]
            seconds = time.perf_counter() - start
            per_class = " ".join(f"{name} {100 * a:.0f}" for name, a in zip(CIFAR10_CLASSES, r.per_class.tolist()))
            print(f"seed {seed}, {r} (NFE {nfe.per_image:g}, {seconds:.0f} s on {device})\n"
                  f"    per class (%): {per_class}")
            if not args.no_record:
                settings = sampling_settings(pipeline, num_samples=None, steps=args.steps, sampler=sampler,
                                             guidance=w, seed=seed, shift=args.shift or 1.0, decoder=decoder[0],
                                             spacing=args.spacing)
                settings.update(per_class=args.per_class, prompts=args.prompts)
                if args.size is not None:
                    settings.update(size=list(args.size))
                append_result(_record("prompt_accuracy", checkpoint_entry(args.checkpoint, card), settings,
                                      {"prompt_accuracy": r.accuracy, "prompt_accuracy_stderr": r.stderr}, device,
                                      nfe=nfe.per_image, images=r.n, seconds={"sampling": round(seconds, 1)}),
                              args.results)
    return 0


def _model_class(checkpoint: str) -> str | None:
    try:
        return read_card(checkpoint).get("model_class")
    except Exception:  # a missing or broken file: Pipeline.from_checkpoint reports it properly
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation",
                                     description="Judge a checkpoint's samples with the course's CIFAR-10 classifier: "
                                                 "the prompt accuracy of a text-to-image model at several guidance "
                                                 "weights, or the classifier score of an unconditional UNet beside "
                                                 "real test images. With --num-samples: FID, KID, precision/recall "
                                                 "and FD_clf against CIFAR-10's training split. Measurements are "
                                                 "appended to data/results.jsonl, one line per seed.")
    parser.add_argument("checkpoint", help="a text-to-image checkpoint (data/checkpoints/cond-small.safetensors) "
                        "or an unconditional UNet one (data/checkpoints/ddpm-small.safetensors); with the "
                        "sample-quality options also cifar10:test (real test images) or an autoencoder "
                        "(data/checkpoints/vae-small.safetensors: its reconstructions of the test images)")
    parser.add_argument("--classifier", help="default: <checkpoint dir>/cifar-classifier.safetensors")
    parser.add_argument("--guidance", help="guidance weights w, comma-separated (default: 0,1,3 for prompt "
                        "accuracy, 1 = the conditional model for sample quality)")
    parser.add_argument("--per-class", type=int, default=10, help="prompt accuracy: images per class and w (default 10)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--sampler", help="the process's sampler (default: its first: ddim for DDPM, euler for a flow)")
    parser.add_argument("--shift", type=float, help="a flow's time shift t -> s t / (1 + (s - 1) t) (SD3; default 1)")
    parser.add_argument("--spacing", choices=SPACINGS, default="linspace",
                        help="DDIM's timestep spacing: linspace (both ends, the default) or trailing (Lin et al. 2024)")
    parser.add_argument("--prompts", choices=tuple(PROMPTS), default="class",
                        help="class: 'a photo of a cat' (default); unseen: 'a photo of a kitten', words no caption has")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="prompt accuracy: sample on this grid of the denoiser's space (latents: 16 16 decodes "
                             "to 64 x 64 pixels) instead of the trained one; the classifier reads a 32 x 32 copy")
    parser.add_argument("--samples", type=int, default=100,
                        help="unconditional UNet: how many images to sample and score (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the starting noise (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="how many sampling seeds: --seed, --seed + 1, ... "
                        "(each a results line; the results page gives their mean ± std)")
    parser.add_argument("--decoder", action="append", metavar="AUTOENCODER",
                        help="a latent model's samples decoded by this autoencoder instead of the card's (repeat it "
                             "to score several decoders on the same latents)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--results", metavar="PATH.jsonl", help="where to append the run's lines "
                        "(default data/results.jsonl)")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    quality = parser.add_argument_group("sample quality against real images (FID, KID, precision/recall, FD_clf)")
    quality.add_argument("--num-samples", type=int, help="generate N images and compare them with CIFAR-10's training "
                         "split (with cifar10:test: how many test images; default all)")
    quality.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    quality.add_argument("--save-samples", metavar="PATH.npz",
                         help="write the scored images as uint8 [N, 32, 32, 3] under the key 'images'")
    quality.add_argument("--batch-size", type=int, default=100, help="images per sampling batch (default 100)")
    args = parser.parse_args(argv)
    if args.num_samples is not None and args.num_samples < 2:
        parser.error(f"--num-samples must be >= 2, got {args.num_samples}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    if (args.num_samples is not None or args.metrics or args.save_samples
            or args.checkpoint.startswith(REAL_PREFIX)):
        return _quality_main(args, parser)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    return _accuracy_main(args, parser)


def _score_unconditional(pipeline: Pipeline, classifier: nn.Module, args: argparse.Namespace) -> int:
    """The command line for an unconditional denoiser: DDIM samples and real test images, side by side."""
    card = pipeline.card
    print(f"{args.checkpoint}: step {card['step']}, {card['training'].get('wall_seconds_total', 0) / 60:.0f} training "
          f"minutes; {args.samples} DDIM samples ({args.steps} steps, eta = 0), noise seed {args.seed}")
    start = time.perf_counter()
    noise = torch.randn(args.samples, *pipeline.denoiser.sample_shape,
                        generator=torch.Generator().manual_seed(args.seed))  # [N, C, H, W]
    samples = torch.cat([pipeline.generate(x_T=noise[i:i + 50].to(pipeline.device), sampler="ddim",
                                           num_steps=args.steps).cpu()
                         for i in range(0, args.samples, 50)])
    generated = classifier_score(classifier, samples)
    real = load_cifar10("test", limit=args.samples, verbose=False)
    reference = classifier_score(classifier, real.images)
    for name, score in ((f"samples ({time.perf_counter() - start:.0f} s)", generated),
                        (f"{len(real)} real test images ({real.source})", reference)):
        share = " ".join(f"{k} {100 * v:.0f}" for k, v in zip(CIFAR10_CLASSES, score.class_share.tolist()))
        print(f"{name}: {score}\n    classes seen (%): {share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
