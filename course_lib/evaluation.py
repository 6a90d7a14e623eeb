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

``--prompts unseen`` asks with :func:`~course_lib.captions.unseen_prompt` instead ("a photo of a kitten":
a word no training caption has), which is where a frozen pretrained text encoder (cond-small-minilm)
and the small one trained from the captions (cond-small, which reads "a photo of a <unk>") part ways.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from . import config
from .captions import class_prompt, unseen_prompt
from .classifier import confusion_matrix, per_class_accuracy, predict
from .data import CIFAR10_CLASSES, load_cifar10
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation",
                                     description="Judge a checkpoint's samples with the course's CIFAR-10 classifier: "
                                                 "the prompt accuracy of a text-to-image model at several guidance "
                                                 "scales, or the classifier score of an unconditional UNet beside "
                                                 "real test images.")
    parser.add_argument("checkpoint", help="a TextToImageUNet checkpoint (data/checkpoints/cond-small.safetensors) "
                        "or an unconditional UNet one (data/checkpoints/ddpm-small.safetensors)")
    parser.add_argument("--classifier", help="default: <checkpoint dir>/cifar-classifier.safetensors")
    parser.add_argument("--scales", default="0,1,3", help="comma-separated guidance scales (default 0,1,3)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class and scale (default 10)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--prompts", choices=tuple(PROMPTS), default="class",
                        help="class: 'a photo of a cat' (default); unseen: 'a photo of a kitten', words no caption has")
    parser.add_argument("--samples", type=int, default=100,
                        help="unconditional UNet: how many images to sample and score (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the starting noise (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    try:
        scales = [float(w) for w in args.scales.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--scales must be numbers separated by commas, e.g. 0,1,3; got {args.scales!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
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
          f"minutes; DDIM {args.steps} steps, {args.per_class} images per class, noise seed {args.seed}; "
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
