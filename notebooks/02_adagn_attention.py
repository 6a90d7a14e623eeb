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
# # 2 · AdaGN and modern attention
#
# Chapter 1's UNet is Ho et al.'s 2020 design. Two of its parts changed in every UNet that came
# after it, and this chapter is about both:
#
# 1. **How the timestep gets in.** DDPM *adds* a per-channel bias computed from $t$; improved DDPM
#    (Nichol & Dhariwal 2021), ADM and the Stable Diffusion UNets instead *scale and shift* the
#    normalised features (**AdaGN**). You will see why the bias is weak (the next GroupNorm removes
#    much of it), then run a **controlled experiment**: the same UNet, seed, data order, timesteps and
#    noise, once with each block, and compare losses, samples and how strongly $t$ steers the features.
# 2. **How attention is computed.** The chapter-1 attention writes $\mathrm{softmax}(QK^\top/\sqrt d)V$
#    with `einsum`, storing the whole $N\times N$ score matrix. You will check that PyTorch's fused
#    `scaled_dot_product_attention` and a **chunked** version compute the same numbers, then measure
#    time and peak memory from 64 to 4,096 tokens: the lengths where attention stops fitting.
# 3. An exercise: write the AdaGN modulation yourself, with a check that says right or wrong.
#
# The code lives in `course_lib.unet` (`ResBlock`, `AdaGNResBlock`), `course_lib.conditioning`
# (`modulate`, the scale-and-shift step), `course_lib.attention`, `course_lib.diagnostics` and
# `course_lib.profiling`.

# %%
import dataclasses
import statistics

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from course_lib import config
from course_lib.attention import ATTENTION_IMPLS
from course_lib.data import StepBatches, load_cifar10
from course_lib.diagnostics import copy_shared_weights, held_out_loss, timestep_sensitivity
from course_lib.exercises import check_adagn_modulation
from course_lib.parameterization import diffusion_loss
from course_lib.profiling import count_parameters, peak_memory, time_per_call
from course_lib.samplers import ddim_sample
from course_lib.schedules import NoiseSchedule
from course_lib.trainer import TrainConfig, fit
from course_lib.unet import AdaGNResBlock, ResBlock, UNet, UNetConfig
from course_lib.viz import moving_average, plot_losses, show_images

config.setup_cpu_speedups()
config.seed_everything(0)
device = config.get_device()
FAST = config.fast_mode()
print(f"device: {device} · fast mode: {FAST}"
      + (" (tiny models, few steps: the experiment is too short to separate the two blocks)" if FAST else ""))

# %% [markdown]
# ## 1. Two ways to tell a ResBlock the timestep
#
# Both blocks compute $h = \mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}(x)))$ and end with
# $\mathrm{out} = \mathrm{shortcut}(x) + \mathrm{conv}_2(\mathrm{SiLU}(\cdot))$. They differ in the middle,
# where the time embedding $e = \mathrm{emb}(t)$ enters:
#
# | | DDPM `ResBlock` (additive) | `AdaGNResBlock` (scale-shift) |
# |---|---|---|
# | projection | $b = W e$, one number per channel, $b \in \mathbb R^{C}$ | $[s, m] = W e$, two per channel, $s, m \in \mathbb R^{C}$ |
# | middle | $\mathrm{GN}(h + b)$ | $\mathrm{GN}(h)\odot(1 + s) + m$ |
#
# GroupNorm splits the $C$ channels into $G$ groups and normalises each group over its channels and
# pixels: $\mathrm{GN}(h)_c = \gamma_c\,(h_c - \mu_g)/\sigma_g + \beta_c$ for channel $c$ in group $g$.
# Follow the additive bias through it:
#
# * the part of $b$ shared by the channels of a group shifts $\mu_g$ by the same amount and is
#   **subtracted away**; with one channel per group ($G = C$) all of $b$ is;
# * what is left is **divided by $\sigma_g$**, which the bias itself inflates: a large bias makes the
#   group's output a fixed pattern of the bias, with the image content squeezed out. The bias can
#   rearrange channels *within* a group, but it can never make a channel louder or quieter.
#
# AdaGN acts *after* the norm, so nothing undoes it, and its scale $1 + s$ multiplies the content: the
# timestep can turn a feature up at high noise and down at low noise. Both blocks start as the
# identity because $\mathrm{conv}_2$ starts at zero; AdaGN's $s = 0$ at the start is why the factor
# is written $1 + s$.
#
# A measurement, with nothing trained: features $h$ of 64 channels, a random per-channel vector
# $u$ (one unit of "time signal"), and a strength $\lambda$. How much does the output of the middle step
# change when the conditioning is switched on, relative to its size?

# %%
torch.manual_seed(0)
C = 64
h = torch.randn(16, C, 8, 8) * 2.0 + torch.randn(1, C, 1, 1)  # features: per-channel offsets, unit-ish scale
u = torch.randn(1, C, 1, 1)  # one direction of conditioning, per channel
strengths = torch.logspace(-2, 1.5, 30)


def relative_change(new, old):
    return float((new - old).norm() / old.norm())


fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
for G, color in [(C, "tab:red"), (16, "tab:orange"), (4, "gold"), (1, "tab:brown")]:
    norm = nn.GroupNorm(G, C, affine=False)
    base = norm(h)
    ax.plot(strengths, [relative_change(norm(h + lam * u), base) for lam in strengths], color=color,
            label=f"additive: GN(h + λu), {C // G} channel{'s' if C // G > 1 else ''} per group"
            + (" (exactly 0: below the axis)" if G == C else ""))
norm = nn.GroupNorm(16, C, affine=False)
base = norm(h)
ax.plot(strengths, [relative_change(base * (1 + lam * u), base) for lam in strengths], color="tab:blue", lw=2.5,
        label="AdaGN scale: GN(h)·(1 + λu)")
ax.plot(strengths, [relative_change(base + lam * u, base) for lam in strengths], color="tab:cyan", ls=":", lw=2.5,
        label="AdaGN shift: GN(h) + λu (on top of the scale)")
ax.set(xscale="log", yscale="log", ylim=(1e-4, 100), xlabel="strength λ of the time signal",
       ylabel="‖change of the output‖ / ‖output‖",
       title="A per-channel bias before GroupNorm is partly removed, and saturates")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8, loc="upper left")
plt.show()
additive_max = max(relative_change(nn.GroupNorm(16, C, affine=False)(h + lam * u), base) for lam in strengths)
print(f"largest change the additive bias achieves (4 channels per group): {additive_max:.2f} of the output's size; "
      f"with 1 channel per group: {relative_change(nn.GroupNorm(C, C, affine=False)(h + 10 * u), nn.GroupNorm(C, C, affine=False)(h)):.1e}")

# %% [markdown]
# Read the plot from left to right. With one channel per group (red) the additive signal is
# **removed exactly**: the line sits at zero (off the bottom of the log scale). With a few channels per
# group (or all 64 in one group), the change grows with $\lambda$ at first and then **saturates** at
# about 1.3 times the output's own size: the output has become a normalised copy of the bias pattern and
# cannot change any further, whatever the time embedding says. AdaGN's scale and shift
# keep growing linearly: the timestep controls the features as strongly as the network wants.
#
# In a real UNet the block's weights can work around some of this (the bias also goes through
# $\mathrm{SiLU}$, and different channels of a group can carry different signals), so the real
# question is empirical: does it matter after training? The experiment below answers it.
#
# The two blocks, side by side; `AdaGNResBlock` reuses `ResBlock`'s layers and only doubles
# the width of `emb_proj`:

# %%
for block in (ResBlock(64, 64, emb_dim=256, num_groups=32), AdaGNResBlock(64, 64, emb_dim=256, num_groups=32)):
    print(f"{type(block).__name__}: {count_parameters(block):,} parameters, emb_proj {block.emb_proj}")
paper = {kind: count_parameters(UNet(UNetConfig.paper(resblock=kind))) for kind in ("additive", "adagn")}
print(f"paper-size UNet: additive {paper['additive']:,} parameters, AdaGN {paper['adagn']:,} "
      f"(+{100 * (paper['adagn'] / paper['additive'] - 1):.1f}%)")

# %% [markdown]
# ## 2. A controlled experiment: additive vs AdaGN
#
# Two UNets that differ **only** in `UNetConfig.resblock`. Everything else is held equal:
#
# * the same initial weights: the AdaGN model copies every weight it shares with the additive one, so
#   only `emb_proj`, whose shape differs ($2C$ outputs instead of $C$), starts differently;
# * the same batches in the same order (`StepBatches` is a pure function of seed and step);
# * the same timesteps $t$ and noise $\epsilon$ at every step: `fit` seeds torch's generator from
#   (seed, step), so the two runs draw identical numbers.
#
# Because both models solve *the same* problems at every step, the per-step difference of their
# losses is a **paired** comparison, much less noisy than comparing the two curves by eye.

# %%
data = load_cifar10("train", hflip=True)
test_images = load_cifar10("test", limit=config.pick(200, 1000), verbose=False).images
schedule = NoiseSchedule.linear(1000)
cpu_bf16 = device.type == "cpu" and config.native_bf16(device)  # faster only where the CPU has bf16 natively
model_config = UNetConfig.tiny  # 0.29M parameters: the comparison, not the sample quality, is the point here
experiment = TrainConfig(max_steps=config.pick(60, 1500), batch_size=config.pick(16, 32), lr=1e-3,
                         warmup_steps=config.pick(10, 50), ema_decay=config.pick(0.9, 0.995), seed=0,
                         bf16=cpu_bf16, channels_last=cpu_bf16, checkpoint_minutes=None)


def loss_fn(model, batch):
    images, _labels = batch
    return diffusion_loss(model, schedule, images)


torch.manual_seed(0)
models = {kind: UNet(model_config(resblock=kind, dropout=0.0)) for kind in ("additive", "adagn")}
different = copy_shared_weights(models["additive"], models["adagn"])
print(f"{len(models['adagn'].state_dict()) - len(different)} of {len(models['adagn'].state_dict())} weight tensors "
      f"start equal; the others are the {sorted({name.split('.')[-2] for name in different})} layers")

runs = {}
for kind, model in models.items():
    result = fit(model, loss_fn, StepBatches(data, experiment.batch_size, experiment.seed), experiment, device=device)
    runs[kind] = result
    print(f"{kind:>8s}: {count_parameters(model) / 1e6:.2f}M parameters, {result.step} steps of {experiment.batch_size} "
          f"in {result.seconds / 60:.1f} min ({result.images_per_second:.0f} images/s on {device})")

# %%
losses = {kind: torch.tensor(r.losses) for kind, r in runs.items()}
window = config.pick(10, 100)
diff = losses["adagn"] - losses["additive"]  # paired: same batch, t and noise at every step
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for kind, color in [("additive", "tab:red"), ("adagn", "tab:blue")]:
    plot_losses(losses[kind], window=window, ax=ax1, label=kind, color=color)
ax1.set(ylabel="training loss", title="the two loss curves")
steps, diff_avg = moving_average(diff, window)  # centred on each window's middle step, [len - window + 1]
diff_se = diff.unfold(0, window, 1).std(1) / window**0.5
ax2.axhline(0, color="0.3", lw=1)
ax2.plot(steps, diff_avg, color="tab:purple", lw=2, label=f"AdaGN − additive, mean of {window} steps")
ax2.fill_between(steps.numpy(), (diff_avg - 2 * diff_se).numpy(), (diff_avg + 2 * diff_se).numpy(),
                 color="tab:purple", alpha=0.2, label="± 2 standard errors")
ax2.set(xlabel="training step", ylabel="loss difference (paired)", title="below zero: AdaGN has the lower loss")
ax2.grid(alpha=0.3)
ax2.legend()
plt.show()

# %% [markdown]
# The held-out loss is the fairest single number: the EMA weights of each model (the ones we sample
# with), on test images neither model trained on, with the **same** fixed timesteps and noise for both.

# %%
half = len(diff) // 2
late = diff[half:]
heldout = {kind: held_out_loss(r.ema, schedule, test_images, draws=2) for kind, r in runs.items()}
print(f"held-out loss of the EMA weights ({len(test_images)} test images x 2 (t, noise) draws, the same for both):")
for kind in runs:
    print(f"  {kind:>8s}: {heldout[kind]:.4f}")
print(f"held-out AdaGN / additive: {heldout['adagn'] / heldout['additive']:.3f}")
print(f"paired training-loss difference over the last {len(late)} steps: {late.mean():+.5f} "
      f"± {late.std() / len(late) ** 0.5:.5f} (one standard error), "
      f"{100 * late.mean() / losses['additive'][half:].mean():+.1f}% of the additive model's loss")

# %% [markdown]
# Samples from both models, from the **same** starting noise with the same deterministic sampler
# (DDIM, 50 steps, $\eta = 0$): any difference comes from the networks alone.

# %%
x_T = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
samples = {kind: ddim_sample(r.ema.to(device).eval(), schedule, x_T=x_T.to(device), num_steps=50, eta=0.0,
                             progress=False).cpu()
           for kind, r in runs.items()}
show_images(torch.cat([samples["additive"], samples["adagn"]]), nrow=8,
            title=f"top: additive · bottom: AdaGN · same noise, DDIM 50 steps, after {experiment.max_steps} training steps")
plt.show()

# %% [markdown]
# The two rows are nearly the same pictures: both networks started from the same weights, saw the same
# data and noise, and learned nearly the same denoiser. A loss difference of a percent or two does not
# show at this scale; it shows in the loss, and (in larger models trained longer) in sample quality
# metrics such as FID.
#
# Finally, *activation statistics*: how strongly does the timestep steer each block's features in the
# trained networks? `timestep_sensitivity` feeds the **same** noisy images with six different $t$,
# records the activations entering each block's second convolution, and reports the share of their
# variance that is due to $t$ alone, $S = \overline{\mathrm{Var}_t(A)} / \mathrm{Var}(A)$, per block
# (0: the block ignores $t$; 1: its features depend on nothing else).

# %%
probe = schedule.q_sample(test_images[:16], torch.full((16,), 500),
                          torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
probe_t = [50, 200, 400, 600, 800, 950]
sensitivity = {kind: timestep_sensitivity(r.ema.cpu(), probe, probe_t) for kind, r in runs.items()}
names = list(sensitivity["additive"])
fig, ax = plt.subplots(figsize=(12, 3.8), layout="constrained")
x = torch.arange(len(names))
ax.bar(x - 0.2, [sensitivity["additive"][n] for n in names], width=0.4, color="tab:red", label="additive")
ax.bar(x + 0.2, [sensitivity["adagn"][n] for n in names], width=0.4, color="tab:blue", label="AdaGN")
ax.set_xticks(x, [n.replace(".", " ") for n in names], rotation=60, fontsize=8)
ax.set(ylabel="share of variance due to t", title="how much each residual block's features depend on the timestep "
       "(same input x, six values of t)")
ax.grid(alpha=0.3, axis="y")
ax.legend()
plt.show()
for kind in sensitivity:
    print(f"{kind:>8s}: mean over blocks {statistics.fmean(sensitivity[kind].values()):.3f}")

# %% [markdown]
# What we measured in a full run (tiny UNet, 1,500 steps of 32 CIFAR-10 images each, 19 minutes
# per model on one CPU thread of a busy 2-core machine; fast mode runs a few dozen steps, far too few to tell the two apart):
#
# * the paired loss difference went below zero within the first 150 steps and stayed there for the
#   whole run: AdaGN's training loss was lower by 0.0006 on average over the second half (about 1.7 %
#   of the loss; the standard error is ten times smaller than the difference);
# * the held-out loss of the EMA weights agreed: 0.0338 for AdaGN against 0.0343 (1.5 % lower);
# * the timestep-sensitivity bars did **not** show "more time signal" in AdaGN overall: the mean over
#   blocks was 0.45 against 0.46. AdaGN's encoder blocks depended more on $t$, the additive model's
#   middle and last decoder blocks more. The trained additive network works around its handicap by
#   other routes (its biases act through the SiLU, and they accumulate from block to block), so the
#   difference lies less in *how much* the timestep matters than in *how* it acts: as a gain on the
#   features instead of an offset that the norm partly removes.
#
# A modest gain at this size, then; ADM (Dhariwal & Nichol 2021, Table 1) found the same direction in
# large models, and every later diffusion UNet kept scale-shift conditioning. Chapter 5's DiT uses its
# transformer cousin, **adaLN**.

# %% [markdown]
# ## 3. Attention three ways
#
# Self-attention over $N$ tokens (the $H \times W$ positions of a feature map) computes, per head,
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt d}\right) V,
# \qquad Q, K, V \in \mathbb R^{N \times d}.$$
#
# * **einsum** (chapter 1): the formula as written. It builds the $N \times N$ score matrix: memory
#   grows as $N^2$ (4 heads at $N = 4096$: 256 MB in float32, per image).
# * **SDPA**: `torch.nn.functional.scaled_dot_product_attention`, one fused call; PyTorch picks a
#   kernel (FlashAttention on recent GPUs; a blocked, memory-efficient one on this CPU).
# * **chunked**: the idea inside those kernels, in plain PyTorch. Queries go in blocks (Rabe &
#   Staats 2021); keys too, with an **online softmax** (Milakov & Gimelshein 2018): keep for each query
#   the running maximum $m$, the running sum $\ell = \sum_j e^{s_j - m}$ and the running output
#   $o = \sum_j e^{s_j - m} v_j$; a new block of scores $s'$ updates them as
#   $m' = \max(m, \max s')$, $\ell \leftarrow e^{m - m'}\ell + \sum e^{s' - m'}$,
#   $o \leftarrow e^{m - m'} o + \sum e^{s' - m'} v'$, and the answer is $o / \ell$. Memory: one block of
#   scores at a time.
#
# First, the three agree. Masks follow SDPA's convention (`True` = may attend); odd lengths and
# cross-attention (queries and keys of different lengths) included:

# %%
g = torch.Generator().manual_seed(0)
print(f"{'case':44s}" + "".join(f"{impl:>10s}" for impl in ATTENTION_IMPLS) + "   max |difference|")
for heads, Nq, Nk, masked in [(1, 64, 64, False), (4, 257, 257, False), (8, 100, 77, True), (3, 1000, 13, True)]:
    q, k, v = (torch.randn(2, heads, n, 32, generator=g) for n in (Nq, Nk, Nk))
    mask = (torch.rand(2, 1, 1, Nk, generator=g) > 0.3) if masked else None  # key padding, broadcast
    outs = {impl: fn(q, k, v, mask) for impl, fn in ATTENTION_IMPLS.items()}
    worst = max(float((outs[a] - outs["einsum"]).abs().max()) for a in outs)
    label = f"{heads} heads, {Nq} queries x {Nk} keys" + (", key mask" if masked else "")
    print(f"{label:44s}" + "".join(f"{tuple(o.shape)[-2]:>10d}" for o in outs.values()) + f"   {worst:.1e}")
    assert worst < 1e-5

# %% [markdown]
# Now what each costs, as the sequence grows from 64 tokens (an 8x8 feature map) to 4,096 (64x64,
# the size of Stable Diffusion's latent at 512 px). Forward passes without gradients (as in sampling),
# one image, 4 heads of dimension 64, float32. Time: median of interleaved repeats. Memory: the peak of
# tensor memory during one call, counted allocation by allocation by the PyTorch profiler
# (`course_lib.profiling.peak_memory`).

# %%
lengths = config.pick([64, 256, 1024], [64, 128, 256, 512, 1024, 2048, 4096])
cost = {impl: {"time": [], "memory": []} for impl in ATTENTION_IMPLS}
for N in lengths:
    q, k, v = (torch.randn(1, 4, N, 64, generator=g) for _ in range(3))
    calls = {impl: (lambda fn=fn: fn(q, k, v)) for impl, fn in ATTENTION_IMPLS.items()}
    with torch.no_grad():
        times = time_per_call(calls, repeats=config.pick(3, 5), min_seconds=config.pick(0.02, 0.2))
        for impl, call in calls.items():
            cost[impl]["time"].append(times[impl])
            cost[impl]["memory"].append(peak_memory(call))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for impl, color in zip(ATTENTION_IMPLS, ["tab:red", "tab:green", "tab:blue"]):
    ax1.plot(lengths, [1e3 * t for t in cost[impl]["time"]], "o-", color=color, label=impl)
    ax2.plot(lengths, [m / 2**20 for m in cost[impl]["memory"]], "o-", color=color, label=impl)
ax2.plot(lengths, [4 * 4 * N * N / 2**20 for N in lengths], ":", color="0.4", label="one 4 x N x N score matrix")
ax1.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="ms per call", title="time")
ax2.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="peak tensor memory, MB",
        title="memory")
for ax in (ax1, ax2):
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.grid(alpha=0.3, which="both")
    ax.legend()
plt.show()
print(f"{'N':>6s}" + "".join(f"{impl + ' ms':>12s}" for impl in ATTENTION_IMPLS)
      + "".join(f"{impl + ' MB':>12s}" for impl in ATTENTION_IMPLS))
for i, N in enumerate(lengths):
    print(f"{N:6d}" + "".join(f"{1e3 * cost[impl]['time'][i]:12.2f}" for impl in ATTENTION_IMPLS)
          + "".join(f"{cost[impl]['memory'][i] / 2**20:12.2f}" for impl in ATTENTION_IMPLS))
big = -1
print(f"at N = {lengths[big]}: SDPA takes {cost['sdpa']['time'][big] / cost['einsum']['time'][big]:.2f}x the time and "
      f"{cost['sdpa']['memory'][big] / cost['einsum']['memory'][big]:.3f}x the memory of einsum; chunked "
      f"{cost['chunked']['time'][big] / cost['einsum']['time'][big]:.2f}x and "
      f"{cost['chunked']['memory'][big] / cost['einsum']['memory'][big]:.3f}x")

# %% [markdown]
# einsum's memory follows the dotted $N^2$ line: it *is* the score matrix (plus the softmax's copy).
# The other two grow only linearly, with the size of $Q, K, V$ and the output: at 4,096 tokens that is
# the difference between a layer that fits and one that does not, and on a GPU it is what made
# high-resolution diffusion models trainable. SDPA is also the fastest: the fused kernel does the
# same arithmetic without writing the scores out to memory and reading them back. The chunked version
# trades some speed (a Python loop over blocks) for memory; its point here is that you can read it.
# From now on the course's models use SDPA.
#
# Times vary from run to run on a shared machine (up to several-fold); compare the three measured in
# the same run, as here. `benchmarks/bench_attention.py` repeats this with an operating-system check
# of the memory figures.

# %% [markdown]
# ## 4. Exercise: the AdaGN modulation
#
# Write the middle of `AdaGNResBlock.forward`. You get
#
# * `h`: the features after the first convolution, `[B, C, H, W]`;
# * `emb_out`: the projected time embedding `emb_proj(SiLU(emb))`, `[B, 2C]`: the first $C$ numbers are
#   the scale $s$, the last $C$ the shift $m$;
# * `norm`: the block's `nn.GroupNorm`.
#
# Return $\mathrm{GN}(h) \odot (1 + s) + m$, with $s$ and $m$ acting on every pixel of their channel.

# %%
def adagn_modulation(h, emb_out, norm):
    """GN(h) * (1 + scale) + shift;  h: [B, C, H, W], emb_out: [B, 2C] = [scale, shift]."""
    raise NotImplementedError  # your code here


check_adagn_modulation(adagn_modulation);


# %% [markdown]
# A solution (collapsed; expand it once you have tried):

# %% jupyter={"source_hidden": true}
def adagn_modulation(h, emb_out, norm):
    """GN(h) * (1 + scale) + shift;  h: [B, C, H, W], emb_out: [B, 2C] = [scale, shift]."""
    scale, shift = emb_out.chunk(2, dim=1)  # [B, C] each
    return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


assert check_adagn_modulation(adagn_modulation)

# %% [markdown]
# ## Summary
#
# * DDPM's ResBlock adds the time signal *before* a GroupNorm, which subtracts the part shared within
#   each group and rescales the rest: the bias can rearrange features but never amplify them.
#   AdaGN applies $\mathrm{GN}(h)\odot(1+s)+m$ *after* the norm. In a controlled experiment (same
#   weights, data, timesteps and noise) AdaGN reached a lower loss at equal steps, by 1.5-2 %.
# * Attention has one formula and several implementations. The fused SDPA kernel and the chunked
#   version agree with the textbook einsum to float32 rounding, and their memory grows linearly with
#   the sequence instead of quadratically.
#
# Next, chapter 3 uses attention in a new way: **cross-attention**, where the image's tokens ask and
# the tokens of a text prompt answer.
