"""Chapter 3's exercises (text conditioning): cross-attention to the caption, and classifier-free guidance
in one batched forward pass.

:func:`check_cross_attention` and :func:`check_classifier_free_guidance`, with their cases, named mistakes
and hints; and :class:`ProbeConditionalDenoiser`, the fixed text-conditional stand-in that counts its calls.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..guidance import ClassifierFreeGuidance
from .harness import Case, clone_args, exercise, run_cases, verdict

__all__ = ["check_cross_attention", "check_classifier_free_guidance", "ProbeConditionalDenoiser",
           "cross_attention_cases"]


# --------------------------------------------------------------------------- chapter 3: cross-attention


def _cross_attention_hint(err: Exception) -> str:
    text = str(err)
    if "mat1 and mat2" in text or "size of tensor" in text or "broadcast" in text or "shapes cannot be multiplied" in text:
        return (" Hint: queries come from the image tokens x [B, N, D_x] (x @ w_q: [B, N, d]); keys and values from "
                "the text tokens context [B, M, D_c] (context @ w_k, context @ w_v: [B, M, d]); the scores "
                "q @ k.transpose(-2, -1) are [B, N, M], and the mask [B, M] becomes mask[:, None, :].")
    if "masked_fill" in text or "Boolean" in text or "bool" in text:
        return " Hint: mask is boolean with True = real token; fill the *padding* with -inf: scores.masked_fill(~mask[:, None, :], float('-inf'))."
    return ""


def cross_attention_cases(seed: int) -> list[Case]:
    """The cases of :func:`check_cross_attention` for ``seed``: 3 batches of padded captions, with the named
    mistakes of each."""
    g = torch.Generator().manual_seed(seed + 4)
    cases = []
    for B, N, M, D_x, D_c, d in [(2, 16, 5, 12, 10, 8), (3, 9, 7, 8, 6, 4), (2, 7, 7, 6, 6, 6)]:
        x = torch.randn(B, N, D_x, generator=g)
        context = torch.randn(B, M, D_c, generator=g)
        mask = torch.ones(B, M, dtype=torch.bool)
        mask[0, M - 2:] = False  # the first caption is padded
        mask[-1, M // 2:] = False  # the last one more so
        context[~mask] = 10 * torch.randn(int((~mask).sum()), D_c, generator=g)  # loud padding: ignoring the mask shows
        w_q, w_k, w_v = (torch.randn(D, d, generator=g) / D**0.5 for D in (D_x, D_c, D_c))
        q, k, v = x @ w_q, context @ w_k, context @ w_v  # [B, N, d], [B, M, d], [B, M, d]
        scores = q @ k.transpose(-2, -1) / d**0.5  # [B, N, M]
        key_mask = mask[:, None, :]  # [B, 1, M]

        def softmax_masked(s):
            return s.masked_fill(~key_mask, float("-inf")).softmax(-1)

        expected = softmax_masked(scores) @ v
        mistakes = {
            "the padding mask is ignored: padded text tokens must get zero attention "
            "(fill their scores with -inf before the softmax)": scores.softmax(-1) @ v,
            "the scores must be divided by sqrt(d), the width of q and k": softmax_masked(q @ k.transpose(-2, -1)) @ v,
            "the softmax goes over the text tokens (the last dimension of the [B, N, M] scores): each image "
            "position's weights over the caption sum to 1": (scores.masked_fill(~key_mask, -1e9).softmax(1)) @ v,
            "the mask is inverted: True marks a real token, so fill the scores where mask is False":
                torch.nan_to_num(scores.masked_fill(key_mask, float("-inf")).softmax(-1)) @ v,
            "the values come from the text (context @ w_v), not from the keys": softmax_masked(scores) @ k,
        }
        if (N, D_x) == (M, D_c):  # keys and values from x by mistake run without an error only here
            mistakes["keys and values must come from the text (context), not from the image tokens x: "
                     "that would be self-attention"] = softmax_masked(q @ (x @ w_k).transpose(-2, -1) / d**0.5) @ (x @ w_v)
        cases.append(Case((x, context, mask, w_q, w_k, w_v), expected,
                          f"B={B}, {N} image tokens of width {D_x}, {M} text tokens of width {D_c}, d={d}", mistakes))
    return cases


@exercise(
    "The queries come from the image tokens, the keys and values from the text: q = x @ w_q, k = context "
    "@ w_k, v = context @ w_v.",
    "scores = q @ k^T / sqrt(d) is [B, N, M]. mask [B, M] is True for real tokens: set the padded columns "
    "to -inf (`masked_fill(~mask[:, None, :], float('-inf'))`) before the softmax over the last axis, "
    "then multiply by v.",
)
def check_cross_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x, context, mask, w_q, w_k, w_v) -> out``, single-head cross-attention (the image asks,
    the text answers; Rombach et al. 2022, Sec. 3.3):

        Q = x W_q,  K = c W_k,  V = c W_v
        out = softmax(Q K^T / sqrt(d) + log mask) V      # padded text tokens get weight exactly 0

    x: [B, N, D_x] image tokens;  context: [B, M, D_c] text tokens;  mask: [B, M] bool, True = real token;
    w_q: [D_x, d], w_k, w_v: [D_c, d];  out: [B, N, d]. Prints the verdict; returns True if correct.
    """
    return run_cases("your cross_attention", fn, cross_attention_cases(seed),
                "your cross_attention matches softmax(Q K^T / sqrt(d)) V with the padding masked, "
                "for captions of several lengths.", hint_for=_cross_attention_hint)


# --------------------------------------------------------------------------- chapter 3: batched guidance


class ProbeConditionalDenoiser(nn.Module):
    """A fixed stand-in for a text-conditional eps-network, ``model(x, t, context) -> [B, C, H, W]``,
    which records the batch size of every call in ``calls``:

        out = 0.7 tanh(x) + tanh(mean over tokens of context)[:, :C] + 0.1 sin(0.3 t)

    Every image's answer depends only on its own x, t and context (as a real network's in eval mode).
    """

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        if not isinstance(t, torch.Tensor) or t.shape != (B,):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must have shape [{B}], one timestep per image of x (got {shape}); "
                             "when x is doubled to [x; x], double t too: torch.cat([t, t])")
        if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != B:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context must have shape [{B}, M, D], one caption per image of x (got {shape}); "
                             "with x doubled, pass torch.cat([cond, uncond])")
        self.calls.append(B)
        text = torch.tanh(context.mean(dim=1)[:, :C])  # [B, C]
        return 0.7 * torch.tanh(x) + text[:, :, None, None] + 0.1 * torch.sin(0.3 * t.to(x.dtype))[:, None, None, None]


def _cfg_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 7)
    cases = []
    for B, M, D, w in [(2, 5, 8, 3.0), (3, 4, 6, 7.5), (4, 6, 8, 0.5)]:
        model = ProbeConditionalDenoiser()
        x = torch.randn(B, 4, 4, 4, generator=g)
        t = torch.randint(0, 1000, (B,), generator=g)
        cond = torch.randn(B, M, D, generator=g)
        uncond = (0.3 * torch.randn(1, M, D, generator=g)).expand(B, M, D).clone()  # the empty caption, per image
        with torch.no_grad():
            expected = ClassifierFreeGuidance(lambda x_, t_, c_, m_: model(x_, t_, c_), cond,
                                              uncond_context=uncond, guidance=w)(x, t)
            e_c, e_u = model(x, t, cond), model(x, t, uncond)
        model.calls.clear()
        mistakes = {
            "the halves are swapped: the guided prediction starts at the *unconditional* one and moves towards "
            "the conditional one, uncond + w (cond - uncond); check the order of torch.cat([cond, uncond]) "
            "and of out.chunk(2)": e_c + w * (e_u - e_c),
            "that is Ho & Salimans' form (1 + w) cond - w uncond with their w; the course (like Stable "
            "Diffusion) writes uncond + w (cond - uncond), where w = 1 is the plain conditional model":
                e_c + w * (e_c - e_u),
            "w multiplies the difference (cond - uncond), then the unconditional prediction is added: "
            "uncond + w (cond - uncond)": e_u + w * e_c - e_u,
            "w goes on the difference only: uncond + w (cond - uncond), not w (uncond + cond - uncond)":
                w * e_c,
            "your result is the conditional prediction alone: either both halves of the batch got the caption "
            "(the second half needs uncond) or w was not applied": e_c,
            "your result is the unconditional prediction alone: the first half of the batch needs the "
            "caption, cond": e_u,
        }
        cases.append(Case((model, x, t, cond, uncond, w), expected,
                          f"B={B}, captions of {M} tokens of width {D}, w = {w}", mistakes))
    return cases


def _cfg_hint(err: Exception) -> str:
    text = str(err)
    if "must match the size of tensor" in text or "Sizes of tensors must match" in text:
        return (" Hint: concatenate along the batch dimension: torch.cat([x, x]) is [2B, C, H, W], "
                "torch.cat([cond, uncond]) is [2B, M, D], torch.cat([t, t]) is [2B].")
    return ""


@exercise(
    "One call on 2B images: `torch.cat([x, x])`, the timesteps twice, and the two contexts stacked in the "
    "same order, `torch.cat([cond, uncond])`.",
    "Split the output with `.chunk(2)`: the first half belongs to cond, the second to uncond. Then "
    "eps_uncond + w (eps_cond - eps_uncond).",
)
def check_classifier_free_guidance(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(model, x, t, cond, uncond, w) -> eps_guided``, classifier-free guidance with ONE
    batched forward pass (Ho & Salimans 2022, eq. 6, in the course's and Stable Diffusion's convention),
    against ``guidance.ClassifierFreeGuidance``:

        out = model([x; x], [t; t], [cond; uncond])           # one call on a batch of 2B
        eps_cond, eps_uncond = the two halves of out          # [B, C, H, W] each
        eps_guided = eps_uncond + w (eps_cond - eps_uncond)

    model: ``model(x [B, C, H, W], t [B], context [B, M, D])``; x: [B, C, H, W]; t: [B]; cond, uncond:
    [B, M, D] (the caption's and the empty caption's tokens); w: a float. The check also counts the
    model's calls: exactly one, on 2B images. Prints the verdict; returns True if correct.
    """
    name = "your classifier_free_guidance"
    if not run_cases(name, fn, _cfg_cases(seed), "", hint_for=_cfg_hint):
        return False
    case = _cfg_cases(seed + 100)[0]
    model, B = case.args[0], case.args[1].shape[0]
    with torch.no_grad():
        fn(*clone_args(case.args))
    if model.calls == [2 * B]:
        return verdict(True, f"{name} matches guidance.ClassifierFreeGuidance for w in (0.5, 3, 7.5), with one "
                              f"forward pass on the doubled batch of 2B images.")
    if model.calls == [B, B]:
        return verdict(False, f"{name} gives the right numbers but calls the model twice on B = {B} images. "
                               "Run both predictions in one call: model(torch.cat([x, x]), torch.cat([t, t]), "
                               "torch.cat([cond, uncond])), then split the output with .chunk(2).")
    return verdict(False, f"{name} gives the right numbers, but the model was called {len(model.calls)} time(s) "
                           f"with batch sizes {model.calls}; expected exactly one call on 2B = {2 * B} images.")
