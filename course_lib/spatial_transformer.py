"""Cross-attention to text inside a UNet: the SpatialTransformer of latent diffusion
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.3;
``ldm/modules/attention.py``).

The image asks, the text answers. The feature map [B, C, H, W] is read as H*W image tokens;
in cross-attention the **queries come from the image tokens** and the **keys and values come
from the text tokens** (the encoded caption, [B, M, context_dim]):

    Q = image W_q,  K = text W_k,  V = text W_v,   out = softmax(Q K^T / sqrt(d)) V

so every position of the image takes a weighted average of the caption's token vectors, with
weights saying which words matter at that position (the attention maps of ``course_lib.capture``).

Pieces, from the inside out:

* ``GEGLU`` (Shazeer 2020, "GLU Variants Improve Transformer"): a, gate = x W split in two;
  out = a * GELU(gate).
* ``FeedForward``: GEGLU to ``mult * dim`` channels, dropout, Linear back to ``dim``.
* ``BasicTransformerBlock``: pre-norm transformer block on image tokens x [B, N, dim]
      x = x + SelfAttn(LN(x))                       # image tokens look at each other
      x = x + CrossAttn(LN(x), text, text mask)     # ... and at the caption
      x = x + FF(LN(x))
* ``SpatialTransformer``: GroupNorm, proj_in, [B, C, H, W] -> [B, H*W, C], ``depth`` blocks,
  back to [B, C, H, W], proj_out (zero-initialised), residual. It starts as the identity, so
  adding it to a UNet changes nothing until training moves proj_out away from zero.

Text masks: ``context_mask`` [B, M] is boolean with **True = a real token** (False = padding);
padded tokens get exactly zero attention weight, so what they hold does not matter.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import ATTENTION_IMPLS, MultiHeadAttention

__all__ = [
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "ContextBlock",
    "SpatialTransformer",
    "check_context",
]


def check_context(context: torch.Tensor | None, context_mask: torch.Tensor | None, batch: int,
                  context_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check text tokens ``context`` [B, M, context_dim] and their mask [B, M] (bool, True = real token).

    A context (or mask) with batch size 1 is shared by all ``batch`` images (expanded, no copy).
    Returns (context [batch, M, context_dim], mask [batch, M] or None).
    """
    if context is None:
        raise ValueError(f"this layer cross-attends to text: pass context=[B, M, {context_dim}] "
                         "(the encoded caption; for an unconditional prediction, the empty caption's encoding)")
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context must be a 3-D tensor [B, M, context_dim] = [B, M, {context_dim}] "
                         f"(M text tokens per image), got shape {shape}; a single caption [M, D] needs "
                         "context[None]")
    if not context.is_floating_point():
        raise TypeError(f"context must hold float token vectors (the text encoder's output), got dtype "
                        f"{context.dtype}; encode the token ids first")
    B, M, D = context.shape
    if D != context_dim:
        raise ValueError(f"context has {D} channels per token but this model was built for "
                         f"context_dim={context_dim}; use a text encoder with that width or rebuild the model")
    if B not in (1, batch):
        raise ValueError(f"context has batch size {B} but x has {batch}; give one caption per image "
                         "(or a single one, batch size 1, for all of them)")
    context = context.expand(batch, M, D)
    if context_mask is None:
        return context, None
    if not isinstance(context_mask, torch.Tensor) or context_mask.dtype != torch.bool:
        kind = context_mask.dtype if isinstance(context_mask, torch.Tensor) else type(context_mask).__name__
        raise TypeError(f"context_mask must be a boolean tensor [B, M] with True = real token, got {kind}; "
                        "for a 0/1 mask use mask.bool()")
    if context_mask.ndim != 2 or context_mask.shape[1] != M or context_mask.shape[0] not in (1, batch):
        raise ValueError(f"context_mask must have shape [B, M] = [{batch}, {M}] (one flag per text token), "
                         f"got {tuple(context_mask.shape)}")
    return context, context_mask.expand(batch, M)


class GEGLU(nn.Module):
    """Gated GELU unit (Shazeer 2020): a, gate = x W + b split in two;  out = a * GELU(gate).

    x [..., dim_in] -> [..., dim_out]; one Linear of width 2 * dim_out does both projections.
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)  # [..., dim_out] each
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's position-wise MLP with a GEGLU: dim -> mult * dim (gated) -> dim."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = mult * dim
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, N, dim]


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to text, feed-forward; each pre-normed and residual (LDM):

        x = x + SelfAttn(LN(x))                              # queries, keys, values: image tokens
        x = x + CrossAttn(LN(x), context, context_mask)      # queries: image; keys, values: text
        x = x + FF(LN(x))

    x [B, N, dim], context [B, M, context_dim], mask broadcastable to [B, heads, N, M] (True = attend)
    -> [B, N, dim]. ``impl`` picks the attention version of ``course_lib.attention``.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int, *, dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = MultiHeadAttention(dim, num_heads, impl=impl)  # self-attention
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = MultiHeadAttention(dim, num_heads, context_dim, impl=impl)  # cross-attention
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # [B, N, dim]
        x = x + self.attn2(self.norm2(x), context, mask)  # the image asks, the text answers
        return x + self.ff(self.norm3(x))


class ContextBlock(nn.Module):
    """A layer whose forward takes the text context: ``forward(x, context, context_mask)``.

    ``course_lib.unet.EmbedSequential`` hands the context to exactly these layers (as it hands
    the timestep embedding to ``EmbedBlock``s).
    """

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class SpatialTransformer(ContextBlock):
    """Transformer blocks over the H*W positions of a feature map, conditioned on text (LDM):

        h = proj_in(GroupNorm(x))  as tokens [B, H*W, C]
        h = BasicTransformerBlock(h, context)  (``depth`` times)
        out = x + proj_out(h)  back as [B, C, H, W]

    The image asks, the text answers: inside each block the queries are the image tokens and the
    keys and values the text tokens. proj_in and proj_out are Linear layers on the tokens (the
    same map as LDM's 1x1 convolutions); proj_out starts at zero, so the layer starts as the identity.

    forward(x [B, C, H, W], context [B, M, context_dim], context_mask [B, M] bool, True = real
    token, or None = every token is real) -> [B, C, H, W].
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int, depth: int = 1, num_groups: int = 32,
                 impl: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        if channels % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide channels={channels}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 transformer block, got {depth}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose from {sorted(ATTENTION_IMPLS)}")
        self.context_dim = context_dim
        self.norm = nn.GroupNorm(num_groups, channels, eps=1e-6)  # LDM's Normalize
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(channels, num_heads, context_dim, dropout=dropout, impl=impl) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)  # starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        context, context_mask = check_context(context, context_mask, B, self.context_dim)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # [B, 1, 1, M]: per key
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")  # [B, H*W, C]: one token per position
        h = self.proj_in(h)
        for block in self.blocks:
            h = block(h, context, mask)  # [B, H*W, C]
        h = self.proj_out(h)
        return x + rearrange(h, "b (h w) c -> b c h w", h=H, w=W)  # [B, C, H, W]
