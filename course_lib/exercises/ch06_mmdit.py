"""Chapter 6's exercises (MM-DiT): adaLN-Zero's modulated, gated residual and the joint attention over
[text, image].

:func:`check_gated_residual` and :func:`check_joint_attention`, with their cases, named mistakes and hints.
"""

from __future__ import annotations

from typing import Callable

import torch

from .harness import Case, exercise, run_cases

__all__ = ["check_gated_residual", "check_joint_attention"]


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
