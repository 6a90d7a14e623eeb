"""A sharper decoder for a trained autoencoder: the adversarial decoder fine-tune, encoder frozen.

An autoencoder trained with a pixel loss alone (``course_lib.autoencoder.autoencoder_loss``: squared
error) decodes each latent to the *mean* of the images that could have produced it, and a mean of
plausible textures is a blur. Latent diffusion's first stage fixes this with two more losses (Esser
et al. 2021, "Taming Transformers for High-Resolution Image Synthesis", Sec. 3.1; Rombach et al.
2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.1 and App. G): a
perceptual loss (LPIPS) and a patch-based adversarial loss. The second is what this module trains.

Only the decoding path (``post_quant_conv`` and ``decoder``) learns; the encoder, ``quant_conv`` and
the latent ``scaling_factor`` stay bit-identical. The latents therefore do not change, and every
latent diffusion model trained on them keeps its weights: it simply decodes through a better decoder.
Stable Diffusion's improved decoders (``sd-vae-ft-ema`` and ``sd-vae-ft-mse``) were fine-tuned decoder-only
with the encoder frozen too; their model card gives L1 + LPIPS, then MSE + 0.1 LPIPS, and names no
discriminator.

The pieces, each with the paper it comes from:

* :class:`NLayerDiscriminator`, the PatchGAN of pix2pix (Isola et al. 2017, "Image-to-Image
  Translation with Conditional Adversarial Networks", Sec. 3.2.2): a small convolutional network
  that scores every overlapping patch of an image as real or reconstructed, so it judges texture,
  not layout (the pixel loss already takes care of layout).
* :func:`hinge_d_loss` and :func:`hinge_g_loss`, the hinge form of the adversarial loss (Lim & Ye 2017,
  "Geometric GAN"; Miyato et al. 2018, "Spectral Normalization for GANs"), as taming and LDM use it.
* :func:`feature_matching_loss`: the L1 distance between the discriminator's features of an image and
  of its reconstruction (pix2pixHD: Wang et al. 2018, "High-Resolution Image Synthesis and Semantic
  Manipulation with Conditional GANs", Sec. 3.2). A perceptual loss whose "perception" is learnt by
  the discriminator, here in place of LPIPS, whose VGG weights would have to be downloaded.
* :func:`adaptive_weight`, taming's balance of the two gradients at the decoder's last layer
  (Esser et al. 2021, Eq. 7, as their code computes it), and :func:`decoder_loss`, the decoder's whole
  objective.
* :func:`finetune`, a resumable training loop, :func:`export`, which writes a complete
  ``AutoencoderKL`` checkpoint, and the command line::

    python -m course_lib.adversarial data/checkpoints/vae-small.safetensors --minutes 150 --threads 1 \\
        --state data/runs/decoder/run/state.safetensors --export data/runs/decoder/run/vae-small-gan.safetensors

Each step takes a batch of pairs (z, x): z ~ q(z|x) drawn from the frozen encoder's cached posterior
moments (``course_lib.latents``; samples, not means, because samples are what a latent diffusion model
generates), x the image, and makes one decoder update then one discriminator update on the same batch,
as taming and LDM do (their ``optimizer_idx`` 0 and 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import config
from .autoencoder import AutoencoderConfig, AutoencoderKL, psnr
from .checkpoint import load_checkpoint, read_card, save_checkpoint
from .data import StepBatches, load_cifar10
from .latents import LatentSplit, cached_latents
from .trainer import update_ema

__all__ = [
    "NLayerDiscriminator",
    "hinge_d_loss",
    "hinge_g_loss",
    "feature_matching_loss",
    "adaptive_weight",
    "decoder_loss",
    "FinetuneConfig",
    "DecoderFinetune",
    "DecoderPairs",
    "load_autoencoder",
    "finetune",
    "export",
    "main",
]


# --------------------------------------------------------------------------- the discriminator


class NLayerDiscriminator(nn.Module):
    """pix2pix's PatchGAN discriminator (Isola et al. 2017; taming's ``NLayerDiscriminator``, from the
    CycleGAN/pix2pix code): image [B, C, H, W] -> one logit per patch [B, 1, H', W'].

    ``num_layers`` stride-2 4x4 convolutions (the first without normalisation), one stride-1 4x4
    convolution, each followed by BatchNorm and LeakyReLU(0.2), then a stride-1 4x4 convolution to one
    channel. Channels: channels, 2 channels, 4 channels, ... (capped at 8 channels). For a 32x32 image:

        num_layers=1: [B, 3, 32, 32] -> [B, c, 16, 16] -> [B, 2c, 15, 15] -> logits [B, 1, 14, 14]   (16x16 patches)
        num_layers=2: -> [B, c, 16, 16] -> [B, 2c, 8, 8] -> [B, 4c, 7, 7] -> logits [B, 1, 6, 6]      (34x34 patches)
        num_layers=3: -> 16, 8, 4 -> [B, 8c, 3, 3] -> logits [B, 1, 2, 2]                             (70x70 patches)

    A logit's receptive field (the patch it judges) is 16, 34, 70 pixels for 1, 2, 3 layers: at 32x32,
    two or more layers see the whole image, with the image's borders zero-padded. Weights start as in
    pix2pix: convolutions N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0.

    ``norm="spectral"`` replaces the BatchNorms by spectral normalisation of every convolution (Miyato et
    al. 2018: each weight divided by its largest singular value, estimated by one power iteration per
    step), which bounds how fast the logit can change with the image: the decoder then follows a smooth
    gradient instead of one that, like an adversarial example's, is mostly pixel noise.

    ``forward(x, return_features=True)`` also returns the activations after every LeakyReLU (for
    :func:`feature_matching_loss`).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ValueError(f"num_layers and channels must be >= 1, got {num_layers} and {channels}")
        if norm not in ("batch", "spectral"):
            raise ValueError(f"norm must be 'batch' (pix2pix) or 'spectral' (Miyato et al. 2018), got {norm!r}")
        batch = norm == "batch"
        layers = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2))]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < num_layers else 1  # the last of these keeps the resolution
            layers.append(nn.Sequential(
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=not batch),
                nn.BatchNorm2d(channels * mult) if batch else nn.Identity(), nn.LeakyReLU(0.2)))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
        if not batch:
            for m in list(self.modules()):
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = []
        h = x  # [B, C, H, W]
        for layer in self.layers:
            h = layer(h)  # [B, c_k, H_k, W_k]
            features.append(h)
        logits = self.head(h)  # [B, 1, H', W']
        return (logits, features) if return_features else logits


# --------------------------------------------------------------------------- the losses


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017; Miyato et al. 2018), as taming writes it:

        L_D = 1/2 ( E_x[ max(0, 1 - D(x)) ] + E_x[ max(0, 1 + D(x_hat)) ] ),

    the mean over every patch logit. It is 1 at chance (all logits 0) and 0 once every real patch scores
    >= 1 and every reconstructed one <= -1: past that margin a patch no longer pushes the discriminator.
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's (here: the decoder's) side of the hinge GAN: L_G = -E[D(x_hat)], every patch logit."""
    return -logits_fake.mean()


def feature_matching_loss(features_real: list[torch.Tensor], features_fake: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature matching (Wang et al. 2018, Eq. 4), averaged over the K layers (Eq. 4 sums over
    them, and its k counts discriminators at several scales, not layers):

        L_FM = 1/K sum_k mean | D_k(x) - D_k(x_hat) |,

    D_k the discriminator's activations after layer k. The real image's features are targets
    (computed without gradient); the loss pulls the reconstruction's features towards them, which asks
    for the same local statistics (edges, textures) that the discriminator has learnt to look at.
    """
    if len(features_real) != len(features_fake) or not features_real:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(features_real)} and "
                         f"{len(features_fake)}")
    return sum((r.detach().float() - f.float()).abs().mean()
               for r, f in zip(features_real, features_fake)) / len(features_real)


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """Taming's adaptive weight of the adversarial loss (Esser et al. 2021, Eq. 7, as their code computes it:
    the paper writes the gradients without norms, with delta = 1e-6 and no clamp):

        lambda = || grad_{w_L} L_rec || / ( || grad_{w_L} L_G || + 1e-4 ),   clamped to [0, max_weight],

    w_L the weights of the decoder's last layer (``decoder.conv_out.weight``), L_rec the reconstruction
    (and perceptual) loss, L_G the adversarial one. Multiplying L_G by lambda makes both losses push
    the last layer equally hard, whatever their scales, so the GAN term can neither drown the
    reconstruction nor be drowned by it; a further constant (LDM's ``disc_weight``) sets the ratio.
    The weight is a number, not part of the graph (detached). In LDM's code: ``calculate_adaptive_weight``
    of ``LPIPSWithDiscriminator`` in ``ldm/modules/losses/contperceptual.py`` (taming's
    ``VQLPIPSWithDiscriminator`` in ``taming/modules/losses/vqperceptual.py``), with max_weight 1e4.
    """
    (grad_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (grad_rec.norm() / (grad_g.norm() + eps)).clamp(0.0, max_weight).detach()


def decoder_loss(images: torch.Tensor, recon: torch.Tensor, discriminator: NLayerDiscriminator | None,
                 last_layer: torch.Tensor, *, disc_weight: float = 0.5, feature_weight: float = 0.0,
                 max_weight: float = 1e4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoder's objective (LDM's ``LPIPSWithDiscriminator`` at ``optimizer_idx`` 0, with the
    discriminator's feature matching where LDM has LPIPS):

        L_rec = mean |x - x_hat| + feature_weight * L_FM(x, x_hat)
        L     = L_rec + disc_weight * lambda * L_G(x_hat),   lambda = adaptive_weight(L_rec, L_G, w_L)

    images, recon: [B, C, H, W]. ``discriminator=None`` (before the adversarial start): L = mean |x - x_hat|.
    Returns the loss and its terms (detached): "l1", "feature", "g", "lambda".
    """
    l1 = (images.float() - recon.float()).abs().mean()  # L1 per image number
    zero = torch.zeros((), device=images.device)
    if discriminator is None:
        return l1, {"l1": l1.detach(), "feature": zero, "g": zero, "lambda": zero}
    if feature_weight > 0:
        logits_fake, features_fake = discriminator(recon, return_features=True)  # [B, 1, h, w], K maps
        with torch.no_grad():
            _, features_real = discriminator(images, return_features=True)
        feature = feature_matching_loss(features_real, features_fake)
    else:
        logits_fake, feature = discriminator(recon), zero
    rec = l1 + feature_weight * feature
    g = hinge_g_loss(logits_fake.float())
    lam = adaptive_weight(rec, g, last_layer, max_weight) if disc_weight > 0 else zero
    loss = rec + disc_weight * lam * g
    return loss, {"l1": l1.detach(), "feature": feature.detach(), "g": g.detach(), "lambda": lam}


# --------------------------------------------------------------------------- what is trained


@dataclass
class FinetuneConfig:
    """Everything that defines a decoder fine-tune (stored in the training state's card; a resumed run must
    use the same, except the fields in :data:`RESUME_CHANGES`). ``dataclasses.asdict`` is JSON-serialisable.
    The defaults are the settings measured best for vae-small on one CPU thread (the module's docstring has
    the measurements); LDM's values in brackets.

    autoencoder:      the config of the autoencoder being made: the source's, with the decoder's width and
                      depth (``decoder_base_channels``, ``decoder_num_res_blocks``) possibly changed
    disc_channels:    the discriminator's first-layer channels (pix2pix's ``ndf``) [64]
    disc_layers:      its stride-2 layers (pix2pix's ``n_layers``) [3]
    disc_norm:        "spectral" (Miyato et al. 2018) or "batch" (pix2pix, taming) ["batch"]
    disc_start:       the step from which the decoder sees the adversarial loss [LDM's ``disc_start``, 50001 for
                      an autoencoder trained from scratch]; the discriminator itself learns from step 0, so it
                      is no longer at chance by then (LDM's learns only from ``disc_start``: its loss is
                      multiplied by the same switch)
    disc_ramp_steps:  the adversarial and feature-matching terms then rise linearly from 0 to their weights over
                      this many steps [0: LDM switches them on at once; measured here, Adam's second moments,
                      fitted to the small gradients of a converged decoder, turn that switch into a jolt that
                      costs 1.8 dB of validation PSNR within 5 steps]
    disc_weight:      the constant in front of lambda * L_G [``disc_weight``, 0.5]
    feature_weight:   the weight of the discriminator feature matching inside L_rec [none: LDM has LPIPS, weight 1]
    max_weight:       lambda's upper clamp [1e4]
    lr, disc_lr:      Adam learning rates of the decoding path and of the discriminator [the same for both]
    warmup_steps:     both rise linearly from 0 over this many steps (Adam's first steps move every weight by
                      about lr whatever its gradient: a jolt a trained decoder is better spared)
    betas:            Adam's betas [(0.5, 0.9)]
    batch_size:       pairs per step
    ema_decay:        decay of the exponential moving average of the decoding path's weights
    seed:             seeds the discriminator's initialisation, the batches and the posterior samples
    """

    autoencoder: AutoencoderConfig
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "spectral"
    disc_start: int = 300
    disc_ramp_steps: int = 500
    disc_weight: float = 0.5
    feature_weight: float = 1.0
    max_weight: float = 1e4
    lr: float = 5e-5
    disc_lr: float = 2e-4
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderConfig.from_dict(self.autoencoder)
        self.betas = tuple(float(b) for b in self.betas)
        if min(self.disc_start, self.disc_ramp_steps, self.warmup_steps) < 0 or self.batch_size < 1:
            raise ValueError(f"need disc_start, disc_ramp_steps, warmup_steps >= 0 and batch_size >= 1, got "
                             f"{self.disc_start}, {self.disc_ramp_steps}, {self.warmup_steps}, {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.disc_weight, self.feature_weight, self.lr, self.disc_lr) < 0:
            raise ValueError("disc_weight, feature_weight, lr and disc_lr must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        """Inverse of ``dataclasses.asdict`` (the nested autoencoder config included)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FinetuneConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


#: what a resumed run may change: its learning rates and EMA decay (lowering them after the best point is the
#: usual cure for a GAN's wandering generator). Each change is recorded in the state's card, ``training.changes``.
RESUME_CHANGES = ("lr", "disc_lr", "ema_decay")


class DecoderFinetune(nn.Module):
    """The training state of a decoder fine-tune, as one module (so that one checkpoint holds it):

    autoencoder:    the AutoencoderKL being trained: encoder, quant_conv and scaling_factor frozen
                    (``requires_grad`` off), post_quant_conv and decoder learning
    ema:            a copy of it whose decoding path is the exponential moving average (what is exported)
    discriminator:  the :class:`NLayerDiscriminator`
    """

    def __init__(self, config: FinetuneConfig):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):  # fresh weights are part of the run: seeded, the caller's RNG untouched
            torch.manual_seed(config.seed)
            self.autoencoder = AutoencoderKL(config.autoencoder)
            self.ema = AutoencoderKL(config.autoencoder)
            self.discriminator = NLayerDiscriminator(config.autoencoder.in_channels, config.disc_channels,
                                                     config.disc_layers, config.disc_norm)
        self.autoencoder.requires_grad_(False)
        self.ema.requires_grad_(False)
        for p in self.decoding_parameters():
            p.requires_grad_(True)

    def decoding_parameters(self) -> list[nn.Parameter]:
        """What learns: post_quant_conv and the decoder (everything between a latent and its image)."""
        return [*self.autoencoder.post_quant_conv.parameters(), *self.autoencoder.decoder.parameters()]

    @torch.no_grad()
    def update_ema(self) -> None:
        """theta_ema <- decay theta_ema + (1 - decay) theta, for the decoding path only (the encoder is never
        averaged: averaging a number with itself may round it, and it must stay bit-identical)."""
        for name in ("post_quant_conv", "decoder"):
            update_ema(getattr(self.ema, name), getattr(self.autoencoder, name), self.config.ema_decay)


class DecoderPairs:
    """(scaled latent sample, image) pairs, :class:`~course_lib.data.StepBatches`-able.

    ``latents``: cached posterior moments of N images and their mirror images (``cached_latents(...,
    flips=True)``: item i < N is image i, item N + i its mirror); ``images``: the N images [N, C, H, W] in
    [-1, 1]. ``batch(index, generator)`` -> (z_scaled [B, C, h, w], x [B, C, H, W]): a fresh posterior sample
    scaling_factor * z, z ~ q(z|x), drawn from ``generator``, and its image (flipped for items >= N).
    """

    def __init__(self, latents: LatentSplit, images: torch.Tensor):
        if len(latents) != 2 * len(images):
            raise ValueError(f"{len(latents)} cached latents for {len(images)} images: the latents must be encoded "
                             "with flips=True from the same images (2 per image)")
        self.latents, self.images = latents, images

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None):
        z = self.latents.latents(index, generator)  # [B, C, h, w]
        n = len(self.images)
        x = self.images[index % n]  # [B, C, H, W]
        mirrored = (index >= n)[:, None, None, None]  # [B, 1, 1, 1]
        return z, torch.where(mirrored, x.flip(-1), x)


def load_autoencoder(path: str | Path) -> tuple[AutoencoderKL, dict]:
    """The AutoencoderKL of a checkpoint (float32, eval mode) and its card; a clear error for anything else."""
    card = read_card(path)
    if card.get("model_class") != "AutoencoderKL":
        raise ValueError(f"{path} holds a {card.get('model_class')}, not an AutoencoderKL: the decoder fine-tune "
                         "needs an autoencoder checkpoint such as data/checkpoints/vae-small.safetensors")
    model = AutoencoderKL(AutoencoderConfig.from_dict(card["model_config"]))
    load_checkpoint(path, model)
    return model.eval(), card


def _new_decoder_config(source: AutoencoderConfig, decoder_channels: int | None,
                        decoder_res_blocks: int | None) -> AutoencoderConfig:
    """The source's config with the decoder's width and depth replaced where given (None: keep)."""
    changes = {}
    if decoder_channels is not None:
        changes["decoder_base_channels"] = None if decoder_channels == source.base_channels else decoder_channels
    if decoder_res_blocks is not None:
        changes["decoder_num_res_blocks"] = (None if decoder_res_blocks == source.num_res_blocks
                                             else decoder_res_blocks)
    return dataclasses.replace(source, **changes)


def _initialise(model: DecoderFinetune, source: AutoencoderKL) -> dict:
    """Copy the source autoencoder into ``model.autoencoder`` and ``model.ema``: every tensor outside the
    decoder; of the decoder, every tensor whose name and shape match. A decoder of the source's width
    starts as the source's decoder exactly: the ResBlocks a deeper one adds start as the identity (their
    conv2 is zero-initialised), so they change nothing until they learn. Returns a summary for the card."""
    theirs = source.state_dict()
    ours = model.autoencoder.state_dict()
    same = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    outside = [k for k in ours if not k.startswith("decoder.")]
    missing = [k for k in outside if k not in same]
    if missing:
        raise ValueError(f"the source autoencoder does not fit outside the decoder: {missing[:5]}")
    model.autoencoder.load_state_dict(same, strict=False)
    model.ema.load_state_dict(model.autoencoder.state_dict())
    fresh = sorted(k for k in ours if k not in same)
    return {"copied_decoder_tensors": sum(k.startswith("decoder.") for k in same),
            "fresh_decoder_tensors": len(fresh),
            "fresh_decoder_parameters": sum(ours[k].numel() for k in fresh)}


# --------------------------------------------------------------------------- one step


def adversarial_factor(cfg: FinetuneConfig, step: int) -> float:
    """How much of the adversarial and feature-matching terms the decoder sees at ``step``: 0 before
    ``disc_start``, then a linear ramp to 1 over ``disc_ramp_steps`` (a switch when it is 0)."""
    if step < cfg.disc_start:
        return 0.0
    return min(1.0, (step - cfg.disc_start + 1) / cfg.disc_ramp_steps) if cfg.disc_ramp_steps else 1.0


def train_step(model: DecoderFinetune, optimizer: torch.optim.Optimizer, z: torch.Tensor, x: torch.Tensor,
               step: int, bf16: bool = False) -> dict[str, float]:
    """One decoder update, then one discriminator update on the same batch (taming's and LDM's order).

    z: scaled latents [B, C, h, w]; x: their images [B, C, H, W]. ``optimizer`` is one Adam with two
    parameter groups (decoding path, discriminator): each ``step()`` moves only the parameters that have a
    gradient, so the two updates are exactly those of two separate optimizers, kept in one state.
    Returns the step's numbers: l1, feature, g, lambda, d_loss, logits_real, logits_fake.
    """
    cfg = model.config
    ae, disc = model.autoencoder, model.discriminator
    device_type = x.device.type

    # 1. the decoder: L1 (+ feature matching) + disc_weight * lambda * L_G, the last two ramped in
    disc.requires_grad_(False)
    ramp = adversarial_factor(cfg, step)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        recon = ae.decode_latents(z)  # [B, C, H, W]
        loss, terms = decoder_loss(x, recon, disc if ramp > 0 else None, ae.decoder.conv_out.weight,
                                   disc_weight=ramp * cfg.disc_weight, feature_weight=ramp * cfg.feature_weight,
                                   max_weight=cfg.max_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"step {step}: the decoder loss is {loss.item()}")
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    for group, lr in zip(optimizer.param_groups, (cfg.lr, cfg.disc_lr)):
        group["lr"] = warmup * lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    # 2. the discriminator: hinge loss on real images and the (detached) reconstructions, those of the decoder
    #    before this step's update (LDM decodes the batch again for its discriminator step)
    disc.requires_grad_(True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        logits_real = disc(x).float()  # [B, 1, h', w']
        logits_fake = disc(recon.detach()).float()
    d_loss = hinge_d_loss(logits_real, logits_fake)
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.step()
    model.update_ema()
    return {**{k: float(v) for k, v in terms.items()}, "d_loss": d_loss.item(),
            "logits_real": logits_real.mean().item(), "logits_fake": logits_fake.mean().item()}


TERMS = ("l1", "feature", "g", "lambda", "d_loss", "logits_real", "logits_fake")


def make_optimizer(model: DecoderFinetune) -> torch.optim.Adam:
    """One Adam, two parameter groups: the decoding path at ``lr``, the discriminator at ``disc_lr``."""
    cfg = model.config
    return torch.optim.Adam([{"params": model.decoding_parameters(), "lr": cfg.lr},
                             {"params": list(model.discriminator.parameters()), "lr": cfg.disc_lr}],
                            betas=cfg.betas)


# --------------------------------------------------------------------------- the loop


@torch.no_grad()
def _validation_psnr(autoencoder: AutoencoderKL, z_val: torch.Tensor, x_val: torch.Tensor) -> float:
    """Mean PSNR (dB) of decode(mean latents) clamped to [-1, 1] against the images."""
    device = next(autoencoder.parameters()).device
    recon = torch.cat([autoencoder.decode(z.to(device)).clamp(-1, 1).cpu() for z in z_val.split(250)])  # [N, C, H, W]
    return psnr(recon, x_val).mean().item()


def finetune(source: str | Path, state: str | Path, *, settings: dict | None = None, minutes: float | None = None,
             steps: int | None = None, checkpoint_minutes: float = 10.0, bf16: bool | None = None,
             limit: int | None = None, val_images: int = 500, log_every: int = 50,
             command: str | None = None, stop_requested=None, snapshot_steps: int | None = None) -> Path:
    """Fine-tune the decoder of the autoencoder at ``source``; save the resumable state at ``state``.

    A state that exists is resumed (its config is used; ``settings`` that contradict it are an error, except
    the learning rates and EMA decay of :data:`RESUME_CHANGES`, which take effect from the resumed step and are
    recorded in the card's ``training.changes``).
    Otherwise the run starts from the source: ``settings`` are :class:`FinetuneConfig` fields, plus
    ``decoder_channels`` / ``decoder_res_blocks`` for a wider or deeper decoder. The run stops after
    ``minutes`` (of this call) or at step ``steps`` (in all), whichever comes first, and whenever
    ``stop_requested()`` says so; the state is saved every ``checkpoint_minutes`` and at the end.
    ``limit``: train on the first ``limit`` training images only (tests, quick looks). ``snapshot_steps``: also
    keep a copy of the state every this many steps, ``<state>-step<N>.safetensors`` beside it (a GAN's
    generator wanders: the best point is chosen afterwards, on held-out data). Returns ``state``.
    """
    if minutes is None and steps is None:
        raise ValueError("give a budget: minutes, steps, or both")
    state = Path(state)
    settings = dict(settings or {})
    src_model, src_card = load_autoencoder(source)
    device = config.get_device()
    bf16 = config.native_bf16(device) if bf16 is None else bf16

    if state.exists():
        card = read_card(state)
        cfg = FinetuneConfig.from_dict(card["model_config"])
        if card["training"].get("source_sha256") != src_card["sha256"]:
            raise ValueError(f"{state} fine-tunes another autoencoder than {source} (source sha256 differs)")
        asked = _settings_config(src_model.config, settings, base=cfg)
        changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(asked, f.name)]
        fixed = [name for name in changed if name not in RESUME_CHANGES]
        if fixed:
            diffs = [f"{name}: state {getattr(cfg, name)!r} vs asked {getattr(asked, name)!r}" for name in fixed]
            raise ValueError(f"{state} was trained with other settings ({'; '.join(diffs)}): resume it without "
                             f"them, or start a new state (a resumed run may change only {', '.join(RESUME_CHANGES)})")
        model = DecoderFinetune(cfg)
        optimizer = make_optimizer(model)
        ckpt = load_checkpoint(state, model, optimizer=optimizer)
        step, training = ckpt.step, dict(card["training"])
        if changed:  # the optimizer's groups take cfg's rates at every step (train_step), the EMA its decay
            training["changes"] = [*training.get("changes", []),
                                   {"step": step, **{name: getattr(asked, name) for name in changed}}]
            cfg = model.config = asked
            print(f"resumed with {training['changes'][-1]}")
        history = ckpt.train.get("history", torch.zeros(0, len(TERMS))).tolist()
        print(f"resuming {state} at step {step}")
    else:
        cfg = _settings_config(src_model.config, settings)
        model = DecoderFinetune(cfg)
        init = _initialise(model, src_model)
        optimizer = make_optimizer(model)
        step, history = 0, []
        training = {"source": config.portable_path(source), "source_sha256": src_card["sha256"],
                    "source_step": src_card.get("step"), "initialisation": init, "wall_seconds_total": 0.0,
                    "commands": []}
        print(f"new fine-tune of {source}: {init}")
    model.to(device).train()
    model.autoencoder.encoder.eval()  # frozen (and it has no dropout or batch statistics anyway)
    if command:
        training["commands"] = [*training.get("commands", []), command]

    # data: cached posterior moments of the training images (and their mirror images), the images
    images = load_cifar10("train", limit=limit, verbose=False)
    latents = cached_latents(source, "train", flips=True, limit=limit, progress=False)
    batches = StepBatches(DecoderPairs(latents, images.images), cfg.batch_size, seed=cfg.seed)
    test = load_cifar10("test", limit=val_images, verbose=False) if val_images else None
    z_val = (src_model.encode(test.images).mode() if test is not None else None)  # [N, C, h, w]

    stop_requested = stop_requested or (lambda: False)
    start = last_save = time.perf_counter()
    first_step, seconds_before = step, training.get("wall_seconds_total", 0.0)

    def save(reason: str) -> None:
        elapsed = time.perf_counter() - start
        info = {**training, "wall_seconds_total": round(seconds_before + elapsed, 1),
                "hardware": config.hardware_description(device), "precision": "bf16 autocast" if bf16 else "float32",
                "data": images.source, "data_images": len(images), "latents": latents.source,
                "saved_because": reason}
        metrics = {}
        if history:
            tail = torch.tensor(history[-200:]).mean(0).tolist()
            metrics = {f"{k}_last_200": round(v, 5) for k, v in zip(TERMS, tail)}
        if z_val is not None:
            metrics["val_psnr"] = round(_validation_psnr(model.autoencoder.eval(), z_val, test.images), 3)
            metrics["val_psnr_ema"] = round(_validation_psnr(model.ema.eval(), z_val, test.images), 3)
            metrics["val_images"] = len(test)
            model.autoencoder.train()
            model.autoencoder.encoder.eval()
        save_checkpoint(state, model, step=step, optimizer=optimizer, metrics=metrics, training=info,
                        train_tensors={"history": torch.tensor(history, dtype=torch.float32).reshape(-1, len(TERMS))})
        print(f"step {step}: saved {state} ({reason}); {metrics}", flush=True)

    reason = "steps"
    try:
        while steps is None or step < steps:
            if minutes is not None and time.perf_counter() - start >= 60 * minutes:
                reason = "time"
                break
            if stop_requested():
                reason = "interrupt"
                break
            z, x = batches(step)
            out = train_step(model, optimizer, z.to(device), x.to(device), step, bf16)
            history.append([out[k] for k in TERMS])
            step += 1
            if log_every and step % log_every == 0:
                done = step - first_step
                rate = done * cfg.batch_size / (time.perf_counter() - start)
                tail = torch.tensor(history[-log_every:]).mean(0).tolist()
                print(f"step {step} ({rate:.1f} img/s): " + ", ".join(f"{k} {v:.4f}" for k, v in zip(TERMS, tail)),
                      flush=True)
            if snapshot_steps and step % snapshot_steps == 0:
                save("snapshot")
                shutil.copyfile(state, state.with_name(f"{state.stem}-step{step}.safetensors"))
                last_save = time.perf_counter()
            elif time.perf_counter() - last_save >= 60 * checkpoint_minutes:
                save("periodic")
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        reason = "interrupt"
    save(f"end ({reason})")
    return state


def _settings_config(source: AutoencoderConfig, settings: dict, base: FinetuneConfig | None = None) -> FinetuneConfig:
    """A FinetuneConfig from the source's autoencoder config and the settings given (on top of ``base``)."""
    settings = dict(settings)
    channels, res_blocks = settings.pop("decoder_channels", None), settings.pop("decoder_res_blocks", None)
    ae = base.autoencoder if base is not None else source
    if channels is not None or res_blocks is not None:
        ae = _new_decoder_config(source, channels if channels is not None else ae.decoder_base,
                                 res_blocks if res_blocks is not None else ae.decoder_res_blocks)
    fields = dataclasses.asdict(base) if base is not None else {}
    return FinetuneConfig(**{**fields, **settings, "autoencoder": ae})


# --------------------------------------------------------------------------- export


def export(state: str | Path, path: str | Path, source: str | Path, *, weights: str = "ema",
           test_images: int = 10_000, selection: dict | None = None) -> Path:
    """Write the fine-tuned autoencoder as a complete AutoencoderKL checkpoint at ``path``.

    The encoder, quant_conv and scaling_factor are the source's tensors, stored in the dtype the source
    stored them in (bit-identical); the decoding path is the state's ``weights`` ("ema" or "model"),
    stored in the dtype the source stored its decoder in. The card says how it was made, and its metric
    ``test_psnr`` (the mean PSNR of decode(mode(q(z|x))) over the first ``test_images`` test images, as
    vae-small's card has it) is measured on the file as written. ``selection``: how this snapshot was chosen
    among others (data used, scores), kept in the card's ``training.selection``.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    card = read_card(state)
    cfg = FinetuneConfig.from_dict(card["model_config"])
    src_card = read_card(source)
    if card["training"].get("source_sha256") != src_card["sha256"]:
        raise ValueError(f"{state} fine-tunes another autoencoder than {source} (source sha256 differs)")
    model = DecoderFinetune(cfg)
    load_checkpoint(state, model)
    out = model.ema if weights == "ema" else model.autoencoder
    source_tensors = load_checkpoint(source).model
    stored = source_tensors["decoder.conv_out.weight"].dtype
    with torch.no_grad():
        for name, t in [*out.named_parameters(), *out.named_buffers()]:
            if name.startswith(("decoder.", "post_quant_conv.")):
                t.data = t.data.to(stored)
            else:
                t.data = source_tensors[name].clone()  # bit-identical, in the source's dtype
    training = {k: v for k, v in card["training"].items() if k != "saved_because"}
    losses = (f"decoder: mean|x - x_hat| + {cfg.feature_weight:g} L_FM + {cfg.disc_weight:g} lambda (-mean D(x_hat)), "
              "lambda = ||grad L_rec|| / (||grad L_G|| + 1e-4) at decoder.conv_out.weight, the last two ramped in "
              f"over steps {cfg.disc_start}..{cfg.disc_start + cfg.disc_ramp_steps}; discriminator: PatchGAN "
              f"{cfg.disc_channels}x{cfg.disc_layers} ({cfg.disc_norm} norm), hinge loss; course_lib.adversarial")
    training.update(task="decoder fine-tune (encoder frozen)", finetune_config=dataclasses.asdict(cfg),
                    steps=card["step"], images_seen=card["step"] * cfg.batch_size,
                    wall_minutes=round(training.get("wall_seconds_total", 0) / 60, 1), exported_weights=weights,
                    exported_from=config.portable_path(state), losses=losses,
                    frozen="encoder, quant_conv, scaling_factor: the source's tensors, bit-identical",
                    stored_dtype=f"{str(stored).replace('torch.', '')} decoder weights, the rest as in the source")
    if selection is not None:
        training["selection"] = selection
    save_checkpoint(path, out, step=card["step"], metrics=dict(card["metrics"]), training=training)
    if test_images:
        model_back, _ = load_autoencoder(path)
        test = load_cifar10("test", limit=test_images, verbose=False)
        with torch.no_grad():
            values = torch.cat([psnr(model_back(b, sample_posterior=False)[0].clamp(-1, 1), b)
                                for b in test.images.split(250)])  # [N]
        metrics = {**card["metrics"], "test_psnr": round(values.mean().item(), 3),
                   "test_psnr_std_error": round((values.std() / math.sqrt(len(values))).item(), 3),
                   "test_psnr_reconstruction": "decode(mode(q(z|x))) clamped to [-1, 1]; mean of per-image PSNR",
                   "test_images": len(values), "test_source": test.source}
        save_checkpoint(path, out, step=card["step"], metrics=metrics, training=training)
    return Path(path)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.adversarial", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the AutoencoderKL checkpoint whose decoder is fine-tuned")
    parser.add_argument("--state", required=True,
                        help="the resumable training state (.safetensors), resumed if it exists")
    parser.add_argument("--export", help="write the fine-tuned autoencoder here (.safetensors) at the end")
    parser.add_argument("--export-weights", choices=("ema", "model"), default="ema")
    parser.add_argument("--minutes", type=float, help="train for this long (this call)")
    parser.add_argument("--steps", type=int, help="train up to this step (in all)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--no-bf16", action="store_true", help="float32 even where bf16 autocast is native")
    parser.add_argument("--limit", type=int, help="train on the first LIMIT training images (tests, quick looks)")
    parser.add_argument("--val-images", type=int, default=500, help="test images for the PSNR printed at each save")
    parser.add_argument("--test-images", type=int, default=10_000, help="test images for the exported card's PSNR")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--snapshot-steps", type=int,
                        help="also keep a copy of the state every this many steps (STATE-stepN.safetensors)")
    group = parser.add_argument_group("settings (a new state; a resumed state keeps its own, but may change "
                                      + ", ".join(RESUME_CHANGES) + ")")
    group.add_argument("--decoder-channels", type=int, help="the decoder's base channels (default: the source's)")
    group.add_argument("--decoder-res-blocks", type=int, help="the decoder's num_res_blocks (default: the source's)")
    for f in dataclasses.fields(FinetuneConfig):
        if f.name not in ("autoencoder", "betas"):
            group.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                               help=f"default {f.default}")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes, --steps or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    settings = {name: getattr(args, name) for name in
                ["decoder_channels", "decoder_res_blocks",
                 *(f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in ("autoencoder", "betas"))]
                if getattr(args, name) is not None}
    command = config.portable_command("python -m course_lib.adversarial", sys.argv[1:] if argv is None else argv)

    stop = {"requested": False}

    def handle(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print(f"signal {signal.Signals(signum).name}: stopping after this step", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state = finetune(args.checkpoint, args.state, settings=settings, minutes=args.minutes, steps=args.steps,
                         checkpoint_minutes=args.checkpoint_minutes, bf16=False if args.no_bf16 else None,
                         limit=args.limit, val_images=args.val_images, log_every=args.log_every,
                         command=command, stop_requested=lambda: stop["requested"],
                         snapshot_steps=args.snapshot_steps)
    except ValueError as err:
        parser.error(str(err))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.export:
        path = export(state, args.export, args.checkpoint, weights=args.export_weights, test_images=args.test_images)
        print(f"exported {path}: {read_card(path)['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
