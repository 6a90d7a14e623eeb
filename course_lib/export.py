"""The course's models in diffusers' layout: the name maps between the two libraries' state dicts.

The course's blocks are written to compute what their diffusers twins compute; what differs is the names
(LDM's, which the course keeps: ``encoder.down[i].block[j]``) and a few tensor shapes (diffusers' attention
projections are ``nn.Linear`` where LDM's are 1x1 convolutions, and the course fuses q, k and v into one).
A map here turns a course model into ``(config, state_dict)`` for a diffusers class, and refuses, naming the
difference, when the course model's layout is one that diffusers cannot compute (it never writes a model that
loads and computes something else).

So far: :func:`autoencoder_to_diffusers`, chapter 4's :class:`~course_lib.autoencoder.AutoencoderKL` ->
``diffusers.AutoencoderKL``. ``tests/test_export.py`` checks that the two compute the same numbers.
"""

from __future__ import annotations

import torch

from .autoencoder import LDM_LAYOUT, AutoencoderKL

__all__ = ["LayoutError", "autoencoder_to_diffusers"]


class LayoutError(ValueError):
    """A course model whose layout its diffusers counterpart cannot compute; the message names the difference."""


def _resnet(prefix: str, target: str, sd: dict, out: dict) -> None:
    """A ResBlock without time embedding: the names differ only in its 1x1 skip (``shortcut``/``conv_shortcut``)."""
    for name, tensor in sd.items():
        if name.startswith(prefix + "."):
            rest = name[len(prefix) + 1:].replace("shortcut.", "conv_shortcut.")
            out[f"{target}.{rest}"] = tensor


def _attention(prefix: str, target: str, sd: dict, out: dict) -> None:
    """The middle self-attention: GroupNorm, one fused 1x1 qkv conv [3C, C, 1, 1] -> to_q / to_k / to_v Linear
    [C, C] (the fused rows are q, k, v in that order, heads inside each), 1x1 proj_out -> to_out.0."""
    out[f"{target}.group_norm.weight"] = sd[f"{prefix}.norm.weight"]
    out[f"{target}.group_norm.bias"] = sd[f"{prefix}.norm.bias"]
    weights = sd[f"{prefix}.qkv.weight"].flatten(1).chunk(3)  # 3 x [C, C]
    biases = sd[f"{prefix}.qkv.bias"].chunk(3)  # 3 x [C]
    for name, w, b in zip(("to_q", "to_k", "to_v"), weights, biases):
        out[f"{target}.{name}.weight"], out[f"{target}.{name}.bias"] = w, b
    out[f"{target}.to_out.0.weight"] = sd[f"{prefix}.proj_out.weight"].flatten(1)  # [C, C]
    out[f"{target}.to_out.0.bias"] = sd[f"{prefix}.proj_out.bias"]


def _middle(prefix: str, target: str, sd: dict, out: dict) -> None:
    _resnet(f"{prefix}.block_1", f"{target}.resnets.0", sd, out)
    _attention(f"{prefix}.attn_1", f"{target}.attentions.0", sd, out)
    _resnet(f"{prefix}.block_2", f"{target}.resnets.1", sd, out)


def autoencoder_to_diffusers(model: AutoencoderKL) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of the ``diffusers.AutoencoderKL`` that computes what ``model`` computes:
    ``diffusers.AutoencoderKL(**config).load_state_dict(state_dict)``.

    The map (course / LDM name -> diffusers name):

        encoder.down[i].block[j]     -> encoder.down_blocks[i].resnets[j]   (shortcut -> conv_shortcut)
        encoder.down[i].downsample   -> encoder.down_blocks[i].downsamplers[0]
        {en,de}coder.mid.block_1/_2  -> {en,de}coder.mid_block.resnets[0/1]
        {en,de}coder.mid.attn_1      -> {en,de}coder.mid_block.attentions[0] (qkv split into to_q/k/v)
        {en,de}coder.norm_out        -> {en,de}coder.conv_norm_out
        decoder.up[i]                -> decoder.up_blocks[levels - 1 - i]    (upsample -> upsamplers[0])
        scaling_factor (a buffer)    -> config["scaling_factor"]; config.shift_factor -> config["shift_factor"]

    Raises :class:`LayoutError` for a model diffusers cannot compute: GroupNorm eps or downsampling padding
    other than LDM's (``vae-small``: 1e-5 and symmetric padding), a decoder wider or deeper than the encoder,
    no middle attention, or more than one attention head.
    """
    c = model.config
    problems = [f"{name}={getattr(c, name)!r} (diffusers computes {value!r})" for name, value in LDM_LAYOUT.items()
                if getattr(c, name) != value]
    if c.decoder_base_channels not in (None, c.base_channels) or c.decoder_num_res_blocks not in (None, c.num_res_blocks):
        problems.append("a decoder wider or deeper than the encoder (diffusers' AutoencoderKL mirrors them)")
    if not c.mid_attention:
        problems.append("mid_attention=False (export with mid_block_add_attention=False is not written yet)")
    if c.num_heads != 1:
        problems.append(f"num_heads={c.num_heads} (diffusers' VAE attention has one head)")
    if problems:
        raise LayoutError("this autoencoder's layout is not one diffusers' AutoencoderKL computes: "
                          + "; ".join(problems) + ". It would load there and compute something else, so it is "
                          "not exported")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(c.levels):
        for j in range(c.num_res_blocks):
            _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", sd, out)
        if i != c.levels - 1:
            for p in ("weight", "bias"):
                out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{p}"] = sd[f"encoder.down.{i}.downsample.conv.{p}"]
        for j in range(c.num_res_blocks + 1):
            _resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{c.levels - 1 - i}.resnets.{j}", sd, out)
        if i != 0:
            for p in ("weight", "bias"):
                out[f"decoder.up_blocks.{c.levels - 1 - i}.upsamplers.0.conv.{p}"] = sd[f"decoder.up.{i}.upsample.conv.{p}"]
    for part in ("encoder", "decoder"):
        _middle(f"{part}.mid", f"{part}.mid_block", sd, out)
        for name in ("conv_in", "conv_out"):
            for p in ("weight", "bias"):
                out[f"{part}.{name}.{p}"] = sd[f"{part}.{name}.{p}"]
        for p in ("weight", "bias"):
            out[f"{part}.conv_norm_out.{p}"] = sd[f"{part}.norm_out.{p}"]
    for name in ("quant_conv", "post_quant_conv"):
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = sd[f"{name}.{p}"]
    config = {"in_channels": c.in_channels, "out_channels": c.in_channels,
              "down_block_types": ["DownEncoderBlock2D"] * c.levels, "up_block_types": ["UpDecoderBlock2D"] * c.levels,
              "block_out_channels": [c.base_channels * m for m in c.channel_mult],
              "layers_per_block": c.num_res_blocks, "act_fn": "silu", "latent_channels": c.latent_channels,
              "norm_num_groups": c.num_groups, "sample_size": c.image_size,
              "scaling_factor": float(model.scaling_factor), "shift_factor": c.shift_factor or None,
              "mid_block_add_attention": True}
    return config, out
