"""The model registry: every network a checkpoint card can name, built from its config, loaded from its file.

A checkpoint's card names its model class and config (``course_lib.checkpoint``); :data:`MODELS` maps the
class names to (model class, config class), :func:`build_model` turns a config into its network, and
:func:`model_from_checkpoint` does both for a file and loads the weights. Everything that reads a
checkpoint (the generation pipeline, the evaluation, the latent cache, the FD_clf features, the training
recipes) goes through here, so this module sits above the models and below everything that uses them.

Cards written by older versions of the course name classes that have since been merged; a class lists those
names in its ``card_aliases`` (``TextToImageModel``: "TextToImageUNet", "TextToImageMMDiT"), and they load as
the class that replaced them, with the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .autoencoder import AutoencoderConfig, AutoencoderKL
from .checkpoint import CheckpointError, class_names, config_from_dict, load_checkpoint, read_card
from .classifier import CIFARClassifier, ClassifierConfig
from .text2image import Text2ImageConfig, TextToImageModel
from .unet import UNet, UNetConfig

__all__ = ["MODELS", "build_model", "model_class", "model_from_checkpoint"]

#: model classes a checkpoint card can name, with their config classes
MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "UNet": (UNet, UNetConfig),
    "CIFARClassifier": (CIFARClassifier, ClassifierConfig),
    "TextToImageModel": (TextToImageModel, Text2ImageConfig),
    "AutoencoderKL": (AutoencoderKL, AutoencoderConfig),
}


def model_class(name: str) -> tuple[type[nn.Module], type]:
    """(model class, config class) of a card's ``model_class``, older names (``card_aliases``) included."""
    for model_cls, config_cls in MODELS.values():
        if name in class_names(model_cls):
            return model_cls, config_cls
    raise CheckpointError(f"the checkpoint holds a {name}, which this course version does not know (known: "
                          f"{', '.join(MODELS)}); update course_lib")


def build_model(config) -> nn.Module:
    """The network a config describes (freshly initialised): ``build_model(UNetConfig.small())`` is a UNet."""
    for model_cls, config_cls in MODELS.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"no model of the course is configured by a {type(config).__name__} (known configs: "
                    f"{', '.join(c.__name__ for _, c in MODELS.values())})")


def model_from_checkpoint(path: str | Path, weights: str = "model", device: str | torch.device = "cpu"):
    """Build the model a checkpoint's card names (:data:`MODELS`), load its weights, and return ``(model, card)``.

    For sampling, ``course_lib.generation.Pipeline.from_checkpoint`` adds the process the card names."""
    card = read_card(path)
    model_cls, config_cls = model_class(card["model_class"])
    model = model_cls(config_from_dict(config_cls, card["model_config"]))
    load_checkpoint(path, model, weights=weights)
    return model.to(device).eval(), card
