"""Recipes: what the command line (``python -m course_lib.train NAME``) knows how to train.

A recipe ties a model config, a diffusion setup, the data and the optimisation settings
together under one name, so that a checkpoint in ``data/checkpoints/NAME.safetensors`` can say
exactly how it was made. Later chapters add their recipes to ``RECIPES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, load_checkpoint, read_card
from .data import CIFAR10Split, StepBatches, load_cifar10
from .parameterization import diffusion_loss
from .schedules import NoiseSchedule, make_schedule
from .train import TrainConfig
from .unet import UNet, UNetConfig

#: model classes a checkpoint card can name, with their config classes
MODELS: dict[str, tuple[type[torch.nn.Module], type]] = {"UNet": (UNet, UNetConfig)}


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


RECIPES: dict[str, DiffusionRecipe] = {
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
    load_checkpoint(path, model, weights=weights)
    return model.to(device).eval(), card
