"""Recipes: what the command line (``python -m course_lib.train NAME``) knows how to train.

A recipe ties a model config, a generative process, the data and the optimisation settings
together under one name, so that a checkpoint in ``data/checkpoints/NAME.safetensors`` can say
exactly how it was made. Later chapters add their recipes to ``RECIPES``.

Every recipe has what the command line uses: ``name``, ``description``, ``train_config()``,
``data()``, ``build_model()``, ``batches(data, cfg)``, ``loss_fn()``, ``card_info()`` and
``export(state, path)``, which writes the inference checkpoint (:class:`Recipe` gives the defaults).
:class:`DenoiserRecipe` trains an unconditional denoiser with its process's loss,
:class:`Text2ImageRecipe` chapter 3's text-to-image model (captions made from the labels), and
:class:`ClassifierRecipe` the CIFAR-10 classifier that measures whether samples show their class.

Models themselves are built and loaded by ``course_lib.models`` (``build_model``, ``model_from_checkpoint``);
the process a generative checkpoint was trained with is on its card (``course_lib.processes.process_from_card``),
and ``course_lib.generation.Pipeline.from_checkpoint`` puts the two together for sampling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import config
from .autoencoder import (LDM_LAYOUT, AutoencoderConfig, AutoencoderKL, autoencoder_loss, latent_scaling_factor,
                          reconstruction_psnr)
from .checkpoint import export_inference, load_checkpoint, read_card, save_checkpoint
from .classifier import (CIFARClassifier, ClassifierConfig, classification_loss, confusion_matrix,
                         per_class_accuracy, recalibrate_batchnorm)
from .data import CIFAR10Split, StepBatches, fixed_shuffle, load_cifar10
from .latents import cached_latents
from .guidance_distillation import guidance_distillation_loss
from .meanflow import meanflow_distillation_loss
from .models import build_model, model_from_checkpoint
from .processes import DDPMProcess, MeanFlowProcess, Process, RectifiedFlowProcess
from .reflow import PairSettings, load_reflow_pairs, reflow_pairs_path
from .text2image import Text2ImageConfig, text2image_loss
from .trainer import TrainConfig
from .unet import UNetConfig


class Recipe:
    """What every recipe shares: CIFAR-10 training images (flipped at random when ``hflip``), the
    step-indexed batches of ``course_lib.data.StepBatches``, the model its config describes
    (``course_lib.models.build_model``), and an export of the EMA weights as the inference checkpoint."""

    name: str
    model_config: Callable
    hflip: bool

    def build_model(self) -> torch.nn.Module:
        return build_model(self.model_config())

    def data(self) -> CIFAR10Split:
        return load_cifar10("train", hflip=self.hflip)

    def batches(self, data: CIFAR10Split, cfg: TrainConfig) -> StepBatches:
        return StepBatches(data, cfg.batch_size, cfg.seed)

    def export(self, state: str | Path, path: str | Path) -> Path:
        """Write the inference checkpoint (the EMA weights and the card) from a training state."""
        return export_inference(state, path)

    def initial_weights(self) -> Path | None:
        """A checkpoint whose matching tensors a fresh run starts from (None: random initialisation)."""
        return None


@dataclass
class DenoiserRecipe(Recipe):
    """Train a denoiser on CIFAR-10 images with its process's loss (DDPM's L_simple by default, Ho et al. 2020)."""

    name: str
    description: str
    model_config: Callable[[], UNetConfig]
    train_config: Callable[[], TrainConfig]
    process: Process = field(default_factory=DDPMProcess)
    hflip: bool = True

    def loss_fn(self) -> Callable:
        process = self.process

        def loss(model, batch):
            images, _labels = batch
            return process.loss(model, images)

        return loss

    def card_info(self) -> dict:
        return {"recipe": self.name, "process": self.process.to_dict()}


@dataclass
class ClassifierRecipe(Recipe):
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
class Text2ImageRecipe(DenoiserRecipe):
    """Train chapter 3's :class:`~course_lib.text2image.TextToImageModel` on CIFAR-10 images with captions
    drawn from their labels and dropped to "" with probability ``p_uncond`` (``text2image_loss``: the
    conditional LDM objective, Rombach et al. 2022, with classifier-free-guidance dropout, Ho & Salimans 2022).

    ``model_config`` returns a :class:`~course_lib.text2image.Text2ImageConfig`; its ``p_uncond`` is the
    dropout rate used in training.
    """

    model_config: Callable[[], Text2ImageConfig]

    def loss_fn(self) -> Callable:
        process = self.process

        def loss(model, batch):
            images, labels = batch
            return text2image_loss(model, process, images, labels, model.config.p_uncond)

        return loss

    def card_info(self) -> dict:
        config = self.model_config()
        return {**super().card_info(), "text_encoder": config.text_encoder, "p_uncond": config.p_uncond,
                "captions": "course_lib.captions.random_captions(labels): a template and a class name drawn per image"}


@dataclass
class LatentText2ImageRecipe(Text2ImageRecipe):
    """Train chapter 4's latent text-to-image model: :class:`Text2ImageRecipe`'s objective on the scaled
    latents of a frozen autoencoder instead of pixels (latent diffusion, Rombach et al. 2022).

    The training images and their mirror images are encoded once (``course_lib.latents.cached_latents``);
    every batch draws fresh posterior samples z ~ q(z | x) from the cached moments. ``autoencoder`` names
    the checkpoint (in the checkpoint directory) whose latents the model learns; the card records it with
    the SHA-256 of its weights, and ``Pipeline.from_checkpoint`` attaches that decoder for generation.
    """

    autoencoder: str = "vae-small.safetensors"
    hflip: bool = False  # the cache holds each image and its mirror image; a flipped latent is not a flip's latent

    def autoencoder_path(self) -> Path:
        return config.checkpoint_dir() / self.autoencoder

    def data(self):
        path = self.autoencoder_path()
        if not path.is_file():
            raise FileNotFoundError(f"{self.name} learns the latents of {path}, which does not exist; train it "
                                    f"first (python -m course_lib.train {Path(self.autoencoder).stem}) or set "
                                    "COURSE_CHECKPOINT_DIR to where it is")
        return cached_latents(path, "train", flips=True)

    def card_info(self) -> dict:
        card = read_card(self.autoencoder_path())
        return {**super().card_info(), "augmentation": {"hflip": "both orientations encoded once (cached)"},
                "autoencoder": {"checkpoint": self.autoencoder, "sha256": card["sha256"],
                                "scaling_factor": card.get("metrics", {}).get("scaling_factor"),
                                "shift_factor": card.get("model_config", {}).get("shift_factor", 0.0),
                                "latents": "(z - shift_factor) * scaling_factor, z ~ q(z|x) drawn per batch from "
                                           "cached moments"}}


@dataclass
class ReflowRecipe(LatentText2ImageRecipe):
    """Train a (k+1)-rectified flow on the pairs a k-rectified flow made (Liu et al. 2022, Sec. 2.2; ``course_lib.reflow``):
    :class:`LatentText2ImageRecipe`'s model and objective with each latent z_0 tied to the noise z_1 it came from,

        z_t = (1 - t) z_0 + t z_1,   loss = || v(z_t, t, tau(y)) - (z_1 - z_0) ||^2,   y a random caption of the pair's label.

    ``teacher`` names the k-flow's checkpoint (in the checkpoint directory), whose weights a fresh run starts
    from (:meth:`initial_weights`); ``pairs`` says how many pairs the teacher makes and how it samples them
    (:class:`~course_lib.reflow.PairSettings`). ``python -m course_lib.reflow NAME`` makes them from this recipe
    alone, into the cache file that :meth:`pairs_path` names and :meth:`data` reads.
    """

    teacher: str = "rf-small.safetensors"
    pairs: PairSettings = field(default_factory=PairSettings)

    def teacher_path(self) -> Path:
        return config.checkpoint_dir() / self.teacher

    def initial_weights(self) -> Path | None:
        """The teacher's weights: Liu et al. (2022) initialise the (k+1)-rectified flow from the k-rectified flow."""
        return self.teacher_path()

    def pairs_path(self) -> Path:
        teacher = self.teacher_path()
        if not teacher.is_file():
            raise FileNotFoundError(f"{self.name} learns the reflow pairs of its teacher {teacher}, which does not "
                                    f"exist: train the teacher first (its recipe is {Path(self.teacher).stem})")
        return reflow_pairs_path(read_card(teacher)["sha256"], self.pairs)

    def data(self):
        path = self.pairs_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name} trains on {self.pairs.describe()} of its teacher {Path(self.teacher).stem}, and they "
                f"have not been made yet (expected in {path}). The reflow command makes them from this recipe "
                f"with its name alone (hours on a CPU; resumable)")
        return load_reflow_pairs(path)

    def loss_fn(self) -> Callable:
        process = self.process

        def loss(model, batch):
            z0, z1, labels = batch
            return text2image_loss(model, process, z0, labels, model.config.p_uncond, noise=z1)

        return loss

    def card_info(self) -> dict:
        info = super().card_info()
        info["augmentation"] = {"hflip": "none: each latent is tied to its noise"}
        info["reflow"] = {"teacher": self.teacher, "pairs": load_reflow_pairs(self.pairs_path()).card}
        return info


@dataclass
class GuidanceDistillationRecipe(LatentText2ImageRecipe):
    """Distil a text-to-image flow's classifier-free guidance into a student with a guidance input (chapter 7;
    ``course_lib.guidance_distillation``: Meng et al. 2023, stage one; Flux-dev's ``guidance_in``):

        L = || v_S(z_t, t, c, w) - sg[v_T(z_t, t, "") + w (v_T(z_t, t, c) - v_T(z_t, t, ""))] ||^2,  w ~ U[w_range]

    on the teacher's own latents and captions. The student is the teacher's network with a zero-initialised
    guidance embedding; a fresh run starts from the teacher's weights (:meth:`initial_weights`). Each step runs
    the frozen teacher once on [z_t; z_t] (no gradient) beside the student's forward and backward pass.
    """

    teacher: str = "mmdit-small.safetensors"
    w_range: tuple[float, float] = (1.0, 5.0)

    def teacher_path(self) -> Path:
        return config.checkpoint_dir() / self.teacher

    def initial_weights(self) -> Path | None:
        """The teacher's weights: every tensor but the new guidance embedding's."""
        return self.teacher_path()

    def frozen_teacher(self) -> Callable[[torch.device], torch.nn.Module]:
        """``teacher(device)``: the teacher, loaded on the first call (on the batch's device) and never trained."""
        path, loaded = self.teacher_path(), {}

        def teacher(device: torch.device) -> torch.nn.Module:
            if "model" not in loaded:
                model, _ = model_from_checkpoint(path, device=device)
                loaded["model"] = model.eval().requires_grad_(False)
            return loaded["model"]

        return teacher

    def loss_fn(self) -> Callable:
        process, w_range, teacher = self.process, self.w_range, self.frozen_teacher()

        def loss(model, batch):
            latents, labels = batch
            return guidance_distillation_loss(model, teacher(latents.device), process, latents, labels, w_range,
                                              model.config.p_uncond)

        return loss

    def card_info(self) -> dict:
        card = read_card(self.teacher_path())
        return {**super().card_info(),
                "guidance_distillation": {"teacher": self.teacher, "teacher_sha256": card["sha256"],
                                          "w_range": list(self.w_range),
                                          "target": "v_T(z_t, t, '') + w (v_T(z_t, t, c) - v_T(z_t, t, '')), no gradient "
                                                    "(course_lib.guidance_distillation)"}}


@dataclass
class MeanFlowRecipe(GuidanceDistillationRecipe):
    """MeanFlow distilled from a text-to-image flow (chapter 7; ``course_lib.meanflow``, Geng et al. 2025): the
    student reads the interval t - r besides t and learns the average velocity of its teacher's guided ODE at
    ``guidance`` w, so that one step z_0 = z_1 - u(z_1, 0, 1) stands for the whole ODE. It starts from the teacher's
    weights with a zero interval embedding: at step 0, u(z, r, t) = v_T(z, t | c) for every r. Each step: the
    teacher once on [z_t; z_t], the student's forward pass with tangents (the JVP) and its backward pass."""

    guidance: float = 3.0

    def loss_fn(self) -> Callable:
        process, guidance, teacher = self.process, self.guidance, self.frozen_teacher()

        def loss(model, batch):
            latents, labels = batch
            return meanflow_distillation_loss(model, teacher(latents.device), process, latents, labels, guidance,
                                              model.config.p_uncond)

        return loss

    def card_info(self) -> dict:
        card = read_card(self.teacher_path())
        info = {k: v for k, v in super().card_info().items() if k != "guidance_distillation"}
        return {**info, "meanflow": {"teacher": self.teacher, "teacher_sha256": card["sha256"], "guidance": self.guidance,
                                     "target": "u_tgt = v - (t - r) d/dt u, v the teacher's guided velocity "
                                               "(course_lib.meanflow.meanflow_distillation_loss)"}}


@dataclass
class AutoencoderRecipe(Recipe):
    """Train chapter 4's KL autoencoder (:class:`~course_lib.autoencoder.AutoencoderKL`; Rombach et al. 2022)
    on flipped CIFAR-10 images with :func:`~course_lib.autoencoder.autoencoder_loss`: squared reconstruction
    error plus ``kl_weight`` times the KL of the posterior to N(0, I).

    ``export(state, path)`` writes the EMA weights with the latent scaling factor (1 / std of posterior
    samples, :func:`~course_lib.autoencoder.latent_scaling_factor`) measured on ``scaling_images`` training
    images in a fixed shuffle (500 in fast mode) and stored in the model's ``scaling_factor`` buffer, and the
    card's metrics: that factor and the PSNR of the deterministic reconstructions of the test split of the
    same data source (10,000 images for the full CIFAR-10, 500 for the bundled sample).
    """

    name: str
    description: str
    model_config: Callable[[], AutoencoderConfig]
    train_config: Callable[[], TrainConfig]
    kl_weight: float = 1e-3
    hflip: bool = True
    scaling_images: int = 5000

    def loss_fn(self) -> Callable:
        kl_weight = self.kl_weight

        def loss(model, batch):
            images, _labels = batch
            return autoencoder_loss(model, images, kl_weight)

        return loss

    def card_info(self) -> dict:
        return {"recipe": self.name, "task": "autoencoder", "kl_weight": self.kl_weight,
                "loss": "mean squared reconstruction error + kl_weight * KL(q(z|x) || N(0, I)) / (C*H*W) "
                        "(course_lib.autoencoder.autoencoder_loss)",
                "augmentation": {"hflip": self.hflip}}

    def metrics(self, model: AutoencoderKL) -> dict:
        test = load_cifar10("test", verbose=False)
        per_image = reconstruction_psnr(model, test.images)  # [N] dB
        return {"test_psnr": round(per_image.mean().item(), 3),
                "test_psnr_std_error": round(per_image.std().item() / len(per_image) ** 0.5, 3),
                "test_psnr_reconstruction": "decode(mode(q(z|x))) clamped to [-1, 1]; mean of per-image PSNR",
                "test_images": len(test), "test_source": test.source}

    def export(self, state: str | Path, path: str | Path) -> Path:
        """Write the inference checkpoint: EMA weights, the latent scaling factor, test PSNR in the card."""
        ckpt = load_checkpoint(state)
        model = AutoencoderKL(AutoencoderConfig.from_dict(ckpt.card["model_config"]))
        load_checkpoint(state, model, weights="ema")
        model.eval()
        train = load_cifar10("train", verbose=False)  # no flips: the statistics of the plain images
        order = fixed_shuffle(len(train), config.pick(min(500, self.scaling_images), self.scaling_images))
        factor = latent_scaling_factor(model, train.images[order], seed=0)
        model.set_scaling_factor(factor)
        training = {**ckpt.card.get("training", {}), "exported_from": Path(state).name, "exported_weights": "ema",
                    "latent_scaling": {"images": len(order), "source": train.source, "split": "train",
                                       "augmentation": None, "latents": "posterior samples", "seed": 0}}
        metrics = {**ckpt.card.get("metrics", {}), "scaling_factor": round(factor, 6), **self.metrics(model)}
        train_tensors = {k: v for k, v in ckpt.train.items() if k == "loss_history"}
        return save_checkpoint(path, model, step=ckpt.step, kind="inference", train_tensors=train_tensors,
                               metrics=metrics, training=training)


RECIPES: dict[str, Recipe] = {
    r.name: r for r in [
        DenoiserRecipe(
            "ddpm-tiny", "chapter 1: the tiny UNet (0.29M), for fast mode and tests",
            UNetConfig.tiny,
            TrainConfig.tiny),
        DenoiserRecipe(
            "ddpm-small", "chapter 1: the paper's UNet at quarter width (2.25M), trains on a CPU",
            UNetConfig.small,
            lambda: TrainConfig.small(bf16=True, channels_last=True)),
        DenoiserRecipe(
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
            TrainConfig.tiny),
        Text2ImageRecipe(
            "cond-small", "chapter 3: ddpm-small with AdaGN + cross-attention, and a small text encoder (3.31M)",
            Text2ImageConfig.small,
            lambda: TrainConfig.small(bf16=True, channels_last=True)),
        Text2ImageRecipe(
            "cond-small-minilm", "chapter 3: cond-small's UNet reading the frozen MiniLM (3.10M trained; "
            "needs the text extra)",
            Text2ImageConfig.small_minilm,
            lambda: TrainConfig.small(bf16=True, channels_last=True)),
        LatentText2ImageRecipe(
            "ldm-tiny", "chapter 4: the tiny text-conditional UNet on vae-small's 4x8x8 latents (0.41M), for tests",
            Text2ImageConfig.latent_tiny,
            TrainConfig.tiny),
        LatentText2ImageRecipe(
            "ldm-small", "chapter 4: cond-small's recipe on vae-small's 4x8x8 latents, a wider UNet (9.14M)",
            Text2ImageConfig.latent_small,
            # float32: for this model bf16 autocast was slower than float32 on one AMX thread (measured 122 vs 129 img/s)
            TrainConfig.small),
        LatentText2ImageRecipe(
            "rf-tiny", "chapter 5: ldm-tiny trained as a rectified flow (velocity target, logit-normal t), for tests",
            Text2ImageConfig.latent_tiny,
            TrainConfig.tiny,
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        LatentText2ImageRecipe(
            "rf-small", "chapter 5: ldm-small's model and latents trained as a rectified flow (SD3's objective: "
            "velocity target, logit-normal t)",
            Text2ImageConfig.latent_small,
            TrainConfig.small,
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        # SD3's time sampling, measured (Esser et al. 2024, Sec. 3.1 and 5.1): rf-small's recipe with t ~ U[0, 1],
        # trained for the same steps as a fresh rf-small run beside it
        LatentText2ImageRecipe(
            "rf-uniform", "chapter 5's time-sampling ablation: rf-small with uniform t (Liu et al.) instead of "
            "logit-normal t",
            Text2ImageConfig.latent_small,
            TrainConfig.small,
            process=RectifiedFlowProcess(time_sampling="uniform")),
        ReflowRecipe(
            "rf2-tiny", "chapter 5: reflow of rf-tiny on its own pairs, for tests",
            Text2ImageConfig.latent_tiny,
            TrainConfig.tiny,
            process=RectifiedFlowProcess(), teacher="rf-tiny.safetensors", pairs=PairSettings(num_pairs=64, steps=4)),
        ReflowRecipe(
            "rf2-small", "chapter 5: 2-rectified flow: rf-small's model trained on 50,000 of its own guided pairs (uniform t)",
            Text2ImageConfig.latent_small,
            TrainConfig.small,
            process=RectifiedFlowProcess()),
        LatentText2ImageRecipe(
            "rf-small-minilm", "chapter 6's UNet baseline: rf-small reading the frozen MiniLM, as mmdit-small does",
            Text2ImageConfig.latent_small_minilm,
            TrainConfig.small,
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        LatentText2ImageRecipe(
            "mmdit-tiny", "chapter 6: a tiny MM-DiT as a rectified flow on latents, for tests and fast mode",
            Text2ImageConfig.latent_mmdit_tiny,
            TrainConfig.tiny,
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        LatentText2ImageRecipe(
            "mmdit-small", "chapter 6: the MM-DiT of SD3 / Flux (2 double + 4 single blocks, 256 wide) as a "
            "rectified flow on vae-small's latents, reading the frozen MiniLM",
            Text2ImageConfig.latent_mmdit_small,
            # bf16 autocast: 105 vs 75 training img/s in float32 on one AMX thread (benchmarks/bench_mmdit.py)
            lambda: TrainConfig.small(lr=3e-4, bf16=True),
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        # DiT's conditioning ablation (Peebles & Xie 2023, Fig. 5) with a caption (chapter 6): three DiT variants and
        # the MM-DiT, mmdit-small's width, heads, optimiser and data, parameters matched within 10 % by depth; each
        # run for 50 CPU-minutes (python -m course_lib.train dit-adaln-zero --minutes 50 --threads 1)
        *[LatentText2ImageRecipe(
            f"dit-{conditioning.replace('_', '-')}", f"chapter 6's conditioning ablation: a DiT with {what}",
            functools.partial(Text2ImageConfig.latent_dit_small, conditioning),
            lambda: TrainConfig.small(lr=3e-4, bf16=True),
            process=RectifiedFlowProcess(time_sampling="logit_normal"))
          for conditioning, what in (("in_context", "time and caption tokens in its sequence (in-context)"),
                                     ("cross_attention", "cross-attention to the caption, adaLN-Zero time (PixArt)"),
                                     ("adaln_zero", "time and pooled caption through adaLN-Zero (DiT)"))],
        LatentText2ImageRecipe(
            "dit-joint", "chapter 6's conditioning ablation: joint attention, mmdit-small's model and recipe anew",
            Text2ImageConfig.latent_mmdit_small,
            lambda: TrainConfig.small(lr=3e-4, bf16=True),
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        # chapter 7: mmdit-small's guidance distilled into a guidance input (one pass a step at any w)
        GuidanceDistillationRecipe(
            "mmdit-gd-tiny", "chapter 7: mmdit-tiny's guidance distilled, for tests and fast mode",
            functools.partial(Text2ImageConfig.latent_mmdit_tiny, guidance_embed=True), TrainConfig.tiny,
            process=RectifiedFlowProcess(time_sampling="logit_normal"), teacher="mmdit-tiny.safetensors"),
        GuidanceDistillationRecipe(
            "mmdit-gd", "chapter 7: mmdit-small's classifier-free guidance distilled into Flux-dev's guidance input",
            functools.partial(Text2ImageConfig.latent_mmdit_small, guidance_embed=True),
            lambda: TrainConfig.small(lr=1e-4, warmup_steps=200, bf16=True),
            process=RectifiedFlowProcess(time_sampling="logit_normal")),
        # chapter 7: one step by MeanFlow, distilled from mmdit-small's guided ODE at w = 3
        MeanFlowRecipe(
            "mmdit-meanflow-tiny", "chapter 7: MeanFlow from mmdit-tiny, for tests and fast mode",
            functools.partial(Text2ImageConfig.latent_mmdit_tiny, interval_embed=True), TrainConfig.tiny,
            process=MeanFlowProcess(time_sampling="logit_normal"), teacher="mmdit-tiny.safetensors"),
        MeanFlowRecipe(
            "mmdit-meanflow", "chapter 7: MeanFlow distilled from mmdit-small's guided ODE (w = 3): one step",
            functools.partial(Text2ImageConfig.latent_mmdit_small, interval_embed=True),
            lambda: TrainConfig.small(lr=1e-4, warmup_steps=200, bf16=True),
            process=MeanFlowProcess(time_sampling="logit_normal")),
        # QK-norm, shown (chapter 6): mmdit-small's recipe at 10x its learning rate with a short warm-up, with and
        # without QK-norm, its attention's largest logit and entropy recorded every 25 steps (TrainConfig.monitor_every)
        *[LatentText2ImageRecipe(
            f"mmdit-{name}-hot", f"chapter 6's QK-norm experiment: mmdit-small {what}, trained at lr 3e-3 (10x)",
            functools.partial(Text2ImageConfig.latent_mmdit_small, qk_norm=on),
            lambda: TrainConfig.small(lr=3e-3, warmup_steps=100, bf16=True, monitor_every=25, checkpoint_every=250),
            process=RectifiedFlowProcess(time_sampling="logit_normal"))
          for name, what, on in (("qknorm", "with QK-norm", True), ("noqknorm", "without QK-norm", False))],
        AutoencoderRecipe(
            "vae-tiny", "chapter 4: the tiny KL autoencoder (0.24M), 32x32 -> 4x8x8, for fast mode and tests",
            AutoencoderConfig.tiny,
            TrainConfig.tiny),
        AutoencoderRecipe(
            "vae-small", "chapter 4: the KL autoencoder of latent diffusion (1.70M), 32x32 -> 4x8x8, trains on a CPU",
            AutoencoderConfig.small,
            # channels_last off: measured 5-25% slower with bf16 for this model on one thread (GroupNorm-heavy)
            lambda: TrainConfig.small(lr=5e-4, warmup_steps=500, ema_decay=0.999, bf16=True, channels_last=False)),
        # SD3's channel lesson (Esser et al. 2024, Sec. 5.2.1), measured: vae-small's widths and training in LDM's
        # layout with 4, 8 or 16 latent channels, and one latent model on the 4- and on the 16-channel latents
        *[AutoencoderRecipe(
            f"vae-c{c}", f"chapter 4's channel sweep: vae-small's widths in LDM's layout, 32x32 -> {c}x8x8",
            functools.partial(AutoencoderConfig.small, latent_channels=c, **LDM_LAYOUT),
            lambda: TrainConfig.small(lr=5e-4, warmup_steps=500, ema_decay=0.999, bf16=True, channels_last=False))
          for c in (4, 8, 16)],
        *[LatentText2ImageRecipe(
            f"ldm-c{c}", f"chapter 4's channel sweep: ldm-small's model on vae-c{c}'s {c}x8x8 latents",
            functools.partial(Text2ImageConfig.latent_small, latent_channels=c), TrainConfig.small,
            autoencoder=f"vae-c{c}.safetensors")
          for c in (4, 16)],
        # the shift's effect (SD3 and Flux subtract the latents' mean before scaling): two equal short runs of
        # ldm-small's model, on vae-small's latents as they are and on a shifted copy (tools/shift_autoencoder.py)
        LatentText2ImageRecipe(
            "ldm-noshift", "chapter 4's shift ablation: ldm-small's recipe on vae-small's scaled latents (shift 0)",
            Text2ImageConfig.latent_small, TrainConfig.small),
        LatentText2ImageRecipe(
            "ldm-shift", "chapter 4's shift ablation: ldm-small's recipe on (z - mean) * scale (SD3's shift)",
            Text2ImageConfig.latent_small, TrainConfig.small, autoencoder="vae-small-shift.safetensors"),
    ]
}

