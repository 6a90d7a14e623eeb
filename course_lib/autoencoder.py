"""The KL autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", Sec. 3.1 and App. G): the first stage that maps images to a small latent grid
where a diffusion model is trained, and back.

A variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes") whose encoder
outputs a diagonal Gaussian posterior q(z|x) = N(mu(x), diag sigma^2(x)) over a latent grid, and whose
decoder maps a latent back to an image. Trained with a reconstruction loss and a *small-weight* KL
term that keeps the latents near N(0, I) without making the reconstructions blurry (a beta-VAE with a
tiny beta): LDM calls it "KL-reg" and uses it so the latent space has no arbitrarily high variance.

Layout (``AutoencoderConfig()``: base 64, channel_mult (1, 2, 2), 1 res block per level, attention in
the middle block; 32x32 images -> 4x8x8 latents, factor 4; 3.8M parameters):

    x [B, 3, 32, 32]
    Encoder: conv_in -> [B, 64, 32, 32]
             down[0]: ResBlock(64)       -> Downsample -> [B, 64, 16, 16]
             down[1]: ResBlock(64->128)  -> Downsample -> [B, 128, 8, 8]
             down[2]: ResBlock(128)                    -> [B, 128, 8, 8]
             mid: ResBlock -> self-attention -> ResBlock
             norm_out -> SiLU -> conv_out              -> [B, 2 x 4, 8, 8]
    quant_conv (1x1)                                   -> [B, 8, 8, 8] = (mean, logvar)
    DiagonalGaussianDistribution -> z = mean + std * eps -> [B, 4, 8, 8]
    post_quant_conv (1x1)                              -> [B, 4, 8, 8]
    Decoder: conv_in -> [B, 128, 8, 8]; mid; up[2], up[1] (+ Upsample), up[0] (2 ResBlocks each);
             norm_out -> SiLU -> conv_out              -> [B, 3, 32, 32]

Names follow LDM's ``ldm/models/autoencoder.py`` and ``ldm/modules/diffusionmodules/model.py``, so a
learner can read the two side by side. The map to LDM and to diffusers' ``AutoencoderKL``:

    here                          LDM                          diffusers
    encoder.conv_in               encoder.conv_in              encoder.conv_in
    encoder.down[i].block[j]      encoder.down[i].block[j]     encoder.down_blocks[i].resnets[j]
    encoder.down[i].downsample    encoder.down[i].downsample   encoder.down_blocks[i].downsamplers[0]
    encoder.mid.block_1           encoder.mid.block_1          encoder.mid_block.resnets[0]
    encoder.mid.attn_1            encoder.mid.attn_1           encoder.mid_block.attentions[0]
    encoder.mid.block_2           encoder.mid.block_2          encoder.mid_block.resnets[1]
    encoder.norm_out, conv_out    encoder.norm_out, conv_out   encoder.conv_norm_out, conv_out
    quant_conv, post_quant_conv   quant_conv, post_quant_conv  quant_conv, post_quant_conv
    decoder.up[i]                 decoder.up[i]                decoder.up_blocks[levels - 1 - i]
    DiagonalGaussianDistribution  (same name)                  (same name)
    scaling_factor                LatentDiffusion.scale_factor vae.config.scaling_factor

The residual blocks are chapter 1's :class:`~course_lib.unet.ResBlock` built without a timestep
embedding, the attention is chapter 1's hookable :class:`~course_lib.unet.AttentionBlock`, and the
resampling layers are the UNet's ``Downsample`` / ``Upsample``.

The scaling factor: a diffusion model expects data of roughly unit variance (its noise schedule is
built for it), but the KL term only weakly ties the latents' scale. LDM therefore multiplies latents
by ``scale_factor`` = 1 / std of the encoder's posterior *samples* (the reason: Sec. 4.3.2 and App. D.1; the
estimate: App. G; ``LatentDiffusion.get_first_stage_encoding``), 0.18215 for Stable Diffusion's autoencoder.
:func:`latent_scaling_factor` measures it; :meth:`AutoencoderKL.encode_latents` and
:meth:`AutoencoderKL.decode_latents` apply it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ATTENTION_IMPLS
from .unet import DOWNSAMPLE_PADDINGS, AttentionBlock, Downsample, ResBlock, Upsample

__all__ = [
    "AutoencoderConfig",
    "DiagonalGaussianDistribution",
    "Encoder",
    "Decoder",
    "AutoencoderKL",
    "autoencoder_loss",
    "psnr",
    "reconstruction_psnr",
    "latent_scaling_factor",
    "latent_shift_factor",
    "posterior_samples",
    "LDM_LAYOUT",
]


# --------------------------------------------------------------------------- configuration

#: latent diffusion's layout (``ldm/modules/diffusionmodules/model.py``; diffusers' ``AutoencoderKL``):
#: GroupNorm eps 1e-6 and right/bottom padding before each stride-2 convolution
LDM_LAYOUT = {"norm_eps": 1e-6, "downsample_padding": "right_bottom"}



@dataclass
class AutoencoderConfig:
    """Hyper-parameters of the KL autoencoder. ``dataclasses.asdict`` is JSON-serialisable.

    in_channels:      image channels (3 for RGB); the decoder outputs as many
    latent_channels:  channels of the latent grid (LDM's ``embed_dim`` = ``z_channels``; 4 in Stable Diffusion)
    base_channels:    channels at the first level (LDM's ``ch``)
    channel_mult:     level i has base_channels * channel_mult[i] channels; every level but the last halves
                      the resolution, so the downsampling factor is 2**(len(channel_mult) - 1)
    num_res_blocks:   ResBlocks per level in the encoder (the decoder has one more, as in LDM)
    num_groups:       GroupNorm groups; must divide every channel count
    mid_attention:    self-attention between the two ResBlocks of the middle blocks (LDM's ``attn_1``)
    num_heads:        heads of that attention (1 in LDM)
    attention_impl:   "einsum", "sdpa" or "chunked" (``course_lib.attention``): same function, different speed
    image_size:       the training resolution (the model is convolutional and takes any multiple of the factor)
    decoder_base_channels:  the decoder's own ``base_channels`` (None: the same as the encoder's)
    decoder_num_res_blocks: the decoder's own ``num_res_blocks`` (None: the same; it builds one more per level)
    shift_factor:     SD3's and Flux's latent shift: the diffusion model's data is (z - shift_factor) * scaling_factor
                      (0: LDM's and Stable Diffusion 1/2's scaled latents, ``vae-small``'s); see :meth:`AutoencoderKL.encode_latents`
    norm_eps:         GroupNorm epsilon everywhere (LDM's ``Normalize`` and diffusers: 1e-6; ``vae-small``: 1e-5)
    downsample_padding: "right_bottom" (LDM and diffusers: pad right and bottom, then a stride-2 conv) or
                      "symmetric" (one pixel on every side: ``vae-small``); see ``course_lib.unet.Downsample``

    The two decoder fields exist for a decoder trained after the encoder (``course_lib.adversarial``):
    it reads the same latents, so it may be wider or deeper than the encoder without changing anything
    downstream. At None (the default) the decoder mirrors the encoder, as in LDM.

    The defaults of ``norm_eps`` and ``downsample_padding`` are ``vae-small``'s (trained before they were
    options). The same weights in LDM's layout compute another encoder: on 200 test images its posterior means
    move by 0.72 of their norm, almost all of it from the padding (the eps alone: 3e-5). Every newer
    autoencoder uses :data:`LDM_LAYOUT`, with which the course's ``AutoencoderKL`` computes what diffusers'
    ``AutoencoderKL`` computes with the same weights (``tests/test_export.py``).
    """

    in_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    num_groups: int = 32
    mid_attention: bool = True
    num_heads: int = 1
    attention_impl: str = "einsum"
    image_size: int = 32
    decoder_base_channels: int | None = None
    decoder_num_res_blocks: int | None = None
    shift_factor: float = 0.0
    norm_eps: float = 1e-5
    downsample_padding: str = "symmetric"

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: turn them back so configs compare equal.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.decoder_base_channels is not None and self.decoder_base_channels < 1:
            raise ValueError(f"decoder_base_channels must be >= 1 or None, got {self.decoder_base_channels}")
        if self.decoder_num_res_blocks is not None and self.decoder_num_res_blocks < 1:
            raise ValueError(f"decoder_num_res_blocks must be >= 1 or None, got {self.decoder_num_res_blocks}")
        if self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError(f"in_channels and latent_channels must be >= 1, got {self.in_channels} "
                             f"and {self.latent_channels}")
        for name, base in (("base_channels", self.base_channels), ("decoder_base_channels", self.decoder_base)):
            for ch in sorted({base * m for m in self.channel_mult}):
                if ch % self.num_groups:
                    raise ValueError(f"num_groups={self.num_groups} must divide every channel count; {ch} is not "
                                     f"divisible ({name}={base}, channel_mult={self.channel_mult})")
            if self.mid_attention and (base * self.channel_mult[-1]) % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the middle block's "
                                 f"{base * self.channel_mult[-1]} channels ({name}={base})")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {self.attention_impl!r}")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"downsample_padding must be one of {sorted(DOWNSAMPLE_PADDINGS)}, got "
                             f"{self.downsample_padding!r}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by the downsampling factor "
                             f"{self.downsample_factor} of channel_mult={self.channel_mult}")

    @property
    def decoder_base(self) -> int:
        """The decoder's base channels: ``decoder_base_channels``, or the encoder's when None."""
        return self.base_channels if self.decoder_base_channels is None else self.decoder_base_channels

    @property
    def decoder_res_blocks(self) -> int:
        """The decoder's ``num_res_blocks`` (it builds one more per level): ``decoder_num_res_blocks``, or the
        encoder's when None."""
        return self.num_res_blocks if self.decoder_num_res_blocks is None else self.decoder_num_res_blocks

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        """How much smaller the latent grid is than the image, per side: 2**(levels - 1)."""
        return 2 ** (self.levels - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latent of one ``image_size`` image, e.g. (4, 8, 8) for 32x32 at factor 4."""
        side = self.image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    @classmethod
    def small(cls, **overrides) -> "AutoencoderConfig":
        """For training on a CPU: 32x32 -> 4x8x8 with 32/64/96 channels, 1 res block per level, attention
        in the middle blocks; 1.70M parameters, ~65 training images/s at batch 64 on one CPU thread (bf16).

        The channels grow towards the 8x8 level, where a convolution costs 1/16 of one at 32x32: 48/96/96
        (2.14M) trains at ~45 img/s, 32/64/64 (0.95M) at ~85. num_groups 8: 4 channels per group at 32
        channels, as LDM's GroupNorm(32) has at its 128."""
        return cls(**{**dict(base_channels=32, channel_mult=(1, 2, 3), num_res_blocks=1, num_groups=8), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "AutoencoderConfig":
        """For tests and ``COURSE_FAST=1``: 16/32/32 channels, 1 res block, 32x32 -> 4x8x8; 0.24M parameters."""
        return cls(**{**dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, num_groups=8), **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        """Inverse of ``dataclasses.asdict``; unknown keys raise a clear error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- the posterior


class DiagonalGaussianDistribution:
    """The encoder's posterior q(z|x) = N(mean, diag(var)), one independent Gaussian per latent number.

    Built from the encoder's ``moments`` [B, 2C, h, w]: the first C channels are the mean, the last C
    the log-variance, clamped to [-30, 20] as LDM does (exp(-30) ~ 1e-13 and exp(20) ~ 5e8: no
    underflow to a zero variance, no overflow, whatever the encoder outputs). Computed in float32 at least
    (float64 for a float64 model): half-precision exp() of a log-variance would lose the small variances.

    * ``sample(generator)``: the reparameterisation trick (Kingma & Welling 2014, Sec. 2.4),
      z = mean + std * eps with eps ~ N(0, I), so z is a differentiable function of (mean, logvar)
      and the gradient of the loss reaches the encoder through the sample.
    * ``mode()``: the mean, the most likely latent (deterministic encoding).
    * ``kl()``: KL(q || N(0, I)) per image, in closed form (Kingma & Welling 2014, App. B):

          KL = 0.5 * sum_i (mean_i^2 + var_i - 1 - log var_i)        summed over C, h, w -> [B]
    """

    def __init__(self, moments: torch.Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [B, 2C, h, w] (means then log-variances), got {tuple(moments.shape)}")
        moments = moments.to(torch.promote_types(moments.dtype, torch.float32))
        self.mean, logvar = moments.chunk(2, dim=1)  # [B, C, h, w] each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @property
    def shape(self) -> torch.Size:
        """The latent's shape [B, C, h, w]."""
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (drawn from ``generator`` when given): [B, C, h, w]."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The posterior's mean: [B, C, h, w]."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over the latent dims: [B] nats."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))

    def __repr__(self) -> str:
        return f"DiagonalGaussianDistribution(shape={tuple(self.shape)})"


# --------------------------------------------------------------------------- encoder and decoder


def _middle(config: AutoencoderConfig, channels: int) -> nn.Module:
    """LDM's ``mid``: ResBlock -> self-attention -> ResBlock at the lowest resolution."""
    c = config
    mid = nn.Module()
    mid.block_1 = ResBlock(channels, channels, emb_dim=None, num_groups=c.num_groups, eps=c.norm_eps)
    mid.attn_1 = (AttentionBlock(channels, c.num_heads, c.num_groups, c.attention_impl, eps=c.norm_eps)
                  if c.mid_attention else nn.Identity())
    mid.block_2 = ResBlock(channels, channels, emb_dim=None, num_groups=c.num_groups, eps=c.norm_eps)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> moments [B, 2 x latent_channels, H/f, W/f] (f = downsample_factor).

    conv_in; per level ``num_res_blocks`` ResBlocks and (except at the last level) a stride-2
    Downsample; the middle block; then GroupNorm -> SiLU -> conv_out to the mean and log-variance.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        ch = c.base_channels
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            out_ch = c.base_channels * mult
            down = nn.Module()
            down.block = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                down.block.append(ResBlock(ch, out_ch, emb_dim=None, num_groups=c.num_groups, eps=c.norm_eps))
                ch = out_ch
            if level != c.levels - 1:
                down.downsample = Downsample(ch, c.downsample_padding)
            self.down.append(down)
        self.mid = _middle(c, ch)
        self.norm_out = nn.GroupNorm(c.num_groups, ch, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, H, W]
        for down in self.down:
            for block in down.block:
                h = block(h)  # [B, ch_level, H_level, W_level]
            if hasattr(down, "downsample"):
                h = down.downsample(h)  # [B, ch_level, H_level / 2, W_level / 2]
        h = _run_middle(self.mid, h)  # [B, ch_last, H / f, W / f]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 2 x latent_channels, H / f, W / f]


class Decoder(nn.Module):
    """Latent [B, latent_channels, h, w] -> image [B, in_channels, h*f, w*f]: the encoder mirrored.

    conv_in to the last level's channels; the middle block; per level, from the lowest resolution up,
    ``num_res_blocks + 1`` ResBlocks and (except at the first level) an Upsample; then GroupNorm ->
    SiLU -> conv_out. As in LDM, ``up[i]`` is the level at the encoder's ``down[i]`` resolution, so
    the loop runs over ``reversed(self.up)``. The output is unbounded (clamp it to show it).

    Its width and depth are ``config.decoder_base`` and ``config.decoder_res_blocks``: the encoder's
    ``base_channels`` and ``num_res_blocks`` unless the config sets decoder-only values.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        ch = c.decoder_base * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid = _middle(c, ch)
        up_levels = []
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            out_ch = c.decoder_base * mult
            up = nn.Module()
            up.block = nn.ModuleList()
            for _ in range(c.decoder_res_blocks + 1):
                up.block.append(ResBlock(ch, out_ch, emb_dim=None, num_groups=c.num_groups, eps=c.norm_eps))
                ch = out_ch
            if level != 0:
                up.upsample = Upsample(ch)
            up_levels.insert(0, up)  # keep up[i] at the resolution of down[i]
        self.up = nn.ModuleList(up_levels)
        self.norm_out = nn.GroupNorm(c.num_groups, ch, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # [B, ch_last, h, w]
        h = _run_middle(self.mid, h)
        for up in reversed(self.up):
            for block in up.block:
                h = block(h)  # [B, ch_level, H_level, W_level]
            if hasattr(up, "upsample"):
                h = up.upsample(h)  # [B, ch_level, 2 H_level, 2 W_level]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, in_channels, h f, w f]


# --------------------------------------------------------------------------- the autoencoder


class AutoencoderKL(nn.Module):
    """LDM's KL-regularised autoencoder: ``encode(x)`` -> posterior, ``decode(z)`` -> image.

        encode(x [B, 3, H, W]) -> DiagonalGaussianDistribution over z [B, C, H/f, W/f]
        decode(z [B, C, H/f, W/f]) -> x_hat [B, 3, H, W]          (unbounded; LDM's ``decode``)
        forward(x, sample_posterior=True) -> (x_hat, posterior)   z = posterior.sample() or .mode()

    For a diffusion model, the *scaled* latents (LDM's ``get_first_stage_encoding`` and
    ``decode_first_stage``):

        encode_latents(x) = (z - shift_factor) * scaling_factor,   z ~ q(z|x)
        decode_latents(z_scaled) = decode(z_scaled / scaling_factor + shift_factor)

    ``scaling_factor`` is a buffer (saved in the checkpoint; 1.0 until :func:`latent_scaling_factor`
    is measured and :meth:`set_scaling_factor` stores it).
    """

    scaling_factor: torch.Tensor

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        config = config or AutoencoderConfig()
        self.config = config
        L = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1)
        self.post_quant_conv = nn.Conv2d(L, L, 1)
        self.decoder = Decoder(config)
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent of one training-resolution image."""
        return self.config.latent_shape

    def set_scaling_factor(self, value: float) -> None:
        """Store the latent scaling factor (e.g. :func:`latent_scaling_factor`'s) in the buffer."""
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"the scaling factor must be a positive number, got {value}")
        self.scaling_factor.fill_(value)

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must be a 4-D tensor [B, C, H, W], got shape {shape}")
        if x.shape[1] != channels:
            raise ValueError(f"{what} has {x.shape[1]} channels but this autoencoder was built for {channels} "
                             f"(AutoencoderConfig.{'in_channels' if what == 'x' else 'latent_channels'})")

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Images [B, in_channels, H, W] in [-1, 1] -> the posterior q(z|x) over [B, latent_channels, H/f, W/f]."""
        self._check(x, self.config.in_channels, "x")
        f = self.config.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image size {x.shape[2]}x{x.shape[3]} must be divisible by the downsampling "
                             f"factor {f} (channel_mult={self.config.channel_mult})")
        moments = self.quant_conv(self.encoder(x))  # [B, 2C, H/f, W/f]
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_channels, h, w] (unscaled) -> images [B, in_channels, h f, w f], unbounded."""
        self._check(z, self.config.latent_channels, "z")
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))  # the model's dtype

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()  # [B, C, H/f, W/f]
        return self.decode(z), posterior

    def encode_latents(self, x: torch.Tensor, sample_posterior: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The diffusion model's data: (z - shift_factor) * scaling_factor, z ~ q(z|x) (or its mean): [B, C, H/f, W/f].

        LDM and Stable Diffusion 1/2 only scale (shift 0); SD3 and Flux first subtract a shift, the latents'
        mean, so that the data has mean 0 as well as variance 1 (SD3's VAE: shift 0.0609, scale 1.5305)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return (z - self.config.shift_factor) * self.scaling_factor

    def decode_latents(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Images from the diffusion model's latents: decode(z_scaled / scaling_factor + shift_factor), the inverse
        of :meth:`encode_latents`, unbounded (no clipping: the decoder maps latents outside the training range
        somewhere sensible, and :class:`~course_lib.generation.Pipeline` clamps only the images)."""
        return self.decode(z_scaled / self.scaling_factor + self.config.shift_factor)


# --------------------------------------------------------------------------- loss and metrics


def autoencoder_loss(model: AutoencoderKL, images: torch.Tensor, kl_weight: float = 1e-3, *,
                     generator: torch.Generator | None = None, return_terms: bool = False):
    """The training loss: squared reconstruction error plus a small-weight KL, per image number.

        z ~ q(z|x) (reparameterised),  x_hat = decode(z)
        loss = (1 / D) * E_x[ ||x - x_hat||^2 + kl_weight * KL(q(z|x) || N(0, I)) ],  D = C * H * W

    This is the negative ELBO of a VAE (Kingma & Welling 2014) with a Gaussian decoder of fixed
    variance sigma^2, up to constants and a factor 1/(2 sigma^2), when kl_weight = 2 sigma^2; a smaller
    kl_weight is a beta-VAE with beta < 1, which trades latent regularity for sharper reconstructions.
    Dividing by D only makes the printed loss a mean squared error per image number; the balance of
    the two terms is LDM's convention (reconstruction summed over pixels, KL summed over latent numbers).

    Why squared error (MSE) and not LDM's L1: LDM pairs L1 with a perceptual (LPIPS) and an adversarial
    loss, which supply the sharpness. Without them, MSE is the Gaussian log-likelihood (so the loss is
    an ELBO), and it is exactly what PSNR measures (PSNR = 10 log10(4 / MSE) for images in [-1, 1]).

    Why kl_weight = 1e-3 (LDM: 1e-6, next to losses that are larger per image): at a reconstruction
    error of ~0.01 per number (26 dB), ||x - x_hat||^2 ~ 30 per image. Trading KL nats for error at
    a rate of 1e-3, (i) the -log sigma^2 term of the KL keeps the posterior from becoming a point, so
    the decoder is trained on slightly noisy latents; but reconstruction wins by far at this weight,
    and the posterior ends up narrow: the shipped vae-small has a mean posterior std of 0.020 against
    a std of 1.24 for z (2,000 test images; chapter 4 prints it), about 1,200 nats of KL per image;
    (ii) the mean is pulled towards 0, so no latent channel drifts to a huge scale or offset. Larger
    weights (1e-2 .. 1) give noisier posteriors, latents closer to N(0, I) and blurrier reconstructions
    (chapter 4, section 7, measures it); 1e-6 gives a nearly deterministic autoencoder.

    Returns the scalar loss, or ``(loss, {"reconstruction": mse, "kl": mean KL per image})`` with
    ``return_terms``.
    """
    recon, posterior = model(images, sample_posterior=True, generator=generator)  # [B, C, H, W], q(z|x)
    rec = F.mse_loss(recon.float(), images.float())  # mean over B * D numbers
    kl = posterior.kl().mean()  # nats per image
    loss = rec + kl_weight * kl / images[0].numel()
    if return_terms:
        return loss, {"reconstruction": rec.detach(), "kl": kl.detach()}
    return loss


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: 10 log10(data_range^2 / MSE) -> [B].

    Images in [-1, 1] have ``data_range`` 2 (the same dB as 10 log10(255^2 / MSE) on uint8 pixels).
    Higher is better: 20 dB is visibly blurred, 30 dB hard to tell from the original at 32x32."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs two image batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)  # [B]
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


@torch.no_grad()
def reconstruction_psnr(model: AutoencoderKL, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """PSNR [N] of each image against its deterministic reconstruction decode(mode(q(z|x))), clamped to [-1, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for batch in images.split(batch_size):
            batch = batch.to(device)
            recon, _ = model(batch, sample_posterior=False)
            out.append(psnr(recon.clamp(-1, 1), batch).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def posterior_samples(model: AutoencoderKL, images: torch.Tensor, batch_size: int = 250, seed: int = 0) -> torch.Tensor:
    """Posterior samples z ~ q(z|x) of ``images``, [N, C, h, w] on the CPU, the noise seeded by ``seed``: what a
    latent diffusion model is trained on, and what the latent statistics below are measured on."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    try:
        return torch.cat([model.encode(batch.to(device)).sample(generator).cpu() for batch in images.split(batch_size)])
    finally:
        model.train(was_training)


def latent_scaling_factor(model: AutoencoderKL, images: torch.Tensor, batch_size: int = 250,
                          seed: int = 0) -> float:
    """LDM's latent rescaling: 1 / std of posterior *samples* z ~ q(z|x) over ``images`` (every number
    of every latent pooled; ``LatentDiffusion`` with ``scale_by_std`` does this on its first batch).

    Multiplying latents by it gives them unit variance, the scale a diffusion model's noise schedule
    assumes (Rombach et al. 2022, Sec. 4.3.2; the estimate is their App. G). Samples, not means, because
    samples are what the diffusion model is trained on. ``seed`` seeds the posterior noise, so the factor is
    reproducible.
    """
    return 1.0 / posterior_samples(model, images, batch_size, seed).flatten().std().item()


def latent_shift_factor(model: AutoencoderKL, images: torch.Tensor, batch_size: int = 250, seed: int = 0) -> float:
    """SD3's latent shift: the mean of posterior samples z ~ q(z|x) over ``images`` (every number pooled), so that
    (z - shift) * scale has mean 0. With it, :func:`latent_scaling_factor`'s 1 / std (the std is taken about
    the mean) makes the data zero-mean and unit-variance, as the noise schedule assumes."""
    return posterior_samples(model, images, batch_size, seed).flatten().mean().item()
