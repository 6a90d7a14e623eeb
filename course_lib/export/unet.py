"""Chapters 1-5's UNet and diffusers' ``UNet2DModel`` / ``UNet2DConditionModel``: the name map, both ways.

The course's :class:`~course_lib.unet.UNet` is DDPM's (Ho et al. 2020, App. B), and diffusers' ``UNet2DModel`` is
the same network with other names: DDPM's converted checkpoints (``google/ddpm-cifar10-32``) are ``UNet2DModel``s.
With ``context_dim`` set (chapter 3) every attention block is latent diffusion's SpatialTransformer (Rombach et al.
2022), which is diffusers' ``Transformer2DModel`` inside a ``UNet2DConditionModel``, Stable Diffusion's UNet class.
The course keeps one flat list of stages per direction (``down[k]``, ``up[k]``); diffusers groups them per
resolution. The map (course name -> diffusers name; L = levels, n = num_res_blocks):

    time_embed.fc1, fc2           -> time_embedding.linear_1, linear_2     (sinusoid: Timesteps, no weights)
    conv_in                       -> conv_in
    down[k].0  (ResBlock)         -> down_blocks[level].resnets[j]         k counts the stages: n per level,
    down[k].1  (attention)        -> down_blocks[level].attentions[j]      then one Downsample (not after the
    down[k].0  (Downsample)       -> down_blocks[level].downsamplers[0]    last level)
    middle.0, middle.1, middle.2  -> mid_block.resnets[0], mid_block.attentions[0], mid_block.resnets[1]
    up[k].0, up[k].1              -> up_blocks[L-1-level].resnets[i], .attentions[i]     (n + 1 per level)
    up[k].1 or .2 (Upsample)      -> up_blocks[L-1-level].upsamplers[0]   (last stage of every level but the top)
    norm_out, conv_out            -> conv_norm_out, conv_out
    ResBlock / AdaGNResBlock      -> ResnetBlock2D  (emb_proj -> time_emb_proj, shortcut -> conv_shortcut;
                                     AdaGN is resnet_time_scale_shift="scale_shift": scale first, then shift)
    AttentionBlock                -> Attention      (qkv split into to_q/k/v, proj_out -> to_out.0)
    SpatialTransformer            -> Transformer2DModel  (blocks[i] -> transformer_blocks[i];
                                     attn{1,2}.to_out -> attn{1,2}.to_out.0; norm, proj_in, proj_out, norm1-3,
                                     to_q/k/v (no bias), ff.net.0.proj (GEGLU), ff.net.2 keep their names)

What the configs say, course -> diffusers (every layout option of :class:`~course_lib.unet.UNetConfig` has a
diffusers twin, so the shipped UNets export as they are):

    norm_eps                      -> norm_eps             (ResBlocks, self-attention and output GroupNorms)
    downsample_padding            -> downsample_padding   ("symmetric": 1, "right_bottom": 0, i.e. F.pad(0,1,0,1))
    freq_shift                    -> freq_shift           (flip_sin_to_cos=False: the course puts the sines first)
    resblock "additive"/"adagn"   -> resnet_time_scale_shift "default"/"scale_shift"
    num_heads (UNet2DModel)       -> attention_head_dim = channels / num_heads (None: one head per block): diffusers
                                     fixes the head *width*, the course the head *count*, so more than one head
                                     exports only when every attention block has the same width
    num_heads (UNet2DConditionModel) -> attention_head_dim (sic: in this class it is the head count, a naming slip
                                     diffusers keeps for old configs)
    context_dim, transformer_depth -> cross_attention_dim, transformer_layers_per_block; use_linear_projection=True
                                     (the course's proj_in/proj_out are Linear; a published model's 1x1 convolutions,
                                     SD 1.x's, import as the same Linear map)

Fixed on both sides: GroupNorm eps 1e-6 of the SpatialTransformer, LayerNorm eps 1e-5, GEGLU feed-forward of
4 x width, no bias on q/k/v, SiLU. One training-only difference: diffusers' ``UNet2DConditionModel`` builds its
SpatialTransformers without dropout, so a model trained with ``dropout`` > 0 exports its eval-mode function exactly
but would fine-tune there without the feed-forward dropout. A cross-attention mask goes in as
``encoder_attention_mask`` [B, M] (1 = real token), which diffusers turns into a bias of -10000 on padding: the
same attention as the course's exact zero, since every caption keeps at least its start token.
"""

from __future__ import annotations

import dataclasses

import torch

from ..unet import UNet, UNetConfig
from .maps import (ATTENTION, RESNET, SAME, Converter, LayoutError, Pair, apply_map, config_value,
                   modernise_attention_names, refuse, same, swap_halves)

__all__ = ["unet_pairs", "unet_diffusers_class", "unet_config_to_diffusers", "unet_to_diffusers",
           "unet_config_from_diffusers", "unet_from_diffusers", "UNET2D_DEFAULTS", "UNET2D_CONDITION_DEFAULTS"]

#: diffusers' ``UNet2DModel`` constructor defaults (0.42) for the keys an older config.json does not write
UNET2D_DEFAULTS = {"sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
                   "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
                   "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D", "layers_per_block": 2,
                   "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv",
                   "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu", "attention_head_dim": 8,
                   "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
                   "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
                   "num_class_embeds": None}

#: diffusers' ``UNet2DConditionModel`` constructor defaults (0.42) for the keys an older config.json does not write
UNET2D_CONDITION_DEFAULTS = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
    "layers_per_block": 2, "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None,
    "upcast_attention": False, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None}

_PADDINGS = {"symmetric": 1, "right_bottom": 0}
_TIME_SHIFTS = {"additive": "default", "adagn": "scale_shift"}


# --------------------------------------------------------------------------- the plan


def _level_has_attention(c: UNetConfig, level: int) -> bool:
    return c.image_size // 2 ** level in c.attention_resolutions


def unet_pairs(config: UNetConfig) -> list[Pair]:
    """The name map of a UNet with this config, module by module (the table of the module docstring)."""
    c = config
    attention = "transformer" if c.conditional else "attention"
    pairs = [Pair("time_embed.fc1", "time_embedding.linear_1", "time_in"),
             Pair("time_embed.fc2", "time_embedding.linear_2"), Pair("conv_in", "conv_in")]
    k = 0
    for level in range(c.levels):
        for j in range(c.num_res_blocks):
            pairs.append(Pair(f"down.{k}.0", f"down_blocks.{level}.resnets.{j}", "resnet"))
            if _level_has_attention(c, level):
                pairs.append(Pair(f"down.{k}.1", f"down_blocks.{level}.attentions.{j}", attention))
            k += 1
        if level != c.levels - 1:
            pairs.append(Pair(f"down.{k}.0.conv", f"down_blocks.{level}.downsamplers.0.conv"))
            k += 1
    pairs += [Pair("middle.0", "mid_block.resnets.0", "resnet"), Pair("middle.1", "mid_block.attentions.0", attention),
              Pair("middle.2", "mid_block.resnets.1", "resnet")]
    k = 0
    for level in reversed(range(c.levels)):
        block, has_attention = c.levels - 1 - level, _level_has_attention(c, level)
        for i in range(c.num_res_blocks + 1):
            pairs.append(Pair(f"up.{k}.0", f"up_blocks.{block}.resnets.{i}", "resnet"))
            if has_attention:
                pairs.append(Pair(f"up.{k}.1", f"up_blocks.{block}.attentions.{i}", attention))
            if level != 0 and i == c.num_res_blocks:
                pairs.append(Pair(f"up.{k}.{2 if has_attention else 1}.conv", f"up_blocks.{block}.upsamplers.0.conv"))
            k += 1
    return pairs + [Pair("norm_out", "conv_norm_out"), Pair("conv_out", "conv_out")]


def _transformer_to(below: dict) -> dict:
    """SpatialTransformer -> Transformer2DModel (linear projections): blocks -> transformer_blocks,
    to_out -> to_out.0."""
    out = {}
    for key in list(below):
        new = "transformer_" + key if key.startswith("blocks.") else key
        out[new.replace(".to_out.", ".to_out.0.")] = below.pop(key)
    return out


def _transformer_back(below: dict) -> dict:
    """Transformer2DModel -> SpatialTransformer; 1x1-convolution projections (use_linear_projection=False) become
    the same map as a Linear layer ([C, C, 1, 1] -> [C, C])."""
    out = {}
    for key in list(below):
        value = below.pop(key)
        if key.startswith(("proj_in.weight", "proj_out.weight")) and value.ndim == 4:
            value = value.flatten(1)  # [C, C]
        new = key[len("transformer_"):] if key.startswith("transformer_blocks.") else key
        out[new.replace(".to_out.0.", ".to_out.")] = value
    return out


def _converters(half: int, flip_sin_to_cos: bool) -> dict[str, Converter]:
    """The converters of a UNet's map; ``flip_sin_to_cos``: the diffusers side reads its sinusoid as [cos, sin]
    (half = base_channels // 2 of each), so the first time Linear's input columns are exchanged on the way in."""
    def time_back(below: dict) -> dict:
        out = same(below)
        if flip_sin_to_cos:
            out["weight"] = swap_halves(out["weight"], half)  # [4C, C]
        return out

    return {"same": SAME, "resnet": RESNET, "attention": ATTENTION, "transformer": (_transformer_to, _transformer_back),
            "time_in": (same, time_back)}


# --------------------------------------------------------------------------- course -> diffusers


def unet_diffusers_class(config: UNetConfig) -> str:
    """``"UNet2DConditionModel"`` for a text-conditional UNet (``context_dim`` set), else ``"UNet2DModel"``."""
    return "UNet2DConditionModel" if config.conditional else "UNet2DModel"


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    """The diffusers config (constructor arguments) of the UNet that computes what a course UNet of ``config``
    computes; :class:`~course_lib.export.maps.LayoutError` naming the differences where there is none."""
    c = config
    widths = [c.base_channels * m for m in c.channel_mult]
    attention_levels = [level for level in range(c.levels) if _level_has_attention(c, level)]
    attention = [_level_has_attention(c, level) for level in range(c.levels)]
    common = {"sample_size": c.image_size, "in_channels": c.in_channels, "out_channels": c.resolved_out_channels,
              "center_input_sample": False, "flip_sin_to_cos": False,
              "freq_shift": int(c.freq_shift) if float(c.freq_shift).is_integer() else c.freq_shift,
              "block_out_channels": widths, "layers_per_block": c.num_res_blocks,
              "downsample_padding": _PADDINGS[c.downsample_padding], "mid_block_scale_factor": 1,
              "dropout": c.dropout, "act_fn": "silu", "norm_num_groups": c.num_groups, "norm_eps": c.norm_eps,
              "resnet_time_scale_shift": _TIME_SHIFTS[c.resblock], "time_embedding_type": "positional"}
    if c.conditional:
        return {**common,
                "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
                "mid_block_type": "UNetMidBlock2DCrossAttn",
                "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
                "only_cross_attention": False, "cross_attention_dim": c.context_dim,
                "transformer_layers_per_block": c.transformer_depth,
                "attention_head_dim": c.num_heads,  # the head *count* in this class (diffusers' naming slip)
                "dual_cross_attention": False, "use_linear_projection": True, "upcast_attention": False,
                "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default"}
    head_widths = sorted({widths[level] // c.num_heads for level in attention_levels} | {widths[-1] // c.num_heads})
    refuse("this UNet's layout is not one diffusers' UNet2DModel computes",
           [f"num_heads={c.num_heads} over attention blocks {head_widths[0]} and {head_widths[1]} channels wide per "
            "head (diffusers' UNet2DModel fixes one head width, attention_head_dim, for every block)"]
           if c.num_heads > 1 and len(head_widths) > 1 else [])
    return {**common,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
            "mid_block_type": "UNetMidBlock2D",
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
            "downsample_type": "conv", "upsample_type": "conv",
            "attention_head_dim": None if c.num_heads == 1 else head_widths[0],  # None: one head per block
            "attn_norm_num_groups": c.num_groups,  # else an AdaGN UNet's middle attention would have no GroupNorm
            "add_attention": True, "class_embed_type": None, "num_class_embeds": None}


def unet_to_diffusers(unet: UNet) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of the diffusers UNet (:func:`unet_diffusers_class`) that computes what ``unet``
    computes: ``UNet2DModel(**config).load_state_dict(state_dict)``, or ``UNet2DConditionModel``'s for a
    text-conditional UNet, called as ``(x, t, encoder_hidden_states=context, encoder_attention_mask=mask)``."""
    config = unet_config_to_diffusers(unet.config)
    tensors = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    return config, apply_map(unet_pairs(unet.config), tensors, _converters(unet.config.base_channels // 2, False),
                             to_diffusers=True)


# --------------------------------------------------------------------------- diffusers -> course


def _one(value, name: str, problems: list[str]):
    """A per-block setting that the course has once: an int, or a list of equal ints."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(set(map(str, values))) != 1:
        problems.append(f"{name}={value} differs between blocks (the course has one value for all)")
    return values[0]


def unet_config_from_diffusers(class_name: str, config: dict) -> tuple[UNetConfig, bool]:
    """``(UNetConfig, flip_sin_to_cos)`` of the course UNet computing what the diffusers UNet of ``config`` (its
    config.json) computes, or a :class:`~course_lib.export.maps.LayoutError` naming every setting the course's
    UNet cannot express. Keys an older config does not write take diffusers' defaults (:data:`UNET2D_DEFAULTS`)."""
    conditional = class_name == "UNet2DConditionModel"
    if class_name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise LayoutError(f"a {class_name} is not a UNet the course imports (UNet2DModel, UNet2DConditionModel)")
    defaults = UNET2D_CONDITION_DEFAULTS if conditional else UNET2D_DEFAULTS
    get = lambda key: config_value(config, key, defaults)  # noqa: E731
    problems: list[str] = []

    def expect(key: str, allowed, why: str) -> None:
        if get(key) not in allowed:
            problems.append(f"{key}={get(key)!r} ({why})")

    widths = list(get("block_out_channels"))
    strip = lambda names: [n[len("UNetRes"):] if n.startswith("UNetRes") else n for n in names]  # noqa: E731
    down, up = strip(get("down_block_types")), strip(get("up_block_types"))
    attn_down, attn_up = (("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if conditional
                          else ("AttnDownBlock2D", "AttnUpBlock2D"))
    if not set(down) <= {"DownBlock2D", attn_down} or not set(up) <= {"UpBlock2D", attn_up} or \
            [b == attn_down for b in down] != [b == attn_up for b in reversed(up)] or len(down) != len(widths):
        problems.append(f"down_block_types={down}, up_block_types={up} (the course builds {attn_down} / DownBlock2D "
                        f"levels mirrored by {attn_up} / UpBlock2D)")
    expect("time_embedding_type", ("positional",), "the course's time embedding is the sinusoid")
    expect("center_input_sample", (False,), "the course feeds x as it is")
    expect("act_fn", ("silu",), "the course's blocks use SiLU")
    expect("mid_block_scale_factor", (1, 1.0), "the course's middle blocks are not rescaled")
    expect("downsample_padding", (0, 1), "the course pads 1 pixel on every side or at the right and bottom")
    expect("resnet_time_scale_shift", ("default", "scale_shift"), "the course's ResBlock adds the time step, "
           "its AdaGNResBlock scales and shifts")
    expect("class_embed_type", (None,), "the course's UNet has no class embedding")
    expect("num_class_embeds", (None,), "the course's UNet has no class embedding")
    if get("time_embedding_dim") not in (None, 4 * widths[0]):
        problems.append(f"time_embedding_dim={get('time_embedding_dim')} (the course's is 4 x {widths[0]})")
    if get("norm_num_groups") is None:
        problems.append("norm_num_groups=None (the course's UNet has GroupNorms)")
    if any(w % widths[0] for w in widths):
        problems.append(f"block_out_channels={widths} are not multiples of the first (the course's channel_mult)")
    sample_size = get("sample_size")
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0] if len(set(sample_size)) == 1 else None
    if not isinstance(sample_size, int):
        problems.append(f"sample_size={get('sample_size')!r} (the course needs one square training size to place "
                        "its attention)")
        sample_size = 32
    layers = _one(get("layers_per_block"), "layers_per_block", problems)
    attention_levels = [i for i, b in enumerate(down) if b == attn_down]
    if conditional:
        expect("mid_block_type", ("UNetMidBlock2DCrossAttn",), "the course's middle is ResBlock, SpatialTransformer, "
               "ResBlock")
        for key, why in (("only_cross_attention", "the course's SpatialTransformer has self-attention"),
                         ("dual_cross_attention", "one text encoder"),
                         ("class_embeddings_concat", "no class embedding"),
                         ("resnet_skip_time_act", "SiLU before every time projection")):
            if any(v for v in (get(key) if isinstance(get(key), (list, tuple)) else [get(key)])):
                problems.append(f"{key}={get(key)!r} ({why})")
        for key in ("addition_embed_type", "encoder_hid_dim", "encoder_hid_dim_type", "time_cond_proj_dim",
                    "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
                    "reverse_transformer_layers_per_block", "num_attention_heads"):
            expect(key, (None,), "the course's UNet has no such part")
        expect("mid_block_only_cross_attention", (None, False), "the course's SpatialTransformer has self-attention")
        expect("resnet_out_scale_factor", (1, 1.0), "the course's ResBlocks are not rescaled")
        expect("conv_in_kernel", (3,), "the course's conv_in is 3x3")
        expect("conv_out_kernel", (3,), "the course's conv_out is 3x3")
        expect("attention_type", ("default",), "the course's cross-attention is plain")
        heads = _one(get("attention_head_dim"), "attention_head_dim (the head count)", problems)
        context_dim = _one(get("cross_attention_dim"), "cross_attention_dim", problems)
        depth = get("transformer_layers_per_block")
        if isinstance(depth, (list, tuple)) and any(isinstance(d, (list, tuple)) for d in depth):
            problems.append(f"transformer_layers_per_block={depth} varies inside a block")
            depth = 1
        depth = _one(depth, "transformer_layers_per_block", problems)
    else:
        expect("mid_block_type", ("UNetMidBlock2D",), "the course's middle is ResBlock, attention, ResBlock")
        expect("add_attention", (True,), "the course's middle block has attention")
        expect("downsample_type", ("conv",), "the course downsamples with a stride-2 conv")
        expect("upsample_type", ("conv",), "the course upsamples by nearest neighbour and a conv")
        if get("attn_norm_num_groups") not in (None, get("norm_num_groups")) or \
                (get("attn_norm_num_groups") is None and get("resnet_time_scale_shift") != "default"):
            problems.append(f"attn_norm_num_groups={get('attn_norm_num_groups')!r} with resnet_time_scale_shift="
                            f"{get('resnet_time_scale_shift')!r} (the course's attention normalises with the UNet's "
                            "norm_num_groups; this one's middle attention has another GroupNorm, or none)")
        head_dim = get("attention_head_dim")
        counts = {widths[i] // (head_dim or widths[i]) for i in attention_levels + [len(widths) - 1]}
        if head_dim and any(widths[i] % head_dim for i in attention_levels + [len(widths) - 1]) or len(counts) != 1:
            problems.append(f"attention_head_dim={head_dim} gives attention blocks of different head counts "
                            f"{sorted(counts)} (the course has one num_heads)")
        heads, context_dim, depth = min(counts), None, 1
    refuse(f"this {class_name}'s layout is not one the course's UNet computes", problems, "it is not imported")
    out_channels = get("out_channels")
    try:
        course = UNetConfig(in_channels=get("in_channels"),
                            out_channels=None if out_channels == get("in_channels") else out_channels,
                            base_channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
                            num_res_blocks=layers, image_size=sample_size, dropout=float(get("dropout")),
                            attention_resolutions=tuple(sample_size // 2 ** i for i in attention_levels),
                            num_groups=get("norm_num_groups"), num_heads=heads,
                            resblock="adagn" if get("resnet_time_scale_shift") == "scale_shift" else "additive",
                            attention_impl="sdpa" if conditional else "einsum", context_dim=context_dim,
                            transformer_depth=depth, norm_eps=float(get("norm_eps")),
                            downsample_padding="symmetric" if get("downsample_padding") == 1 else "right_bottom",
                            freq_shift=float(get("freq_shift")))
    except ValueError as err:
        raise LayoutError(f"this {class_name}'s layout is not one the course's UNet computes: {err}") from err
    return course, bool(get("flip_sin_to_cos"))


def unet_from_diffusers(class_name: str, config: dict, state_dict: dict[str, torch.Tensor],
                        like: UNetConfig | None = None) -> UNet:
    """The course :class:`~course_lib.unet.UNet` computing what the diffusers UNet ``class_name`` of ``config``
    (its config.json) and ``state_dict`` computes; the inverse of :func:`unet_to_diffusers`, bit for bit.

    ``like``: the config the course model had before export (its card's), whose settings diffusers does not
    store (``attention_impl``: how attention is computed, not what) are taken over. A ``flip_sin_to_cos`` model
    imports with the first time Linear's input columns exchanged: the same function, the course's sinusoid order."""
    course, flip = unet_config_from_diffusers(class_name, config)
    if like is not None:
        course = dataclasses.replace(course, attention_impl=like.attention_impl)
    tensors = apply_map(unet_pairs(course), modernise_attention_names(state_dict),
                        _converters(course.base_channels // 2, flip), to_diffusers=False)
    unet = UNet(course)
    unet.load_state_dict(tensors)
    return unet.eval()
