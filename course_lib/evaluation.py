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

Command line (the course's classifier checks a text-to-image checkpoint)::

    python -m course_lib.evaluation data/checkpoints/cond-small.safetensors --per-class 30 --scales 0,1,3

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

Text-to-image models are asked with class prompts, N/10 per class (``--guidance`` sets the scale). The
checkpoint ``cifar10:test`` scores real test images instead of samples (the sanity row of the README's
table); an autoencoder checkpoint (``vae-small``) scores its reconstructions decode(mode(q(z|x))) of
the same first N test images (the *reconstruction FID*: what the decoder loses before any diffusion;
read it against the ``cifar10:test`` row at the same N). Every run appends one JSON line to ``data/results.jsonl`` (``--results``, or ``--no-record``);
``python -m course_lib.results`` turns that file into the README's results table.

``--prompts unseen`` asks with :func:`~course_lib.captions.unseen_prompt` instead ("a photo of a kitten":
a word no training caption has), which is where a frozen pretrained text encoder (cond-small-minilm)
and the small one trained from the captions (cond-small, which reads "a photo of a <unk>") part ways.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import config
from .captions import class_prompt, unseen_prompt
from .classifier import confusion_matrix, per_class_accuracy, predict
from .data import CIFAR10_CLASSES, load_cifar10, to_uint8
from .features import real_features
from .generation import Pipeline
from .processes import NoProcessError
from .recipes import model_from_checkpoint

#: the prompt sets of the command line: class index -> prompt
PROMPTS: dict[str, Callable[[int], str]] = {"class": class_prompt, "unseen": unseen_prompt}


@dataclass
class PromptAccuracy:
    """The classifier's verdict on the images generated at one guidance scale."""

    scale: float
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
        return (f"w = {self.scale:g}: the classifier finds the prompted class in {100 * self.accuracy:.1f}% "
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
def prompt_accuracy(pipeline: Pipeline, classifier: nn.Module, scales: Sequence[float] = (0.0, 1.0, 3.0), *,
                    per_class: int = 10, num_steps: int = 25, seed: int = 1, batch_size: int = 50,
                    prompt: Callable[[int], str] = class_prompt,
                    num_classes: int = len(CIFAR10_CLASSES)) -> dict[float, PromptAccuracy]:
    """Generate ``per_class`` images from each class's prompt at every guidance scale and classify them.

    ``pipeline`` is a text-to-image :class:`~course_lib.generation.Pipeline`; it samples with its
    process's default sampler (DDIM for DDPM) over ``num_steps`` steps in batches of ``batch_size``.
    The starting noise is drawn once from ``seed`` and shared by all scales. Returns
    ``{scale: PromptAccuracy}`` in the order of ``scales``.
    """
    if per_class < 1 or batch_size < 1 or num_steps < 1:
        raise ValueError(f"per_class, batch_size and num_steps must be >= 1, got {per_class}, {batch_size}, "
                         f"{num_steps}")
    if not scales:
        raise ValueError("give at least one guidance scale, e.g. scales=(0.0, 1.0, 3.0)")
    if not pipeline.text_conditional:
        raise ValueError(f"prompt accuracy needs a text-to-image pipeline; {type(pipeline.denoiser).__name__} reads "
                         "no prompts (use classifier_score on its samples)")
    labels = torch.arange(num_classes).repeat_interleave(per_class)  # [N]
    prompts = [prompt(int(y)) for y in labels]
    noise = torch.randn(len(labels), *pipeline.denoiser.sample_shape,
                        generator=torch.Generator().manual_seed(seed))  # [N, C, H, W], one draw for every scale
    results = {}
    for w in scales:
        images = torch.cat([pipeline.generate(prompts[i:i + batch_size], scale=float(w), num_steps=num_steps,
                                              x_T=noise[i:i + batch_size].to(pipeline.device)).cpu()
                            for i in range(0, len(labels), batch_size)])  # [N, C, H, W]
        predicted, _ = predict(classifier, images)
        results[float(w)] = PromptAccuracy(float(w), labels, predicted, images)
    return results


# --------------------------------------------------------------------------- sample quality vs real data

#: what ``--metrics`` accepts: fid, kid and pr use Inception-v3 features, fd_clf the course classifier's
METRICS = ("fid", "kid", "pr", "fd_clf")
REAL_PREFIX = "cifar10:"


def results_path() -> Path:
    """The file every evaluation run appends a line to: ``<data_dir>/results.jsonl``."""
    return config.data_dir() / "results.jsonl"


@torch.no_grad()
def sample_images(pipeline: Pipeline, num_samples: int, *, num_steps: int, sampler: str | None = None,
                  guidance: float = 1.0, seed: int = 1, batch_size: int = 100,
                  progress: bool = True) -> torch.Tensor:
    """``num_samples`` generated images as uint8 [N, 3, H, W], quantised as a PNG file would store them.

    Text-to-image pipelines are asked with class prompts, the classes in turn (image i shows class i mod 10),
    at guidance ``guidance``. The starting noise comes from ``seed``, one draw for all N images.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    if not pipeline.text_conditional and guidance != 1.0:
        raise ValueError(f"--guidance {guidance:g}: {type(pipeline.denoiser).__name__} is unconditional; "
                         "guidance needs a text-to-image checkpoint")
    noise = torch.randn(num_samples, *pipeline.denoiser.sample_shape,
                        generator=torch.Generator().manual_seed(seed))  # [N, C, H, W]
    out = []
    bar = tqdm(total=num_samples, desc=f"sampling ({num_steps} steps)", unit="img", disable=not progress,
               leave=False)
    for i in range(0, num_samples, batch_size):
        x_T = noise[i:i + batch_size].to(pipeline.device)
        if pipeline.text_conditional:
            prompts = [class_prompt(k % len(CIFAR10_CLASSES)) for k in range(i, i + len(x_T))]
            images = pipeline.generate(prompts, scale=guidance, sampler=sampler, num_steps=num_steps, x_T=x_T)
        else:
            images = pipeline.generate(x_T=x_T, sampler=sampler, num_steps=num_steps)
        out.append(to_uint8(images.float().cpu()))
        bar.update(len(x_T))
    bar.close()
    return torch.cat(out)  # [N, 3, H, W] uint8


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


def fid_label(n: int) -> str:
    """How a FID over n images is named: FID-50k, FID-10k, FID-2k, FID-500 (FIDs compare only at equal n)."""
    return f"FID-{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"FID-{n}"


def sample_quality(images_uint8: torch.Tensor, metrics: Sequence[str] = METRICS, *, split: str = "train",
                   device: torch.device | str = "cpu", progress: bool = True, kid_subset_size: int = 1000,
                   classifier: str | Path | None = None) -> QualityReport:
    """Compare generated (or real) uint8 images [N, 3, H, W] with the configured CIFAR-10 source's ``split``.

    FID and FD_clf use the statistics of the whole split (cached once; :func:`reference_statistics`),
    KID and precision/recall N real images of the split (the fixed-shuffle prefix). ``classifier``: the
    checkpoint of FD_clf's classifier (default: the shipped ``cifar-classifier``).
    """
    from .data import describe_source
    from .features import ClassifierFeatures, FeatureStats, InceptionFeatures, extract_features, reference_statistics
    from .metrics import frechet_distance, kid, precision_recall

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


def _model_class(checkpoint: str) -> str | None:
    from .checkpoint import read_card

    try:
        return read_card(checkpoint).get("model_class")
    except Exception:  # a missing or broken file: Pipeline.from_checkpoint reports it properly
        return None


def _checkpoint_entry(checkpoint: str, card: dict) -> dict:
    """What a results line says about the checkpoint it scored: path, file hash, name, step, training time."""
    from .features import sha256_file

    training = card.get("training", {})
    return {"checkpoint": config.portable_path(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
            "model": Path(checkpoint).stem, "model_class": card.get("model_class"), "step": card.get("step"),
            "training_minutes": round(training.get("wall_seconds_total", 0) / 60, 1),
            "training_hardware": training.get("hardware")}


def _reconstructions(checkpoint: str, n: int, device: torch.device) -> tuple[torch.Tensor, dict, dict]:
    """An autoencoder's deterministic reconstructions decode(mode(q(z|x))) of the first ``n`` CIFAR-10 test
    images as uint8 [n, 3, 32, 32] (the same images as ``cifar10:test`` with ``--num-samples n``: compare
    the two rows to see what the autoencoder loses), with the record's entry and settings."""
    from .data import load_cifar10
    from .recipes import model_from_checkpoint

    autoencoder, card = model_from_checkpoint(checkpoint, device=device)
    data = load_cifar10("test", limit=n, verbose=False)
    with torch.no_grad():
        recon = torch.cat([autoencoder(batch.to(device), sample_posterior=False)[0].clamp(-1, 1).cpu()
                           for batch in data.images.split(250)])  # [n, 3, 32, 32]
    entry = _checkpoint_entry(checkpoint, card)
    settings = {"num_samples": len(recon), "reconstruction": "decode(mode(q(z|x))) of CIFAR-10 test images"}
    print(f"{checkpoint}: reconstructions of {len(recon)} CIFAR-10 test images from {data.source}")
    return to_uint8(recon), entry, settings


def _quality_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The command line's sample-quality mode (``--num-samples`` / ``--metrics``)."""
    from .data import load_cifar10
    from .features import MissingExtraError, WeightsChecksumError, inception_weights_path

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
    start = time.perf_counter()
    if args.checkpoint.startswith(REAL_PREFIX):
        split = args.checkpoint[len(REAL_PREFIX):]
        if split not in ("train", "test"):
            parser.error(f"{args.checkpoint}: real images are cifar10:test or cifar10:train")
        data = load_cifar10(split, limit=args.num_samples, verbose=False)
        images = to_uint8(data.images)
        entry = {"checkpoint": args.checkpoint, "model": f"CIFAR-10 {split} images"}
        settings = {"num_samples": len(images)}
        print(f"{len(images)} real CIFAR-10 {split} images from {data.source}")
    elif _model_class(args.checkpoint) == "AutoencoderKL":
        if args.num_samples is None:
            parser.error("give --num-samples N: how many test images to reconstruct (2,000 to compare with FID-2k rows)")
        images, entry, settings = _reconstructions(args.checkpoint, args.num_samples, device)
    else:
        try:
            pipeline = Pipeline.from_checkpoint(args.checkpoint, device=device)
        except (NoProcessError, TypeError) as err:
            parser.error(f"{args.checkpoint}: {err}")
        card = pipeline.card
        sampler = args.sampler or pipeline.process.samplers[0]
        if sampler not in pipeline.process.samplers:
            parser.error(f"--sampler {sampler}: this checkpoint's process offers {', '.join(pipeline.process.samplers)}")
        if args.num_samples is None:
            parser.error("give --num-samples N (at least 2,000 for a FID worth quoting)")
        if not pipeline.text_conditional and args.guidance != 1.0:
            parser.error(f"--guidance {args.guidance:g}: {type(pipeline.denoiser).__name__} is unconditional; "
                         "guidance needs a text-to-image checkpoint")
        entry = _checkpoint_entry(args.checkpoint, card)
        settings = {"num_samples": args.num_samples, "steps": args.steps, "sampler": sampler,
                    "guidance": args.guidance if pipeline.text_conditional else None, "seed": args.seed}
        print(f"{args.checkpoint}: step {card.get('step')}, {entry['training_minutes']:.0f} training minutes; "
              f"{args.num_samples} samples, {sampler} {args.steps} steps"
              + (f", guidance {args.guidance:g}, class prompts in turn" if pipeline.text_conditional else "")
              + f", noise seed {args.seed}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="unknown words replaced")
            images = sample_images(pipeline, args.num_samples, num_steps=args.steps, sampler=sampler,
                                   guidance=args.guidance, seed=args.seed, batch_size=args.batch_size)
    sampling_seconds = time.perf_counter() - start
    if args.save_samples:
        print(f"saved {len(images)} images to {save_samples(args.save_samples, images)} (key 'images', uint8 "
              f"[N, 32, 32, 3])")
    try:
        report = sample_quality(images, metrics, device=device, classifier=args.classifier)
    except (MissingExtraError, WeightsChecksumError) as err:
        parser.error(str(err))
    for line in report.lines(len(images)):
        print(line)
    threads = torch.get_num_threads()
    seconds = dict(sampling=round(sampling_seconds, 1), **report.seconds)
    print(f"time: sampling {seconds['sampling']:.0f} s, features and metrics "
          f"{sum(v for k, v in seconds.items() if k in ('inception_total', 'classifier')):.0f} s on {device} "
          f"({threads} thread{'s' if threads > 1 else ''})")
    if not args.no_record:
        from .trainer import hardware_description

        record = dict(date=time.strftime("%Y-%m-%d"), **entry, settings=settings, metrics=report.metrics,
                      reference=report.reference, seconds=seconds, hardware=hardware_description(device),
                      torch=torch.__version__)
        path = Path(args.results) if args.results else results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:  # one line per run; appending a line is atomic enough for a log
            f.write(json.dumps(record) + "\n")
        print(f"recorded in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation",
                                     description="Judge a checkpoint's samples with the course's CIFAR-10 classifier: "
                                                 "the prompt accuracy of a text-to-image model at several guidance "
                                                 "scales, or the classifier score of an unconditional UNet beside "
                                                 "real test images. With --num-samples: FID, KID, precision/recall "
                                                 "and FD_clf against CIFAR-10's training split.")
    parser.add_argument("checkpoint", help="a TextToImageUNet checkpoint (data/checkpoints/cond-small.safetensors) "
                        "or an unconditional UNet one (data/checkpoints/ddpm-small.safetensors); with the "
                        "sample-quality options also cifar10:test (real test images) or an autoencoder "
                        "(data/checkpoints/vae-small.safetensors: its reconstructions of the test images)")
    parser.add_argument("--classifier", help="default: <checkpoint dir>/cifar-classifier.safetensors")
    parser.add_argument("--scales", default="0,1,3", help="comma-separated guidance scales (default 0,1,3)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class and scale (default 10)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps of the process's default sampler "
                        "(DDIM for DDPM, Euler for a flow; default 25)")
    parser.add_argument("--prompts", choices=tuple(PROMPTS), default="class",
                        help="class: 'a photo of a cat' (default); unseen: 'a photo of a kitten', words no caption has")
    parser.add_argument("--samples", type=int, default=100,
                        help="unconditional UNet: how many images to sample and score (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the starting noise (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    quality = parser.add_argument_group("sample quality against real images (FID, KID, precision/recall, FD_clf)")
    quality.add_argument("--num-samples", type=int, help="generate N images and compare them with CIFAR-10's training "
                         "split (with cifar10:test: how many test images; default all)")
    quality.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    quality.add_argument("--sampler", help="the process's sampler (default: its first, ddim for DDPM)")
    quality.add_argument("--guidance", type=float, default=1.0,
                         help="classifier-free guidance scale for text-to-image checkpoints (default 1: conditional)")
    quality.add_argument("--save-samples", metavar="PATH.npz",
                         help="write the scored images as uint8 [N, 32, 32, 3] under the key 'images'")
    quality.add_argument("--batch-size", type=int, default=100, help="images per sampling batch (default 100)")
    quality.add_argument("--results", metavar="PATH.jsonl", help="where to append the run's line "
                         "(default data/results.jsonl)")
    quality.add_argument("--no-record", action="store_true", help="do not append to the results file")
    args = parser.parse_args(argv)
    if args.num_samples is not None and args.num_samples < 2:
        parser.error(f"--num-samples must be >= 2, got {args.num_samples}")
    try:
        scales = [float(w) for w in args.scales.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--scales must be numbers separated by commas, e.g. 0,1,3; got {args.scales!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    if (args.num_samples is not None or args.metrics or args.save_samples
            or args.checkpoint.startswith(REAL_PREFIX)):
        return _quality_main(args, parser)
    device = config.get_device()
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    try:
        pipeline = Pipeline.from_checkpoint(args.checkpoint, device=device)
    except (NoProcessError, TypeError) as err:
        parser.error(f"{args.checkpoint}: {err}")
    classifier, _ = model_from_checkpoint(args.classifier or config.checkpoint_dir() / "cifar-classifier.safetensors",
                                          device=device)
    if not pipeline.text_conditional:
        return _score_unconditional(pipeline, classifier, args)
    card = pipeline.card
    print(f"{args.checkpoint}: step {card['step']}, {card.get('training', {}).get('wall_seconds_total', 0) / 60:.0f} training "
          f"minutes; {pipeline.process.samplers[0]} {args.steps} steps, {args.per_class} images per class, noise seed {args.seed}; "
          f"prompts like {PROMPTS[args.prompts](3)!r}")
    model = pipeline.denoiser
    if model.config.text_encoder == "small":  # say once which words it reads as <unk>, not in every batch
        prompts = [PROMPTS[args.prompts](k) for k in range(len(CIFAR10_CLASSES))]
        unknown = sorted({w for words in model.tokenizer.encode(prompts).unknown for w in words})
        if unknown:
            print(f"words the model's tokenizer does not know (read as <unk>): {', '.join(unknown)}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="unknown words replaced")
        results = prompt_accuracy(pipeline, classifier, scales, per_class=args.per_class, num_steps=args.steps,
                                  seed=args.seed, prompt=PROMPTS[args.prompts])
    for r in results.values():
        per_class = " ".join(f"{name} {100 * a:.0f}" for name, a in zip(CIFAR10_CLASSES, r.per_class.tolist()))
        print(f"{r}\n    per class (%): {per_class}")
    print(f"{time.perf_counter() - start:.0f} s on {device}")
    return 0


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
