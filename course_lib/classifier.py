"""A small CIFAR-10 classifier: the course's yardstick for "does the sample show the class it was asked for?".

Chapter 3 classifies the images a text-conditioned model generates and counts how often the
predicted class is the one the prompt names; later chapters reuse the same network for evaluation.

The network is a small ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition"):
a 3x3 stem, then one stage per entry of ``widths``, each made of ``blocks_per_stage`` basic
residual blocks

    y = ReLU(x + F(x)),   F(x) = BN(conv3x3(ReLU(BN(conv3x3(x)))))            (He et al. 2016, eq. 1)

where the first block of every stage after the first halves the resolution with a stride-2
convolution and its shortcut becomes a 1x1 stride-2 projection, BN(conv1x1(x)) (their "option B",
eq. 2). Global average pooling and one linear layer give the ten class logits. The last
normalisation of every residual branch starts at zero ("zero-init residual", Goyal et al. 2017),
so each block starts as the identity, which lets a short training run use a high learning rate.

For ``widths=(32, 64, 128)`` and one block per stage on a 32x32 image:

    x [B, 3, 32, 32] -> stem -> [B, 32, 32, 32]
    stage 1 (32x32): BasicBlock(32 -> 32)                -> [B, 32, 32, 32]
    stage 2 (16x16): BasicBlock(32 -> 64, stride 2)      -> [B, 64, 16, 16]
    stage 3 (8x8):   BasicBlock(64 -> 128, stride 2)     -> [B, 128, 8, 8]
    head:            global average pool -> linear       -> [B, 10]

Training uses ``course_lib.trainer.fit`` with :func:`classification_loss`, which augments inside the
loss (random 32x32 crops of the image padded by 4 pixels with reflection, as in He et al. 2016,
sec. 4.2, drawn from torch's global RNG so that fit's per-step seeding keeps runs resumable) and
optionally smooths the labels (Szegedy et al. 2016, sec. 7). Horizontal flips come from
``StepBatches`` (``load_cifar10(..., hflip=True)``). The training loop keeps an exponential moving
average of the weights but copies BatchNorm's running statistics from the live model, whose weights
differ; :func:`recalibrate_batchnorm` re-estimates them for the averaged weights before export
(measured on the shipped run: 79.6% -> 83.7% test accuracy at step 6965; 72.7% -> 78.0% at step 2971).

Images are float tensors in [-1, 1] (``course_lib.data``'s convention), shape [B, 3, 32, 32].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .data import CIFAR10_CLASSES, CIFAR10Split

__all__ = [
    "ClassifierConfig",
    "BasicBlock",
    "CIFARClassifier",
    "check_images",
    "random_crop",
    "classification_loss",
    "recalibrate_batchnorm",
    "predict",
    "accuracy",
    "confusion_matrix",
    "per_class_accuracy",
]

NORMS = ("batch", "group")


# --------------------------------------------------------------------------- configuration


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :class:`CIFARClassifier`. ``dataclasses.asdict`` is JSON-serialisable.

    in_channels:      channels of the input images (3 for RGB)
    num_classes:      number of logits (10 for CIFAR-10)
    widths:           channels of each stage; every stage after the first halves the resolution
    blocks_per_stage: basic residual blocks per stage
    norm:             "batch" (BatchNorm, He et al. 2016) or "group" (GroupNorm, Wu & He 2018:
                      no running statistics, same output in train and eval mode)
    num_groups:       GroupNorm groups (only for norm="group"); must divide every width
    dropout:          dropout before the final linear layer
    image_size:       the input resolution the network is built for
    """

    in_channels: int = 3
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 1
    norm: str = "batch"
    num_groups: int = 8
    dropout: float = 0.0
    image_size: int = 32

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: turn them back so configs compare equal.
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "group":
            bad = [w for w in self.widths if w % self.num_groups]
            if bad:
                raise ValueError(f"num_groups={self.num_groups} must divide every width; {bad} are not "
                                 f"divisible (widths={self.widths}); change num_groups or the widths")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        factor = 2 ** (len(self.widths) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by {factor} "
                             f"({len(self.widths)} stages halve it {len(self.widths) - 1} times)")

    @classmethod
    def tiny(cls) -> "ClassifierConfig":
        """A few thousand parameters, for tests and fast mode."""
        return cls(widths=(8, 16), blocks_per_stage=1)

    @classmethod
    def small(cls) -> "ClassifierConfig":
        """The course's classifier (0.31M parameters): 83.7% test accuracy after 50 minutes on one CPU thread."""
        return cls(widths=(32, 64, 128), blocks_per_stage=1)


# --------------------------------------------------------------------------- network


def _norm(config: ClassifierConfig, channels: int) -> nn.Module:
    if config.norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(config.num_groups, channels)


class BasicBlock(nn.Module):
    """He et al. 2016's basic residual block: y = ReLU(shortcut(x) + BN(conv(ReLU(BN(conv(x)))))).

    With ``stride=2`` or a change of width, the shortcut is a 1x1 convolution with that stride
    followed by a norm (their projection shortcut, "option B"); otherwise it is the identity.
    """

    def __init__(self, config: ClassifierConfig, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(config, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(config, out_channels)
        nn.init.zeros_(self.norm2.weight)  # zero-init residual: the block starts as its shortcut
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          _norm(config, out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))  # [B, C_out, H/s, W/s]
        h = self.norm2(self.conv2(h))
        return F.relu(self.shortcut(x) + h)


class CIFARClassifier(nn.Module):
    """A small ResNet (He et al. 2016) for 32x32 images in [-1, 1]: ``model(x) -> logits [B, num_classes]``."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else ClassifierConfig.small()
        w0 = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w0, 3, padding=1, bias=False),
                                  _norm(config, w0), nn.ReLU())
        stages, c_in = [], w0
        for i, width in enumerate(config.widths):
            blocks = [BasicBlock(config, c_in, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(config, width, width) for _ in range(config.blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"CIFARClassifier expects images of shape [B, {', '.join(map(str, expected))}], "
                             f"got {tuple(x.shape)}; add a batch dimension with x[None] for a single image")
        return self.head(self.dropout(self.features(x)))  # [B, num_classes]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled activations before the last linear layer, [B, C_last]: the feature space of FD_clf
        (:mod:`course_lib.features`)."""
        h = self.stages(self.stem(x))  # [B, C_last, H / 2^(S-1), W / 2^(S-1)]
        return h.mean(dim=(2, 3))  # global average pool: [B, C_last]


# --------------------------------------------------------------------------- input checks


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise a ValueError that says what to do unless ``images`` is a float [N, 3, 32, 32] batch in [-1, 1]."""
    if not torch.is_tensor(images):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, 3, 32, 32], got {type(images).__name__}")
    if images.ndim == 3:
        raise ValueError(f"{name} has shape {tuple(images.shape)}: one image without a batch dimension; "
                         "pass images[None] (shape [1, 3, 32, 32])")
    if images.ndim != 4 or images.shape[1] != 3:
        hint = (" (channels last? use images.permute(0, 3, 1, 2))"
                if images.ndim == 4 and images.shape[-1] == 3 else "")
        raise ValueError(f"{name} must have shape [N, 3, H, W], got {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise ValueError(f"{name} has dtype {images.dtype}; the classifier expects float images in [-1, 1], "
                         "use course_lib.data.to_unit_range to convert uint8 {0..255}")
    if images.numel():
        lo, hi = images.min().item(), images.max().item()
        if lo < -1.05 or hi > 1.05:
            fix = ("use course_lib.data.to_unit_range for {0..255} pixels" if hi > 2 else
                   "clamp samples with images.clamp(-1, 1)")
            raise ValueError(f"{name} lie in [{lo:.3g}, {hi:.3g}] but the classifier expects [-1, 1]; {fix}")
        if len(images) >= 4 and lo >= 0 and hi > 0.5:  # one bright image can be all positive; a batch is not
            warnings.warn(f"{name} lie in [{lo:.3g}, {hi:.3g}], which looks like [0, 1] pixels; the classifier "
                          "expects [-1, 1]: pass images * 2 - 1", stacklevel=3)


# --------------------------------------------------------------------------- training


def random_crop(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crops of the original size from images padded by ``padding`` pixels (reflection).

    The crop offsets come from ``generator`` (default: torch's global RNG, which ``fit`` seeds at
    every step). The memory layout of ``images`` (e.g. channels_last) is kept.
    """
    if padding == 0:
        return images
    B, C, H, W = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")  # [B, C, H + 2p, W + 2p]
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=images.device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=images.device)
    rows = oy[:, None] + torch.arange(H, device=images.device)  # [B, H]
    cols = ox[:, None] + torch.arange(W, device=images.device)  # [B, W]
    batch = torch.arange(B, device=images.device)
    out = padded.permute(0, 2, 3, 1)[batch[:, None, None], rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    out = rearrange(out, "b h w c -> b c h w")
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def classification_loss(crop_padding: int = 4, label_smoothing: float = 0.0) -> Callable:
    """``loss(model, (images, labels))``: cross-entropy of the logits on randomly cropped images.

    L = -sum_k q_k log softmax(f(crop(x)))_k with q = (1 - eps) onehot(y) + eps / K (label
    smoothing eps, Szegedy et al. 2016; eps = 0 is the plain cross-entropy).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    def loss(model: nn.Module, batch) -> torch.Tensor:
        images, labels = batch
        logits = model(random_crop(images, crop_padding))  # [B, K]
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    return loss


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance for the model's current weights.

    At inference BatchNorm uses population statistics E[x] and Var[x] of its inputs (Ioffe &
    Szegedy 2015, sec. 3.1); training estimates them with a moving average over recent batches,
    computed with the weights of those steps. For averaged weights (the EMA the training loop keeps,
    or SWA, Izmailov et al. 2018, who recompute them the same way) those estimates belong to other
    weights. This pass sets them to the plain average over ``images`` (no augmentation is applied)
    with the final weights: momentum=None makes BatchNorm keep a cumulative mean over batches.
    The model's train/eval mode is restored; a model without BatchNorm is returned unchanged.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    check_images(images)
    was_training, momenta = model.training, [m.momentum for m in norms]
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model


# --------------------------------------------------------------------------- evaluation


def _images_and_labels(split_or_images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(split_or_images, CIFAR10Split):
        if labels is not None:
            raise ValueError("give either a CIFAR10Split or (images, labels), not a split and labels")
        return split_or_images.images, split_or_images.labels
    if labels is None:
        raise ValueError("labels are missing: call accuracy(model, split) with a CIFAR10Split, "
                         "or accuracy(model, images, labels)")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(split_or_images):
        raise ValueError(f"need one label per image: {len(split_or_images)} images, "
                         f"labels of shape {tuple(labels.shape)}")
    return split_or_images, labels


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Class predictions ``labels [N]`` and probabilities ``probs [N, K]`` (softmax), in eval mode.

    The model's train/eval mode is restored afterwards. Results are on the CPU.
    """
    check_images(images)
    if len(images) == 0:
        raise ValueError("no images to classify: images has shape [0, ...]; pass at least one image")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        probs = [F.softmax(model(images[i:i + batch_size].to(device)).float(), dim=-1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    probs = torch.cat(probs)  # [N, K]
    return probs.argmax(dim=-1), probs


def accuracy(model: nn.Module, split_or_images: CIFAR10Split | torch.Tensor, labels: torch.Tensor | None = None,
             batch_size: int = 256) -> float:
    """Fraction of images classified as their label: ``accuracy(model, split)`` or ``accuracy(model, x, y)``."""
    images, labels = _images_and_labels(split_or_images, labels)
    predicted, _ = predict(model, images, batch_size)
    return (predicted == labels.cpu()).float().mean().item()


def confusion_matrix(model_or_predictions: nn.Module | torch.Tensor, split_or_images=None,
                     labels: torch.Tensor | None = None, num_classes: int = len(CIFAR10_CLASSES),
                     batch_size: int = 256) -> torch.Tensor:
    """Counts ``C[i, j]`` of images of true class i predicted as class j (int64 [K, K]).

    Either ``confusion_matrix(model, split)`` / ``confusion_matrix(model, images, labels)``, or
    ``confusion_matrix(predicted_labels, true_labels)`` when the predictions are already made.
    """
    if isinstance(model_or_predictions, nn.Module):
        images, labels = _images_and_labels(split_or_images, labels)
        predicted, _ = predict(model_or_predictions, images, batch_size)
    else:
        predicted, labels = torch.as_tensor(model_or_predictions), torch.as_tensor(split_or_images)
        if predicted.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.cpu().long()
    predicted = predicted.cpu().long()
    if len(labels) and (labels.min() < 0 or max(labels.max(), predicted.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; pass num_classes= for another data set")
    counts = torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Accuracy of every true class from a confusion matrix: diag(C) / row sums (NaN for an empty row)."""
    confusion = confusion.double()
    return confusion.diagonal() / confusion.sum(dim=1)
