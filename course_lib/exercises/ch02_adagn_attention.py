"""Chapter 2's exercises (AdaGN and attention): the scale-and-shift of the AdaGN ResBlock, and (stretch)
attention over key chunks with the online softmax.

:func:`check_adagn_modulation` and :func:`check_online_softmax_attention`, with their cases, named mistakes
and hints; :func:`online_softmax_variant` reproduces the online softmax with its usual mistakes switched on.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import nn

from ..attention import einsum_attention
from .harness import Case, exercise, run_cases

__all__ = ["check_adagn_modulation", "check_online_softmax_attention", "online_softmax_variant"]


# --------------------------------------------------------------------------- chapter 2: AdaGN modulation


def _adagn_hint(err: Exception) -> str:
    text = str(err)
    if "must match the size of tensor" in text or "broadcast" in text:
        return (" Hint: scale and shift have shape [B, C]; reshape them to [B, C, 1, 1] (e.g. "
                "`scale[:, :, None, None]`) so that they act on every pixel of each channel.")
    if "chunk" in text or "split" in text or "unpack" in text:
        return " Hint: emb_out has 2 C channels; `scale, shift = emb_out.chunk(2, dim=1)` gives two [B, C] halves."
    return ""


def _adagn_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 3)
    cases = []
    for B, C, H, W, groups in [(2, 8, 4, 4, 4), (3, 16, 2, 8, 8), (4, 4, 4, 4, 4)]:  # B = W = 4 in the last: silent broadcast
        h = torch.randn(B, C, H, W, generator=g) * 3 + 1
        emb_out = torch.randn(B, 2 * C, generator=g) * 0.5
        norm = nn.GroupNorm(groups, C)
        with torch.no_grad():  # a trained norm has its own affine parameters: make them visible
            norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=g))
            norm.bias.copy_(0.3 * torch.randn(C, generator=g))
        scale, shift = rearrange(emb_out, "b (two c) -> two b c 1 1", two=2)  # [B, C, 1, 1] each
        with torch.no_grad():
            normed = norm(h)
            expected = normed * (1 + scale) + shift
            mistakes = {
                "scale and shift are swapped: the first C channels of emb_out are the scale, the last C the shift":
                    normed * (1 + shift) + scale,
                "multiply by (1 + scale), not by scale: with scale = 0 at the start of training the block "
                "must pass norm(h) through unchanged": normed * scale + shift,
                "the modulation goes *after* the norm: norm(h) * (1 + scale) + shift; applied before it, "
                "GroupNorm normalises most of it away again": norm(h * (1 + scale) + shift),
                "you added the shift but forgot the scale (that is additive conditioning after the norm)":
                    normed + shift,
                "you applied the scale but forgot the shift": normed * (1 + scale),
                "apply the norm: h must be normalised with `norm(h)` before it is modulated": h * (1 + scale) + shift,
            }
            if (H, W) == (B, C):  # [B, C] against [B, C, H, W] broadcasts along (H, W) without an error
                flat_scale, flat_shift = emb_out.chunk(2, dim=1)  # [B, C] each
                mistakes["scale and shift must be reshaped to [B, C, 1, 1]: as [B, C] they broadcast against the "
                          "last two dimensions (H, W) of h and silently modulate the wrong numbers"] = (
                    normed * (1 + flat_scale) + flat_shift)
        cases.append(Case((h, emb_out, norm), expected,
                          f"B={B}, C={C}, {H}x{W} feature maps, GroupNorm({groups}, {C})", mistakes))
    return cases


@exercise(
    "emb_out holds the scale and the shift side by side: `emb_out.chunk(2, dim=1)` splits it into two [B, "
    "C] tensors, the scale first.",
    "Normalise first, `norm(h)`; each [B, C] tensor then needs two trailing axes to broadcast over [B, C, "
    "H, W]: `scale[:, :, None, None]`.",
    "Multiply by (1 + scale), not by scale: a zero scale (the start of training) must leave the "
    "normalised features unchanged.",
)
def check_adagn_modulation(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(h, emb_out, norm) -> h_mod``, the AdaGN modulation of ``unet.AdaGNResBlock``
    (Nichol & Dhariwal 2021, "use_scale_shift_norm"):

        scale, shift = emb_out split in two halves         # emb_out [B, 2C] -> [B, C] each
        h_mod = norm(h) * (1 + scale) + shift             # broadcast over H, W

    h: [B, C, H, W];  emb_out: [B, 2C] (what ``emb_proj(SiLU(emb))`` gives);  norm: an ``nn.GroupNorm``.
    Prints the verdict; returns True if correct.
    """
    return run_cases("your adagn_modulation", fn, _adagn_cases(seed),
                "your adagn_modulation matches AdaGNResBlock's scale-and-shift after the GroupNorm.",
                hint_for=_adagn_hint)


# --------------------------------------------------------------------------- chapter 2 (stretch): online softmax


def online_softmax_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            chunk_size: int, *, rescale_o: bool = True, rescale_l: bool = True,
                            scale: bool = True, guard_empty_rows: bool = True) -> torch.Tensor:
    """The online softmax over key chunks, with switches that reproduce the usual mistakes."""
    if scale:
        q = q * q.shape[-1] ** -0.5
    m = q.new_full((*q.shape[:-1], 1), float("-inf"))  # [B, h, Nq, 1]
    l = q.new_zeros((*q.shape[:-1], 1))  # [B, h, Nq, 1]
    o = q.new_zeros((*q.shape[:-1], v.shape[-1]))  # [B, h, Nq, d_v]
    for start in range(0, k.shape[-2], chunk_size):
        cols = slice(start, start + chunk_size)
        s = q @ k[:, :, cols].transpose(-2, -1)  # [B, h, Nq, chunk]
        if mask is not None:
            s = s.masked_fill(~mask[..., cols], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        # a row whose keys so far are all masked has m = -inf: shift it by 0 (exp(-inf) = 0), not by -inf (NaN)
        shift = m_new.masked_fill(m_new == float("-inf"), 0.0) if guard_empty_rows else m_new
        p = torch.exp(s - shift)
        c = torch.exp(m - shift)
        l = (l * c if rescale_l else l) + p.sum(dim=-1, keepdim=True)
        o = (o * c if rescale_o else o) + p @ v[:, :, cols]
        m = m_new
    return o / torch.where(l == 0, 1.0, l)


def _online_softmax_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 8)
    cases = []
    for B, h, Nq, Nk, d, chunk, masked in [(2, 2, 5, 16, 8, 4, False), (2, 3, 6, 13, 8, 5, True),
                                           (1, 2, 7, 20, 4, 3, True)]:
        q = 2.0 * torch.randn(B, h, Nq, d, generator=g)  # spread-out scores: the running max changes often
        k, v = torch.randn(B, h, Nk, d, generator=g), torch.randn(B, h, Nk, d, generator=g)
        mask = None
        if masked:
            mask = torch.rand(B, h, Nq, Nk, generator=g) > 0.3  # True = may attend
            mask[0, 0, 1] = False  # a query that may attend to no key at all: its output is 0
            mask[-1, -1, 2, :chunk + 1] = False  # the first chunk entirely masked for one query
        expected = einsum_attention(q, k, v, mask)
        variant = lambda **kw: online_softmax_variant(q, k, v, mask, chunk, **kw)  # noqa: E731
        mistakes = {
            "when the running maximum grows from m to m', the running output must be rescaled too: "
            "o <- exp(m - m') o + sum exp(s' - m') v'": variant(rescale_o=False),
            "when the running maximum grows from m to m', the running sum must be rescaled too: "
            "l <- exp(m - m') l + sum exp(s' - m')": variant(rescale_l=False),
            "neither the running sum nor the running output was rescaled when the maximum changed: "
            "multiply both by exp(m - m')": variant(rescale_o=False, rescale_l=False),
            "the scores must be divided by sqrt(d)": variant(scale=False),
        }
        if masked:
            mistakes["the mask is ignored: masked keys (mask False) must get weight 0"] = (
                online_softmax_variant(q, k, v, None, chunk))
            empty = ~mask.any(dim=-1, keepdim=True)  # [B, h, Nq, 1]
            mistakes["a query whose keys are all masked attends to nothing and its output is 0 (as in "
                     "course_lib.attention), not the average of the values: use -inf for masked scores and "
                     "divide by l only where l > 0"] = torch.where(empty, v.mean(dim=-2, keepdim=True), expected)
        cases.append(Case((q, k, v, mask, chunk), expected,
                          f"q [{B}, {h}, {Nq}, {d}], {Nk} keys in chunks of {chunk}"
                          + (", with masked keys and a fully masked query" if masked else ""), mistakes))
    return cases


@exercise(
    "Scale q by 1/sqrt(d) once. Keep three running quantities per query while you visit the keys chunk by "
    "chunk: m, the largest score so far; l, the sum of exp(score - m); o, the sum of exp(score - m) v.",
    "When a chunk raises the maximum from m to m_new, the old sums were taken relative to m: multiply l "
    "and o by exp(m - m_new) before adding the chunk's exp(s - m_new) terms. The answer is o / l.",
    "Masked keys get the score -inf. A query that has so far seen only masked keys has m = -inf: shift by "
    "0 instead (exp(-inf) = 0, no NaN), and return 0 for a query whose l stays 0.",
)
def check_online_softmax_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(q, k, v, mask, chunk_size) -> out``, attention computed over key chunks with the online
    softmax (Milakov & Gimelshein 2018; the inner loop of FlashAttention, Dao et al. 2022), against
    ``attention.einsum_attention``. Per query keep m (running max of the scores), l (running sum of
    exp(s - m)) and o (running sum of exp(s - m) v); for each chunk with scores s':

        m' = max(m, max s');   l <- exp(m - m') l + sum exp(s' - m');   o <- exp(m - m') o + sum exp(s' - m') v'

    and return o / l (0 for a query whose keys are all masked). q [B, h, Nq, d], k [B, h, Nk, d],
    v [B, h, Nk, d_v]; mask None or bool [B, h, Nq, Nk] with True = may attend. Returns True if correct.
    """
    return run_cases("your online_softmax_attention", fn, _online_softmax_cases(seed),
                "your online_softmax_attention equals einsum_attention, masked keys and a fully masked "
                "query included.",
                shape_hint="The output has one row per query: [B, heads, Nq, d_v].",
                nonfinite_hint=("a query whose keys are all masked has every score -inf, so m stays -inf and "
                                "exp(s - m) is exp(-inf + inf) = NaN; shift by 0 where m is -inf, and return 0 "
                                "for such a query (divide by l only where l > 0)."))
