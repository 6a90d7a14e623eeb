"""Chapter 6's MM-DiT and diffusers' ``FluxTransformer2DModel``: the name map, both ways, and the inputs it takes.

The course's :class:`~course_lib.mmdit.MMDiT` keeps Black Forest Labs' names (``src/flux/modules/layers.py``);
diffusers' Flux transformer computes the same blocks with other names and with q, k, v (and a single block's MLP
input) as separate Linear layers. The map (course name -> diffusers name; D = hidden_size, H = mlp hidden width):

    img_in, txt_in                      -> x_embedder, context_embedder
    time_in.0, time_in.2                -> time_text_embed.timestep_embedder.linear_1, linear_2
                                           (linear_1's input columns exchanged: the course's sinusoid is [sin, cos],
                                           diffusers' Flux embedding [cos, sin], flip_sin_to_cos=True)
    vector_in.0, vector_in.2            -> time_text_embed.text_embedder.linear_1, linear_2
    guidance_in.0, guidance_in.2        -> time_text_embed.guidance_embedder.linear_1, linear_2   (Flux-dev's
                                           guidance embedding, config guidance_embeds=True: a guidance-distilled
                                           model of chapter 7; linear_1's columns exchanged as time_in.0's)
    double_blocks[i]                    -> transformer_blocks[i]:
        img_mod.lin, txt_mod.lin        ->   norm1.linear, norm1_context.linear  (shift, scale, gate, x2: same order)
        img_attn.qkv  [3D, D]           ->   attn.to_q, attn.to_k, attn.to_v        (rows in thirds)
        txt_attn.qkv  [3D, D]           ->   attn.add_q_proj, add_k_proj, add_v_proj
        img_attn.norm.query/key_norm    ->   attn.norm_q, attn.norm_k               (RMSNorm: scale -> weight)
        txt_attn.norm.query/key_norm    ->   attn.norm_added_q, attn.norm_added_k
        img_attn.proj, txt_attn.proj    ->   attn.to_out.0, attn.to_add_out
        img_mlp.0/.2, txt_mlp.0/.2      ->   ff.net.0.proj/ff.net.2, ff_context.net.0.proj/ff_context.net.2
    single_blocks[i]                    -> single_transformer_blocks[i]:
        linear1  [3D + H, D]            ->   attn.to_q, attn.to_k, attn.to_v, proj_mlp   (rows split D, D, D, H)
        linear2                         ->   proj_out
        norm.query/key_norm, modulation.lin -> attn.norm_q / norm_k, norm.linear
    final_layer.adaLN_modulation.1      -> norm_out.linear   (rows' halves exchanged: course [shift, scale],
                                                             diffusers' AdaLayerNormContinuous [scale, shift])
    final_layer.linear                  -> proj_out

What diffusers fixes and the course makes an option (a course model outside these is refused, naming them):
a 256-wide time sinusoid (``time_dim``), an MLP of 4 x width (``mlp_ratio``), RoPE base 10000 (``theta``). A model
without q/k/v biases (``qkv_bias=False``) exports with zero biases: the same function.

What the course's MM-DiT does inside and a diffusers caller does outside (:func:`flux_inputs` builds it all):
patchify the latents into tokens (``FluxPipeline._pack_latents`` with the course's patch size; in_channels is
C p p and the config's patch_size 1), give the pooled text vector (the course: the mean of the real text tokens;
Flux: CLIP's pooled output), the position ids (text (0, 0, 0), image (0, row, col), as FluxPipeline makes them),
the text padding mask (``joint_attention_kwargs={"attention_mask": ...}``), the time divided by 1000 (Flux
multiplies its ``timestep`` by 1000, the course's rectified flow gives the network 1000 t), and unpatchify
the output (:func:`flux_output`).

A guidance-distilled MM-DiT (``guidance_embed=True``, chapter 7) embeds its guidance weight w as Flux-dev does: the
256-wide sinusoid of 1000 w through a second MLP, added to the time embedding. diffusers' Flux multiplies its
``guidance`` input by 1000 as it does ``timestep``, so :func:`flux_inputs` passes w itself. MeanFlow's interval
input (``interval_embed=True``) has no counterpart in Flux and is refused.
"""

from __future__ import annotations

import torch

from ..mmdit import MMDiT, MMDiTConfig, image_positions, patchify, unpatchify
from .maps import LayoutError, Pair, apply_map, config_value, refuse, same, swap_halves

__all__ = ["mmdit_pairs", "mmdit_config_to_diffusers", "mmdit_to_diffusers", "mmdit_config_from_diffusers",
           "mmdit_from_diffusers", "flux_inputs", "flux_output", "FLUX_DEFAULTS", "FLUX_TIME_DIM", "FLUX_TIME_SCALE"]

#: what diffusers' Flux transformer fixes: its time sinusoid's width, the factor it multiplies ``timestep`` by
FLUX_TIME_DIM, FLUX_TIME_SCALE = 256, 1000.0

#: diffusers' ``FluxTransformer2DModel`` constructor defaults (0.42) for keys a config.json may not write
FLUX_DEFAULTS = {"patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
                 "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                 "pooled_projection_dim": 768, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}

_STREAMS = (  # course stream -> its diffusers modulation, q/k/v, QK-norms, output projection and MLP
    ("img", "norm1", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), "to_out.0", "ff"),
    ("txt", "norm1_context", ("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"),
     "to_add_out", "ff_context"),
)


def mmdit_pairs(config: MMDiTConfig) -> list[Pair]:
    """The name map of an MM-DiT with this config, module by module (the table of the module docstring)."""
    c = config
    pairs = [Pair("img_in", "x_embedder"), Pair("txt_in", "context_embedder"),
             Pair("time_in.0", "time_text_embed.timestep_embedder.linear_1", "time_in"),
             Pair("time_in.2", "time_text_embed.timestep_embedder.linear_2"),
             Pair("vector_in.0", "time_text_embed.text_embedder.linear_1"),
             Pair("vector_in.2", "time_text_embed.text_embedder.linear_2")]
    if c.guidance_embed:  # Flux-dev's guidance_in: the same MLP as time_in, on the guidance weight's sinusoid
        pairs += [Pair("guidance_in.0", "time_text_embed.guidance_embedder.linear_1", "time_in"),
                  Pair("guidance_in.2", "time_text_embed.guidance_embedder.linear_2")]
    pairs += [Pair(f"double_blocks.{i}", f"transformer_blocks.{i}", "double") for i in range(c.depth_double)]
    pairs += [Pair(f"single_blocks.{i}", f"single_transformer_blocks.{i}", "single") for i in range(c.depth_single)]
    return pairs + [Pair("final_layer.adaLN_modulation.1", "norm_out.linear", "shift_scale"),
                    Pair("final_layer.linear", "proj_out")]


def _converters(config: MMDiTConfig) -> dict:
    """The converters of the MM-DiT's map; ``config.qkv_bias=False``: the course side has no q/k/v biases (exported
    as zeros, and on import they must be zeros)."""
    c = config
    half = c.time_dim // 2

    def time_in(below: dict) -> dict:
        out = same(below)
        out["weight"] = swap_halves(out["weight"], half)  # [D, 256]: [sin, cos] columns <-> [cos, sin]
        return out

    def shift_scale(below: dict) -> dict:
        out = same(below)
        for name in ("weight", "bias"):
            out[name] = torch.cat(out[name].chunk(2)[::-1])  # [2D, ...]: the two halves of the rows exchanged
        return out

    def linear_names(stream: str, mod: str, proj: str, mlp: str) -> list[tuple[str, str]]:
        """(course name, diffusers name) of one stream's plain linear layers: modulation, output projection, MLP."""
        pairs = [(f"{stream}_mod.lin", f"{mod}.linear"), (f"{stream}_attn.proj", f"attn.{proj}"),
                 (f"{stream}_mlp.0", f"{mlp}.net.0.proj"), (f"{stream}_mlp.2", f"{mlp}.net.2")]
        return [(f"{ours}.{p}", f"{theirs}.{p}") for ours, theirs in pairs for p in ("weight", "bias")]

    def double_to(below: dict) -> dict:
        out = {}
        for stream, mod, qkv, norms, proj, mlp in _STREAMS:
            for ours, theirs in linear_names(stream, mod, proj, mlp):
                out[theirs] = below.pop(ours)
            weights = below.pop(f"{stream}_attn.qkv.weight").chunk(3)  # 3 x [D, D]
            bias = below.pop(f"{stream}_attn.qkv.bias", None)
            biases = bias.chunk(3) if bias is not None else [w.new_zeros(w.shape[0]) for w in weights]
            for name, w, b in zip(qkv, weights, biases):
                out[f"attn.{name}.weight"], out[f"attn.{name}.bias"] = w, b
            out[f"attn.{norms[0]}.weight"] = below.pop(f"{stream}_attn.norm.query_norm.scale")
            out[f"attn.{norms[1]}.weight"] = below.pop(f"{stream}_attn.norm.key_norm.scale")
        return out

    def double_back(below: dict) -> dict:
        out = {}
        for stream, mod, qkv, norms, proj, mlp in _STREAMS:
            for ours, theirs in linear_names(stream, mod, proj, mlp):
                out[ours] = below.pop(theirs)
            out[f"{stream}_attn.qkv.weight"] = torch.cat([below.pop(f"attn.{name}.weight") for name in qkv])  # [3D, D]
            bias = torch.cat([below.pop(f"attn.{name}.bias") for name in qkv])  # [3D]
            if c.qkv_bias:
                out[f"{stream}_attn.qkv.bias"] = bias
            elif bias.any():
                raise LayoutError(f"the {stream} stream's q/k/v biases are not zero, but the course model has "
                                  "qkv_bias=False: it would compute something else")
            out[f"{stream}_attn.norm.query_norm.scale"] = below.pop(f"attn.{norms[0]}.weight")
            out[f"{stream}_attn.norm.key_norm.scale"] = below.pop(f"attn.{norms[1]}.weight")
        return out

    def single_to(below: dict) -> dict:
        D = c.hidden_size
        out = {}
        for p in ("weight", "bias"):
            q, k, v, mlp = below.pop(f"linear1.{p}").split([D, D, D, int(D * c.mlp_ratio)])  # rows
            out.update({f"attn.to_q.{p}": q, f"attn.to_k.{p}": k, f"attn.to_v.{p}": v, f"proj_mlp.{p}": mlp})
            out[f"proj_out.{p}"] = below.pop(f"linear2.{p}")
            out[f"norm.linear.{p}"] = below.pop(f"modulation.lin.{p}")
        out["attn.norm_q.weight"] = below.pop("norm.query_norm.scale")
        out["attn.norm_k.weight"] = below.pop("norm.key_norm.scale")
        return out

    def single_back(below: dict) -> dict:
        out = {}
        for p in ("weight", "bias"):
            parts = [below.pop(f"attn.to_{x}.{p}") for x in "qkv"] + [below.pop(f"proj_mlp.{p}")]
            out[f"linear1.{p}"] = torch.cat(parts)  # [3D + H, ...]
            out[f"linear2.{p}"] = below.pop(f"proj_out.{p}")
            out[f"modulation.lin.{p}"] = below.pop(f"norm.linear.{p}")
        out["norm.query_norm.scale"] = below.pop("attn.norm_q.weight")
        out["norm.key_norm.scale"] = below.pop("attn.norm_k.weight")
        return out

    return {"same": (same, same), "time_in": (time_in, time_in), "shift_scale": (shift_scale, shift_scale),
            "double": (double_to, double_back), "single": (single_to, single_back)}


# --------------------------------------------------------------------------- course -> diffusers


def mmdit_config_to_diffusers(config: MMDiTConfig) -> dict:
    """The ``FluxTransformer2DModel`` config (constructor arguments) computing what a course MM-DiT of ``config``
    computes, or a :class:`~course_lib.export.maps.LayoutError` naming what Flux fixes otherwise."""
    c = config
    problems = []
    if c.time_dim != FLUX_TIME_DIM:
        problems.append(f"time_dim={c.time_dim} (Flux's time sinusoid is {FLUX_TIME_DIM} wide)")
    if c.mlp_ratio != 4.0:
        problems.append(f"mlp_ratio={c.mlp_ratio} (Flux's MLPs are 4 x the width)")
    if c.theta != 10_000.0:
        problems.append(f"theta={c.theta} (Flux's rotary base is 10000)")
    if c.interval_embed:
        problems.append("interval_embed=True (MeanFlow's second time, t - r: Flux has no such input)")
    refuse("this MM-DiT's layout is not one diffusers' FluxTransformer2DModel computes", problems)
    return {"patch_size": 1, "in_channels": c.in_channels * c.patch_size ** 2, "out_channels": None,
            "num_layers": c.depth_double, "num_single_layers": c.depth_single,
            "attention_head_dim": c.hidden_size // c.num_heads, "num_attention_heads": c.num_heads,
            "joint_attention_dim": c.context_dim, "pooled_projection_dim": c.context_dim,
            "guidance_embeds": c.guidance_embed, "axes_dims_rope": list(c.rope_axes)}


def mmdit_to_diffusers(model: MMDiT) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of the ``diffusers.FluxTransformer2DModel`` computing what ``model`` computes, when
    called with :func:`flux_inputs` (and its output passed through :func:`flux_output`)."""
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = mmdit_config_to_diffusers(model.config)
    return config, apply_map(mmdit_pairs(model.config), tensors, _converters(model.config), to_diffusers=True)


# --------------------------------------------------------------------------- diffusers -> course


def mmdit_config_from_diffusers(config: dict, like: MMDiTConfig | None = None,
                                image_size: int | None = None) -> MMDiTConfig:
    """The course MM-DiT config computing what the ``FluxTransformer2DModel`` of ``config`` computes.

    What Flux's config does not say comes from ``like`` (the exported model's own config, from its card): the
    latents' channels and patch size (Flux's ``in_channels`` is their product C p p), the training resolution and
    ``qkv_bias``. Without it: FluxPipeline's 2x2 patches, C = in_channels / 4, and ``image_size`` must be given."""
    get = lambda key: config_value(config, key, FLUX_DEFAULTS)  # noqa: E731
    problems = []
    if get("pooled_projection_dim") != get("joint_attention_dim"):
        problems.append(f"pooled_projection_dim={get('pooled_projection_dim')} != joint_attention_dim="
                        f"{get('joint_attention_dim')} (Flux pools a second text encoder, CLIP; the course's MM-DiT "
                        "pools its own text tokens)")
    if get("patch_size") != 1:
        problems.append(f"patch_size={get('patch_size')} (the course patchifies before the transformer, as "
                        "FluxPipeline does)")
    if get("out_channels") not in (None, get("in_channels")):
        problems.append(f"out_channels={get('out_channels')} != in_channels={get('in_channels')}")
    patch = like.patch_size if like is not None else 2
    if get("in_channels") % patch ** 2:
        problems.append(f"in_channels={get('in_channels')} is not C x {patch}^2")
    size = like.image_size if like is not None else image_size
    if size is None:
        problems.append("no training resolution: the course's MM-DiT fixes its image tokens' positions; give "
                        "image_size=")
    refuse("this FluxTransformer2DModel's layout is not one the course's MM-DiT computes", problems,
           "it is not imported")
    try:
        return MMDiTConfig(in_channels=get("in_channels") // patch ** 2, image_size=size, patch_size=patch,
                           hidden_size=get("attention_head_dim") * get("num_attention_heads"),
                           num_heads=get("num_attention_heads"), rope_axes=tuple(get("axes_dims_rope")),
                           depth_double=get("num_layers"), depth_single=get("num_single_layers"), mlp_ratio=4.0,
                           context_dim=get("joint_attention_dim"), time_dim=FLUX_TIME_DIM, theta=10_000.0,
                           qkv_bias=like.qkv_bias if like is not None else True,
                           guidance_embed=bool(get("guidance_embeds")))
    except ValueError as err:
        raise LayoutError(f"this FluxTransformer2DModel's layout is not one the course's MM-DiT computes: "
                          f"{err}") from err


def mmdit_from_diffusers(config: dict, state_dict: dict[str, torch.Tensor], like: MMDiTConfig | None = None,
                         image_size: int | None = None) -> MMDiT:
    """The course :class:`~course_lib.mmdit.MMDiT` computing what the Flux transformer of ``config`` and
    ``state_dict`` computes; the inverse of :func:`mmdit_to_diffusers`, bit for bit."""
    course = mmdit_config_from_diffusers(config, like, image_size)
    model = MMDiT(course)
    model.load_state_dict(apply_map(mmdit_pairs(course), state_dict, _converters(course), to_diffusers=False))
    return model.eval()


# --------------------------------------------------------------------------- calling it


def flux_inputs(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                *, patch_size: int, guidance: torch.Tensor | float | None = None) -> dict:
    """The keyword arguments with which ``FluxTransformer2DModel(**flux_inputs(...))`` computes the course's
    ``MMDiT(x, t, context, context_mask)`` (then :func:`flux_output`): x [B, C, H, W] latents, t [B] the MM-DiT's
    time (1000 s for rectified flow: a FlowMatchEulerDiscreteScheduler's ``timestep``), context [B or 1, L, D]
    text tokens (``model.encode(prompts).tokens``), context_mask [B or 1, L] bool (True = real token), guidance
    the weight w of a guidance-distilled MM-DiT (``MMDiT(..., guidance=w)``; a number or [B]).

    Returns hidden_states [B, N, C p p] (patch tokens), encoder_hidden_states [B, L, D], pooled_projections [B, D]
    (the mean of the real text tokens), timestep [B] (t / 1000: Flux multiplies by 1000), img_ids [N, 3],
    txt_ids [L, 3], joint_attention_kwargs with the attention mask [B, L + N] over [text, image] keys, and
    guidance [B] (w itself: Flux multiplies it by 1000, as the course's MM-DiT does inside) when w is given."""
    B, _, H, W = x.shape
    context = context.expand(B, -1, -1)  # [B, L, D]
    L = context.shape[1]
    mask = (torch.ones(B, L, dtype=torch.bool, device=x.device) if context_mask is None
            else context_mask.bool().expand(B, L))  # [B, L]
    pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # [B, D], as MMDiT pools
    t = torch.as_tensor(t, device=x.device).float().reshape(-1).expand(B)  # [B]
    side_h, side_w = H // patch_size, W // patch_size
    keys = torch.cat([mask, torch.ones(B, side_h * side_w, dtype=torch.bool, device=x.device)], dim=1)  # [B, L + N]
    inputs = {"hidden_states": patchify(x, patch_size), "encoder_hidden_states": context, "pooled_projections": pooled,
              "timestep": t / FLUX_TIME_SCALE, "img_ids": image_positions(side_h, side_w).to(x.device),
              "txt_ids": torch.zeros(L, 3, device=x.device), "joint_attention_kwargs": {"attention_mask": keys}}
    if guidance is not None:
        inputs["guidance"] = torch.as_tensor(guidance, device=x.device).float().reshape(-1).expand(B)  # [B]
    return inputs


def flux_output(out: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The Flux transformer's output tokens [B, N, C p p] back as the course's prediction [B, C, H, W]."""
    return unpatchify(out, patch_size, height, width)
