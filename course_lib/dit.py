"""DiT's conditioning ablation, for text: how a transformer can read the time and the caption.

DiT (Peebles & Xie 2023, Sec. 3.2 and Fig. 5) compared four ways of giving a transformer its time t and class c:
in-context tokens, cross-attention, adaLN and adaLN-Zero; adaLN-Zero trained best. Chapter 6 measures the same
question with a caption instead of a class, through the denoiser seam of ``course_lib.text2image``, with three
variants of :class:`DiT` beside the MM-DiT (``course_lib.mmdit``, joint attention):

    in_context       x = [t_tok; txt; img]                                  one sequence, one set of weights
                     x = x + Attn(LN(x));  x = x + MLP(LN(x))               plain pre-LN blocks, no adaLN
                     (DiT's in-context conditioning, with every caption token instead of one class token)
    cross_attention  x = img;  (shift, scale, gate) x 2 = adaLN(time)       per block:
                     x = x + g1 Attn(mod(LN(x)));  x = x + CrossAttn(x, txt);  x = x + g2 MLP(mod(LN(x)))
                     (PixArt-alpha's block, Chen et al. 2023: the caption by cross-attention, the time by
                     adaLN-Zero; PixArt shares one time modulation across blocks, "adaLN-single", here each
                     block has its own)
    adaln_zero       x = img;  vec = time_in(t) + vector_in(pooled caption);  per block:
                     x = x + g1 Attn(mod(LN(x)));  x = x + g2 MLP(mod(LN(x)))
                     (DiT's class-conditional block, the pooled caption in the place of the class embedding)

Everything else is the MM-DiT's: patches of 2 (16 image tokens of a 4x8x8 latent), width, heads, rotary
positions (image tokens at (0, row, column), text and time tokens at 0), QK-norm in self-attention, the
zero-initialised final layer, the same ``forward(x, t, context, context_mask)``. Depths are chosen so that the
parameter counts match ``mmdit-small``'s within about 10 % (``DiTConfig.small``), so that only the
conditioning differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadAttention, merge_heads
from .conditioning import modulate, timestep_embedding
from .mmdit import JointAttention, LastLayer, Modulation, SelfAttention, image_positions, mlp, patchify, rope_angles, \
    unpatchify

__all__ = ["CONDITIONINGS", "InContextBlock", "CrossAttentionBlock", "AdaLNZeroBlock", "DiTConfig", "DiT"]

#: the conditioning variants of :class:`DiT` (the fourth, joint attention, is ``course_lib.mmdit.MMDiT``)
CONDITIONINGS = ("in_context", "cross_attention", "adaln_zero")


class InContextBlock(nn.Module):
    """A plain pre-LN transformer block over the whole sequence [t; text; image] (no conditioning vector):

        x = x + proj(Attn(qkv(LN(x))));  x = x + MLP(LN(x))        x [B, S, D], angles [S, d / 2]
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.self_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.attn = JointAttention()  # softmax(q k^T / sqrt(d)) v with RoPE, hookable

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.self_attn.split_qkv(self.norm1(x))  # [B, heads, S, d] each
        x = x + self.self_attn.proj(merge_heads(self.attn(q, k, v, angles, mask)))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """PixArt-alpha's block: image self-attention and MLP gated by adaLN-Zero from the time, cross-attention to
    the caption in between (ungated, as PixArt):

        x = x + g1 proj(Attn(mod1(LN(x))));  x = x + CrossAttn(x, txt);  x = x + g2 MLP(mod2(LN(x)))

    x [B, N, D], txt [B, L, D], vec [B, D] (the time alone), angles [N, d / 2], text_mask [B, 1, 1, L].
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.modulation = Modulation(hidden_size, double=True)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.cross_attn = MultiHeadAttention(hidden_size, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.attn = JointAttention()  # softmax(q k^T / sqrt(d)) v with RoPE, hookable

    def forward(self, x: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, angles: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        mod1, mod2 = self.modulation(vec)
        q, k, v = self.self_attn.split_qkv(modulate(self.norm1(x), mod1.shift, mod1.scale))
        x = x + mod1.gate * self.self_attn.proj(merge_heads(self.attn(q, k, v, angles)))
        x = x + self.cross_attn(x, context=txt, mask=text_mask)  # [B, N, D]: each patch reads the caption
        return x + mod2.gate * self.mlp(modulate(self.norm2(x), mod2.shift, mod2.scale))


class AdaLNZeroBlock(nn.Module):
    """DiT's block: self-attention and MLP, each modulated and gated by the conditioning vector (adaLN-Zero):

        x = x + g1 proj(Attn(mod1(LN(x))));  x = x + g2 MLP(mod2(LN(x)))      x [B, N, D], vec [B, D]
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.modulation = Modulation(hidden_size, double=True)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.attn = JointAttention()  # softmax(q k^T / sqrt(d)) v with RoPE, hookable

    def forward(self, x: torch.Tensor, vec: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        mod1, mod2 = self.modulation(vec)
        q, k, v = self.self_attn.split_qkv(modulate(self.norm1(x), mod1.shift, mod1.scale))
        x = x + mod1.gate * self.self_attn.proj(merge_heads(self.attn(q, k, v, angles)))
        return x + mod2.gate * self.mlp(modulate(self.norm2(x), mod2.shift, mod2.scale))


@dataclass
class DiTConfig:
    """Hyper-parameters of :class:`DiT` (JSON-serialisable with ``dataclasses.asdict``); the fields the MM-DiT
    has mean what they mean in :class:`~course_lib.mmdit.MMDiTConfig`. ``conditioning``: one of
    :data:`CONDITIONINGS`; ``depth``: how many blocks of that kind."""

    conditioning: str = "adaln_zero"
    in_channels: int = 4
    image_size: int = 8
    patch_size: int = 2
    hidden_size: int = 256
    num_heads: int = 4
    rope_axes: tuple[int, int, int] = (16, 24, 24)
    depth: int = 7
    mlp_ratio: float = 4.0
    context_dim: int = 128
    time_dim: int = 256
    theta: float = 10_000.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        self.rope_axes = tuple(self.rope_axes)
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}: choose one of {CONDITIONINGS} (joint attention is "
                             "course_lib.mmdit.MMDiT)")
        if self.hidden_size % self.num_heads or sum(self.rope_axes) != self.hidden_size // self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must split into {self.num_heads} heads whose dimension "
                             f"is the sum of rope_axes={self.rope_axes}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")

    #: depths that match mmdit-small's 9.21M parameters within about 10 % at width 256 (its text width 384):
    #: a plain block has about 12 D^2 weights, adaLN-Zero's 18 D^2, PixArt's 22 D^2 (tests/test_dit.py checks)
    SMALL_DEPTHS = {"in_context": 11, "cross_attention": 6, "adaln_zero": 7}

    @classmethod
    def small(cls, conditioning: str, **overrides) -> "DiTConfig":
        """Chapter 6's ablation: ``mmdit-small``'s width, heads and patches, the depth from :attr:`SMALL_DEPTHS`."""
        if conditioning not in cls.SMALL_DEPTHS:
            raise ValueError(f"conditioning={conditioning!r}: choose one of {CONDITIONINGS}")
        return cls(**{"conditioning": conditioning, "depth": cls.SMALL_DEPTHS[conditioning], **overrides})

    @classmethod
    def tiny(cls, conditioning: str = "adaln_zero", **overrides) -> "DiTConfig":
        """For tests: 64 wide, 2 heads, 2 blocks."""
        return cls(**{"conditioning": conditioning, "hidden_size": 64, "num_heads": 2, "rope_axes": (8, 12, 12),
                      "depth": 2, "context_dim": 32, "time_dim": 64, **overrides})


class DiT(nn.Module):
    """A rectified-flow transformer on latents whose conditioning is one of :data:`CONDITIONINGS`:

        img = img_in(patchify(x))                        [B, N, D]
        txt = txt_in(context)                            [B, L, D]     (in_context, cross_attention)
        vec = time_in(emb(t)) [+ vector_in(pool)]        [B, D]        (+ pool: adaln_zero only)
        in_context:      h = [vec; txt; img] -> InContextBlock x depth -> img = h[:, 1 + L:]
        cross_attention: img = CrossAttentionBlock(img, txt, vec) x depth
        adaln_zero:      img = AdaLNZeroBlock(img, vec) x depth
        out = unpatchify(final_layer(img[, vec]))       [B, C, H, W]   (zero-initialised: predicts 0 at first)

    ``forward(x [B, C, H, W], t [B], context [B or 1, L, context_dim], context_mask [B or 1, L] bool or None)``,
    the UNet's and the MM-DiT's signature.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        c = self.config = config
        self.img_in = nn.Linear(c.in_channels * c.patch_size ** 2, c.hidden_size)
        self.time_in = nn.Sequential(nn.Linear(c.time_dim, c.hidden_size), nn.SiLU(),
                                     nn.Linear(c.hidden_size, c.hidden_size))
        if c.conditioning == "adaln_zero":
            self.vector_in = nn.Sequential(nn.Linear(c.context_dim, c.hidden_size), nn.SiLU(),
                                           nn.Linear(c.hidden_size, c.hidden_size))
            block = AdaLNZeroBlock
        else:
            self.txt_in = nn.Linear(c.context_dim, c.hidden_size)
            block = InContextBlock if c.conditioning == "in_context" else CrossAttentionBlock
        self.blocks = nn.ModuleList(block(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.depth))
        if c.conditioning == "in_context":  # no conditioning vector reaches the end: LN and a zero projection
            self.final_norm = nn.LayerNorm(c.hidden_size, eps=1e-6)
            self.final_linear = nn.Linear(c.hidden_size, c.patch_size ** 2 * c.in_channels)
            nn.init.zeros_(self.final_linear.weight)
            nn.init.zeros_(self.final_linear.bias)
        else:
            self.final_layer = LastLayer(c.hidden_size, c.patch_size, c.in_channels)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        B, _, H, W = x.shape
        if context.shape[0] == 1 and B > 1:
            context = context.expand(B, -1, -1)
            context_mask = None if context_mask is None else context_mask.expand(B, -1)
        L = context.shape[1]
        mask = torch.ones(B, L, dtype=torch.bool, device=x.device) if context_mask is None else context_mask.bool()
        img = self.img_in(patchify(x, c.patch_size))  # [B, N, D]
        img_angles = rope_angles(image_positions(H // c.patch_size, W // c.patch_size), c.rope_axes,
                                 c.theta).to(x.device)  # [N, d / 2]
        vec = self.time_in(timestep_embedding(t, c.time_dim).to(x.dtype))  # [B, D]
        if c.conditioning == "adaln_zero":
            pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # [B, context_dim]
            vec = vec + self.vector_in(pooled)
            for block in self.blocks:
                img = block(img, vec, img_angles)
            out = self.final_layer(img, vec)
        elif c.conditioning == "cross_attention":
            txt = self.txt_in(context)  # [B, L, D]
            for block in self.blocks:
                img = block(img, txt, vec, img_angles, mask[:, None, None, :])
            out = self.final_layer(img, vec)
        else:  # in_context: the time token and the caption's tokens sit at position 0, as the MM-DiT's text
            h = torch.cat([vec[:, None], self.txt_in(context), img], dim=1)  # [B, 1 + L + N, D]
            angles = torch.cat([img_angles.new_zeros(1 + L, img_angles.shape[1]), img_angles])  # [1 + L + N, d / 2]
            keys = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), mask,
                              torch.ones(B, img.shape[1], dtype=torch.bool, device=x.device)], dim=1)
            for block in self.blocks:
                h = block(h, angles, keys[:, None, None, :])
            out = self.final_linear(self.final_norm(h[:, 1 + L:]))  # [B, N, p p C]
        return unpatchify(out, c.patch_size, H, W)  # [B, C, H, W]
