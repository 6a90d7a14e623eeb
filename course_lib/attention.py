"""Scaled dot-product attention three ways, behind one interface (Vaswani et al. 2017, eq. 1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

All three compute the same function and agree to float32 rounding; they differ in how they
spend time and memory:

* ``einsum_attention``:  the equation as written (chapter 1). It materialises the score matrix
  Q K^T, so memory grows as O(Nq * Nk) per head: 256 MB for 4 heads of 4096 x 4096 in float32.
* ``sdpa_attention``:    ``torch.nn.functional.scaled_dot_product_attention``, a fused kernel
  (FlashAttention, Dao et al. 2022, or a memory-efficient one) that torch picks per device.
* ``chunked_attention``: queries in blocks (Rabe & Staats 2021, "Self-attention does not need
  O(n^2) memory") and keys in blocks with an online softmax (Milakov & Gimelshein 2018, the
  trick inside FlashAttention), written in plain torch so that every step can be read.

Shapes: q [B, heads, Nq, d], k [B, heads, Nk, d], v [B, heads, Nk, d_v] -> [B, heads, Nq, d_v].
Nq may differ from Nk (cross-attention: queries from the image, keys and values from text).

Mask convention (the one of SDPA's boolean ``attn_mask``): a boolean tensor broadcastable to
[B, heads, Nq, Nk] where **True means "this query may attend to this key"**. Masked keys get
exactly zero weight. A query whose keys are *all* masked attends to nothing and its output is
**zero** (the plain formula would give 0/0 = NaN); all three versions do this.
Beware: ``torch.nn.MultiheadAttention``'s boolean mask means the opposite (True = blocked).

``attention(q, k, v, mask, impl="sdpa")`` picks a version by name. Every attention *layer* of the
course is a ``HookableAttention``: it computes attention through ``HookableAttention.attend``, which
first shows q and k to the hooks of ``register_attention_hook`` (how ``course_lib.capture`` records
attention maps without changing a bit of the output). Two layers build on it:
``MultiHeadAttention`` for token sequences [B, N, dim] (splits heads, attends, self or cross, and
merges), and the UNet's ``AttentionBlock`` for feature maps (``course_lib.unet``).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

__all__ = [
    "attention",
    "attention_weights",
    "einsum_attention",
    "sdpa_attention",
    "chunked_attention",
    "ATTENTION_IMPLS",
    "split_heads",
    "merge_heads",
    "HookableAttention",
    "MultiHeadAttention",
    "plain_attention",
    "attention_logit_stats",
]


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor | None:
    """Check shapes and the mask; return the mask broadcast to [B, heads, Nq, Nk] (a view, no copy)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, heads, N, d], got shape {tuple(x.shape)}; "
                             "split the heads first (split_heads)")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"need q [B, heads, Nq, d], k [B, heads, Nk, d], v [B, heads, Nk, d_v]; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean with True = attend, got dtype {mask.dtype}; "
                        "for a 0/1 float mask use mask.bool()")
    B, heads, Nq, Nk = *q.shape[:3], k.shape[2]
    try:
        return mask.broadcast_to(B, heads, Nq, Nk)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to [B, heads, Nq, Nk] = "
                         f"{[B, heads, Nq, Nk]}; a key-padding mask [B, Nk] becomes mask[:, None, None, :]"
                         ) from None


# --------------------------------------------------------------------------- 1. the equation


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention matrix softmax(Q K^T / sqrt(d)): [B, heads, Nq, Nk], each row sums to 1.

    Masked keys get weight 0; a row with every key masked is all zeros (attends to nothing).
    """
    mask = _check_inputs(q, k, k, mask)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5  # [B, heads, Nq, Nk]
    if mask is None:
        return scores.softmax(dim=-1)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # exp(-inf) = 0
    return weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # no key at all: 0/0 = NaN -> 0


def einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention written out (Vaswani et al. 2017, eq. 1):

        Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

    q [B, heads, Nq, d], k [B, heads, Nk, d], v [B, heads, Nk, d_v] -> [B, heads, Nq, d_v].
    Materialises the [B, heads, Nq, Nk] attention matrix: O(Nq * Nk) memory.
    """
    _check_inputs(q, k, v, mask)
    weights = attention_weights(q, k, mask)  # [B, heads, Nq, Nk]
    return torch.einsum("bhij,bhjd->bhid", weights, v)  # [B, heads, Nq, d_v]


# --------------------------------------------------------------------------- 2. the fused kernel


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V by ``F.scaled_dot_product_attention``: one fused call.

    torch picks the kernel (FlashAttention, memory-efficient attention or the plain "math"
    version) from the device, dtype and mask. Shapes and mask as in :func:`einsum_attention`.
    """
    mask = _check_inputs(q, k, v, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, Nq, d_v]
    if mask is not None:
        # torch's CPU kernels already return 0 for a query with no key (torch 2.14); this makes the
        # module's convention hold whichever kernel SDPA picks.
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


# --------------------------------------------------------------------------- 3. chunked, O(chunk^2) memory


def _attend_by_key_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                          key_chunk_size: int) -> torch.Tensor:
    """softmax(q K^T / sqrt(d)) V for one block of queries, reading the keys one block at a time.

    Online softmax (Milakov & Gimelshein 2018; FlashAttention's inner loop). Per query keep

        m   = the largest score seen so far                   (for numerical stability)
        l   = sum_j exp(s_j - m)                               (the softmax denominator)
        acc = sum_j exp(s_j - m) v_j                           (the numerator)

    A new key block with scores s' raises the maximum to m' = max(m, max s'); the old sums are
    rescaled by exp(m - m') and the block's terms added. At the end, output = acc / l.
    """
    q = q * q.shape[-1] ** -0.5  # scale the queries once instead of every block of scores
    m = q.new_full((*q.shape[:-1], 1), float("-inf"))  # [B, heads, n, 1]
    l = q.new_zeros((*q.shape[:-1], 1))  # [B, heads, n, 1]
    acc = q.new_zeros((*q.shape[:-1], v.shape[-1]))  # [B, heads, n, d_v]
    for start in range(0, k.shape[-2], key_chunk_size):
        cols = slice(start, start + key_chunk_size)
        s = torch.einsum("bhid,bhjd->bhij", q, k[:, :, cols])  # [B, heads, n, key_chunk], scaled scores
        if mask is not None:
            s = s.masked_fill(~mask[..., cols], float("-inf"))
        # The maximum only keeps exp() in range; the result does not depend on it, so no gradient
        # flows through it (Rabe & Staats 2021 stop the gradient here too).
        m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))
        # A query whose keys so far are all masked has m_new = -inf: shift by 0 so exp(-inf) = 0, not NaN.
        shift = m_new.masked_fill(m_new == float("-inf"), 0.0)
        p = torch.exp(s.sub_(shift))  # [B, heads, n, key_chunk], unnormalised weights (s is not needed again)
        rescale = torch.exp(m - shift)  # [B, heads, n, 1]; 0 on the first block
        l = l * rescale + p.sum(dim=-1, keepdim=True)
        acc = acc * rescale + torch.einsum("bhij,bhjd->bhid", p, v[:, :, cols])
        m = m_new
    # A query that saw no key at all has l = 0 and acc = 0: dividing by 1 gives the output 0.
    return acc / torch.where(l == 0, 1.0, l)  # [B, heads, n, d_v]


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                      *, chunk_size: int = 256, key_chunk_size: int | None = 1024) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with bounded memory (Rabe & Staats 2021).

    Each query's output depends on its own row of the attention matrix only, so the queries can
    be processed in blocks of ``chunk_size``: the score buffer shrinks from [Nq, Nk] to
    [chunk_size, Nk] per head. Blocking the keys too (``key_chunk_size``; None = all keys at
    once) with the online softmax of :func:`_attend_by_key_chunks` bounds it by
    [chunk_size, key_chunk_size], independent of the sequence lengths: the extra memory is
    O(chunk_size * key_chunk_size) per head instead of O(Nq * Nk), for the same arithmetic.

    Training: autograd would keep every block's weights for the backward pass, O(Nq * Nk) again.
    When gradients are needed, each query block is therefore recomputed in the backward pass
    (``torch.utils.checkpoint``, as Rabe & Staats do), which keeps training memory at
    O(chunk_size * Nk) per head for about one extra forward pass of compute.

    Shapes and mask as in :func:`einsum_attention`.
    """
    if chunk_size < 1 or (key_chunk_size is not None and key_chunk_size < 1):
        raise ValueError(f"chunk sizes must be >= 1, got chunk_size={chunk_size}, key_chunk_size={key_chunk_size}")
    mask = _check_inputs(q, k, v, mask)
    key_chunk_size = key_chunk_size or k.shape[-2]
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    outs = []
    for start in range(0, q.shape[-2], chunk_size):
        rows = slice(start, start + chunk_size)
        q_rows = q[:, :, rows]  # [B, heads, chunk, d]
        mask_rows = None if mask is None else mask[:, :, rows]  # [B, heads, chunk, Nk]
        if needs_grad:
            out = checkpoint(_attend_by_key_chunks, q_rows, k, v, mask_rows, key_chunk_size, use_reentrant=False)
        else:
            out = _attend_by_key_chunks(q_rows, k, v, mask_rows, key_chunk_size)
        outs.append(out)
    return torch.cat(outs, dim=-2)  # [B, heads, Nq, d_v]


# --------------------------------------------------------------------------- one interface

#: the attention versions by name, for ``attention(..., impl=name)`` and ``UNetConfig.attention_impl``
ATTENTION_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "einsum": einsum_attention,
    "sdpa": sdpa_attention,
    "chunked": chunked_attention,
}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              impl: str = "sdpa", **options) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V by the version named ``impl`` ("einsum", "sdpa" or "chunked").

    q [B, heads, Nq, d], k [B, heads, Nk, d], v [B, heads, Nk, d_v] -> [B, heads, Nq, d_v];
    ``mask`` boolean, broadcastable to [B, heads, Nq, Nk], True = attend. ``options`` go to the
    version (``chunk_size``, ``key_chunk_size`` for "chunked").
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose from {sorted(ATTENTION_IMPLS)}")
    return ATTENTION_IMPLS[impl](q, k, v, mask, **options)


# --------------------------------------------------------------------------- multi-head layer


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, heads * d] -> [B, heads, N, d]."""
    return rearrange(x, "b n (h d) -> b h n d", h=num_heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]."""
    return rearrange(x, "b h n d -> b n (h d)")


class HookableAttention(nn.Module):
    """Base class of the attention layers: computes softmax(Q K^T / sqrt(d)) V and lets tools watch.

    A subclass makes q, k, v its own way (Linear layers on tokens, a 1x1 conv on a feature map) and
    calls ``self.attend(q, k, v, mask, cross=...)``, which runs the hooks of
    :meth:`register_attention_hook` on (q, k, mask, cross) and then computes attention with the
    version named ``impl`` (``self.impl`` may be changed after construction). The hooks are not
    parameters or buffers: the state dict and the outputs are those of the layer without them.

    ``self_attention_only``: True for layers that can only attend to their own input (no context),
    so that ``course_lib.capture`` can say when a model has no cross-attention to record.
    """

    self_attention_only: bool = False

    def __init__(self, impl: str = "sdpa"):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose from {sorted(ATTENTION_IMPLS)}")
        self.impl = impl
        # hooks of register_attention_hook (an OrderedDict: torch's handles hold a weak reference to it)
        self._attention_hooks: OrderedDict[int, Callable] = OrderedDict()

    def register_attention_hook(self, hook: Callable) -> RemovableHandle:
        """Call ``hook(module, q, k, mask, cross)`` on every forward, just before attention is computed.

        q [B, heads, N, d] and k [B, heads, M, d] are the split heads, ``mask`` is the mask as passed
        (or None) and ``cross`` is True when the keys come from a ``context`` (cross-attention). The hook
        must not modify q or k (compute on the side, e.g. ``attention_weights(q, k, mask)``); its return
        value is ignored. Returns a handle whose ``.remove()`` unregisters the hook (as torch's module hooks do).
        """
        handle = RemovableHandle(self._attention_hooks)
        self._attention_hooks[handle.id] = hook
        return handle

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
               cross: bool = False) -> torch.Tensor:
        """Run the attention hooks on (q, k, mask, cross), then return ``attention(q, k, v, mask, impl=self.impl)``.

        q [B, heads, Nq, d], k [B, heads, Nk, d], v [B, heads, Nk, d_v] -> [B, heads, Nq, d_v].
        """
        for hook in tuple(self._attention_hooks.values()):
            hook(self, q, k, mask, cross)
        return attention(q, k, v, mask, impl=self.impl)  # [B, heads, Nq, d_v]


class MultiHeadAttention(HookableAttention):
    """Multi-head attention over token sequences (Vaswani et al. 2017, Sec. 3.2.2):

        head_i = Attention(x W_q^i, c W_k^i, c W_v^i),   out = [head_1, ..., head_h] W_o

    with c = x (self-attention) or c = ``context`` (cross-attention, e.g. to text tokens).
    x [B, N, dim], context [B, M, context_dim] -> [B, N, dim]. ``mask`` as in :func:`attention`,
    broadcastable to [B, heads, N, M]; a key-padding mask [B, M] is passed as mask[:, None, None, :].

    ``register_attention_hook`` (from :class:`HookableAttention`) lets a tool look at the queries and
    keys of every call (the attention maps of ``course_lib.capture``) without changing what the layer computes.
    """

    def __init__(self, dim: int, num_heads: int = 1, context_dim: int | None = None, *,
                 qkv_bias: bool = False, impl: str = "sdpa"):
        super().__init__(impl)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        cross = context is not None
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.num_heads)  # [B, heads, N, d]
        k = split_heads(self.to_k(context), self.num_heads)  # [B, heads, M, d]
        v = split_heads(self.to_v(context), self.num_heads)  # [B, heads, M, d]
        out = self.attend(q, k, v, mask, cross=cross)  # [B, heads, N, d]
        return self.to_out(merge_heads(out))  # [B, N, dim]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, impl={self.impl!r}"


@contextlib.contextmanager
def plain_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention layer (:class:`HookableAttention`) of ``model`` on the einsum path inside the block,
    restoring each layer's own setting afterwards. For what sees only written-out operations: forward-mode AD
    (``torch.func.jvp``, chapter 7's MeanFlow) has no rule for the fused SDPA kernels (torch 2.14 on CPU raises
    NotImplementedError for ``_scaled_dot_product_flash_attention_for_cpu``), and ``FlopCounterMode`` does not
    count that kernel (``course_lib.profiling.forward_macs``)."""
    layers = [m for m in model.modules() if isinstance(m, HookableAttention)]
    saved = [m.impl for m in layers]
    try:
        for m in layers:
            m.impl = "einsum"
        yield model
    finally:
        for m, impl in zip(layers, saved):
            m.impl = impl


@torch.no_grad()
def attention_logit_stats(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """How peaked the attention of ``model`` is while ``run()`` runs (it should call the model once):

        logit_ij = q_i . k_j / sqrt(d)        P_i = softmax_j(logit_i)        H_i = -sum_j P_ij log P_ij

    over every :class:`HookableAttention` of ``model``, every head, query and unmasked key. Returns
    ``max_logit`` (the largest logit), ``entropy`` (the mean of H_i in nats) and ``max_entropy`` (log of the
    keys a query may read, averaged the same way: the entropy of uniform attention). A logit that keeps growing
    drives its row towards one key (H_i -> 0): the instability QK-norm guards against (Dehghani et al. 2023,
    ViT-22B; Esser et al. 2024 add it to SD3's MM-DiT for mixed-precision training). Computed on the side from
    the same q and k (hooks), in float32; the model's outputs are unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, HookableAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers (HookableAttention) to measure")
    found = {"max_logit": -math.inf, "entropy_sum": 0.0, "uniform_sum": 0.0, "rows": 0}

    def hook(module, q, k, mask, cross):
        mask = _check_inputs(q, k, k, mask)
        logits = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * q.shape[-1] ** -0.5  # [B, heads, Nq, Nk]
        valid = torch.ones_like(logits, dtype=torch.bool) if mask is None else mask.expand_as(logits)
        probs = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        rows = valid.any(dim=-1)  # [B, heads, Nq]: queries with at least one key
        entropy = -torch.special.xlogy(probs, probs).nansum(dim=-1)  # [B, heads, Nq]
        found["max_logit"] = max(found["max_logit"], logits.masked_fill(~valid, float("-inf")).max().item())
        found["entropy_sum"] += entropy[rows].sum().item()
        found["uniform_sum"] += valid.sum(dim=-1)[rows].float().log().sum().item()
        found["rows"] += int(rows.sum())

    handles = [m.register_attention_hook(hook) for m in layers]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    if not found["rows"]:
        raise ValueError("run() did not call any attention layer of the model")
    return {"max_logit": found["max_logit"], "entropy": found["entropy_sum"] / found["rows"],
            "max_entropy": found["uniform_sum"] / found["rows"]}
