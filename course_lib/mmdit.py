"""The MM-DiT of Stable Diffusion 3 and Flux, block by block (chapter 6), small enough for a CPU.

A diffusion transformer works on tokens, not feature maps: the 4x8x8 latent is cut into patches
(:func:`patchify`), each patch a token; the caption's encoder states are a second token sequence. SD3's
**MM-DiT** block (Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 4 and Fig. 2) keeps
separate weights for the two streams but lets them attend to each other in **one joint attention** over
[text, image]; Flux (Black Forest Labs 2024) follows a few such :class:`DoubleStreamBlock` with
:class:`SingleStreamBlock` layers, one stream over the concatenated sequence with the attention and the MLP
computed in parallel (Dehghani et al. 2023). Conditioning on time (and on a pooled text vector) enters
through adaptive LayerNorm: every block's :class:`Modulation` makes a (shift, scale, gate) triple,

    h = LN(x);  h = h (1 + scale) + shift   (course_lib.conditioning.modulate);  x = x + gate * f(h),

initialised to zero ("adaLN-Zero", Peebles & Xie 2023), so that every block starts as the identity.

Module names follow BFL's flux ``src/flux/modules/layers.py`` (``img_mod``/``txt_mod``, ``img_attn``/``txt_attn``
with ``qkv``, ``norm``, ``proj``, ``img_mlp``/``txt_mlp``, ``linear1``/``linear2``, ``LastLayer``); diffusers
names them differently (its ``FluxTransformerBlock``: ``norm1``/``norm1_context`` for ``img_mod``/``txt_mod``,
``attn.to_q``/``to_k``/``to_v`` for ``img_attn.qkv``, ``attn.add_q_proj``... for ``txt_attn.qkv``,
``attn.norm_q``/``norm_k`` for ``img_attn.norm``, ``attn.to_out``/``to_add_out`` for the two ``proj``, ``ff``/
``ff_context`` for ``img_mlp``/``txt_mlp``; its ``FluxSingleTransformerBlock``: ``proj_mlp`` and the attention's
q/k/v projections together are ``linear1``, ``proj_out`` is ``linear2``; SD3's ``JointTransformerBlock`` is
the double block). A guidance-distilled model (``guidance_embed=True``, Flux-dev; chapter 7) adds BFL's
``guidance_in`` (``in_layer``, ``out_layer``), diffusers' ``time_text_embed.guidance_embedder`` (``linear_1``,
``linear_2``; the config flag ``guidance_embeds``); the course zero-initialises its last layer.

Positions: 2-D rotary embeddings (RoPE, Su et al. 2021) on every token, as Flux does: each token has
three position ids (an index axis, the patch row, the patch column), image tokens (0, row, col) and text
tokens (0, 0, 0); the head dimension is split into three parts of ``rope_axes`` sizes, each rotated by its
own axis's position, pairs of *adjacent* dimensions (2i, 2i + 1) rotated together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import HookableAttention, merge_heads
from .conditioning import modulate, timestep_embedding

__all__ = ["patchify", "unpatchify", "RMSNorm", "QKNorm", "NoQKNorm", "qk_norm", "rope_angles", "apply_rope",
           "image_positions", "Modulation", "ModulationOut", "SelfAttention", "JointAttention", "mlp", "DoubleStreamBlock",
           "SingleStreamBlock", "LastLayer", "MMDiTConfig", "MMDiT"]


# --------------------------------------------------------------------------- patches


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut latents into non-overlapping p x p patches, one token each, rows first:
    [B, C, H, W] -> [B, (H/p)(W/p), C p p] (Flux's ``"b c (h ph) (w pw) -> b (h w) (c ph pw)"``)."""
    B, C, H, W = x.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"a {H}x{W} latent cannot be cut into {patch_size}x{patch_size} patches; use a patch size "
                         "that divides both sides")
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=patch_size, pw=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: [B, (H/p)(W/p), C p p] -> [B, C, H, W]."""
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=height // patch_size,
                     w=width // patch_size, ph=patch_size, pw=patch_size)


# --------------------------------------------------------------------------- normalisation


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last dimension (Zhang & Sennrich 2019), in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rrms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x.float() * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    """RMSNorm of queries and keys over the head dimension (Esser et al. 2024 use it to keep attention logits
    from growing in large-scale training; Flux has it in every block); values are not normalised."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q), self.key_norm(k)


class NoQKNorm(nn.Module):
    """Queries and keys as they come: the MM-DiT without QK-norm (``MMDiTConfig(qk_norm=False)``, chapter 6's
    QK-norm experiment). Then a logit q . k / sqrt(d) grows with the norms of q and k, without bound."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


def qk_norm(head_dim: int, enabled: bool = True) -> nn.Module:
    """:class:`QKNorm` over ``head_dim``, or :class:`NoQKNorm` when not ``enabled``."""
    return QKNorm(head_dim) if enabled else NoQKNorm()


# --------------------------------------------------------------------------- rotary positions


def image_positions(height: int, width: int) -> torch.Tensor:
    """Position ids (index, row, column) of an h x w grid of image tokens, rows first: [h w, 3]."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


def rope_angles(positions: torch.Tensor, axes_dim: tuple[int, ...], theta: float = 10_000.0) -> torch.Tensor:
    """Rotation angles of every token and dimension pair: positions [L, n_axes] -> [L, head_dim / 2].

    Axis a gets ``axes_dim[a]`` dimensions (even), i.e. axes_dim[a] / 2 pairs with frequencies
    omega_j = theta^(-2j / axes_dim[a]); the angle of pair j for a token at position p is p * omega_j.
    """
    if positions.shape[-1] != len(axes_dim) or any(d % 2 for d in axes_dim):
        raise ValueError(f"positions [L, {positions.shape[-1]}] need one even dimension count per axis, got "
                         f"axes_dim={axes_dim}")
    angles = []
    for a, dim in enumerate(axes_dim):
        omega = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim / 2]
        angles.append(positions[:, a, None].double() * omega)  # [L, dim / 2]
    return torch.cat(angles, dim=-1).float()  # [L, head_dim / 2]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x_2j, x_2j+1) of every token by its angle: x [B, heads, L, d], angles [L, d / 2].

        (x_2j, x_2j+1) -> (x_2j cos a - x_2j+1 sin a,  x_2j sin a + x_2j+1 cos a)

    A rotation keeps norms; and q_m . k_n then depends on the positions only through m - n.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, heads, L, d / 2, 2]
    cos, sin = angles.cos(), angles.sin()  # [L, d / 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)  # [B, heads, L, d]


# --------------------------------------------------------------------------- modulation


@dataclass
class ModulationOut:
    shift: torch.Tensor  # [B, 1, D]
    scale: torch.Tensor  # [B, 1, D]
    gate: torch.Tensor  # [B, 1, D]


class Modulation(nn.Module):
    """(shift, scale, gate) triples from the conditioning vector: lin(SiLU(vec)), one triple per sub-layer
    (two for a double-stream block: attention and MLP; one for a single-stream block). Zero-initialised
    (adaLN-Zero): at the start every gate is 0 and the block is the identity."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, vec: torch.Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)  # each [B, 1, D]
        return ModulationOut(*out[:3]), (ModulationOut(*out[3:]) if self.is_double else None)


# --------------------------------------------------------------------------- attention


class JointAttention(HookableAttention):
    """Attention over one sequence with rotary positions, through the course's hookable attention path
    (``course_lib.capture`` can record it): q, k get RoPE, then softmax(q k^T / sqrt(d)) v.
    No parameters: the blocks make q, k, v (and project the output) with their own layers."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, angles: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        return self.attend(q, k, v, mask)  # [B, heads, L, d]


class SelfAttention(nn.Module):
    """One stream's attention layers: ``qkv`` (one Linear for q, k and v), ``norm`` (QK-norm), ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_qk_norm: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = qk_norm(dim // num_heads, use_qk_norm)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, L, D] -> q, k, v [B, heads, L, d], q and k RMS-normalised."""
        q, k, v = rearrange(self.qkv(h), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        q, k = self.norm(q, k)
        return q, k, v


def mlp(dim: int, hidden: int) -> nn.Sequential:
    """The transformer's feed-forward layer: Linear, GELU (tanh approximation, as Flux), Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


# --------------------------------------------------------------------------- blocks


class DoubleStreamBlock(nn.Module):
    """SD3's MM-DiT block: separate weights for text and image, one joint attention over [text, image].

        m_img, m_txt = img_mod(vec), txt_mod(vec)                        (two triples each)
        q, k, v      = concat over tokens of txt_attn.qkv(mod(LN(txt)))  and  img_attn.qkv(mod(LN(img)))
        a_txt, a_img = split(Attention(q, k, v))                           # [B, L_txt + L_img, D] split back
        img = img + gate1 * img_attn.proj(a_img);  img = img + gate2 * img_mlp(mod(LN(img)))
        txt = txt + gate1 * txt_attn.proj(a_txt);  txt = txt + gate2 * txt_mlp(mod(LN(txt)))

    img [B, N, D], txt [B, L, D], vec [B, D], angles [L + N, d / 2], mask [B, 1, 1, L + N] or None.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_qk_norm: bool = True):
        super().__init__()
        hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias, use_qk_norm)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = mlp(hidden_size, hidden)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias, use_qk_norm)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = mlp(hidden_size, hidden)
        self.attn = JointAttention()

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, angles: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.split_qkv(modulate(self.img_norm1(img), img_mod1.shift, img_mod1.scale))
        txt_q, txt_k, txt_v = self.txt_attn.split_qkv(modulate(self.txt_norm1(txt), txt_mod1.shift, txt_mod1.scale))
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))  # [B, h, L+N, d]
        out = merge_heads(self.attn(q, k, v, angles, mask))  # [B, L + N, D]
        txt_out, img_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        img = img + img_mod1.gate * self.img_attn.proj(img_out)
        img = img + img_mod2.gate * self.img_mlp(modulate(self.img_norm2(img), img_mod2.shift, img_mod2.scale))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_out)
        txt = txt + txt_mod2.gate * self.txt_mlp(modulate(self.txt_norm2(txt), txt_mod2.shift, txt_mod2.scale))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Flux's single-stream block: one stream over x = [text, image], attention and MLP side by side.

        m = modulation(vec)                                          (one triple)
        h = mod(LN(x));  [qkv, u] = linear1(h)                      (q, k, v and the MLP input at once)
        x = x + gate * linear2(concat(Attention(q, k, v), GELU(u)))  (the attention output and the MLP
                                                                      hidden layer projected together)

    x [B, L + N, D], vec [B, D], angles [L + N, d / 2].
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, use_qk_norm: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = qk_norm(hidden_size // num_heads, use_qk_norm)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)
        self.attn = JointAttention()

    def forward(self, x: torch.Tensor, vec: torch.Tensor, angles: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        mod, _ = self.modulation(vec)
        h = modulate(self.pre_norm(x), mod.shift, mod.scale)
        qkv, mlp = torch.split(self.linear1(h), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        q, k = self.norm(q, k)
        out = merge_heads(self.attn(q, k, v, angles, mask))  # [B, L + N, D]
        return x + mod.gate * self.linear2(torch.cat([out, self.mlp_act(mlp)], dim=-1))


class LastLayer(nn.Module):
    """Final adaptive LayerNorm and the projection of each token back to a patch: [B, N, D] -> [B, N, p p C].
    Both the modulation and the projection start at zero, so the untrained model predicts 0 everywhere."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        for layer in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)  # [B, 1, D] each
        return self.linear(modulate(self.norm_final(x), shift, scale))


# --------------------------------------------------------------------------- the model


@dataclass
class MMDiTConfig:
    """Hyper-parameters of :class:`MMDiT` (JSON-serialisable with ``dataclasses.asdict``).

    in_channels, image_size: the latents (chapter 4: 4 x 8 x 8). patch_size: 1 keeps all 64 positions of an
    8x8 latent as tokens; 2, SD3's and Flux's choice, leaves a 4x4 grid of 16 tokens of 16 numbers each.
    ``mmdit-small`` uses 2: the transformer applies all its weights to every token, so 64 tokens cost about
    2.5x the compute of 16, and in a pilot on one AMX thread (bf16, 15 minutes each) patch 2 trained 1,687
    steps to a loss of 0.876 and patch 1 671 steps to 0.934 (patch 1 is better per step: 0.936 vs 0.966 at
    step 650, but not per minute). Patch 1 stays the default of the tiny test model (8x8 attention maps).
    hidden_size, num_heads: the transformer width and heads; rope_axes: how the head dimension splits over
    the (index, row, column) position axes (even sizes summing to hidden_size / num_heads).
    depth_double, depth_single: how many DoubleStreamBlocks, then SingleStreamBlocks (Flux-dev: 19 and 38).
    context_dim: the text encoder's width; the time embedding gets ``time_dim`` sinusoids of the process's
    model time (1000 t for rectified flow, as the UNet). qk_norm: RMSNorm of queries and keys in every block
    (SD3, Flux); False only for chapter 6's experiment of what it prevents. guidance_embed: a guidance weight
    input (Flux-dev's ``guidance_in``; chapter 7's guidance distillation), zero-initialised. interval_embed: an
    input for the length t - r of an interval (MeanFlow's average velocity u(z, r, t); chapter 7), embedded like
    the time and zero-initialised, so that at first u(z, r, t) = v(z, t) for every r.
    """

    in_channels: int = 4
    image_size: int = 8
    patch_size: int = 1
    hidden_size: int = 256
    num_heads: int = 4
    rope_axes: tuple[int, int, int] = (16, 24, 24)
    depth_double: int = 2
    depth_single: int = 4
    mlp_ratio: float = 4.0
    context_dim: int = 128
    time_dim: int = 256
    theta: float = 10_000.0
    qkv_bias: bool = True
    qk_norm: bool = True
    guidance_embed: bool = False
    interval_embed: bool = False

    def __post_init__(self) -> None:
        self.rope_axes = tuple(self.rope_axes)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if sum(self.rope_axes) != head_dim or any(a % 2 for a in self.rope_axes) or len(self.rope_axes) != 3:
            raise ValueError(f"rope_axes={self.rope_axes} must be three even sizes summing to the head dimension "
                             f"{head_dim} (index, row, column), e.g. (16, 24, 24) for a head dimension of 64")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")

    @classmethod
    def tiny(cls, **overrides) -> "MMDiTConfig":
        """For tests and fast mode: 64 wide, 2 heads, one block of each kind."""
        return cls(**{"hidden_size": 64, "num_heads": 2, "rope_axes": (8, 12, 12), "depth_double": 1,
                      "depth_single": 1, "context_dim": 32, "time_dim": 64, **overrides})


class MMDiT(nn.Module):
    """A rectified-flow MM-DiT on latents (Esser et al. 2024; Flux's layout):

        img = img_in(patchify(x))                 [B, N, D]      N = (H / p)(W / p) patch tokens
        txt = txt_in(context)                     [B, L, D]      the text encoder's states, projected
        vec = time_in(emb(t)) + vector_in(pool)   [B, D]         pool: the mean of the real text tokens
        img, txt = DoubleStreamBlock(img, txt, vec) x depth_double
        x = [txt, img];  x = SingleStreamBlock(x, vec) x depth_single;  img = x[:, L:]
        out = unpatchify(final_layer(img, vec))   [B, C, H, W]

    forward(x [B, C, H, W], t [B], context [B or 1, L, context_dim], context_mask [B or 1, L] bool or None)
    has the UNet's signature, so it can stand where chapter 4's UNet stood. ``vector_in`` plays the part of
    SD3's pooled CLIP vector (Flux: CLIP's pooled output, ``vector_in``) with the course's encoder.

    ``text_position``: where the text tokens sit on the rotary axes, (index, row, column); None (the default, and
    what the model trains with) is Flux's (0, 0, 0). Setting it on a trained model is an experiment, chapter 6's
    measurement of what the text's position does to the image tokens' attention, not a setting to train with.
    """

    text_position: tuple[float, float, float] | None = None

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        c = self.config = config
        patch_dim = c.in_channels * c.patch_size ** 2
        self.img_in = nn.Linear(patch_dim, c.hidden_size)
        self.txt_in = nn.Linear(c.context_dim, c.hidden_size)
        self.time_in = nn.Sequential(nn.Linear(c.time_dim, c.hidden_size), nn.SiLU(),
                                     nn.Linear(c.hidden_size, c.hidden_size))
        self.vector_in = nn.Sequential(nn.Linear(c.context_dim, c.hidden_size), nn.SiLU(),
                                       nn.Linear(c.hidden_size, c.hidden_size))
        if c.guidance_embed:  # Flux-dev's guidance_in, its last layer at 0: the model starts as the one it came from
            self.guidance_in = nn.Sequential(nn.Linear(c.time_dim, c.hidden_size), nn.SiLU(),
                                             nn.Linear(c.hidden_size, c.hidden_size))
            nn.init.zeros_(self.guidance_in[2].weight)
            nn.init.zeros_(self.guidance_in[2].bias)
        if c.interval_embed:  # MeanFlow's second time, t - r; zero at first: the flow model it starts from
            self.interval_in = nn.Sequential(nn.Linear(c.time_dim, c.hidden_size), nn.SiLU(),
                                             nn.Linear(c.hidden_size, c.hidden_size))
            nn.init.zeros_(self.interval_in[2].weight)
            nn.init.zeros_(self.interval_in[2].bias)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias,
                                                             c.qk_norm) for _ in range(c.depth_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qk_norm)
                                           for _ in range(c.depth_single))
        self.final_layer = LastLayer(c.hidden_size, c.patch_size, c.in_channels)
        side = c.image_size // c.patch_size
        # the image tokens' rotation angles never change: computed once ([N, head_dim / 2])
        self.register_buffer("img_angles", rope_angles(image_positions(side, side), c.rope_axes, c.theta),
                             persistent=False)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def grid_angles(self, height: int, width: int) -> torch.Tensor:
        """The image tokens' RoPE angles on an ``height`` x ``width`` grid of patches: [h w, head_dim / 2], float32.

        The trained grid's are the buffer; any other grid (a larger image, another aspect ratio) gets its own
        positions (0, row, column). Only offsets enter the scores (section 4 of chapter 6), which is why a
        RoPE model can be asked for a grid it never saw; whether its samples hold up there is measured, not
        promised.
        """
        side = self.config.image_size // self.config.patch_size
        if (height, width) == (side, side):
            return self.img_angles.float()  # float32 even in a .half() model, as rope_angles makes them
        return rope_angles(image_positions(height, width), self.config.rope_axes, self.config.theta)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        B, _, H, W = x.shape
        if (interval is not None) != c.interval_embed:
            raise ValueError("an MM-DiT with interval_embed=True (MeanFlow, chapter 7) needs interval= (the model time "
                             "of t - r, [B]) and any other MM-DiT takes none; got "
                             f"interval_embed={c.interval_embed}, interval {'given' if interval is not None else 'None'}")
        if c.guidance_embed and guidance is None:
            raise ValueError("this MM-DiT has a guidance embedding (guidance_embed=True): give its weight, "
                             "model(x, t, context, context_mask, guidance=w) with w [B] (chapter 7)")
        if guidance is not None and not c.guidance_embed:
            raise ValueError("this MM-DiT has no guidance embedding (guidance_embed=False): guide it with "
                             "classifier-free guidance (course_lib.guidance.ClassifierFreeGuidance) instead")
        if context.shape[0] == 1 and B > 1:
            context = context.expand(B, -1, -1)
            context_mask = None if context_mask is None else context_mask.expand(B, -1)
        L = context.shape[1]
        mask = torch.ones(B, L, dtype=torch.bool, device=x.device) if context_mask is None else context_mask.bool()
        img = self.img_in(patchify(x, c.patch_size))  # [B, N, D]
        txt = self.txt_in(context)  # [B, L, D]
        pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # [B, context_dim]
        vec = self.time_in(timestep_embedding(t, c.time_dim).to(x.dtype)) + self.vector_in(pooled)  # [B, D]
        if guidance is not None:  # Flux: guidance_in(timestep_embedding(w, 256)), w scaled by 1000 as Flux's times are
            w = torch.as_tensor(guidance, dtype=torch.float32, device=x.device).expand(B)  # [B]
            vec = vec + self.guidance_in(timestep_embedding(w, c.time_dim, time_scale=1000.0).to(x.dtype))
        if interval is not None:  # the interval's length in the model's time units, embedded as the time is
            h = torch.as_tensor(interval, dtype=torch.float32, device=x.device).expand(B)  # [B]
            vec = vec + self.interval_in(timestep_embedding(h, c.time_dim).to(x.dtype))
        img_angles = self.grid_angles(H // c.patch_size, W // c.patch_size).to(x.device)  # [N, head_dim / 2]
        if self.text_position is None:
            text_angles = img_angles.new_zeros(L, img_angles.shape[1])  # text at position (0, 0, 0): angle 0
        else:  # an experiment: the text moved to another position of the grid
            where = torch.tensor([self.text_position], dtype=torch.float32).expand(L, -1)
            text_angles = rope_angles(where, c.rope_axes, c.theta).to(img_angles.device)
        angles = torch.cat([text_angles, img_angles])  # [L + N, head_dim / 2]
        keys = torch.cat([mask, torch.ones(B, img.shape[1], dtype=torch.bool, device=x.device)], dim=1)
        attn_mask = keys[:, None, None, :]  # [B, 1, 1, L + N]: no query reads the caption's padding
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, angles, attn_mask)
        h = torch.cat([txt, img], dim=1)  # [B, L + N, D]
        for block in self.single_blocks:
            h = block(h, vec, angles, attn_mask)
        out = self.final_layer(h[:, L:], vec)  # [B, N, p p C]
        return unpatchify(out, c.patch_size, H, W)  # [B, C, H, W]
