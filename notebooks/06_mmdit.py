# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (diffusion course)
#     language: python
#     name: course-diffusion
# ---

# %% [markdown]
# # 6 · The MM-DiT: the transformer of Stable Diffusion 3 and Flux
#
# Chapters 1-5 denoised with a UNet: convolutions over feature maps, the text entering through
# cross-attention. Stable Diffusion 3 (Esser et al. 2024, "Scaling Rectified Flow Transformers for
# High-Resolution Image Synthesis") and Flux (Black Forest Labs 2024) replaced it with a **transformer over
# tokens**: the latent is cut into patches, each patch a token; the caption's encoder states are a second
# sequence of tokens; and in every block the two sequences attend to each other in **one joint attention**
# (the "multimodal" in MM-DiT). Time and a pooled text vector steer each block through adaptive LayerNorm.
# (Chapter 2's AdaGN was steered by time alone; a pooled text vector joins a UNet's time embedding in GLIDE,
# Imagen and SDXL, not in Stable Diffusion 1.x.)
#
# In this chapter you will build it block by block on chapter 4's 4x8x8 latents, train it with chapter 5's
# rectified-flow objective, and compare it with the latent UNet:
#
# * tokens instead of feature maps: patchify and its inverse;
# * the conditioning vector and the **modulation** (shift, scale, gate), and why every block starts as the
#   identity (you write the gated residual);
# * the **double-stream block**: two sets of weights, one attention (you write the joint attention);
# * **rotary position embeddings**, in two dimensions: why attention scores then depend only on offsets;
# * the **single-stream block** of Flux, and the whole model, with a shape table at each stage;
# * why the transformer reads the caption through attention and the time through the modulation: DiT's
#   conditioning ablation, measured with a caption at equal CPU-minutes.
#
# The code is in `course_lib.mmdit` (the blocks, with the module names of BFL's `flux` repository) and
# `course_lib.text2image` (`TextToImageModel` with a denoiser of kind "mmdit": the same text encoders, loss and
# generation path as the UNet).

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# 1. patchify a $[B, 4, 8, 8]$ latent into tokens and back for $p = 1$ and $p = 2$, and give the token counts
#    (64 and 16);
# 2. write the modulated, gated sub-layer
#    $x + \text{gate}\odot f(\mathrm{LN}(x)(1 + \text{scale}) + \text{shift})$ and explain why a fresh block is the identity (adaLN-Zero);
# 3. write joint attention over the concatenated [text, image] tokens, name its four quadrants, and say
#    which two a UNet with cross-attention lacks;
# 4. write Flux's rotary embedding (adjacent pairs, one share of the head per axis), show with it that a
#    query-key score depends only on the offset of their positions, and say where text tokens sit (position
#    (0, 0, 0));
# 5. trace the whole model's shapes and tell the double-stream block from the single-stream block.
# 6. read the comparison with the latent UNet at equal CPU-minutes (FID-2k, FD_clf, prompt accuracy), and
#    say what SD3's paper reports instead of a better score (best of the transformer designs it compared, a
#    validation loss that falls predictably as the model grows);
# 7. name DiT's four ways of conditioning a transformer, say what each lets the caption and the time do, and read
#    the course's measurement of them at equal CPU-minutes beside DiT's and SD3's.
#
# **Before it you need**
#
# * Chapter 2 (AdaGN's scale and shift; attention), chapter 3 (text encoders, guidance), chapter 4 (latents) and chapter 5 (the rectified-flow loss and Euler sampling).
# * A transformer block: LayerNorm, multi-head attention, an MLP, residual connections.

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (AMD EPYC (AVX512, native bf16)), 2026-12-08; the code cells' seconds per section, without the
# kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 2 s | 2 s |
# | 1. From feature maps to tokens | < 1 s | < 1 s |
# | 2. Conditioning: time, the pooled caption, and the modulation | < 1 s | < 1 s |
# | 3. Joint attention: the double-stream block | < 1 s | < 1 s |
# | 4. Where is each token? Rotary position embeddings | < 1 s | < 1 s |
# | 5. The single-stream block and the whole model | 1 s | 5 s |
# | 6. Training: the same loss, the same latents | 1 s | 29 s |
# | 7. The trained model: samples in a few steps | 8 s | 5 s |
# | 8. MM-DiT against UNet, measured at equal compute | 7 s | 61 s |
# | 9. Four ways to read the caption: DiT's conditioning ablation, measured | < 1 s | < 1 s |
# | 10. Inside the joint attention: the explorer | 2 s | 3 s |
# | **the whole notebook** | **22 s** | **1 min 47 s** |
#
# The longest cell in full mode takes 51 s.

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from course_lib import config
from course_lib.conditioning import modulate
from course_lib.exercises import check_gated_residual, check_joint_attention, check_rope
from course_lib.mmdit import (MMDiT, MMDiTConfig, DoubleStreamBlock, SingleStreamBlock, apply_rope, image_positions,
                              patchify, rope_angles, unpatchify)
from course_lib.profiling import count_parameters

config.setup_cpu_speedups()
config.seed_everything(0)
device = config.get_device()
FAST = config.fast_mode()
print(f"device: {device}, fast mode: {FAST}")

# %% [markdown]
# ## 1. From feature maps to tokens
#
# A transformer reads a sequence of vectors. `patchify` cuts a latent $[B, C, H, W]$ into non-overlapping
# $p \times p$ patches, row by row, each flattened to a vector of $C p^2$ numbers:
# $[B, C, H, W] \to [B, (H/p)(W/p), C p^2]$; a linear layer (`img_in`) then lifts each one to the model width
# $D$. SD3 and Flux use $p = 2$ on latents of 64x64 and more (thousands of tokens). Our latents are 8x8:
# $p = 1$ gives 64 tokens, each the 4 channels of one latent position; $p = 2$ gives a 4x4 grid of 16 tokens
# of 16 numbers. Which is better? Finer tokens see more detail, but a transformer applies *all* its weights
# to *every* token: with the caption's 16 tokens that is 80 against 32, and on one CPU thread $p = 1$
# trains 47 images/s against 105 (bf16; `benchmarks/bench_mmdit.py`). In a 15-minute pilot of the same
# model, $p = 1$ trained 671 steps to a loss of 0.934 and $p = 2$ 1,687 steps to 0.876. Per step $p = 1$
# learns a little more (0.936 against 0.966 at step 650); per minute $p = 2$ wins clearly, so `mmdit-small`
# uses $p = 2$, as SD3 and Flux do. (A UNet meets this trade-off differently: it keeps most of its weights
# at its coarse 4x4 and 2x2 levels.)

# %%
z = torch.randn(2, 4, 8, 8)  # two latents of vae-small's shape
for p in (1, 2):
    tokens = patchify(z, p)
    assert torch.equal(unpatchify(tokens, p, 8, 8), z)  # the exact inverse
    print(f"patch size {p}: latent {tuple(z.shape)} -> tokens {tuple(tokens.shape)} -> back {tuple(z.shape)}")
print("token 9 with p = 1 is position (row 1, column 1):", torch.equal(patchify(z, 1)[:, 9], z[:, :, 1, 1]))

# %% [markdown]
# ## 2. Conditioning: time, the pooled caption, and the modulation
#
# Each block is told the time $t$ through one **conditioning vector** $\mathbf{c} \in \mathbb{R}^D$:
#
# $$\mathbf{c} = \mathrm{MLP}_t\big(\mathrm{emb}(1000\,t)\big) + \mathrm{MLP}_y(\bar{\mathbf{y}}),$$
#
# a sinusoidal embedding of the time (chapter 1's, on the process's model time) passed through an MLP
# (`time_in`), plus a **pooled text vector** $\bar{\mathbf{y}}$ through another (`vector_in`). SD3 pools with
# CLIP's pooled outputs, Flux with CLIP's too; the course takes the mean of the caption's real token vectors.
# So the whole caption nudges every block globally, while the individual words enter through attention.
#
# From $\mathbf{c}$ each block's `Modulation` makes (shift, scale, gate) triples with one linear layer on
# SiLU($\mathbf{c}$), and each sub-layer $f$ (attention, MLP) is wrapped as (Peebles & Xie 2023, "adaLN"):
#
# $$\mathbf{h} = \mathrm{LN}(\mathbf{x}) \odot (1 + \text{scale}) + \text{shift}, \qquad
#   \mathbf{x} \leftarrow \mathbf{x} + \text{gate} \odot f(\mathbf{h}).$$
#
# The first half is `course_lib.conditioning.modulate`, the very function chapter 2's AdaGN applies to
# GroupNorm'd feature maps; here it acts on LayerNorm'd tokens (the LayerNorm has no affine parameters of its
# own: the modulation is its affine). The gate is new. DiT initialises the modulation's linear layer to zero
# (**adaLN-Zero**): then shift = scale = gate = 0, every sub-layer adds nothing, and *every block starts as
# the identity*, which made DiT train best of the variants Peebles & Xie compared.
#
# **Exercise 1.** Write the modulated, gated sub-layer. `x` is $[B, N, D]$, `shift`, `scale`, `gate` are
# $[B, 1, D]$ (one triple per example, shared by its tokens), `f` is the sub-layer.

# %% tags=["exercise"]
def gated_residual(x, f, shift, scale, gate):
    """x + gate * f(LN(x) * (1 + scale) + shift), LN without affine parameters (eps 1e-6)."""
    raise NotImplementedError  # your code here: F.layer_norm(x, x.shape[-1:], eps=1e-6) is LN


check_gated_residual(gated_residual);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def gated_residual(x, f, shift, scale, gate):
    """x + gate * f(LN(x) * (1 + scale) + shift), LN without affine parameters (eps 1e-6)."""
    h = modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale)  # the same modulate as AdaGN
    return x + gate * f(h)


assert check_gated_residual(gated_residual)

# %% [markdown]
# **The identity at initialisation, shown.** A freshly built double-stream block and single-stream block
# return their inputs bit for bit, whatever the time and the text; give the modulation weights random
# values (as training will) and they start to change things.

# %%
torch.manual_seed(0)
D, heads = 64, 2
double, single = DoubleStreamBlock(D, heads), SingleStreamBlock(D, heads)
img, txt, vec = torch.randn(2, 64, D), torch.randn(2, 6, D), torch.randn(2, D)
angles = rope_angles(torch.cat([torch.zeros(6, 3), image_positions(8, 8)]), (8, 12, 12))  # [70, 16]
with torch.no_grad():
    img_out, txt_out = double(img, txt, vec, angles)
    joint_out = single(torch.cat([txt, img], 1), vec, angles)
print("fresh double block: image out == in:", torch.equal(img_out, img), "| text out == in:", torch.equal(txt_out, txt))
print("fresh single block: out == in:", torch.equal(joint_out, torch.cat([txt, img], 1)))
assert torch.equal(img_out, img) and torch.equal(txt_out, txt)
with torch.no_grad():
    for block in (double, single):
        for name, p in block.named_parameters():
            if "mod" in name and p.ndim == 2:
                p.normal_(0, 0.05)  # what a few training steps would do
    img_out, _ = double(img, txt, vec, angles)
print(f"after random modulation weights: mean |change| of the image tokens {float((img_out - img).abs().mean()):.3f}")

# %% [markdown]
# ## 3. Joint attention: the double-stream block
#
# A UNet's cross-attention lets image positions read the text; the text never reads the image, and text and
# image are different kinds of input to different layers. SD3's block treats them as two **streams** of the
# same transformer: each has its own weights (modulation, QKV, QK-norm, output projection, MLP), because
# text and image tokens are different things, but the attention is **one** attention over the concatenated
# sequence:
#
# $$[\mathbf{q}, \mathbf{k}, \mathbf{v}] = \big[\,[\mathbf{q}_\text{txt}; \mathbf{q}_\text{img}],\;
#   [\mathbf{k}_\text{txt}; \mathbf{k}_\text{img}],\; [\mathbf{v}_\text{txt}; \mathbf{v}_\text{img}]\,\big],
#   \qquad \mathbf{o} = \mathrm{softmax}\!\Big(\frac{\mathbf{q}\mathbf{k}^\top}{\sqrt{d}}\Big)\mathbf{v},
#   \qquad [\mathbf{o}_\text{txt}; \mathbf{o}_\text{img}] = \mathbf{o}.$$
#
# Its $(L + N)^2$ matrix has four quadrants: image→image is the UNet's self-attention, image→text its
# cross-attention, and text→text and **text→image** are new: the caption's tokens are updated by what is in
# the picture, block after block. Before the attention, $\mathbf{q}$ and $\mathbf{k}$ are RMS-normalised per
# head ("QK-norm": SD3 added it when attention logits grew and training diverged at high resolution in mixed
# precision, following Dehghani et al. 2023) and rotated by their positions (section 4).
#
# **Exercise 2.** Write the joint attention: concatenate, attend once, split back. Each input is
# $[B, \text{heads}, L \text{ or } N, d]$; return `(txt_out, img_out)` with the shapes of the queries.

# %% tags=["exercise"]
def joint_attention(txt_q, txt_k, txt_v, img_q, img_k, img_v):
    """One attention over [text, image]; returns (txt_out [B, h, L, d], img_out [B, h, N, d])."""
    raise NotImplementedError  # your code here


check_joint_attention(joint_attention);


# %% [markdown] tags=["solution"]
# A solution:

# %% tags=["solution"] jupyter={"source_hidden": true}
def joint_attention(txt_q, txt_k, txt_v, img_q, img_k, img_v):
    """One attention over [text, image]; returns (txt_out [B, h, L, d], img_out [B, h, N, d])."""
    q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))  # [B, h, L+N, d]
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
    L = txt_q.shape[2]
    return out[:, :, :L], out[:, :, L:]  # split back at the number of text tokens


assert check_joint_attention(joint_attention)

# %% [markdown]
# The shapes through one double-stream block (64 image tokens, 6 text tokens, width 64, 2 heads of 32),
# traced with forward hooks on its sub-modules:

# %%
def shapes(value):
    """Shapes of a module's output: a tensor, a tuple of them, or Modulation's (shift, scale, gate) triples."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if hasattr(value, "shift"):
        return f"(shift, scale, gate) {tuple(value.shift.shape)}"
    return " + ".join(shapes(v) for v in value if v is not None)


trace = []
names = ["img_mod", "txt_mod", "img_attn.qkv", "txt_attn.qkv", "attn", "img_attn.proj", "txt_attn.proj", "img_mlp",
         "txt_mlp"]
modules = dict(double.named_modules())
hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: trace.append((n, type(m).__name__, shapes(i[0]),
                                                                             shapes(o)))) for n in names]
with torch.no_grad():
    double(img, txt, vec, angles)
for h in hooks:
    h.remove()
print(f"{'module':14s} {'class':15s} {'input':16s} output")
for name, kind, i, o in trace:
    print(f"{name:14s} {kind:15s} {i:16s} {o}")

# %% [markdown]
# | this course / BFL `flux` (`modules/layers.py`) | diffusers `FluxTransformerBlock` / SD3 `JointTransformerBlock` |
# | --- | --- |
# | `img_mod`, `txt_mod` (`Modulation`, 6 numbers per width) | `norm1`, `norm1_context` (`AdaLayerNormZero`) |
# | `img_attn.qkv` | `attn.to_q`, `attn.to_k`, `attn.to_v` (three Linears) |
# | `txt_attn.qkv` | `attn.add_q_proj`, `attn.add_k_proj`, `attn.add_v_proj` |
# | `img_attn.norm` (QK-norm), `txt_attn.norm` | `attn.norm_q`, `attn.norm_k`, `attn.norm_added_q`, `attn.norm_added_k` |
# | `img_attn.proj`, `txt_attn.proj` | `attn.to_out`, `attn.to_add_out` |
# | `img_mlp`, `txt_mlp` | `ff`, `ff_context` |
# | `SingleStreamBlock.linear1` / `linear2` | `FluxSingleTransformerBlock`: `attn.to_q/k/v` + `proj_mlp` / `proj_out` |
# | `LastLayer`: `adaLN_modulation` gives [shift, scale] | `norm_out` (`AdaLayerNormContinuous`): [scale, shift], the halves exchanged; + `proj_out` |
#
# `course_lib.export` applies this map (with the small differences it needs: Flux orders its sinusoid cos-first;
# BFL's `LastLayer`, like the course's, splits the final modulation into shift then scale, where diffusers'
# `AdaLayerNormContinuous` reads scale then shift, so the exporter exchanges the two halves of its rows; and
# diffusers takes the pooled text vector and position ids from the caller, which
# `course_lib.export.flux_inputs` builds): `mmdit-small` becomes a `FluxTransformer2DModel` folder and comes back
# unchanged. Two lines, once the checkpoint is loaded in section 7:
#
# ```python
# folder = export_checkpoint(config.checkpoint_dir() / "mmdit-small.safetensors", "mmdit-small-diffusers")
# back = import_folder(folder["folder"], "mmdit-small-again.safetensors")  # the same weights, bit for bit
# ```

# %% [markdown]
# ## 4. Where is each token? Rotary position embeddings
#
# Attention by itself does not know where a token is: permute the tokens and the outputs permute with them.
# SD3 adds fixed 2-D sinusoidal embeddings to the patch tokens; Flux instead rotates queries and keys by
# their positions, **RoPE** (Su et al. 2021), and so does the course: split each head's $d$
# dimensions into pairs $(x_{2j}, x_{2j+1})$ and rotate pair $j$ of a token at position $m$ by the angle
# $m\,\omega_j$, $\omega_j = \theta^{-2j/d_\text{axis}}$. Rotations keep lengths, and a rotated query and key
# meet in a dot product that depends on the positions only through their difference:
#
# $$\langle R_{m}\mathbf{q},\, R_{n}\mathbf{k}\rangle = \langle \mathbf{q},\, R_{n - m}\mathbf{k}\rangle.$$
#
# For a grid, each token has three position ids, (index, row, column), and the head dimension is split into
# three parts, one per axis (`rope_axes`, here 16 + 24 + 24 of 64; Flux: 16 + 56 + 56 of 128). Image tokens
# sit at (0, row, column); **text tokens all sit at (0, 0, 0)**, as in Flux: the words carry no position of
# their own among the patches. The check below moves a query and a key around the grid together: the score
# stays the same; change their offset and it changes.

# %%
torch.manual_seed(1)
axes = (16, 24, 24)
q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)


def score(pos_q, pos_k):
    """<RoPE(q at pos_q), RoPE(k at pos_k)> for (index, row, column) positions."""
    a = rope_angles(torch.tensor([pos_q, pos_k], dtype=torch.float32), axes)  # [2, 32]
    return float(apply_rope(q, a[:1]).flatten() @ apply_rope(k, a[1:]).flatten())


same_offset = [score((0, r, c), (0, r + 2, c - 1)) for r, c in [(0, 3), (2, 2), (5, 6), (4, 1)]]
print("offset (+2, -1) at four places:", " ".join(f"{s:.5f}" for s in same_offset))
print("offset (+1, +1):               ", f"{score((0, 0, 0), (0, 1, 1)):.5f}")
print("norm kept:", torch.allclose(apply_rope(q, rope_angles(torch.tensor([[0., 3., 5.]]), axes)).norm(), q.norm()))
assert max(same_offset) - min(same_offset) < 1e-4

offsets = torch.arange(-7, 8)
fig, axes_ = plt.subplots(1, 2, figsize=(8.5, 3.7), layout="constrained")
for ax, (r0, c0) in zip(axes_, [(7, 7), (20, 3)]):  # the query at two places (any position id works)
    grid = torch.tensor([[score((0, r0, c0), (0, r0 + dr, c0 + dc)) for dc in offsets] for dr in offsets])
    im = ax.imshow(grid, cmap="viridis", extent=(-7.5, 7.5, 7.5, -7.5))
    ax.set(xlabel="column offset of the key", ylabel="row offset of the key",
           title=f"query at (row {r0}, column {c0})")
    ax.title.set_fontsize(10)
fig.colorbar(im, ax=axes_, label="q · k after RoPE")
fig.suptitle("one query-key pair's score against the 2-D offset: the same map wherever the query is", fontsize=10)
plt.show()

# %% [markdown]
# **Exercise 3.** Write the rotary embedding yourself, as Flux does it. `x` is $[B, \text{heads}, L, d]$
# (queries or keys), `positions` is $[L, n_\text{axes}]$ (here (index, row, column)), and `axes_dim` gives each
# axis its share of the head, in order (even sizes that sum to $d$). For axis $a$ with share
# $d_a$ = `axes_dim[a]`, pair $j$ of that share turns by $p_a\,\omega_j$ with $\omega_j = \theta^{-2j/d_a}$;
# the pairs are *adjacent* dimensions, $(x_{2j}, x_{2j+1}) \mapsto (x_{2j}\cos\alpha - x_{2j+1}\sin\alpha,\;
# x_{2j}\sin\alpha + x_{2j+1}\cos\alpha)$. The check first tests the two properties above (lengths kept, scores
# that depend only on offsets), then compares with the library.

# %% tags=["exercise"]
def rope(x, positions, axes_dim, theta=10_000.0):
    """x [B, heads, L, d] rotated pairwise by positions [L, n_axes]; axes_dim: each axis's share of d."""
    raise NotImplementedError  # your code here: angles [L, d / 2] first, then rotate adjacent pairs


check_rope(rope);


# %% [markdown] tags=["solution"]
# A solution:

# %% tags=["solution"] jupyter={"source_hidden": true}
def rope(x, positions, axes_dim, theta=10_000.0):
    """x [B, heads, L, d] rotated pairwise by positions [L, n_axes]; axes_dim: each axis's share of d."""
    angles = torch.cat([positions[:, a, None] * theta ** (-torch.arange(0, dim, 2) / dim)  # [L, dim / 2] per axis
                        for a, dim in enumerate(axes_dim)], dim=-1)  # [L, d / 2]
    even, odd = x[..., 0::2], x[..., 1::2]  # the adjacent pairs (x_2j, x_2j+1)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)  # interleave back


assert check_rope(rope)

# %% [markdown]
# Many codebases (GPT-NeoX, Llama in `transformers`) pair dimension $j$ with $j + d/2$ instead ("rotate half").
# It is the same idea in another layout, and the check names it: weights trained with one layout give wrong
# scores with the other, a classic bug when porting a checkpoint.

# %% [markdown]
# ## 5. The single-stream block and the whole model
#
# After its double-stream blocks Flux concatenates the two streams and continues with **single-stream
# blocks**: one set of weights for all tokens, one modulation triple, and the attention and the MLP computed
# *in parallel* from the same normalised input (Dehghani et al. 2023): `linear1` makes q, k, v and the MLP's
# hidden layer in one matrix multiplication, `linear2` maps the attention output and the activated hidden
# layer back in one more,
#
# $$[\mathbf{q}\mathbf{k}\mathbf{v}, \mathbf{u}] = \texttt{linear1}(\mathbf{h}), \qquad
#   \mathbf{x} \leftarrow \mathbf{x} + \text{gate} \odot \texttt{linear2}\big([\mathrm{Attn}(\mathbf{q},
#   \mathbf{k}, \mathbf{v}),\, \mathrm{GELU}(\mathbf{u})]\big).$$
#
# Flux-dev has 19 double and 38 single blocks at width 3,072; the course's `mmdit-small` has 2 and 4 at
# width 256 (4 heads of 64), about the parameters of chapter 4's UNet. The model (`course_lib.mmdit.MMDiT`):
#
# | stage | what | shape |
# | --- | --- | --- |
# | `img_in` | patch tokens ($2 \times 2 \times 4 = 16$ numbers each), projected | $[B, 16, D]$ |
# | `txt_in` | the text encoder's states, projected ("context embedder") | $[B, L, D]$ |
# | `time_in` + `vector_in` | the conditioning vector $\mathbf{c}$ | $[B, D]$ |
# | `double_blocks` | two streams, joint attention | $[B, 16, D]$, $[B, L, D]$ |
# | `single_blocks` | one stream over $[\text{text}, \text{image}]$ | $[B, L + 16, D]$ |
# | `final_layer` | adaptive LayerNorm, each image token back to a patch | $[B, 16, 16] \to [B, 4, 8, 8]$ |
#
# Traced on a fresh `mmdit-small`-sized model:

# %%
cfg = MMDiTConfig(context_dim=384, patch_size=2)  # mmdit-small's MM-DiT (it reads the 384-wide MiniLM)
model = MMDiT(cfg).eval()
x, t = torch.randn(2, 4, 8, 8), torch.tensor([250.0, 750.0])
context, mask = torch.randn(2, 16, 384), torch.ones(2, 16, dtype=torch.bool)
mask[:, 7:] = False  # a 7-token caption, padded to 16
trace = []
stages = [("img_in", model.img_in), ("txt_in", model.txt_in), ("time_in", model.time_in),
          ("vector_in", model.vector_in)] + [(f"double_blocks[{i}]", b) for i, b in enumerate(model.double_blocks)] \
    + [(f"single_blocks[{i}]", b) for i, b in enumerate(model.single_blocks)] + [("final_layer", model.final_layer)]


hooks = [m.register_forward_hook(lambda m, i, o, n=n: trace.append((n, shapes(i[0]), shapes(o)))) for n, m in stages]
with torch.no_grad():
    out = model(x, t, context, mask)
for h in hooks:
    h.remove()
print(f"{'stage':17s} {'input':16s} output")
for name, i, o in trace:
    print(f"{name:17s} {i:16s} {o}")
print(f"output {tuple(out.shape)}; at initialisation every entry is {out.abs().max().item():g} (final layer at zero)")
parts = {"embedders (img_in, txt_in, time_in, vector_in)": sum(count_parameters(m) for _, m in stages[:4]),
         "double-stream blocks": sum(count_parameters(b) for b in model.double_blocks),
         "single-stream blocks": sum(count_parameters(b) for b in model.single_blocks),
         "final layer": count_parameters(model.final_layer)}
for name, n in parts.items():
    print(f"{name:48s} {n / 1e6:6.2f}M")
print(f"{'total':48s} {count_parameters(model) / 1e6:6.2f}M")
assert out.shape == x.shape and out.abs().max() == 0

# %% [markdown]
# **How far the design travels.** The same two kinds of block, counted in the released code:
#
# | model | double-stream (joint) blocks | single-stream blocks | width | heads x dim | the "image" stream | the condition stream | positions |
# | --- | ---: | ---: | ---: | --- | --- | --- | --- |
# | SD3-medium (2B) | 24 | 0 | 1,536 | 24 x 64 | 2x2 patches of a 16-channel latent | CLIP-L/G and T5-XXL text tokens | absolute 2-D sin-cos, image tokens only |
# | SD3, largest (8B) | 38 | 0 | 2,432 | 38 x 64 | the same | the same | the same |
# | FLUX.1 [dev] (12B) | 19 | 38 | 3,072 | 24 x 128 | 2x2 patches of a 16-channel latent | T5-XXL text tokens (512) | RoPE over (index, row, column), text at 0 |
# | Hunyuan3D-DiT, Hunyuan3D 2.0 (1.1B) | 16 | 32 | 1,024 | 16 x 64 | 3,072 tokens of a 3-D shape autoencoder | DINOv2 features of the input picture | none |
# | `mmdit-small` (this course) | 2 | 4 | 256 | 4 x 64 | 2x2 patches of a 4-channel latent (16) | MiniLM text tokens | RoPE as Flux |
#
# Sources: Stability AI's `sd3.5` repository (`mmditx.py`: width $= 64 \cdot$ depth, heads = depth, the
# sin-cos table added to the patches), BFL's `flux` (`src/flux/util.py`, `configs["flux-dev"]`), Tencent's
# `Hunyuan3D-2` (`hy3dgen/shapegen/models/denoisers/hunyuan3ddit.py` and its released config). SD3 uses joint
# blocks only; Flux added the cheaper single-stream blocks after them.
#
# Hunyuan3D-DiT (Tencent, 2025) shows that the blocks do not care what the tokens are. It generates the shape of
# a 3-D object from one picture: its "image" stream holds the 3,072 latent tokens of a shape autoencoder, its
# "text" stream the DINOv2 features of the picture, and it is trained with flow matching, as chapter 5's
# rectified flow. Its blocks are Flux's almost line for line (the modulation, QK-norm, joint attention, the
# fused single-stream linears, even the ratio of 1 double to 2 single blocks). What changes is what a token
# *is*: a shape latent is one element of an unordered set, not a cell of a grid, so there is no patchify and no
# position at all (the code keeps Flux's RoPE path but passes no angles). The choice is not final either: the
# next version, Hunyuan3D 2.1, moved its shape model to a cross-attention transformer with mixture-of-experts
# layers.

# %% [markdown]
# **What the joint sequence costs.** Every block attends over all $L + N$ tokens at once, so its score matrix
# has $(L + N)^2$ entries per head, and the image tokens grow with the square of the latent's side over the
# patch size: $N = (H/p)(W/p)$. Patch 2 instead of 1 gives 4x fewer image tokens and up to 16x fewer scores;
# a long caption adds to every row. At the course's size all of this is tiny; at Flux's 1024 x 1024 images
# (a 128 x 128 latent, patch 2: 4,096 image tokens, with 512 T5 tokens) it is chapter 2's problem again, and
# the reason its memory-efficient attention matters. The same three implementations as chapter 2
# (`course_lib.attention`: einsum, SDPA, chunked), one example with `mmdit-small`'s 4 heads of 64, timed side by
# side (`time_per_call`, medians) with their peak tensor memory (`peak_memory`); in full mode also one head (of
# 64 dimensions) over Flux's sequence:

# %%
from course_lib.attention import ATTENTION_IMPLS
from course_lib.profiling import peak_memory, time_per_call

sequences = {"patch 2, 7-token caption": (7, 16, 4), "patch 2, 16 tokens": (16, 16, 4),  # (L, N, heads)
             "patch 1, 7-token caption": (7, 64, 4), "patch 1, 16 tokens": (16, 64, 4)}
if not config.fast_mode():
    sequences["Flux at 1024 x 1024, one head"] = (512, 4096, 1)
g = torch.Generator().manual_seed(0)
print(f"{'sequence':32s} {'L':>4s} {'N':>5s} {'L+N':>5s} {'scores/head':>12s}"
      + "".join(f"{impl + ' ms':>11s}" for impl in ATTENTION_IMPLS) + "".join(f"{impl + ' MB':>11s}" for impl in ATTENTION_IMPLS))
for name, (L, N, heads) in sequences.items():
    q, k, v = (torch.randn(1, heads, L + N, 64, generator=g) for _ in range(3))  # [1, heads, L + N, 64]
    calls = {impl: (lambda fn=fn: fn(q, k, v)) for impl, fn in ATTENTION_IMPLS.items()}
    with torch.no_grad():
        times = time_per_call(calls, repeats=3, min_seconds=config.pick(0.01, 0.05))
        memory = {impl: peak_memory(call) for impl, call in calls.items()}
    print(f"{name:32s} {L:4d} {N:5d} {L + N:5d} {(L + N) ** 2:12,d}"
          + "".join(f"{1e3 * times[impl]:11.3f}" for impl in ATTENTION_IMPLS)
          + "".join(f"{memory[impl] / 2**20:11.2f}" for impl in ATTENTION_IMPLS))

# %% [markdown]
# Read the rows from the top: patch 1 multiplies the scores by about 6-10 over patch 2 at these caption lengths;
# at these sizes every version takes well under a millisecond. The last row (full mode) is one head of Flux's
# attention: einsum materialises the whole $4608^2$ score matrix (81 MB in float32, and about twice that at its
# peak, with the softmax's copy), while SDPA and the chunked version keep a few MB alive at once. Flux runs 24
# such heads (of 128 dimensions) in each of its 57 blocks, at every step. Chapter 2 (section 3) measured the
# same curve from 64 to 4,096 tokens. The results page (`docs/results.md`, "What attention costs") keeps one
# run of these lengths with more repeats (`python benchmarks/bench_attention.py --lengths 23,32,71,80 --record`,
# and `--lengths 4608 --heads 1`): on one idle thread of an AMD EPYC, 0.02-0.18 ms a call for every version
# at the course's lengths, and at Flux's 4,608 tokens einsum 196 ms and 162 MB against SDPA's 63 ms and 1.7 MB.

# %% [markdown]
# ## 6. Training: the same loss, the same latents
#
# `TextToImageModel` holds the MM-DiT exactly as it holds the UNet (the denoiser registry of
# `course_lib.text2image`: one config, `denoiser=MMDiTConfig(...)`): the same text encoders
# (`mmdit-small` reads the frozen all-MiniLM-L6-v2, as SD3 and Flux read frozen T5 and CLIP encoders), the
# same caption dropout for guidance, the same `text2image_loss` and chapter 5's rectified-flow process with
# SD3's logit-normal times, on chapter 4's cached latents of `vae-small`. A short run (fast mode: the tiny
# model; full mode: `mmdit-small` itself, about a minute):

# %%
from course_lib.latents import cached_latents
from course_lib.recipes import RECIPES
from course_lib.results import read_results
from course_lib.trainer import TrainConfig, fit
from course_lib.viz import plot_losses

ae_checkpoint = config.checkpoint_dir() / "vae-small.safetensors"
recipe = RECIPES["mmdit-tiny" if FAST else "mmdit-small"]
text_model = recipe.build_model()
print(f"{recipe.name}: {type(text_model).__name__}, {text_model.parameter_counts()}")
if ae_checkpoint.exists():
    latents = cached_latents(ae_checkpoint, "train", limit=config.pick(500, 5000), progress=False)
    short = TrainConfig(max_steps=config.pick(20, 60), batch_size=config.pick(16, 32), lr=3e-4, warmup_steps=10,
                        ema_decay=0.99, checkpoint_minutes=None)
    config.seed_everything(0)
    start = time.perf_counter()
    run = fit(text_model, recipe.loss_fn(), recipe.batches(latents, short), short, device=device)
    seconds = time.perf_counter() - start
    z0 = latents.batch(torch.arange(min(len(latents), 1000)), generator=torch.Generator().manual_seed(0))[0]
    zero_model = 1 + float(z0.square().mean())  # E||eps - z_0||^2 per number: what predicting v = 0 scores
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    plot_losses(run.losses, window=config.pick(5, 10), ax=ax,
                title=f"a short run of {recipe.name}: {short.max_steps} steps of {short.batch_size} in {seconds:.0f} s")
    ax.axhline(zero_model, color="grey", ls=":", label=f"predicting v = 0: 1 + E[z_0^2] = {zero_model:.2f}")
    ax.legend(fontsize=8)
    plt.show()
else:
    print(f"{ae_checkpoint} not found: chapter 4's autoencoder is needed for the latents")

# %% [markdown]
# **QK-norm, shown.** Section 3 said why SD3 normalises queries and keys: a logit $\mathbf{q}\cdot\mathbf{k}/\sqrt{d}$
# grows with the norms of $\mathbf{q}$ and $\mathbf{k}$, and nothing else bounds it. ViT-22B (Dehghani et al. 2023)
# traced its diverging loss to exactly that: logits so large that each attention row became nearly one-hot,
# entropy near zero. RMS-normalising q and k bounds every logit by $\sqrt{d}$ times the product of the two learned
# scales. To see it at this size, `mmdit-small`'s recipe was trained twice at ten times its learning rate
# ($3\times10^{-3}$, 100 warm-up steps, bf16 autocast, 1,500 steps of 64), once as it is and once without QK-norm
# (`python -m course_lib.train mmdit-qknorm-hot` / `mmdit-noqknorm-hot`; `MMDiTConfig(qk_norm=False)`). Every 25
# steps the trainer measured the attention on one fixed batch (`TrainConfig(monitor_every=25)`,
# `course_lib.attention.attention_logit_stats`): the largest logit over every block, head, query and key, and
# the mean entropy of the attention rows. The curves come from `data/results.jsonl`:

# %%
QK_RUNS = {"mmdit-qknorm-hot": "with QK-norm", "mmdit-noqknorm-hot": "without QK-norm"}
curves = {r["model"]: r for r in read_results() if r["kind"] == "training_monitor" and r["model"] in QK_RUNS}
if curves:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
    for name, r in curves.items():
        m = r["metrics"]
        for ax, key in zip(axes, ("loss", "max_logit", "entropy")):
            ax.plot(m["step"], m[key], label=QK_RUNS[name])
    axes[2].axhline(curves[next(iter(curves))]["metrics"]["max_entropy"][-1], color="grey", ls=":", lw=1,
                    label="uniform attention")
    for ax, title in zip(axes, ("training loss (the step's batch)", "largest attention logit (fixed batch)",
                                "mean attention entropy, nats (fixed batch)")):
        ax.set(xlabel="step", title=title)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle("mmdit-small's recipe at lr 3e-3, with and without QK-norm", fontsize=10)
    plt.show()
    for name, r in curves.items():
        m = r["metrics"]
        tail = m["loss"][-20:]  # the last 20 probes' batch losses (steps 1,025-1,500)
        print(f"{QK_RUNS[name]:16s} step {m['step'][-1]}: largest logit {m['max_logit'][0]:.1f} -> "
              f"{max(m['max_logit']):.1f} (max), entropy {m['entropy'][0]:.2f} -> {min(m['entropy']):.2f} (min), "
              f"mean loss of the last {len(tail)} probes {sum(tail) / len(tail):.3f}; {r['hardware']}")
else:
    print("no QK-norm runs in data/results.jsonl (python -m course_lib.results --add-monitor CHECKPOINT)")

# %% [markdown]
# What the runs show at this size (one run each, 1,500 steps of 64, bf16 autocast, one thread of an AMD EPYC):
# **without QK-norm the largest logit jumps** from 4 to about 60 within 200 steps and stays between 30 and 73;
# with it, the logit grows slowly from 6 to 16 (the norm's learned scales can still grow, only as fast as the
# optimiser moves them). The rows' entropy follows: 1.6-1.8 nats without, 2.1-2.2 with (uniform attention over
# the about 23 keys of a row, 16 patches and the caption's tokens, would be 3.14). **The loss does not notice**:
# neither run diverged, and their mean losses at the last 20 probes (steps 1,025-1,500), 0.887 with and 0.898
# without, differ by less than one run each can resolve. So at 9M parameters, 16 image tokens and gradient
# clipping at 1, the growth SD3's QK-norm prevents is plain to see and still harmless; ViT-22B and SD3 met it at billions of
# parameters and long sequences, where it made training diverge (Dehghani et al. 2023; Esser et al. 2024). What
# the course can show is the mechanism, not the failure.

# %% [markdown]
# ## 7. The trained model: samples in a few steps
#
# `mmdit-small` trained for 100 minutes on one CPU thread (`python -m course_lib.train mmdit-small --minutes 100
# --threads 1` does the same; the shipped run began as section 1's 15-minute patch-size pilot and was resumed
# for 85 minutes, as its card says), and beside it, for the same 100 minutes on the other thread of the same
# machine, its baseline `rf-small-minilm`: chapter 5's latent UNet (`rf-small`) reading the same frozen
# MiniLM, with the same latents, captions, caption dropout, rectified-flow loss and logit-normal times. The two
# differ in the network only (and each trains in the precision that is fastest for it on this CPU: bf16
# autocast for the transformer, float32 for the UNet). Their cards:

# %%
from course_lib.captions import class_prompt, unseen_prompt
from course_lib.data import CIFAR10_CLASSES
from course_lib.generation import Pipeline
from course_lib.viz import describe_card, show_images

MODELS = {"mmdit-small": "MM-DiT", "rf-small-minilm": "UNet"}
ckpt_paths = {name: config.checkpoint_dir() / f"{name}.safetensors" for name in MODELS}
pipes = {name: Pipeline.from_checkpoint(path, device=device) for name, path in ckpt_paths.items() if path.exists()}
for name, pipe in pipes.items():
    print(describe_card(pipe.card), "\n")
missing = [name for name in MODELS if name not in pipes]
if missing:
    print(f"not found: {', '.join(missing)} (python -m course_lib.train {missing[0]}); the sections below skip "
          "what needs them")

# %% [markdown]
# From the same latent noise, the ten class prompts with guidance $w = 3$ (chapter 3) and 1 to 25 Euler steps
# (chapter 5):

# %%
step_list = [1, 2, 4, 8, 25]
prompts = [class_prompt(c) for c in range(10)]
z_img = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
if pipes:
    grid = {name: torch.cat([pipe.generate(prompts, guidance=3.0, num_steps=n, x_T=z_img.to(device)).cpu()
                             for n in step_list]) for name, pipe in pipes.items()}
    fig, axes = plt.subplots(1, len(grid), figsize=(7.2 * len(grid), 0.72 * len(step_list) + 1.0),
                             layout="constrained", squeeze=False)
    for ax, (name, images) in zip(axes[0], grid.items()):
        show_images(images, nrow=len(prompts), ax=ax, row_labels=[f"{n} steps" for n in step_list])
        ax.set_title(f"{name} ({MODELS[name]}): Euler, w = 3", fontsize=10)
    fig.suptitle("columns: " + " · ".join(CIFAR10_CLASSES) + "  (the same noise for both models)", fontsize=9)
    plt.show()

# %% [markdown]
# Two different networks, trained apart, draw nearly the same picture from the same noise and prompt: the
# same layout and colours, often the same object. Both learned the same velocity field, the one the data,
# the captions and the rectified-flow objective define, and an ODE maps a given noise to a given sample.
# At one step both give blurred averages (chapter 5: $\hat x_0 = x_1 - v(x_1, 1)$ is the mean image for the
# prompt); from four steps on the objects appear.

# %% [markdown]
# ## 8. MM-DiT against UNet, measured at equal compute
#
# Equal training CPU-minutes, on one thread of the same machine, for both. What each network costs, from
# the cards (the training loop's own measurement, averaged over the whole run), and what it gives: FID-2k
# and FD_clf of 2,000 samples (four Euler steps and 25; `python -m course_lib.evaluation CHECKPOINT
# --num-samples 2000 --steps S --guidance 3`, in `data/results.jsonl`) and prompt accuracy at $w = 3$,
# measured now: the course's classifier names the class of each image drawn from a class's prompt, once
# with the training captions' words ("a photo of a cat") and once with words no caption has ("a photo of a
# kitten"; chapter 4, section 6), where only a text encoder that knew language before training can help.

# %%
import math

from course_lib.evaluation import prompt_accuracy
from course_lib.models import model_from_checkpoint
from course_lib.results import fid_label, points

EVAL_STEPS = (4, 25)
# the 2,000-sample points of both models at w = 3 with Euler, decoded by vae-small (both step counts were measured
# with it), from data/results.jsonl (mean over seeds)
measured = {(p.model, p.settings["steps"]): p for name in pipes
            for p in points(name, kind="samples", num_samples=2000, guidance=3.0, sampler="euler", decoder="vae-small")}


def training_img_s(card):
    """Training images per second over the whole run, from a card: steps x batch / wall time."""
    training = card["training"]
    return card["step"] * training["train_config"]["batch_size"] / training["wall_seconds_total"]


print(f"{'model':16s} {'params':>7s} {'minutes':>7s} {'steps':>6s} {'img/s':>6s}  "
      + "  ".join(f"{fid_label(2000)}/FD_clf @{n}" for n in EVAL_STEPS))
for name, pipe in pipes.items():
    card, training = pipe.card, pipe.card["training"]
    minutes = training["wall_seconds_total"] / 60
    print(f"{name:16s} {card['parameters'] / 1e6:6.2f}M {minutes:7.0f} {card['step']:6,d} {training_img_s(card):6.1f}  "
          + "  ".join(f"{measured[name, n].mean('fid'):9.1f} / {measured[name, n].mean('fd_clf'):5.2f}"
                      if (name, n) in measured else f"{'-':>9s} / {'-':>5s}" for n in EVAL_STEPS))

# %%
classifier_path = config.checkpoint_dir() / "cifar-classifier.safetensors"
per_class, acc_steps = config.pick(2, 10), config.pick(8, 25)  # full mode: 34 s measured on 2 idle CPU cores
accuracy = {}
if pipes and classifier_path.exists():
    classifier, _ = model_from_checkpoint(classifier_path, device=device)
    start = time.perf_counter()
    for name, pipe in pipes.items():
        for words, prompt in (("training words", class_prompt), ("unseen words", unseen_prompt)):
            accuracy[name, words] = prompt_accuracy(pipe, classifier, guidances=(3.0,), per_class=per_class,
                                                    num_steps=acc_steps, prompt=prompt)[3.0]
            print(f"{name:16s} {words:15s} {accuracy[name, words]}")
    print(f"({10 * per_class} images per bar, {acc_steps} Euler steps, w = 3; {time.perf_counter() - start:.0f} s)")

if pipes:
    names = list(pipes)
    colors = [f"C{i}" for i in range(len(names))]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3), layout="constrained")
    axes[0].bar(names, [training_img_s(pipes[name].card) for name in names], color=colors)
    axes[0].set(title="training images / s (1 thread)", ylabel="images / s")
    for ax, metric, label in ((axes[1], "fid", fid_label(2000)), (axes[2], "fd_clf", "FD_clf")):
        for name, color in zip(names, colors):
            ax.plot(EVAL_STEPS, [measured[name, n].mean(metric) if (name, n) in measured else math.nan
                                 for n in EVAL_STEPS], "o-", color=color, label=name)
        if not measured:
            ax.text(0.5, 0.5, "not measured yet\n(python -m course_lib.evaluation)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set(xscale="log", xlabel="Euler steps", title=f"{label}, 2,000 samples, w = 3\n(lower is better)")
        ax.set_xticks(EVAL_STEPS, [str(n) for n in EVAL_STEPS])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    if accuracy:
        for j, words in enumerate(("training words", "unseen words")):
            ax = axes[3]
            ax.bar([i + (j - 0.5) * 0.4 for i in range(len(names))], [accuracy[n, words].accuracy for n in names], 0.4,
                   yerr=[accuracy[n, words].stderr for n in names], capsize=3, color=colors, alpha=1.0 - 0.45 * j,
                   hatch=None if j == 0 else "//", label=words)
        axes[3].axhline(0.1, color="grey", ls=":", lw=1)
        axes[3].set_xticks(range(len(names)), names)
        axes[3].set(title=f"prompt accuracy, w = 3 (± 1 s.e.,\n{10 * per_class} images per bar)", ylim=(0, 1))
        axes[3].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    plt.show()

# %% [markdown]
# What the shipped runs measured. They trained side by side, on one thread each of an Intel Xeon with AVX-512
# BF16, 100 minutes each. FID-2k, FD_clf and prompt accuracy come from 25 Euler steps at $w = 3$ and the same three sampling
# seeds for both models: 2,000 samples per seed for FID-2k and FD_clf, 200 images per seed for prompt accuracy.
# Each sample was decoded by both decoders of chapter 4 (`python -m course_lib.evaluation CHECKPOINT --num-samples
# 2000 --seeds 3 --decoder ... --decoder ...`, measured on an AMD EPYC).
#
# | | `mmdit-small` (MM-DiT) | `rf-small-minilm` (UNet) |
# | --- | ---: | ---: |
# | parameters (trained) | 9.21M | 9.12M |
# | steps of batch 64 in 100 minutes | 10,639 (bf16) | 10,517 (float32) |
# | FID-2k, decoder `vae-small` (3 seeds) | 65.7 ± 0.9 | 65.3 ± 0.2 |
# | FID-2k, decoder `vae-small-ft` (3 seeds) | 46.6 ± 0.5 | **43.5 ± 0.4** |
# | FD_clf, decoder `vae-small-ft` (3 seeds) | 1.88 ± 0.03 | **1.53 ± 0.05** |
# | prompt accuracy, decoder `vae-small-ft` (3 seeds of 200 images) | 83.8 % ± 4.2 | 87.3 % ± 2.5 |
# | FID-2k / FD_clf, 4 Euler steps, `vae-small`, one seed | 79.1 / 11.14 | 76.4 / 10.97 |
# | prompt accuracy, unseen words, `vae-small`, one seed | 61.0 % ± 3.4 | 62.5 % ± 3.4 |
#
# Through `vae-small`'s blurry decoder the two looked equal: 65.7 against 65.3, well inside the spread between
# seeds. The sharper decoder separates them. On each of the three seeds the UNet's samples score about 3 FID-2k
# points better than the MM-DiT's (3.4, 3.2 and 2.9), and FD_clf agrees. Prompt accuracy differs by 3.5 points,
# with spreads of 4.2 and 2.5 between seeds: a tie. At this size and this budget the transformer does not
# beat the UNet; it trails it a little. That is not why SD3 and Flux use it.
# A UNet brings priors for images, convolutions and a pyramid of resolutions, which help most when data and
# compute are small, as here. The MM-DiT brings uniformity: one kind of block, text and image as tokens of
# one sequence, attention both ways, and a design that grows by adding width and depth. SD3's paper compares
# it with other transformer designs (DiT with concatenated tokens, CrossDiT, UViT) rather than with a UNet,
# finds it best among them, and shows its validation loss falling predictably as the model grows to 8B
# parameters (Esser et al. 2024, Sec. 5). A CPU course cannot show that scaling. It can show that the
# transformer comes within a few FID points of the UNet at equal compute, even at 9M parameters, once its tokens
# are few enough (section 1's patch size) and it computes in bf16 where the CPU has it.

# %% [markdown]
# **Other grids: what relative positions buy.** Section 4 showed that RoPE scores depend only on offsets. That
# is the usual argument for it over SD3's absolute sin-cos table: on a grid the model never saw, nearby patches
# still have offsets it knows, and there is no table of positions to stretch (Flux serves many resolutions and
# aspect ratios; Black Forest Labs have not published their reasons). The UNet has no position input at all;
# its convolutions see only neighbourhoods, and it too accepts any grid.
# Both networks are asked for latents larger than their training's 8 x 8 (`generate(size=...)`; the
# autoencoder is convolutional, so a 16 x 16 latent decodes to 64 x 64 pixels), from the same noise:

# %%
GRIDS = [(8, 8), (16, 16), (8, 16)]  # the trained grid, twice the side, twice as wide
grid_classes = [0, 1, 3, 7, 8]  # airplane, automobile, cat, horse, ship
grid_steps = config.pick(8, 25)
if pipes:
    fig, axes = plt.subplots(len(GRIDS), len(pipes), figsize=(6.2 * len(pipes), 4.6), layout="constrained",
                             squeeze=False, height_ratios=[1, 1, 0.55])  # five square, square, 1:2 pictures a row
    for j, (name, pipe) in enumerate(pipes.items()):
        for i, (h, w) in enumerate(GRIDS):
            noise = torch.randn(len(grid_classes), 4, h, w, generator=torch.Generator().manual_seed(0))
            images = pipe.generate([class_prompt(c) for c in grid_classes], guidance=3.0, num_steps=grid_steps,
                                   x_T=noise.to(device), size=(h, w)).cpu()  # [5, 3, 4h, 4w]
            show_images(images, nrow=len(grid_classes), ax=axes[i, j])
            axes[i, j].set_title(f"{name} ({MODELS[name]}): latent {h} x {w} -> {4 * h} x {4 * w} pixels", fontsize=9)
    fig.suptitle(f"Euler {grid_steps} steps, w = 3; columns: " + " · ".join(CIFAR10_CLASSES[c] for c in grid_classes),
                 fontsize=9)
    plt.show()

# what the course classifier reads in them: prompt accuracy at w = 3, 25 Euler steps, 200 images a seed, from
# data/results.jsonl (python -m course_lib.evaluation CHECKPOINT --per-class 20 --guidance 3 --seeds 3
# [--size 16 16]); larger images are averaged down to the classifier's 32 x 32 first
print(f"{'model':16s}" + "".join(f"{f'grid {h} x {w}':>22s}" for h, w in GRIDS))
for name, pipe in pipes.items():
    found = {tuple(p.settings.get("size") or (8, 8)): p
             for p in points(name, kind="prompt_accuracy", prompts="class", guidance=3.0, steps=25, per_class=20,
                             decoder="vae-small")}  # measured with the decoder the models were trained with
    print(f"{name:16s}" + "".join(f"{found[g].text('prompt_accuracy', '.1f', 100) if g in found else '-':>22s}"
                                  for g in GRIDS))

# %% [markdown]
# What the runs measured (200 images a seed, 3 seeds, 25 Euler steps, $w = 3$; one thread of an AMD EPYC;
# `docs/results.md`, prompt accuracy):
#
# | latent grid (pixels) | `mmdit-small` (RoPE) | `rf-small-minilm` (UNet) |
# | --- | ---: | ---: |
# | 8 x 8 (32 x 32), trained | 77.7 % ± 5.5 | 78.2 % ± 1.9 |
# | 8 x 16 (32 x 64) | 65.7 % ± 2.9 | 86.0 % ± 1.3 |
# | 16 x 16 (64 x 64) | 53.2 % ± 2.3 | 91.5 % ± 1.0 |
#
# **Relative positions did not make the transformer travel at this size; the UNet travelled better.** RoPE
# promises only that the scores depend on offsets; it does not promise that the network has learned what to do
# at offsets it never met: a 4 x 4 grid of patches has offsets up to 3, a 8 x 8 grid (a 16 x 16 latent) up to 7,
# and only 47 % of the pairs of patches there are as close as the pairs of training were ($(44/64)^2$: on each
# axis, 44 of the 64 ordered pairs of 8 positions are at most 3 apart). Each attention row also spreads
# over four times as many image tokens. Read the UNet's numbers with the figure: the classifier sees a
# 32-pixel copy of a 64-pixel picture, and the UNet's large canvases often hold several copies of the object,
# which makes the class easier to name; the number says "the picture shows the class", not "this is a good
# 64-pixel picture". The production models do not rely on extrapolation either: they are trained at the sizes
# they are used at. SDXL fine-tunes on buckets of aspect ratios after pretraining at one resolution (Podell et al.
# 2023, Sec. 2.3), and SD3 continues at higher resolution after pretraining at 256 x 256 (Esser et al. 2024; the
# reason for its resolution-dependent time shift, chapter 5). Relative positions make such training simpler (no
# table of positions to stretch), not unnecessary. A matching run with SD3's absolute sin-cos positions does not
# fit the 30 minutes this comparison may cost on a CPU, so the course does not claim which extrapolates better.

# %% [markdown]
# ## 9. Four ways to read the caption: DiT's conditioning ablation, measured
#
# Why does the MM-DiT put the caption into its attention, and the time into a modulation? DiT (Peebles & Xie
# 2023, Sec. 3.2 and Fig. 5) asked the question for a class label. It compared four ways for the blocks of
# DiT-XL/2 to read the time $t$ and the class $c$, on ImageNet at 256 x 256:
#
# * **in-context**: $t$ and $c$ become two more tokens of the sequence, and the blocks are a plain ViT's;
# * **cross-attention**: the image tokens attend to the sequence $[t, c]$ in an extra layer (about 15 % more
#   Gflops);
# * **adaLN**: every LayerNorm's scale and shift are regressed from the vector $t + c$;
# * **adaLN-Zero**: adaLN plus a gate before each residual connection, regressed as well and initialised to zero,
#   so that each block starts as the identity (section 2).
#
# adaLN-Zero trained best "at all stages of training": after 400K steps its FID-50K was 19.5 against
# cross-attention's 26.1 and in-context's 35.2 (DiT's Table 4). A class is one vector, though, and a caption is a
# sequence. Each text-to-image transformer since DiT answers differently: PixArt-α (Chen et al. 2023) keeps DiT's
# adaLN-Zero for the time and adds cross-attention to the caption tokens; SD3 and Flux put the caption tokens into
# a joint attention. SD3's paper (Esser et al. 2024, Sec. 5.2.3, Fig. 4) compared three of these with text on
# CC12M: DiT with the text tokens concatenated to the image's (one set of weights, in-context), CrossDiT
# (cross-attention) and the MM-DiT, which "significantly outperforms the cross-attention and vanilla variants". The
# course's four variants keep `mmdit-small`'s width (256), heads (4 of 64), patches (2 x 2: 16 image tokens),
# RoPE, QK-norm, MiniLM text (16 tokens) and recipe, and differ only in how the caption and the time enter
# (`course_lib.dit`; the depths are chosen so that the parameters match within about 10 %):
#
# | variant | the time $t$ | the caption |
# | --- | --- | --- |
# | `dit-in-context` | a token in the sequence | 16 tokens in the sequence: $[t; \text{text}; \text{image}]$, one set of weights, no adaLN |
# | `dit-cross-attention` | adaLN-Zero | cross-attention of the image tokens to the text tokens (PixArt-α) |
# | `dit-adaln-zero` | adaLN-Zero | pooled into one vector, added to the time's: no token-level text (DiT, the caption as the class) |
# | `dit-joint` | adaLN-Zero, with the pooled caption | joint attention, double- then single-stream blocks (`mmdit-small`'s model, trained anew) |
#
# Each was trained by the course's command for 50 minutes on one thread of the same machine, two at a time
# (`python -m course_lib.train dit-adaln-zero --minutes 50 --threads 1`, an export every 12.5 minutes), and
# measured like chapter 4's models: FD_clf of 2,000 samples and prompt accuracy of 200, Euler 25 steps at
# $w = 3$, decoded by `vae-small-ft` (`python -m course_lib.evaluation ...`, in `data/results.jsonl`). What a
# forward pass costs is counted here, as DiT counts it: multiply-adds of the matrix products
# (`course_lib.profiling.forward_macs`, with `torch.utils.flop_counter`).

# %%
from course_lib.profiling import forward_macs
from course_lib.text2image import DENOISERS

ABLATION = {"dit-in-context": "in-context", "dit-cross-attention": "cross-attention",
            "dit-adaln-zero": "adaLN-Zero, pooled caption", "dit-joint": "joint attention (MM-DiT)"}
HEADLINE = dict(steps=25, guidance=3.0, decoder="vae-small-ft")  # Euler 25, w = 3, the sharper decoder
text_tokens = torch.randn(1, 16, 384)  # [B, L, D_text]: MiniLM's 16 tokens, as in training


def denoiser_of(name):
    """A fresh denoiser of a recipe (its network without the text encoder), from the registry of backbones."""
    cfg = RECIPES[name].model_config().denoiser
    network = next(net for net, cfg_class in DENOISERS.values() if isinstance(cfg, cfg_class))
    return network(cfg).eval()


def macs_per_image(net):
    """Multiply-adds of one forward pass of a denoiser for one 4x8x8 latent and 16 text tokens."""
    return forward_macs(net, torch.randn(1, 4, 8, 8), torch.full((1,), 500.0), text_tokens,
                        torch.ones(1, 16, dtype=torch.bool))


ablation_cost = {}
for name in ABLATION:
    net = denoiser_of(name)
    cfg = net.config
    depth = getattr(cfg, "depth", None) or f"{cfg.depth_double} + {cfg.depth_single}"
    ablation_cost[name] = dict(params=count_parameters(net), macs=macs_per_image(net), depth=depth)


def by_minutes(name, kind, **settings):
    """A variant's measured points of one kind at the headline setting, keyed by training minutes."""
    return {p.training_minutes: p for p in points(name, kind=kind, **settings, **HEADLINE)}


def seed_1(point, metric):
    """The value of the first sampling seed (every snapshot has seed 1; the final points have 3 seeds)."""
    return point.rows[0]["metrics"].get(metric) if point is not None else None


fd_points = {name: by_minutes(name, "samples", num_samples=2000, sampler="euler") for name in ABLATION}
acc_points = {name: by_minutes(name, "prompt_accuracy", prompts="class", per_class=20) for name in ABLATION}

finals = {name: max(fd_points[name], default=None) for name in ABLATION}  # the last snapshot: 50 minutes
columns = [("fd_clf", "FD_clf", ".2f", 1), ("prompt_accuracy", "prompt accuracy %", ".1f", 100)]
if any(fd_points[name][m].values("fid") for name, m in finals.items() if m is not None):
    columns.append(("fid", fid_label(2000), ".1f", 1))  # the final points' FID-2k, once measured
print(f"{'variant':27s} {'depth':>5s} {'params':>7s} {'M mult-add':>10s} {'img/s':>6s} {'images':>8s}   "
      + " ".join(f"{title:^18s}" for _, title, _, _ in columns))
for name, what in ABLATION.items():
    cost, final = ablation_cost[name], finals[name]
    points_at = {"prompt_accuracy": acc_points[name].get(final)}
    fd = fd_points[name].get(final)
    images = fd.rows[0]["step"] * 64 if fd else 0  # steps of batch 64
    speed = f"{images / (60 * final):6.0f} {images:8,d}" if fd else f"{'-':>6s} {'-':>8s}"
    cells = [(points_at.get(metric, fd), metric, spec, scale) for metric, _, spec, scale in columns]
    cells = [p.text(metric, spec, scale).replace(" seeds)", ")") if p is not None and p.values(metric) else "-"
             for p, metric, spec, scale in cells]
    print(f"{what:27s} {str(cost['depth']):>5s} {cost['params'] / 1e6:6.2f}M {cost['macs'] / 1e6:10.0f} {speed}   "
          + " ".join(f"{cell:^18s}" for cell in cells))
print("(mult-adds: one forward pass of one image, 16 text tokens; img/s and images: over the whole 50-minute run; "
      "the metrics at 50 minutes)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
for i, (name, what) in enumerate(ABLATION.items()):
    for ax, found, metric in ((axes[0], fd_points[name], "fd_clf"), (axes[1], acc_points[name], "prompt_accuracy")):
        minutes = sorted(found)
        ax.plot(minutes, [seed_1(found[m], metric) for m in minutes], "o-", color=f"C{i}", label=what)
axes[0].set(xlabel="training CPU-minutes (1 thread each)", ylabel="FD_clf (lower is better)",
            title="FD_clf of 2,000 samples (seed 1)")
axes[1].set(xlabel="training CPU-minutes (1 thread each)", ylabel="prompt accuracy", ylim=(0, 1),
            title="prompt accuracy of 200 images (seed 1)")
axes[1].axhline(0.1, color="grey", ls=":", lw=1, label="chance")
for ax in axes:
    if not any(fd_points.values()):
        ax.text(0.5, 0.5, "not measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=8)
fig.suptitle("DiT's conditioning ablation with a caption: Euler 25 steps, w = 3, decoder vae-small-ft", fontsize=10)
plt.show()

# %% [markdown]
# What the runs measured (one thread each of an AMD EPYC with AVX-512 BF16, two at a time, 50 minutes each;
# FD_clf of 2,000 samples and prompt accuracy of 200, one sampling seed, Euler 25 steps at $w = 3$, decoder
# `vae-small-ft`):
#
# | variant | multiply-adds per image | images in 50 min | FD_clf | prompt accuracy |
# | --- | ---: | ---: | ---: | ---: |
# | in-context | 293M | 137,472 | 4.28 | 48.5 % ± 3.5 |
# | cross-attention | 107M | 336,128 | 3.08 | 64.5 % ± 3.4 |
# | adaLN-Zero, pooled caption | 92M | 376,192 | 2.58 | 73.0 % ± 3.1 |
# | joint attention (MM-DiT) | 159M | 277,056 | **2.47** | 71.0 % ± 3.2 |
#
# **The two designs whose every block is modulated by a vector holding both the time and the pooled caption
# (adaLN-Zero, and joint attention) did best; in-context, with no modulation at all, did worst, as in DiT and in
# SD3.** What each variant lets the text and the time do explains most of it:
#
# * **In-context** gives the time no path but attention: one token among 33, which every block must find and
#   read before it knows how noisy its input is. Every caption token also goes through every block's MLP at full
#   width, so a forward pass costs 3.2 times adaLN-Zero's, and in 50 minutes it saw 2.7 times fewer images. DiT
#   found it worst too at equal steps (FID-50K 35.2 against 19.5); at equal minutes it pays twice.
# * **Cross-attention** (PixArt-α) modulates every block by the time and lets the image read the words, but the
#   words never read the image, and the extra layer costs 16 % more than adaLN-Zero per image. It sits between, as
#   CrossDiT does in SD3's comparison.
# * **adaLN-Zero with the pooled caption** is DiT's design: one vector for time and caption, every block modulated
#   by it, the cheapest pass. CIFAR-10's captions name one class each ("a photo of a cat"), so a pooled vector holds
#   nearly everything they say; the token-level designs have little more to read here. Its prompt accuracy is the
#   highest measured, within a standard error of joint attention's.
# * **Joint attention** updates the words by the image and the image by the words in every block, with the time
#   in the modulation: the lowest FD_clf, by 0.11 over adaLN-Zero, at 1.7 times its cost per image.
#
# At 25 minutes the order was the same, with joint attention ahead on both measures (FD_clf 3.58 and 56.5 %,
# against adaLN-Zero's 4.09 and 51.5 %, cross-attention's 4.90 and 43.5 % and in-context's 5.70 and 38.0 %): it
# learned faster per minute at first, and the pooled caption caught up by 50.
#
# One seed each: the accuracies of adaLN-Zero and joint attention are a tie (a difference's standard error is
# about 4.5 points), and FD_clf varied by 0.03 between seeds for `mmdit-small` (section 8). What the ranking
# says at this scale is that the caption must reach the blocks in a way that costs little and that the time
# belongs in the modulation; it cannot say whether joint attention's reading of the words pays off, because these
# captions are one word of content. SD3 made its comparison on CC12M, whose captions describe whole pictures.

# %% [markdown]
# ## 10. Inside the joint attention: the explorer
#
# Where does the trained model look? The explorer samples each prompt once (8 Euler steps, $w = 3$, the same
# noise for every prompt) and records every joint attention of the conditional half of the batch (the
# course's attention capture, chapter 3, on the MM-DiT's attention path). Choose a block, a head, a step and
# a token:
#
# * the full $(L + N) \times (L + N)$ matrix with its four quadrants marked (text→text, text→image,
#   image→text, image→image);
# * for a chosen **word**, how much attention each image patch pays it (image→text), over the sample;
# * for a chosen **patch**, the words it reads and the patches it reads (image→image);
# * the **quadrant mass** across blocks and sampling steps: what share of the attention goes where.

# %%
from IPython.display import display

from course_lib.widgets import joint_attention_explorer

if "mmdit-small" in pipes:
    explorer_prompts = [class_prompt(c) for c in (7, 3, 8, 1)] + [unseen_prompt(5), "a red car on a road"]
    explorer = joint_attention_explorer(pipes["mmdit-small"], explorer_prompts, num_steps=8, guidance=3.0, seed=0)
    display(explorer)
    state = explorer.state
    print(f"{state['prompt']!r}, all steps, mean of the heads: share of the attention in each quadrant, block by block")
    for quadrant, values in state["depth"].items():
        print(f"  {quadrant:13s} " + "  ".join(f"{v:.2f}" for v in values))
    print(f"in {state['block']}, sampling step by step (model time {', '.join(f'{t:g}' for t in explorer.run(state['prompt'])['steps'])}):")
    for quadrant, values in state["time"].items():
        print(f"  {quadrant:13s} " + "  ".join(f"{v:.2f}" for v in values))
    print(f"how much each patch reads {state['token_text']!r} in {state['block']} (1 = the patch that reads it most):")
    for row in (state["token_map"] / state["token_map"].max()).tolist():
        print("  " + " ".join(f"{v:4.2f}" for v in row))


# %% [markdown]
# What the shipped `mmdit-small` shows for "a photo of a horse" (the numbers above; move the controls to see
# the rest). The **text tokens** spend almost all their attention on the image in the first double-stream
# block (99 %) and still most of it in the last single-stream block (71 %): the caption's vectors are rewritten
# by the picture, block after block, which a UNet's cross-attention cannot do. The **image tokens** give the
# text 10-26 % of their attention and keep the rest among themselves: less than the text's share of the keys
# (7 of 23, 30 %) in every block. Over the sampling steps, in the last block, the text reads the image less
# (77 % at the first step, 64 % at the last) and itself more, as the picture settles. On a 4x4 grid of patches (section 1's
# choice) the maps are coarse: "where is the horse" is a question of a few patches.

# %% [markdown]
# **The text sits at (0, 0, 0): does that favour the top-left patch?** Section 4 put every text token at the
# position of the top-left patch, so a patch's query meets a text key rotated by the patch's own offset from
# that corner: the top-left patch reads the text with no rotation at all, the far corner with the largest.
# Measured on the trained model: each patch's share of attention on the text, averaged over every block, head
# and sampling step, over the ten class prompts and two noises (8 Euler steps, $w = 3$), first as trained,
# then with the text moved to the centre of the grid (`MMDiT.text_position`, an experiment on the trained
# weights, not a setting it learned with):

# %%
from course_lib.capture import capture_attention

if "mmdit-small" in pipes:
    mmdit_pipe = pipes["mmdit-small"]
    mmdit = mmdit_pipe.denoiser.mmdit
    side = mmdit.config.image_size // mmdit.config.patch_size  # 4 patches a side
    class_prompts = [class_prompt(c) for c in range(config.pick(4, 10))]

    def reads_text(text_position, seeds=range(config.pick(1, 2))):
        """Each patch's share of attention on the text tokens, averaged over blocks, heads, steps, prompts and
        noises: [side, side]."""
        mmdit.text_position = text_position
        total, calls = torch.zeros(side * side), 0
        try:
            for seed in seeds:
                x_T = torch.randn(len(class_prompts), *mmdit_pipe.denoiser.sample_shape,
                                  generator=torch.Generator().manual_seed(seed))
                with capture_attention(mmdit, kinds="self", max_batch=len(class_prompts)) as record:  # conditional half
                    mmdit_pipe.generate(class_prompts, guidance=3.0, num_steps=8, x_T=x_T)
                for call in record.calls:
                    L = call.probs.shape[-1] - side * side  # [B, heads, L + N, L + N]: text first, padding keys at 0
                    total += call.probs[:, :, L:, :L].sum(-1).mean((0, 1))  # [N]: each patch's share on the text
                    calls += 1
        finally:
            mmdit.text_position = None  # back to the position it was trained with
        return (total / calls).reshape(side, side)

    maps = {"text at (0, 0, 0), as trained": reads_text(None),
            "text at the grid's centre": reads_text((0.0, (side - 1) / 2, (side - 1) / 2))}
    maps["centre minus as trained"] = maps["text at the grid's centre"] - maps["text at (0, 0, 0), as trained"]
    fig, axes_ = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    for ax, (title, m) in zip(axes_, maps.items()):
        diff = title.startswith("centre minus")
        limit = float(m.abs().max())
        im = ax.imshow(m, cmap="RdBu_r" if diff else "viridis", vmin=-limit if diff else 0, vmax=limit)
        for (r, c), v in zip([(r, c) for r in range(side) for c in range(side)], m.flatten().tolist()):
            ax.text(c, r, f"{v:+.2f}" if diff else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if diff or v > 0.6 * limit else "white")
        ax.set(title=title, xlabel="patch column", ylabel="patch row", xticks=range(side), yticks=range(side))
        ax.title.set_fontsize(10)
    fig.suptitle("each image patch's share of attention on the text (mean of blocks, heads, steps, prompts, noises)",
                 fontsize=10)
    plt.show()
    trained = maps["text at (0, 0, 0), as trained"]
    corners = [trained[0, 0], trained[0, -1], trained[-1, 0], trained[-1, -1]]
    print("as trained: top-left {:.3f}, top-right {:.3f}, bottom-left {:.3f}, bottom-right {:.3f}; the centre 2x2 "
          "{:.3f}".format(*[float(v) for v in corners], float(trained[1:-1, 1:-1].mean())))

# %% [markdown]
# What the maps show for the shipped model (the printed numbers): as trained, the **four corners** read the text
# most (about 0.21-0.24 of their attention) and the centre least (about 0.11): a pattern symmetric between the
# top-left patch, which shares the text's rotation, and the bottom-right one, which is farthest from it. So at
# this size the offset from the corner does not order the patches. A plausible reading, not tested here: the
# border patches, mostly background in CIFAR-10, read the caption more than the object in the middle does.
# Moving the text changes every patch's share (the third panel, down by 0.01-0.13), because the trained weights
# expect the text at (0, 0, 0); it does not centre the map either. RoPE guarantees that scores depend on
# offsets; which offset the text has from each patch is a convention the model learns around.

# %% [markdown]
# ## Summary
#
# * A diffusion transformer works on tokens: patches of the latent (here $2 \times 2$: 16 tokens, as in SD3
#   and Flux, chosen by a measured pilot) and the caption's encoder states.
# * Time and the pooled caption make one conditioning vector; each sub-layer is modulated (shift, scale) and
#   gated, all three from a zero-initialised layer, so every block starts as the identity.
# * SD3's double-stream block keeps separate weights per stream but one joint attention; Flux follows it with
#   single-stream blocks (attention and MLP in parallel, fused projections). RoPE gives the image tokens their
#   2-D positions; the text sits at position 0.
# * Trained with chapter 5's rectified-flow loss on chapter 4's latents, the MM-DiT is compared with the latent
#   UNet at equal CPU-minutes, with the same text encoder, data and objective (section 8).
