"""The classic DDPM UNet (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", App. B).

A UNet (Ronneberger et al. 2015) built from wide ResNet blocks (Zagoruyko & Komodakis 2016)
with group normalisation (Wu & He 2018), conditioned on the timestep through a sinusoidal
embedding (Vaswani et al. 2017) that every residual block *adds* to its feature maps, and
with self-attention at low resolutions (16x16 for CIFAR-10). The timestep embedding, the
scale-and-shift step of chapter 2 and the zero initialisation live in ``course_lib.conditioning``,
which chapter 6's DiT shares.

Layout for the CIFAR-10 model (``UNetConfig.paper()``: base 128, channel_mult (1, 2, 2, 2),
2 res blocks per level, attention at 16x16, dropout 0.1; 35.7M parameters):

    x [B, 3, 32, 32] -> conv_in -> [B, 128, 32, 32]
    down:   32x32: 2 x ResBlock(128)       -> Downsample
            16x16: 2 x (ResBlock(256) + Attention) -> Downsample
             8x8:  2 x ResBlock(256)       -> Downsample
             4x4:  2 x ResBlock(256)
    middle: ResBlock -> Attention -> ResBlock
    up:     per level 3 x ResBlock on [h, skip] concatenated (+ Attention at 16x16), then Upsample
    out:    GroupNorm -> SiLU -> conv_out -> [B, 3, 32, 32]

Every output of the down path (conv_in, each block, each downsample) is kept as a skip
connection and consumed, last first, by one up-path block.

``model(x, t)``: x [B, C, H, W] float, t [B] timesteps (integers 0..T-1, or floats).

Chapter 2 adds two switches and changes nothing else: ``resblock="adagn"`` builds every residual
block as an :class:`AdaGNResBlock` (scale-and-shift conditioning, Dhariwal & Nichol 2021's ADM; Stable
Diffusion's UNets kept DDPM's additive block), and
``attention_impl`` picks how the attention blocks compute attention (see ``course_lib.attention``).

Chapter 3 conditions on text: with ``context_dim`` set, every attention position (the resolutions
in ``attention_resolutions`` and the middle block) holds a ``SpatialTransformer`` (self-attention,
cross-attention to the caption's tokens, feed-forward; ``course_lib.spatial_transformer``) instead
of an ``AttentionBlock``, as in latent diffusion (Rombach et al. 2022), and the UNet is called as
``model(x, t, context, context_mask)``. ``context_dim=None`` (the default) is exactly chapter 1's UNet.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import ATTENTION_IMPLS, HookableAttention
from .conditioning import TimeEmbedding, modulate, zero_module
from .spatial_transformer import ContextBlock, SpatialTransformer, check_context

__all__ = [
    "UNetConfig",
    "UNet",
    "EmbedBlock",
    "ContextBlock",
    "ResBlock",
    "AdaGNResBlock",
    "RES_BLOCKS",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "EmbedSequential",
]


# --------------------------------------------------------------------------- configuration


@dataclass
class UNetConfig:
    """Hyper-parameters of the DDPM UNet. ``dataclasses.asdict`` is JSON-serialisable.

    in_channels:          channels of x (3 for RGB, 4 for a latent grid)
    out_channels:         channels predicted (None: same as in_channels)
    base_channels:        channels at the first level ("ch" in the DDPM code)
    channel_mult:         level i has base_channels * channel_mult[i] channels; one level per entry,
                          each level after the first at half the resolution of the previous
    num_res_blocks:       ResBlocks per level on the way down (the way up has one more)
    attention_resolutions: feature-map sizes (e.g. 16 for 16x16) that get self-attention
    dropout:              dropout inside each ResBlock, before the second conv
    image_size:           the training resolution; fixes where attention goes
    num_groups:           GroupNorm groups (32 in the paper); must divide every channel count
    num_heads:            attention heads (1 in DDPM)
    resblock:             "additive" (DDPM's ResBlock; also SD 1.x/2.x/SDXL's) or "adagn" (AdaGNResBlock, ADM)
    attention_impl:       "einsum" (chapter 1), "sdpa" or "chunked": same function, different speed/memory
    context_dim:          width of the text tokens to cross-attend to (chapter 3); None = unconditional
    transformer_depth:    BasicTransformerBlocks per SpatialTransformer (used only with context_dim)

    Layout details that change what the same weights compute (the course's models keep the defaults; a model
    converted from diffusers or TensorFlow takes that code's values, see :meth:`paper`):
    norm_eps:             GroupNorm epsilon of the ResBlocks, self-attention and output norm (PyTorch's 1e-5)
    downsample_padding:   "symmetric" or "right_bottom" (:data:`DOWNSAMPLE_PADDINGS`)
    freq_shift:           the sinusoid's frequency spacing, max_period^(-i / (half - freq_shift))
                          (:func:`~course_lib.conditioning.timestep_embedding`; 1 in the DDPM code)
    """

    in_channels: int = 3
    out_channels: int | None = None
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    image_size: int = 32
    num_groups: int = 32
    num_heads: int = 1
    resblock: str = "additive"
    attention_impl: str = "einsum"
    context_dim: int | None = None
    transformer_depth: int = 1
    norm_eps: float = 1e-5
    downsample_padding: str = "symmetric"
    freq_shift: float = 0.0

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: turn them back so configs compare equal.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for ch in sorted({self.base_channels * m for m in self.channel_mult}):
            if ch % self.num_groups:
                raise ValueError(
                    f"num_groups={self.num_groups} must divide every channel count; {ch} is not divisible "
                    f"(base_channels={self.base_channels}, channel_mult={self.channel_mult})"
                )
            if ch % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide every channel count; {ch} is not divisible")
        if self.resblock not in RES_BLOCKS:
            raise ValueError(f"resblock must be one of {sorted(RES_BLOCKS)}, got {self.resblock!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {self.attention_impl!r}")
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"context_dim must be a positive int (the text encoder's width) or None "
                             f"for an unconditional UNet, got {self.context_dim}")
        if self.transformer_depth < 1:
            raise ValueError(f"transformer_depth must be >= 1, got {self.transformer_depth}")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"downsample_padding must be one of {sorted(DOWNSAMPLE_PADDINGS)}, got "
                             f"{self.downsample_padding!r}")
        if not 0.0 < self.norm_eps < 1.0:
            raise ValueError(f"norm_eps must be a small positive number (1e-5, 1e-6), got {self.norm_eps}")
        factor = self.downsample_factor
        if self.image_size % factor:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(levels-1) = {factor} "
                f"for channel_mult={self.channel_mult}"
            )

    @property
    def levels(self) -> int:
        """Number of resolutions in the UNet."""
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        """How much the lowest resolution is smaller than the input: 2**(levels - 1)."""
        return 2 ** (self.levels - 1)

    @property
    def conditional(self) -> bool:
        """True when the UNet cross-attends to text (``context_dim`` is set)."""
        return self.context_dim is not None

    @property
    def resolved_out_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @classmethod
    def paper(cls, **overrides) -> "UNetConfig":
        """Ho et al. (2020)'s CIFAR-10 model: 128 channels, (1,2,2,2), attention at 16x16, dropout 0.1; 35.7M params.

        The layout, widths and parameter count are theirs; three numerical details of their released code
        (hojonathanho/diffusion, TensorFlow) differ from this config's defaults, and are options of it:

        * GroupNorm epsilon: theirs is ``tf.contrib.layers.group_norm``'s default, 1e-6
          (``diffusion_tf/models/unet.py``, ``normalize``); the default here is PyTorch's 1e-5 (``norm_eps``);
        * downsampling: their stride-2 3x3 convolution pads ``'SAME'`` (``diffusion_tf/nn.py``, ``conv2d``),
          which for an even size pads one pixel at the right and bottom only (``downsample_padding=
          "right_bottom"``); the default pads one pixel on every side;
        * the sinusoid divides by ``half - 1`` (``get_timestep_embedding``; ``freq_shift=1``), the default by half.

        Their trained weights would therefore not reproduce their outputs exactly in this UNet. The course
        trains its own models with these settings and keeps them (the shipped checkpoints depend on them).
        """
        return cls(**{**dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                             attention_resolutions=(16,), dropout=0.1, num_groups=32), **overrides})

    @classmethod
    def small(cls, **overrides) -> "UNetConfig":
        """The paper's architecture at a quarter of the width, for training on a CPU: 2.25M parameters.

        base 32 (so 32/64/64/64 channels), channel_mult (1, 2, 2, 2), 2 res blocks, attention at
        16x16: the layout of ``paper()`` with ~1/16 of its parameters and FLOPs (~40 img/s of
        training on 2 CPU cores against ~4). num_groups is 8 because GroupNorm(32) on 32
        channels would normalise each channel alone. No dropout: a run of a few CPU-hours sees
        CIFAR-10 ~10-20 times and underfits rather than overfits (the paper's 0.1 fights
        overfitting over 800k steps).
        """
        return cls(**{**dict(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                             attention_resolutions=(16,), dropout=0.0, num_groups=8), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """For tests and ``COURSE_FAST=1``: 32 channels, 2 levels, 1 res block, attention at 16x16; 0.29M parameters."""
        return cls(**{**dict(base_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                             attention_resolutions=(16,), dropout=0.0, num_groups=8), **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of ``dataclasses.asdict``; unknown keys raise a clear error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- building blocks


class EmbedBlock(nn.Module):
    """A layer whose forward takes the timestep embedding too: ``forward(x, emb)``.

    ``EmbedSequential`` hands ``emb`` to exactly these layers; other residual blocks (a later
    chapter's AdaGN block) subclass it to plug into the same UNet.
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ResBlock(EmbedBlock):
    """Residual block with *additive* timestep conditioning (DDPM App. B, after Wide ResNet):

        h = conv1(SiLU(GroupNorm(x)))
        h = h + Linear(SiLU(emb))[:, :, None, None]          # per-channel bias from the timestep
        h = conv2(Dropout(SiLU(GroupNorm(h))))
        out = shortcut(x) + h                                # 1x1 conv shortcut when channels change

    conv2 starts at zero, as in the DDPM code, so every block starts as the identity.

    ``emb_dim=None`` builds the block without a timestep embedding (no ``emb_proj``; call it as
    ``block(x)``): the ResnetBlock of latent diffusion's autoencoder (``temb_channels=0``), which
    ``course_lib.autoencoder`` builds its encoder and decoder from.
    """

    #: per-channel vectors the embedding is projected to (1: an additive bias)
    emb_outputs = 1

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None, dropout: float = 0.0,
                 num_groups: int = 32, eps: float = 1e-5):
        super().__init__()
        if emb_dim is None and self.emb_outputs != 1:
            raise ValueError(f"{type(self).__name__} is conditioned through its timestep embedding: give emb_dim "
                             "(ResBlock(..., emb_dim=None) is the block without one)")
        self.norm1 = nn.GroupNorm(num_groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = (nn.Linear(emb_dim, self.emb_outputs * out_channels) if emb_dim is not None
                         else None)
        self.norm2 = nn.GroupNorm(num_groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                         else nn.Identity())

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with a timestep embedding (emb_dim set): "
                                 "call it as block(x, emb)")
            h = h + rearrange(self.emb_proj(F.silu(emb)), "b c -> b c 1 1")
        elif emb is not None:
            raise ValueError("this ResBlock was built without a timestep embedding (emb_dim=None) and "
                             "takes none: call it as block(x)")
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # [B, C_out, H, W]
        return self.shortcut(x) + h


class AdaGNResBlock(ResBlock):
    """Residual block with adaptive group normalisation (AdaGN; Dhariwal & Nichol 2021, "Diffusion Models
    Beat GANs on Image Synthesis", Sec. 3, ablated in their Table 3; ``use_scale_shift_norm=True`` in
    openai/guided-diffusion, a flag already in the improved-DDPM code):

        h = conv1(SiLU(GroupNorm(x)))
        scale, shift = Linear(SiLU(emb)) split in two          # [B, C_out] each
        h = modulate(GroupNorm(h), shift, scale)               # = GroupNorm(h) * (1 + scale) + shift:
                                                               # the timestep sets each channel's gain and bias
        h = conv2(Dropout(SiLU(h)))
        out = shortcut(x) + h

    Unlike ResBlock's additive bias, which GroupNorm partly normalises away, the embedding acts
    after the norm and can also rescale features. conv2 starts at zero: the block starts as shortcut(x).
    The layers are ResBlock's; only the width of ``emb_proj`` and the forward pass differ.

    Stable Diffusion did *not* adopt it: the ResBlocks of SD 1.x, 2.x and SDXL add the embedding before
    the second GroupNorm exactly as :class:`ResBlock` does (their LDM configs leave ``use_scale_shift_norm``
    at its default False; diffusers' ``UNet2DConditionModel`` has ``resnet_time_scale_shift="default"``,
    i.e. ``ResnetBlock2D(time_embedding_norm="default")``; ``"scale_shift"`` is this block). Scale and
    shift from the timestep returns in the transformers of chapter 6 (DiT, SD3, Flux) as adaLN modulation,
    built on the same ``course_lib.conditioning.modulate``.
    """

    #: the embedding is projected to 2 x C_out: a scale and a shift per channel
    emb_outputs = 2

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        scale, shift = rearrange(self.emb_proj(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)  # [B, C_out, 1, 1]
        h = modulate(self.norm2(h), shift, scale)  # course_lib.conditioning; DiT's adaLN does this on tokens
        h = self.conv2(self.dropout(F.silu(h)))  # [B, C_out, H, W]
        return self.shortcut(x) + h


#: the residual blocks a UNet can be built from, by ``UNetConfig.resblock``
RES_BLOCKS: dict[str, type[EmbedBlock]] = {"additive": ResBlock, "adagn": AdaGNResBlock}


class AttentionBlock(HookableAttention):
    """Self-attention over the H*W positions of a feature map, with a residual connection (DDPM App. B):

        h = GroupNorm(x);  q, k, v = 1x1 conv(h) split in three, then in heads
        out = x + proj_out(Attention(q, k, v))

    ``proj_out`` starts at zero (as in the DDPM code), so the block starts as the identity.
    ``impl`` names the attention version of ``course_lib.attention`` ("einsum", "sdpa", "chunked").
    Attention goes through :meth:`HookableAttention.attend`, so ``course_lib.capture`` can record
    its maps (kind "self": one [H*W, H*W] matrix per head).
    """

    self_attention_only = True

    def __init__(self, channels: int, num_heads: int = 1, num_groups: int = 32, impl: str = "einsum",
                 eps: float = 1e-5):
        super().__init__(impl)
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x))  # [B, 3C, H, W]
        q, k, v = rearrange(qkv, "b (three h d) x y -> three b h (x y) d", three=3, h=self.num_heads)
        out = self.attend(q, k, v)  # [B, heads, H*W, d]
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=H, y=W)  # [B, C, H, W]
        return x + self.proj_out(out)


#: how a stride-2 convolution pads an even-sized input, (left, right, top, bottom): "symmetric" pads one pixel
#: on every side (the course's shipped models); "right_bottom" pads only the right and bottom, as LDM's and
#: diffusers' ``Downsample`` (``padding=0``) and TensorFlow's ``'SAME'`` do, so the output grid starts at the
#: first input pixel instead of one pixel before it
DOWNSAMPLE_PADDINGS = {"symmetric": (1, 1, 1, 1), "right_bottom": (0, 1, 0, 1)}


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution: [B, C, H, W] -> [B, C, H/2, W/2].

    ``padding``: a key of :data:`DOWNSAMPLE_PADDINGS`. With the same weights the two layouts compute
    different maps (shifted by one input pixel), so a checkpoint keeps the padding it was trained with."""

    def __init__(self, channels: int, padding: str = "symmetric"):
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"padding must be one of {sorted(DOWNSAMPLE_PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1 if padding == "symmetric" else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding != "symmetric":  # the convolution pads symmetrically itself
            x = F.pad(x, DOWNSAMPLE_PADDINGS[self.padding])  # [B, C, H + 1, W + 1]
        return self.conv(x)  # [B, C, H/2, W/2]

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}"


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 conv: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers where those that take the timestep embedding (``EmbedBlock``: ResBlocks)
    receive it, and those that take the text context (``ContextBlock``: SpatialTransformers) receive that."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,  # type: ignore[override]
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, EmbedBlock):
                x = layer(x, emb)
            elif isinstance(layer, ContextBlock):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------- the UNet


class UNet(nn.Module):
    """The DDPM UNet. ``UNet(UNetConfig.paper())`` is Ho et al.'s 35.7M-parameter CIFAR-10 model.

    forward(x [B, C, H, W] float, t [B] timesteps) -> [B, out_channels, H, W]

    With ``config.context_dim`` set (chapter 3): forward(x, t, context [B, M, context_dim] text
    tokens, context_mask [B, M] bool with True = real token, or None = all real); a context with
    batch size 1 is shared by every image.

    As a denoiser of ``course_lib.generation.Pipeline``: ``sample_shape`` is (in_channels, image_size,
    image_size), and ``text_conditional`` is False: a UNet reads text tokens given to it but encodes no
    prompts (``course_lib.text2image.TextToImageModel`` pairs it with a text encoder).
    """

    #: the denoiser interface of ``course_lib.generation``: no prompts of its own
    text_conditional = False

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        config = config or UNetConfig()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        self.time_embed = TimeEmbedding(ch, emb_dim, freq_shift=config.freq_shift)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        # Down path: remember the channel count of every skip connection it produces.
        self.down = nn.ModuleList()
        skip_channels = [ch]
        resolution = config.image_size
        for level, mult in enumerate(config.channel_mult):
            out_ch = config.base_channels * mult
            for _ in range(config.num_res_blocks):
                self.down.append(self._stage(ch, out_ch, resolution))
                ch = out_ch
                skip_channels.append(ch)
            if level != config.levels - 1:
                self.down.append(EmbedSequential(Downsample(ch, config.downsample_padding)))
                resolution //= 2
                skip_channels.append(ch)

        self.middle = EmbedSequential(
            self._res_block(ch, ch),
            self._attention_block(ch),
            self._res_block(ch, ch),
        )

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            out_ch = config.base_channels * mult
            for i in range(config.num_res_blocks + 1):
                stage = self._stage(ch + skip_channels.pop(), out_ch, resolution)
                ch = out_ch
                if level != 0 and i == config.num_res_blocks:
                    stage.append(Upsample(ch))
                    resolution *= 2
                self.up.append(stage)
        assert not skip_channels, "every skip connection must be consumed"

        self.norm_out = nn.GroupNorm(config.num_groups, ch, eps=config.norm_eps)
        self.conv_out = zero_module(nn.Conv2d(ch, config.resolved_out_channels, 3, padding=1))

    # The one place that decides which residual block the UNet is built from.
    def _res_block(self, in_channels: int, out_channels: int) -> nn.Module:
        c = self.config
        return RES_BLOCKS[c.resblock](in_channels, out_channels, 4 * c.base_channels, c.dropout, c.num_groups,
                                      eps=c.norm_eps)

    def _attention_block(self, channels: int) -> nn.Module:
        """Self-attention (unconditional) or a SpatialTransformer that also attends to text (context_dim set)."""
        c = self.config
        if c.conditional:
            return SpatialTransformer(channels, c.num_heads, c.context_dim, depth=c.transformer_depth,
                                      num_groups=c.num_groups, impl=c.attention_impl, dropout=c.dropout)
        return AttentionBlock(channels, c.num_heads, c.num_groups, c.attention_impl, eps=c.norm_eps)

    def _stage(self, in_channels: int, out_channels: int, resolution: int) -> EmbedSequential:
        """A ResBlock, followed by self-attention if this resolution is in attention_resolutions."""
        layers = [self._res_block(in_channels, out_channels)]
        if resolution in self.config.attention_resolutions:
            layers.append(self._attention_block(out_channels))
        return EmbedSequential(*layers)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what this UNet denoises at its training resolution."""
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor [B, C, H, W], got shape {shape}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor (images in [-1, 1]), got dtype {x.dtype}")
        B, C, H, W = x.shape
        if C != c.in_channels:
            raise ValueError(f"x has {C} channels but this UNet was built for in_channels={c.in_channels}")
        f = c.downsample_factor
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} must be divisible by 2**(levels-1) = {f} "
                f"(channel_mult={c.channel_mult} has {c.levels} levels)"
            )
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.ndim != 1 or t.shape[0] != B:
            raise ValueError(f"t must have shape [B] = [{B}] (one timestep per image), got {tuple(t.shape)}")
        return t.to(x.device)

    def _check_context(self, x: torch.Tensor, context: torch.Tensor | None,
                       context_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        c = self.config
        if not c.conditional:
            if context is not None or context_mask is not None:
                raise ValueError("this UNet is unconditional (UNetConfig.context_dim=None) and takes no context; "
                                 "call model(x, t), or build a text-conditional UNet with "
                                 "UNetConfig(context_dim=<text encoder width>)")
            return None, None
        if context is None:
            raise ValueError(f"this UNet is text-conditional (context_dim={c.context_dim}): call "
                             f"model(x, t, context, context_mask) with context [B, M, {c.context_dim}] text tokens; "
                             "for the unconditional prediction pass the empty caption's encoding")
        return check_context(context, context_mask, x.shape[0], c.context_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = self._check_inputs(x, t)
        context, context_mask = self._check_context(x, context, context_mask)  # [B, M, D], [B, M] or None
        emb = self.time_embed(t)  # [B, 4 ch]
        h = self.conv_in(x)  # [B, ch, H, W]
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, context, context_mask)  # [B, ch_level, H_level, W_level]
            skips.append(h)
        h = self.middle(h, emb, context, context_mask)  # [B, ch_last, H / 2^(levels-1), W / 2^(levels-1)]
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # [B, ch + ch_skip, h, w]
            h = stage(h, emb, context, context_mask)
        h = self.conv_out(F.silu(self.norm_out(h)))  # [B, out_channels, H, W]
        return h

