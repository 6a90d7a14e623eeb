"""Chapter 6's exercises (MM-DiT): adaLN-Zero's modulated, gated residual, the joint attention over
[text, image], and Flux's rotary position embedding over the grid's axes.

:func:`check_gated_residual`, :func:`check_joint_attention` and :func:`check_rope`, with their cases, named
mistakes and hints.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..mmdit import apply_rope, image_positions, rope_angles
from .harness import Case, close, exercise, run_cases, verdict

__all__ = ["check_gated_residual", "check_joint_attention", "check_rope"]


# --------------------------------------------------------------------------- chapter 6: the MM-DiT block


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)  # no affine: the modulation is the affine


def _gated_residual_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 31)
    cases = []
    for B, N, D in [(2, 5, 8), (3, 16, 12), (1, 7, 16)]:
        x = torch.randn(B, N, D, generator=g) * 2 + 0.5
        shift, scale, gate = (torch.randn(B, 1, D, generator=g) * 0.5 for _ in range(3))
        weight = torch.randn(D, D, generator=g) / D ** 0.5

        def f(h, weight=weight):  # a fixed stand-in for the attention or the MLP
            return torch.tanh(h @ weight)

        normed = _layer_norm(x)
        expected = x + gate * f(normed * (1 + scale) + shift)
        mistakes = {
            "multiply by (1 + scale), not by scale: adaLN-Zero starts with every modulation at 0, and the sub-layer "
            "must then see LN(x) unchanged": x + gate * f(normed * scale + shift),
            "shift and scale are swapped: h = LN(x) * (1 + scale) + shift": x + gate * f(normed * (1 + shift) + scale),
            "the gate is missing: x + gate * f(h); without it the block is not the identity at initialisation":
                x + f(normed * (1 + scale) + shift),
            "the residual is missing: the block returns x + gate * f(h), not only the update":
                gate * f(normed * (1 + scale) + shift),
            "normalise first, then modulate: LN(x) * (1 + scale) + shift; a LayerNorm after the modulation "
            "undoes most of it": x + gate * f(_layer_norm(x * (1 + scale) + shift)),
            "apply the LayerNorm to x before modulating it": x + gate * f(x * (1 + scale) + shift),
            "the gate multiplies the sub-layer's output f(h), not its input": x + f(gate * (normed * (1 + scale) + shift)),
        }
        cases.append(Case((x, f, shift, scale, gate), expected, f"x [{B}, {N}, {D}], modulation [{B}, 1, {D}]",
                          mistakes))
    return cases


@exercise(
    "LayerNorm without learned parameters is `F.layer_norm(x, x.shape[-1:], eps=1e-6)`; modulate it: "
    "LN(x) * (1 + scale) + shift.",
    "Run f on the modulated features, multiply by gate, and add the result to x: x + gate * f(h). With a "
    "zero gate the block is the identity (adaLN-Zero).",
)
def check_gated_residual(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x, f, shift, scale, gate) -> x_new``, one modulated, gated sub-layer of a DiT / MM-DiT block
    (Peebles & Xie 2023, adaLN-Zero; ``course_lib.mmdit.DoubleStreamBlock``):

        h     = LayerNorm(x) * (1 + scale) + shift        # LayerNorm without its own affine, eps 1e-6
        x_new = x + gate * f(h)

    x [B, N, D] tokens; shift, scale, gate [B, 1, D] (one triple per example, the same for every token); f the
    sub-layer (attention or MLP), a function [B, N, D] -> [B, N, D]. Prints the verdict; returns True if correct.
    """
    return run_cases("your gated_residual", fn, _gated_residual_cases(seed),
                "your gated_residual is the modulate-and-gate step of DoubleStreamBlock and SingleStreamBlock.",
                shape_hint="x_new has the shape of x [B, N, D]; shift, scale and gate [B, 1, D] broadcast over "
                           "the tokens.")


def _joint_attention_reference(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v


def _joint_attention_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 37)
    cases = []
    for B, heads, L, N, d in [(2, 2, 3, 6, 8), (1, 4, 5, 16, 4), (3, 1, 2, 9, 16)]:
        txt_q, txt_k, txt_v = (torch.randn(B, heads, L, d, generator=g) for _ in range(3))
        img_q, img_k, img_v = (torch.randn(B, heads, N, d, generator=g) for _ in range(3))
        q, k, v = (torch.cat(p, dim=2) for p in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        expected = _joint_attention_reference(q, k, v)  # [B, heads, L + N, d]: text rows first
        separate = torch.cat([_joint_attention_reference(txt_q, txt_k, txt_v),
                              _joint_attention_reference(img_q, img_k, img_v)], dim=2)
        cross = torch.cat([_joint_attention_reference(txt_q, img_k, img_v),
                           _joint_attention_reference(img_q, txt_k, txt_v)], dim=2)
        no_scale = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        mistakes = {
            "each stream attended only to itself (two separate self-attentions); in joint attention every token "
            "attends over the concatenated [text, image] sequence": separate,
            "each stream attended only to the other one (cross-attention both ways); joint attention includes "
            "the stream's own tokens as keys too": cross,
            "divide the scores by sqrt(d), the head dimension, before the softmax": no_scale,
        }
        cases.append(Case((txt_q, txt_k, txt_v, img_q, img_k, img_v), expected,
                          f"{L} text and {N} image tokens, {heads} head(s) of {d}", mistakes))
    return cases


@exercise(
    "Concatenate text and image along the token axis (dim 2 of [B, h, tokens, d]), text first, for q, k "
    "and v alike.",
    "One attention over all L + N tokens (`F.scaled_dot_product_attention(q, k, v)`), then split the "
    "output back at L = the number of text tokens: [:, :, :L] is the text's, [:, :, L:] the image's.",
)
def check_joint_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(txt_q, txt_k, txt_v, img_q, img_k, img_v) -> (txt_out, img_out)``, the joint attention of SD3's
    MM-DiT block (Esser et al. 2024, Fig. 2; ``course_lib.mmdit.DoubleStreamBlock``):

        q, k, v = concat([txt_q, img_q]), ...            # along the tokens: [B, heads, L + N, d]
        out     = softmax(q k^T / sqrt(d)) v             # one attention over both streams
        txt_out, img_out = out[:, :, :L], out[:, :, L:]  # split back: [B, heads, L, d] and [B, heads, N, d]

    Prints the verdict; returns True if correct.
    """
    def joined(*args):
        out = fn(*args)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, torch.Tensor) for o in out)):
            raise TypeError(f"return two tensors, (txt_out, img_out), got {type(out).__name__}")
        txt_out, img_out = out
        if txt_out.shape != args[0].shape or img_out.shape != args[3].shape:
            raise ValueError(f"txt_out must have the text queries' shape {tuple(args[0].shape)} and img_out the image "
                             f"queries' shape {tuple(args[3].shape)}; got {tuple(txt_out.shape)} and "
                             f"{tuple(img_out.shape)}: split the joint output at L, the number of text tokens")
        return torch.cat([txt_out, img_out], dim=2)

    return run_cases("your joint_attention", joined, _joint_attention_cases(seed),
                "your joint_attention is the attention of DoubleStreamBlock (before RoPE and the output projections).",
                hint_for=lambda err: "")


# --------------------------------------------------------------------------- chapter 6: rotary positions


def _rotate_pairs(x: torch.Tensor, angles: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Adjacent pairs of x [..., L, d] rotated by angles [L, d / 2] (sign -1: the other way round)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), sign * angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _half_split(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The rotate-half convention (GPT-NeoX, Llama in transformers): pair j is (x_j, x_j+d/2), not (x_2j, x_2j+1)."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def _half_split_per_axis(x: torch.Tensor, angles: torch.Tensor, axes_dim) -> torch.Tensor:
    """The rotate-half layout applied within each axis's share of the head."""
    parts = zip(x.split(list(axes_dim), dim=-1), angles.split([dim // 2 for dim in axes_dim], dim=-1))
    return torch.cat([_half_split(part, a) for part, a in parts], dim=-1)


def _frequencies(axes_dim, theta, per_axis_dim):
    """Angles per unit position of each pair, axis by axis, with omega_j = theta^(-2j / per_axis_dim(dim))."""
    return [theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / per_axis_dim(dim)) for dim in axes_dim]


def _angles_with(positions, omegas):
    return torch.cat([positions[:, a, None].double() * w for a, w in enumerate(omegas)], dim=-1).float()


def _rope_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 41)
    cases = []
    grids = [(torch.cat([torch.zeros(2, 3), image_positions(3, 3)]), (4, 6, 6),
              "2 text tokens at (0, 0, 0) and a 3 x 3 grid at (0, row, column), axes_dim (4, 6, 6), as Flux"),
             (torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij"), -1).reshape(-1, 2).float(),
              (4, 4), "a 3 x 4 grid, positions (row, column), axes_dim (4, 4)"),
             (torch.stack(torch.meshgrid(torch.arange(5) + 2., torch.arange(2) * 3., indexing="ij"), -1).reshape(-1, 2),
              (8, 4), "rows 2-6 and columns 0, 3, axes_dim (8, 4)")]
    for positions, axes, what in grids:
        theta = 10_000.0
        d = sum(axes)  # the head dimension
        x = torch.randn(2, 3, positions.shape[0], d, generator=g)
        expected = apply_rope(x, rope_angles(positions, axes, theta))
        one_axis = positions[:, -2:-1].expand(-1, len(axes))  # every axis given the rows
        mistakes = {
            "the pairs are adjacent, (x_2j, x_2j+1), as in Flux and the paper (RoFormer): the rotate-half split "
            "(x_j, x_j+d/2) of GPT-NeoX and Llama's transformers code is another layout of the same idea, and "
            "weights trained with one do not work with the other": _half_split(x, rope_angles(positions, axes, theta)),
            "the pairs are adjacent, (x_2j, x_2j+1), within each axis's share too: yours splits each share in halves "
            "(x_j, x_j+dim/2), the rotate-half layout": _half_split_per_axis(x, rope_angles(positions, axes, theta), axes),
            "the frequencies are omega_j = theta^(-2j / d_axis), j = 0, 1, ..., with d_axis the axis's own share of "
            "the head (axes_dim[a]); yours has the exponent -j / d_axis":
                _rotate_pairs(x, _angles_with(positions, _frequencies(axes, theta, lambda dim: 2 * dim))),
            "the frequencies are omega_j = theta^(-2j / d_axis) with d_axis the axis's own share of the head "
            "(axes_dim[a]), not the whole head dimension d":
                _rotate_pairs(x, _angles_with(positions, _frequencies(axes, theta, lambda dim: d))),
            "every axis rotates by its own position: axis a's pairs (its axes_dim[a] dimensions, in order) use "
            "positions[:, a]; yours rotates them all by one axis (the rows)":
                apply_rope(x, rope_angles(one_axis, axes, theta)),
            "the rotation goes the other way: (x_2j, x_2j+1) -> (x_2j cos a - x_2j+1 sin a, x_2j sin a + x_2j+1 cos a)":
                _rotate_pairs(x, rope_angles(positions, axes, theta), sign=-1.0),
            "the axes are matched to the wrong positions: axes_dim[a] goes with positions[:, a], in order":
                apply_rope(x, rope_angles(positions.flip(-1), axes, theta)),
        }
        cases.append(Case((x, positions, axes, theta), expected, what, mistakes))
    return cases


@exercise(
    "Angles first: for axis a with dim = axes_dim[a], omega = theta ** (-torch.arange(0, dim, 2) / dim) (dim / 2 "
    "frequencies) and angle = positions[:, a, None] * omega, [L, dim / 2]; concatenate the axes' angles in order: "
    "[L, d / 2].",
    "Rotate adjacent pairs: even, odd = x[..., 0::2], x[..., 1::2]; the rotated pair is (even cos - odd sin, "
    "even sin + odd cos); interleave them back with torch.stack([...], dim=-1).flatten(-2).",
)
def check_rope(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x, positions, axes_dim, theta) -> x_rotated``, Flux's rotary position embedding over several axes
    (Su et al. 2021, RoFormer; ``course_lib.mmdit.rope_angles`` and ``apply_rope``):

        for axis a, its axes_dim[a] dimensions of the head, in order:
            omega_j = theta^(-2j / axes_dim[a]),  j = 0 .. axes_dim[a] / 2 - 1
            angle   = positions[:, a] * omega_j                     # [L, axes_dim[a] / 2]
        (x_2j, x_2j+1) -> (x_2j cos angle_j - x_2j+1 sin angle_j,  x_2j sin angle_j + x_2j+1 cos angle_j)

    x [B, heads, L, d] queries or keys; positions [L, n_axes] (row and column; Flux: index, row, column);
    axes_dim n_axes even sizes that sum to d. Before comparing with the library it checks the two properties that
    make RoPE work: every token keeps its norm, and the score of a query and a key depends only on their offset.
    Prints the verdict; returns True if correct.
    """
    cases = _rope_cases(seed)
    x, positions, axes, theta = cases[0].args  # Flux's three axes
    try:
        out = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in (x, positions, axes, theta)))
        shifted = fn(x.clone(), positions + torch.tensor([0.0, 3.0, -2.0]), axes, theta)
    except Exception:  # noqa: BLE001 - run_cases below reports errors, types and shapes with its own messages
        out = shifted = None
    if isinstance(out, torch.Tensor) and out.shape == x.shape and isinstance(shifted, torch.Tensor) \
            and shifted.shape == x.shape:
        if not close(out.norm(dim=-1), x.norm(dim=-1)):
            return verdict(False, "a rotation keeps every token's length, and yours changes it: each pair "
                                  "(x_2j, x_2j+1) must become (x_2j cos a - x_2j+1 sin a, x_2j sin a + x_2j+1 cos a), "
                                  "with the same angle a in both lines.")
        if not close(out @ out.transpose(-2, -1), shifted @ shifted.transpose(-2, -1)):
            return verdict(False, "moving every token by the same offset (here 3 rows, -2 columns) must leave every "
                                  "query-key score unchanged, and yours changes: the angle must be position * omega, "
                                  "the same omega for a pair wherever the token is.")
    return run_cases("your rope", fn, cases,
                     "your rope is course_lib.mmdit's rope_angles + apply_rope: Flux's rotary embedding.",
                     shape_hint="the result has the shape of x [B, heads, L, d]; positions [L, n_axes] give the "
                                "angles, one per token and pair: [L, d / 2].")
