"""Recipes: what the command line (``python -m course_lib.train NAME``) knows how to train.

A recipe ties a model config, a diffusion setup, the data and the optimisation settings
together under one name, so that a checkpoint in ``data/checkpoints/NAME.safetensors`` can say
exactly how it was made. Later chapters add their recipes to ``RECIPES``.

A recipe is anything with the attributes the command line uses: ``name``, ``description``,
``train_config()``, ``data()``, ``build_model()``, ``batches(data, cfg)``, ``loss_fn()`` and
``card_info()``; a recipe may also have ``export(state, path)``, which writes the inference
checkpoint in place of :func:`~course_lib.checkpoint.export_inference` (the classifier's re-estimates
BatchNorm statistics for the EMA weights and stores the test accuracy in the card). :class:`DiffusionRecipe` trains the chapters' denoisers,
:class:`ClassifierRecipe` the CIFAR-10 classifier that measures whether samples show their class,
:class:`Text2ImageRecipe` chapter 3's text-to-image model (captions made from the labels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint
from .classifier import (CIFARClassifier, ClassifierConfig, classification_loss, confusion_matrix,
                         per_class_accuracy, recalibrate_batchnorm)
from .data import CIFAR10Split, StepBatches, load_cifar10
from .parameterization import diffusion_loss
from .schedules import NoiseSchedule, make_schedule
from .text2image import Text2ImageConfig, TextToImageUNet, text2image_loss
from .train import TrainConfig
from .unet import UNet, UNetConfig

#: model classes a checkpoint card can name, with their config classes
MODELS: dict[str, tuple[type[torch.nn.Module], type]] = {
    "UNet": (UNet, UNetConfig),
    "CIFARClassifier": (CIFARClassifier, ClassifierConfig),
    "TextToImageUNet": (TextToImageUNet, Text2ImageConfig),
}


@dataclass(frozen=True)
class DiffusionSpec:
    """The forward process and what the network predicts (stored in checkpoint cards)."""

    schedule: str = "linear"
    T: int = 1000
    parameterization: str = "eps"

    def make_schedule(self) -> NoiseSchedule:
        return make_schedule(self.schedule, self.T)


@dataclass
class DiffusionRecipe:
    """Train an epsilon/x0/v-prediction UNet on CIFAR-10 with the simple loss (Ho et al. 2020)."""

    name: str
    description: str
    model_config: Callable[[], UNetConfig]
    train_config: Callable[[], TrainConfig]
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    hflip: bool = True

    def build_model(self) -> UNet:
        return UNet(self.model_config())

    def data(self) -> CIFAR10Split:
        return load_cifar10("train", hflip=self.hflip)

    def batches(self, data: CIFAR10Split, cfg: TrainConfig) -> StepBatches:
        return StepBatches(data, cfg.batch_size, cfg.seed)

    def loss_fn(self) -> Callable:
        schedule = self.diffusion.make_schedule()
        parameterization = self.diffusion.parameterization

        def loss(model, batch):
            images, _labels = batch
            return diffusion_loss(model, schedule, images, parameterization)

        return loss

    def card_info(self) -> dict:
        return {"recipe": self.name, "diffusion": dataclasses.asdict(self.diffusion)}


@dataclass
class ClassifierRecipe:
    """Train the CIFAR-10 classifier with cross-entropy on flipped, randomly cropped images.

    ``export(state, path)`` writes the EMA weights with BatchNorm statistics re-estimated for them on
    ``recalibration_images`` training images (:func:`~course_lib.classifier.recalibrate_batchnorm`),
    and ``metrics(model)``, the accuracy on the test split of the same data source (10,000 images for
    the full CIFAR-10, 500 for the bundled sample), in its card.
    """

    name: str
    description: str
    model_config: Callable[[], ClassifierConfig]
    train_config: Callable[[], TrainConfig]
    hflip: bool = True
    crop_padding: int = 4
    label_smoothing: float = 0.0
    recalibration_images: int = 10_000

    def build_model(self) -> CIFARClassifier:
        return CIFARClassifier(self.model_config())

    def data(self) -> CIFAR10Split:
        return load_cifar10("train", hflip=self.hflip)

    def batches(self, data: CIFAR10Split, cfg: TrainConfig) -> StepBatches:
        return StepBatches(data, cfg.batch_size, cfg.seed)

    def loss_fn(self) -> Callable:
        return classification_loss(self.crop_padding, self.label_smoothing)

    def card_info(self) -> dict:
        return {"recipe": self.name, "task": "classification",
                "augmentation": {"hflip": self.hflip, "crop_padding": self.crop_padding,
                                 "crop_padding_mode": "reflect"},
                "label_smoothing": self.label_smoothing}

    def metrics(self, model: torch.nn.Module) -> dict:
        test = load_cifar10("test", verbose=False)
        confusion = confusion_matrix(model, test)  # [10, 10]
        per_class = per_class_accuracy(confusion)
        return {"test_accuracy": round(confusion.diagonal().sum().item() / len(test), 4),
                "test_per_class_accuracy": {c: round(a, 4) for c, a in zip(test.classes, per_class.tolist())},
                "test_images": len(test), "test_source": test.source}

    def export(self, state: str | Path, path: str | Path) -> Path:
        """Write the inference checkpoint: EMA weights, BatchNorm re-estimated, test metrics in the card."""
        ckpt = load_checkpoint(state)
        model = CIFARClassifier(ClassifierConfig(**ckpt.card["model_config"]))
        load_checkpoint(state, model, weights="ema")
        train = load_cifar10("train", verbose=False)  # no flips: the statistics of the plain images
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:self.recalibration_images]
        recalibrate_batchnorm(model, train.images[order])
        training = {**ckpt.card.get("training", {}), "exported_from": Path(state).name, "exported_weights": "ema",
                    "batchnorm_recalibration": {"images": len(order), "source": train.source,
                                                "split": "train", "augmentation": None}}
        train_tensors = {k: v for k, v in ckpt.train.items() if k == "loss_history"}
        return save_checkpoint(path, model.eval(), step=ckpt.step, kind="inference", train_tensors=train_tensors,
                               metrics={**ckpt.card.get("metrics", {}), **self.metrics(model)}, training=training)


@dataclass
class Text2ImageRecipe(DiffusionRecipe):
    """Train chapter 3's :class:`~course_lib.text2image.TextToImageUNet` on CIFAR-10 images with captions
    drawn from their labels and dropped to "" with probability ``p_uncond`` (``text2image_loss``: the
    conditional LDM objective, Rombach et al. 2022, with classifier-free-guidance dropout, Ho & Salimans 2022).

    ``model_config`` returns a :class:`~course_lib.text2image.Text2ImageConfig`; its ``p_uncond`` is the
    dropout rate used in training.
    """

    model_config: Callable[[], Text2ImageConfig]

    def build_model(self) -> TextToImageUNet:
        return TextToImageUNet(self.model_config(), schedule=self.diffusion.make_schedule(),
                               parameterization=self.diffusion.parameterization)

    def loss_fn(self) -> Callable:
        schedule = self.diffusion.make_schedule()
        parameterization = self.diffusion.parameterization

        def loss(model, batch):
            images, labels = batch
            return text2image_loss(model, schedule, images, labels, model.config.p_uncond, parameterization)

        return loss

    def card_info(self) -> dict:
        config = self.model_config()
        return {**super().card_info(), "text_encoder": config.text_encoder, "p_uncond": config.p_uncond,
                "captions": "course_lib.text.random_captions(labels): a template and a class name drawn per image"}


RECIPES: dict[str, DiffusionRecipe | ClassifierRecipe] = {
    r.name: r for r in [
        DiffusionRecipe(
            "ddpm-tiny", "chapter 1: the tiny UNet (0.29M), for fast mode and tests",
            UNetConfig.tiny,
            lambda: TrainConfig(max_steps=300, batch_size=32, lr=1e-3, warmup_steps=20, ema_decay=0.99)),
        DiffusionRecipe(
            "ddpm-small", "chapter 1: the paper's UNet at quarter width (2.25M), trains on a CPU",
            UNetConfig.small,
            lambda: TrainConfig(max_steps=100_000, batch_size=64, lr=2e-4, warmup_steps=1000,
                                ema_decay=0.9995, bf16=True, channels_last=True,
                                checkpoint_minutes=10)),
        DiffusionRecipe(
            "ddpm-paper", "chapter 1: Ho et al.'s 35.7M CIFAR-10 UNet (needs a GPU for real training)",
            UNetConfig.paper,
            lambda: TrainConfig(max_steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000,
                                ema_decay=0.9999, checkpoint_minutes=30)),
        ClassifierRecipe(
            "cifar-classifier", "chapter 3: a small ResNet CIFAR-10 classifier (0.31M) that checks samples' classes",
            ClassifierConfig.small,
            lambda: TrainConfig(max_steps=6000, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_steps=200,
                                ema_decay=0.998, bf16=True, channels_last=True, checkpoint_minutes=5)),
        Text2ImageRecipe(
            "cond-tiny", "chapter 3: the tiny text-conditional UNet + small text encoder (0.41M), for tests",
            Text2ImageConfig.tiny,
            lambda: TrainConfig(max_steps=300, batch_size=32, lr=1e-3, warmup_steps=20, ema_decay=0.99)),
        Text2ImageRecipe(
            "cond-small", "chapter 3: ddpm-small with AdaGN + cross-attention, and a small text encoder (3.31M)",
            Text2ImageConfig.small,
            lambda: TrainConfig(max_steps=100_000, batch_size=64, lr=2e-4, warmup_steps=1000,
                                ema_decay=0.9995, bf16=True, channels_last=True, checkpoint_minutes=10)),
        Text2ImageRecipe(
            "cond-small-minilm", "chapter 3: cond-small's UNet reading the frozen MiniLM (3.10M trained; "
            "needs the text extra)",
            Text2ImageConfig.small_minilm,
            lambda: TrainConfig(max_steps=100_000, batch_size=64, lr=2e-4, warmup_steps=1000,
                                ema_decay=0.9995, bf16=True, channels_last=True, checkpoint_minutes=10)),
    ]
}


def model_from_checkpoint(path: str | Path, weights: str = "model", device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes, load its weights, and return ``(model, card)``."""
    card = read_card(path)
    if card["model_class"] not in MODELS:
        raise CheckpointError(f"{path} holds a {card['model_class']}, which this course version does not "
                              f"know (known: {', '.join(MODELS)}); update course_lib")
    model_cls, config_cls = MODELS[card["model_class"]]
    model = model_cls(config_cls(**card["model_config"]))
    diffusion = card.get("training", {}).get("diffusion")
    if isinstance(model, TextToImageUNet) and diffusion:  # sample with the schedule it was trained with
        spec = DiffusionSpec(**diffusion)
        model.schedule, model.parameterization = spec.make_schedule(), spec.parameterization
    load_checkpoint(path, model, weights=weights)
    return model.to(device).eval(), card
