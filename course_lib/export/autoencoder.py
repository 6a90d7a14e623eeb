"""Chapter 4's autoencoder and diffusers' ``AutoencoderKL``: the name map, both ways.

The course's :class:`~course_lib.autoencoder.AutoencoderKL` keeps LDM's names (``encoder.down[i].block[j]``);
diffusers renames them and holds the attention projections as Linear layers where LDM has 1x1 convolutions.
The map (course / LDM name -> diffusers name):

    encoder.down[i].block[j]     -> encoder.down_blocks[i].resnets[j]   (ResBlock -> ResnetBlock2D: export.maps)
    encoder.down[i].downsample   -> encoder.down_blocks[i].downsamplers[0]
    {en,de}coder.mid.block_1/_2  -> {en,de}coder.mid_block.resnets[0/1]
    {en,de}coder.mid.attn_1      -> {en,de}coder.mid_block.attentions[0] (qkv split into to_q/k/v)
    {en,de}coder.norm_out        -> {en,de}coder.conv_norm_out
    decoder.up[i]                -> decoder.up_blocks[levels - 1 - i]    (upsample -> upsamplers[0])
    scaling_factor (a buffer)    -> config["scaling_factor"]; config.shift_factor -> config["shift_factor"]

diffusers computes one layout only, LDM's (:data:`~course_lib.autoencoder.LDM_LAYOUT`: GroupNorm eps 1e-6, stride-2
convolutions padded at the right and bottom); a course autoencoder in another layout (``vae-small``: eps 1e-5,
symmetric padding) is refused with the differences named, and every imported one gets LDM's layout.
"""

from __future__ import annotations

import torch

from ..autoencoder import LDM_LAYOUT, AutoencoderConfig, AutoencoderKL
from .maps import (ATTENTION, RESNET, SAME, LayoutError, Pair, apply_map, config_value, modernise_attention_names,
                   refuse)

__all__ = ["autoencoder_pairs", "autoencoder_to_diffusers", "autoencoder_from_diffusers", "AUTOENCODER_DEFAULTS"]

#: diffusers' ``AutoencoderKL`` constructor defaults (0.42) for the keys an older config.json may not write
AUTOENCODER_DEFAULTS = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
                        "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1,
                        "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
                        "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
                        "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}

_CONVERTERS = {"same": SAME, "resnet": RESNET, "attention": ATTENTION}


def autoencoder_pairs(config: AutoencoderConfig) -> list[Pair]:
    """The name map of an autoencoder with this config, module by module (see the module docstring)."""
    c = config
    pairs = [Pair("encoder.conv_in", "encoder.conv_in")]
    for i in range(c.levels):
        for j in range(c.num_res_blocks):
            pairs.append(Pair(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "resnet"))
        if i != c.levels - 1:
            pairs.append(Pair(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"))
    for part in ("encoder", "decoder"):
        pairs.append(Pair(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", "resnet"))
        if c.mid_attention:
            pairs.append(Pair(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", "attention"))
        pairs.append(Pair(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", "resnet"))
    pairs.append(Pair("decoder.conv_in", "decoder.conv_in"))
    for i in range(c.levels):
        up = c.levels - 1 - i  # diffusers counts the decoder's levels from the lowest resolution
        for j in range(c.decoder_res_blocks + 1):
            pairs.append(Pair(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", "resnet"))
        if i != 0:
            pairs.append(Pair(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv"))
    for part in ("encoder", "decoder"):
        pairs += [Pair(f"{part}.norm_out", f"{part}.conv_norm_out"), Pair(f"{part}.conv_out", f"{part}.conv_out")]
    return pairs + [Pair("quant_conv", "quant_conv"), Pair("post_quant_conv", "post_quant_conv")]


def autoencoder_to_diffusers(model: AutoencoderKL) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of the ``diffusers.AutoencoderKL`` that computes what ``model`` computes:
    ``diffusers.AutoencoderKL(**config).load_state_dict(state_dict)``.

    Raises :class:`~course_lib.export.maps.LayoutError` for a model diffusers cannot compute: GroupNorm eps or
    downsampling padding other than LDM's (``vae-small``: 1e-5 and symmetric padding), a decoder wider or deeper
    than the encoder, or more than one attention head.
    """
    c = model.config
    problems = [f"{name}={getattr(c, name)!r} (diffusers computes {value!r})" for name, value in LDM_LAYOUT.items()
                if getattr(c, name) != value]
    if c.decoder_base != c.base_channels or c.decoder_res_blocks != c.num_res_blocks:
        problems.append("a decoder wider or deeper than the encoder (diffusers' AutoencoderKL mirrors them)")
    if c.mid_attention and c.num_heads != 1:
        problems.append(f"num_heads={c.num_heads} (diffusers' VAE attention has one head)")
    refuse("this autoencoder's layout is not one diffusers' AutoencoderKL computes", problems)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "scaling_factor"}
    state_dict = apply_map(autoencoder_pairs(c), tensors, _CONVERTERS, to_diffusers=True)
    config = {"in_channels": c.in_channels, "out_channels": c.in_channels,
              "down_block_types": ["DownEncoderBlock2D"] * c.levels, "up_block_types": ["UpDecoderBlock2D"] * c.levels,
              "block_out_channels": [c.base_channels * m for m in c.channel_mult],
              "layers_per_block": c.num_res_blocks, "act_fn": "silu", "latent_channels": c.latent_channels,
              "norm_num_groups": c.num_groups, "sample_size": c.image_size,
              "scaling_factor": float(model.scaling_factor), "shift_factor": c.shift_factor or None,
              "mid_block_add_attention": c.mid_attention}
    return config, state_dict


def autoencoder_from_diffusers(config: dict, state_dict: dict[str, torch.Tensor]) -> AutoencoderKL:
    """The course's :class:`~course_lib.autoencoder.AutoencoderKL` (in :data:`LDM_LAYOUT`) computing what the
    ``diffusers.AutoencoderKL`` of ``config`` (its config.json) and ``state_dict`` computes; the inverse of
    :func:`autoencoder_to_diffusers`, bit for bit. Refuses (naming them) what the course's class has no place
    for: other block types, an activation other than SiLU, per-channel latent statistics, no quant convs."""
    get = lambda key: config_value(config, key, AUTOENCODER_DEFAULTS)  # noqa: E731
    widths = list(get("block_out_channels"))
    problems = []
    if list(get("down_block_types")) != ["DownEncoderBlock2D"] * len(widths) or \
            list(get("up_block_types")) != ["UpDecoderBlock2D"] * len(widths):
        problems.append(f"down/up block types {get('down_block_types')} / {get('up_block_types')} (the course "
                        "builds DownEncoderBlock2D / UpDecoderBlock2D levels only)")
    if get("out_channels") != get("in_channels"):
        problems.append(f"out_channels={get('out_channels')} != in_channels={get('in_channels')}")
    if get("act_fn") != "silu":
        problems.append(f"act_fn={get('act_fn')!r} (the course's blocks use SiLU)")
    if any(w % widths[0] for w in widths):
        problems.append(f"block_out_channels={widths} are not multiples of the first (the course's channel_mult)")
    if get("latents_mean") is not None or get("latents_std") is not None:
        problems.append("per-channel latent statistics latents_mean/latents_std (the course's autoencoder has one "
                        "scaling factor and one shift)")
    if not (get("use_quant_conv") and get("use_post_quant_conv")):
        problems.append("no quant_conv / post_quant_conv (the course's autoencoder has both)")
    refuse("this AutoencoderKL's layout is not one the course's AutoencoderKL computes", problems,
           "it is not imported")
    try:
        course = AutoencoderConfig(in_channels=get("in_channels"), latent_channels=get("latent_channels"),
                                   base_channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
                                   num_res_blocks=get("layers_per_block"), num_groups=get("norm_num_groups"),
                                   mid_attention=bool(get("mid_block_add_attention")), num_heads=1,
                                   image_size=get("sample_size"), shift_factor=float(get("shift_factor") or 0.0),
                                   **LDM_LAYOUT)
    except ValueError as err:
        raise LayoutError(f"this AutoencoderKL's layout is not one the course's AutoencoderKL computes: {err}") from err
    model = AutoencoderKL(course)
    tensors = apply_map(autoencoder_pairs(course), modernise_attention_names(state_dict), _CONVERTERS,
                        to_diffusers=False)
    model.load_state_dict({**tensors, "scaling_factor": torch.tensor(float(get("scaling_factor")))})
    return model.eval()
