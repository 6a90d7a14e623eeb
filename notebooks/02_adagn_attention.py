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
# 1. **How the timestep gets in.** DDPM *adds* a per-channel bias computed from $t$ before a GroupNorm.
#    ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis") instead *scales and
#    shifts* the normalised features: **AdaGN**. You will see what the bias cannot do (the next
#    GroupNorm removes part of it and gives all channels of a group the same gain), then run a
#    **controlled experiment**: the same UNet, seed, data order, timesteps and noise, once with each
#    block, and compare losses, samples and how strongly $t$ steers the features. A fact to keep in
#    mind: Stable Diffusion 1.x, 2.x and SDXL did *not* adopt AdaGN; their UNets add the time
#    embedding exactly as DDPM does. The transformers of chapter 6 (DiT, SD3, Flux) bring scale and
#    shift back as **adaLN**.
# 2. **How attention is computed.** The chapter-1 attention writes $\mathrm{softmax}(QK^\top/\sqrt d)V$
#    with `einsum`, storing the whole $N\times N$ score matrix. You will check that PyTorch's fused
#    `scaled_dot_product_attention` and a **chunked** version compute the same numbers, then measure
#    time and peak memory from 64 to 4,096 tokens: the lengths where attention stops fitting.
# 3. An exercise: write the AdaGN modulation yourself, with a check that says right or wrong.
#
# The code lives in `course_lib.unet` (`ResBlock`, `AdaGNResBlock`), `course_lib.conditioning`
# (`modulate`, the scale-and-shift step), `course_lib.attention`, `course_lib.diagnostics` and
# `course_lib.profiling`.

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# 1. explain, with the plot of section 1, why a per-channel bias added before GroupNorm is partly removed
#    and cannot set one channel's gain, and write AdaGN's $\mathrm{GN}(h)\odot(1+s)+m$;
# 2. describe what makes the additive-vs-AdaGN experiment a paired comparison, and read its result
#    (AdaGN's held-out loss about 1.5 % lower);
# 3. say what zero-initialising a residual branch buys (an exact identity start) and what it does not
#    (it was not faster at first here);
# 4. explain the $1/\sqrt d$ in attention, and compare einsum, SDPA and chunked attention in time and
#    memory;
# 5. (stretch) write attention over key chunks with the online softmax.
#
# **Before it you need**
#
# * Chapter 1: the UNet's ResBlocks and the timestep embedding.
# * GroupNorm, matrix products and the softmax.

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (AMD EPYC (AVX512, native bf16)), 2026-12-08; the code cells' seconds per section, without the
# kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 2 s | 2 s |
# | 1. Two ways to tell a ResBlock the timestep | 5 s | 13 s |
# | 2. A controlled experiment: additive vs AdaGN | 9 s | 11 s |
# | 3. Attention three ways | 2 s | 24 s |
# | 4. Exercise: the AdaGN modulation | < 1 s | < 1 s |
# | **the whole notebook** | **17 s** | **50 s** |
#
# The longest cell in full mode takes 24 s.

# %%
import dataclasses
import statistics

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from course_lib import config
from course_lib.attention import ATTENTION_IMPLS
from course_lib.data import StepBatches, load_cifar10
from course_lib.diagnostics import (held_out_loss, load_pair_run, paired_train_config, paired_unets, shipped_pair,
                                    timestep_sensitivity, train_pair)
from course_lib.exercises import check_adagn_modulation, check_online_softmax_attention
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
      + (" (tiny models, few steps; section 2's experiment is loaded from its shipped runs)" if FAST else ""))

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
# * what is left, $b_c - \bar b_g$, is a constant offset of channel $c$, and then **every channel of the
#   group is divided by the same $\sigma_g$**. The content of channel $c$ (its variation over pixels) leaves
#   the norm multiplied by $\gamma_c/\sigma_g$: the bias moves the channels of a group relative to each
#   other, but it **cannot set one channel's gain on its own**. It changes the group's shared gain
#   $1/\sigma_g$ only through $\sigma_g$: a large bias inflates $\sigma_g$ and squeezes the content of
#   the whole group out; a bias that cancels differences between the channels' means can raise the
#   gain a little, never beyond what the group's pixel-to-pixel variation allows.
#
# AdaGN acts *after* the norm, so nothing undoes it, and its scale $1 + s_c$ multiplies the content of
# each channel separately: the timestep can turn one feature up at high noise and down at low noise. Both blocks start as the
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


def content_gain(out, h):
    """Per image and channel: how much the pixel-to-pixel variation of h is amplified. [B, C]"""
    return out.std(dim=(2, 3)) / h.std(dim=(2, 3))


lam = 3.0
gains = {"additive GN(h + λu)": content_gain(norm(h + lam * u), h),  # norm: GroupNorm(16 groups), 4 channels each
         "AdaGN GN(h)·(1 + λu)": content_gain(base * (1 + lam * u), h)}
for name, gain in gains.items():
    per_group = gain.reshape(len(h), 16, C // 16)  # [B, groups, channels per group]
    spread = (per_group.amax(-1) / per_group.amin(-1)).max()
    print(f"{name:22s} λ = {lam:g}: largest ratio of two channel gains within a group {spread:8.4f}")

# %% [markdown]
# Read the plot from left to right. With one channel per group (red) the additive signal is
# **removed exactly**: the line sits at zero (off the bottom of the log scale). With a few channels per
# group (or all 64 in one group), the change grows with $\lambda$ at first and then **saturates** at
# about 1.3 times the output's own size: the output has become a normalised copy of the bias pattern and
# cannot change any further, whatever the time embedding says. AdaGN's scale and shift
# keep growing linearly: the timestep controls the features as strongly as the network wants. The
# printed ratios show the other half of the argument: after the additive bias, the channels of a group
# all have the same gain (a ratio of 1 up to rounding); AdaGN gives each channel its own.
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
# ### Why: what zero-initialising the residual branch buys
#
# Both blocks end with $\mathrm{out} = \mathrm{shortcut}(x) + \mathrm{conv}_2(\cdot)$, and $\mathrm{conv}_2$
# starts at zero (as do the attention blocks' `proj_out` and the UNet's final `conv_out`, all through
# `course_lib.conditioning.zero_module`, as in Ho et al.'s code). At step 0 every block is then exactly
# the identity on its skip path and the network outputs $\hat\epsilon = 0$, so the loss starts at
# $\mathbb E\,\|\epsilon\|^2 = 1$, the loss of the best constant guess, whatever the depth.
#
# The measurement: two tiny UNets from the same seed, one with those layers re-initialised the default
# PyTorch way, trained on the same batches, timesteps and noise for a few dozen steps. We also count the
# weight tensors that receive a gradient at step 0.

# %%
def without_zero_init(model):
    """Re-initialise the zero-initialised layers (conv2, proj_out, conv_out) the default PyTorch way."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("conv2", "proj_out", "conv_out"):
            module.reset_parameters()
    return model


zero_steps = config.pick(12, 40)
print(f"two tiny UNets x {zero_steps} steps: about {config.pick('5 s', '30-80 s')} on 2 CPU cores")
zero_cfg = TrainConfig(max_steps=zero_steps, batch_size=config.pick(8, 16), lr=1e-3, warmup_steps=5, ema_decay=0.9,
                       seed=1, checkpoint_minutes=None, progress=False)
zero_data = load_cifar10("train", limit=512, verbose=False)
zero_schedule = NoiseSchedule.linear(1000)
zero_runs = {}
for label, prepare in [("zero-initialised (the course's default)", lambda m: m), ("random init", without_zero_init)]:
    torch.manual_seed(0)
    model = prepare(UNet(UNetConfig.tiny(dropout=0.0)))
    probe_x0, probe_tt = zero_data.images[:8], torch.full((8,), 500)
    probe_xt = zero_schedule.q_sample(probe_x0, probe_tt, torch.randn(probe_x0.shape))
    with torch.no_grad():
        out_std = model(probe_xt, probe_tt).std()
    diffusion_loss(model, zero_schedule, probe_x0).backward()  # one gradient at step 0
    moving = sum(int(p.grad is not None and p.grad.abs().max() > 0) for p in model.parameters())
    model.zero_grad(set_to_none=True)
    zero_runs[label] = fit(model, lambda m, batch: diffusion_loss(m, zero_schedule, batch[0]),
                           StepBatches(zero_data, zero_cfg.batch_size, zero_cfg.seed), zero_cfg, device="cpu")
    print(f"{label:40s}: output std at step 0 {out_std:5.3f}; weight tensors with a gradient at step 0: "
          f"{moving:3d} of {len(list(model.parameters()))}; loss at step 0 {zero_runs[label].losses[0]:5.3f}, "
          f"mean of the last 5 steps {statistics.fmean(zero_runs[label].losses[-5:]):.3f}")
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
for (label, r), color in zip(zero_runs.items(), ["tab:blue", "tab:red"]):
    ax.plot(r.losses, color=color, label=label)
ax.axhline(1.0, color="0.4", ls=":", label="E‖ε‖² = 1: predicting ε̂ = 0")
ax.set(yscale="log", xlabel="training step", ylabel="loss (same batches, t, noise)",
       title="the first steps, with and without a zero-initialised residual branch")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# Read the printout before the folklore. The zero-initialised network starts at the loss of predicting
# zero (1, up to the sampling noise of one batch). It is **not** faster at first here: with `conv_out`
# at zero, back-propagation multiplies every earlier layer's gradient by those zero weights, so at step 0
# only `conv_out`'s own weight and bias receive a gradient (the two tensors counted above), and the rest
# wakes up over the next steps. The randomly initialised network starts only a little above 1, because
# GroupNorm keeps each random branch's output small, and in this tiny UNet it pulls ahead in the first
# steps.
#
# So what does zero-init buy? An **exact identity start**: a block, or a conditioning path, added to a
# network changes nothing until training moves it. That is what lets ControlNet (Zhang et al. 2023)
# attach to a trained Stable Diffusion through "zero convolutions" without disturbing it, what lets
# networks without normalisation train at all (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020), and
# what DiT measured at scale: its adaLN-**Zero** blocks (chapter 6), whose residual branches start at
# zero, reached a better FID than plain adaLN (Peebles & Xie 2023, Fig. 5). AdaGN's $1 + s$ is written so that $s = 0$
# is that neutral start.

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
#
# The full experiment (1,500 steps per model) takes about 40 minutes on a CPU, too long for a lab: its two
# runs ship in `data/checkpoints/` (`ch2-additive`, `ch2-adagn`: EMA weights and loss history, written by
# `tools/train_chapter2_pair.py` with this same code) and are loaded. Set `COURSE_LONG=1` to retrain
# them here. Fast mode loads them too; without the files it trains 40 steps instead, too few to tell anything.

# %%
test_images = load_cifar10("test", limit=config.pick(200, 1000), verbose=False).images
schedule = NoiseSchedule.linear(1000)
experiment = paired_train_config(fast=FAST, device=device)  # 1,500 steps of 32 images (fast mode: 40 of 16)
models, different = paired_unets(UNetConfig.tiny)  # 0.29M parameters: the comparison, not sample quality, matters
print(f"{len(models['adagn'].state_dict()) - len(different)} of {len(models['adagn'].state_dict())} weight tensors "
      f"start equal; the others are the {sorted({name.split('.')[-2] for name in different})} layers")

# The full experiment takes ~40 min on a CPU: it ships as two checkpoints (tools/train_chapter2_pair.py wrote
# them with exactly this code) and is loaded, unless you opt in with COURSE_LONG=1 (in fast mode too: without the
# files, fast mode trains 40 steps, enough to run every cell below, not to compare the blocks).
shipped = shipped_pair()  # data/checkpoints/ch2-additive.safetensors and ch2-adagn.safetensors, or None
loaded = ({kind: load_pair_run(path, expect=paired_train_config()) for kind, path in shipped.items()}
          if shipped else None)  # warns if the files were trained with other settings


def report(kind, result):
    n_params = count_parameters(result.ema, trainable_only=False)
    print(f"{kind:>8s}: {n_params / 1e6:.2f}M parameters, {result.step} steps of {experiment.batch_size} "
          f"in {result.seconds / 60:.1f} min ({result.images_per_second:.0f} images/s on {device})")


if loaded and not config.long_cells():
    runs = loaded
    experiment = paired_train_config(device=device)  # the settings the shipped runs were trained with (checked above)
    print(f"loaded the shipped runs ({', '.join(p.name for p in shipped.values())}):")
    for kind, result in runs.items():
        report(kind, result)
    print(f"to retrain them here, run with COURSE_LONG=1 (they took {sum(r.seconds for r in runs.values()) / 60:.0f} "
          "minutes together when they were trained)")
else:
    if config.long_cells():
        minutes = sum(r.seconds for r in loaded.values()) / 60 if loaded else 2 * 19  # 19 min per model, 1 CPU thread
        print(f"COURSE_LONG=1: training both models for {experiment.max_steps} steps; expected time about "
              f"{minutes:.0f} min on a CPU (less with more threads or a GPU)")
    elif not FAST:  # full mode without the shipped files: a short run that fits the lab, and say so
        experiment = dataclasses.replace(experiment, max_steps=80, warmup_steps=10, ema_decay=0.9)
        print("the shipped runs (data/checkpoints/ch2-*.safetensors) are missing: a short run of "
              f"{experiment.max_steps} steps per model instead (about 2 min), too short to separate the two blocks; "
              "write the full runs with `python tools/train_chapter2_pair.py` (~40 min)")
    data = load_cifar10("train", hflip=True)
    runs = train_pair(models, data, schedule, experiment, device=device, report=report)
trained = loaded if (FAST and loaded) else runs  # the weights the pictures and probes below use
if trained is not runs:
    print(f"held-out loss, samples and the timestep probe below use the shipped runs ({trained['additive'].step} "
          "steps each); the loss curves show the short run above")

# %%
losses = {kind: torch.tensor(r.losses) for kind, r in runs.items()}
diff = losses["adagn"] - losses["additive"]  # paired: same batch, t and noise at every step
window = min(100, max(1, len(diff) // 4))  # 100 steps for the full run, fewer for a short one
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
heldout = {kind: held_out_loss(r.ema, schedule, test_images, draws=2) for kind, r in trained.items()}
print(f"held-out loss of the EMA weights after {trained['additive'].step} steps ({len(test_images)} test images "
      "x 2 (t, noise) draws, the same for both):")
for kind in trained:
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
           for kind, r in trained.items()}
show_images(torch.cat([samples["additive"], samples["adagn"]]), nrow=8,
            title=f"top: additive · bottom: AdaGN · same noise, DDIM 50 steps, "
                  f"after {trained['additive'].step} training steps")
plt.show()

# %% [markdown]
# The two rows are nearly the same pictures: both networks started from the same weights, saw the same
# data and noise, and learned nearly the same denoiser. A loss difference of a percent or two does not
# show at this scale; it shows in the loss, and (in larger models trained longer) in sample quality
# metrics such as FID.
#
# Finally, *activation statistics*: how strongly does the timestep steer each block's features in the
# trained networks? `timestep_sensitivity` takes 16 test images $x_0$ and, for each of six timesteps
# $t$, noises them **at that $t$**, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (the same
# $\epsilon$ every time), and tells the network that $t$: six inputs of the kind it was trained on, which
# differ in the timestep alone. It records the activations entering each block's second convolution
# and reports the share of their variance that is due to $t$,
# $S = \overline{\mathrm{Var}_t(A)} / \mathrm{Var}(A)$, per block (0: the features do not change with $t$;
# 1: they depend on nothing else). Here $t$ acts through two routes at once, the noise level of the input
# and the time embedding, as it does when the network samples. (Feeding one fixed $x_t$ with six different
# $t$ would isolate the embedding, but five of the six inputs would be ones the network never saw.)

# %%
probe_t = [50, 200, 400, 600, 800, 950]
sensitivity = {kind: timestep_sensitivity(r.ema.cpu(), schedule, test_images[:16], probe_t, seed=2)
               for kind, r in trained.items()}
names = list(sensitivity["additive"])
fig, ax = plt.subplots(figsize=(12, 3.8), layout="constrained")
x = torch.arange(len(names))
ax.bar(x - 0.2, [sensitivity["additive"][n] for n in names], width=0.4, color="tab:red", label="additive")
ax.bar(x + 0.2, [sensitivity["adagn"][n] for n in names], width=0.4, color="tab:blue", label="AdaGN")
ax.set_xticks(x, [n.replace(".", " ") for n in names], rotation=60, fontsize=8)
ax.set(ylabel="share of variance due to t", title="how much each residual block's features depend on the timestep "
       "(same x₀ and ε, noised and evaluated at six values of t)")
ax.grid(alpha=0.3, axis="y")
ax.legend()
plt.show()
for kind in sensitivity:
    print(f"{kind:>8s}: mean over blocks {statistics.fmean(sensitivity[kind].values()):.3f}")

# %% [markdown]
# What the full experiment measured when the chapter was written (tiny UNet, 1,500 steps of 32 CIFAR-10
# images each, about 19 minutes per model on one CPU thread; the shipped runs use the same code, and the
# cells above print their own numbers, in fast mode too; only without the shipped files do the curves cover
# a few dozen steps, far too few to tell the two apart):
#
# * the paired loss difference went below zero within the first 150 steps and stayed there for the
#   whole run: AdaGN's training loss was lower by about 1.7 % over the second half, with a standard
#   error about ten times smaller than the difference;
# * the held-out loss of the EMA weights agreed: AdaGN about 1.5 % lower;
# * the timestep-sensitivity bars compare *where* each network lets $t$ act; a higher bar is not
#   automatically better. The additive network can work around its handicap by other routes (its
#   biases act through the SiLU, and they accumulate from block to block), so the difference lies less
#   in *how much* the timestep matters than in *how* it acts: as a gain on the features instead of an
#   offset that the norm partly removes.
#
# **A small gain, and the field split.** ADM ablated this choice on class-conditional ImageNet 128×128
# after 700K iterations, with the timestep *and the class* entering through the same projection
# (Dhariwal & Nichol 2021, Table 3: FID 13.06 with AdaGN against 15.08 with DDPM's "Addition +
# GroupNorm"), and kept AdaGN. Yet Stable Diffusion 1.x, 2.x and SDXL kept DDPM's additive ResBlock:
# in their LDM configs `use_scale_shift_norm` stays at its default `False`, and diffusers'
# `UNet2DConditionModel` builds `ResnetBlock2D` with `resnet_time_scale_shift="default"`, which adds the
# embedding before `norm2` (`"scale_shift"` is this chapter's AdaGN). That models of that size did well
# without it is itself the lesson: a few percent of loss at equal steps is real, but it is not what makes
# or breaks a model. In the transformers of chapter 6 (DiT, SD3, Flux) scale and shift came back: every
# block is modulated by **adaLN**, the same $\mathrm{norm}(h)\odot(1+s)+m$ on tokens
# (`course_lib.conditioning.modulate` serves both).

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
# ### Why: the $1/\sqrt d$
#
# If the $d$ components of a query and a key are independent with mean 0 and variance 1, their dot
# product $q\cdot k = \sum_{i=1}^d q_i k_i$ has mean 0 and variance $d$ (Vaswani et al. 2017, Sec. 3.2.1,
# footnote 4): the scores spread out like $\sqrt d$. A softmax of widely spread scores puts nearly all
# its weight on the largest one (it **saturates**), and there its gradient
# $\partial p_i / \partial s_j = p_i(\delta_{ij} - p_j)$ is nearly zero: attention stops learning.
# Dividing by $\sqrt d$ brings the spread back to 1 at every head width. Measured, with random
# unit-variance $q$, $k$, 256 keys per query:

# %%
widths = [8, 16, 32, 64, 128, 256, 512]
g_d = torch.Generator().manual_seed(0)
spread, p_max = {"q·k": [], "q·k / √d": []}, {"q·k": [], "q·k / √d": []}
for d in widths:
    q, k = torch.randn(512, d, generator=g_d), torch.randn(256, d, generator=g_d)  # [queries, d], [keys, d]
    for name, scores in [("q·k", q @ k.T), ("q·k / √d", q @ k.T / d**0.5)]:  # [queries, keys]
        spread[name].append(float(scores.std()))
        p_max[name].append(float(scores.softmax(dim=-1).amax(dim=-1).mean()))  # weight on the top key
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
for name, color in [("q·k", "tab:red"), ("q·k / √d", "tab:blue")]:
    ax1.plot(widths, spread[name], "o-", color=color, label=name)
    ax2.plot(widths, p_max[name], "o-", color=color, label=name)
ax1.plot(widths, [d**0.5 for d in widths], ":", color="0.4", label="√d")
ax2.axhline(1 / 256, color="0.4", ls=":", label="uniform over 256 keys")
ax1.set(xscale="log", yscale="log", xlabel="head dimension d", ylabel="std of the scores", title="spread of the scores")
ax2.set(xscale="log", yscale="log", xlabel="head dimension d", ylabel="mean largest softmax weight",
        title="how much weight the top key gets")
for ax in (ax1, ax2):
    ax.set_xticks(widths, [str(d) for d in widths])
    ax.grid(alpha=0.3, which="both")
    ax.legend()
plt.show()
for name in spread:
    print(f"{name:9s}: score std at d = {widths[0]} / {widths[-1]}: {spread[name][0]:.2f} / {spread[name][-1]:.2f};  "
          f"largest softmax weight {p_max[name][0]:.2f} / {p_max[name][-1]:.2f}")

# %% [markdown]
# Without the scaling the spread grows exactly like $\sqrt d$ and at $d = 512$ the top key takes most
# of the weight of 256: the softmax is close to a hard maximum. With it, the spread is 1 and the
# weights stay equally soft at every width. (Trained queries and keys are not independent unit
# Gaussians, but the scaling sets the starting point, and a saturated softmax cannot get out of it.)

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
# ### Stretch exercise: the online softmax
#
# Write the heart of the chunked version: attention for all queries at once, reading the keys
# `chunk_size` at a time and never holding more than one chunk of scores. Per query keep the running
# maximum $m$ (start: $-\infty$), the running sum $\ell$ and the running output $o$ (start: 0); for each
# chunk of keys $K'$, values $V'$:
#
# $$s' = \frac{q K'^\top}{\sqrt d},\quad m' = \max(m, \max s'),\quad
# \ell \leftarrow e^{m - m'}\ell + \textstyle\sum e^{s' - m'},\quad
# o \leftarrow e^{m - m'} o + e^{s' - m'} V',\quad m \leftarrow m',$$
#
# and return $o / \ell$. `mask` is `None` or boolean `[B, heads, Nq, Nk]` with `True` = may attend:
# masked scores become $-\infty$, and a query whose keys are *all* masked must return 0, as
# `course_lib.attention` does (careful: $e^{-\infty - (-\infty)}$ is NaN). The check compares with
# `einsum_attention`. (Reading `_attend_by_key_chunks` in `course_lib/attention.py` gives the answer
# away: try first.)

# %% tags=["exercise"]
def online_softmax_attention(q, k, v, mask, chunk_size):
    """softmax(q k^T / sqrt(d)) v over key chunks;  q [B, h, Nq, d], k [B, h, Nk, d], v [B, h, Nk, d_v]."""
    raise NotImplementedError  # your code here


check_online_softmax_attention(online_softmax_attention);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def online_softmax_attention(q, k, v, mask, chunk_size):
    """softmax(q k^T / sqrt(d)) v over key chunks;  q [B, h, Nq, d], k [B, h, Nk, d], v [B, h, Nk, d_v]."""
    q = q * q.shape[-1] ** -0.5  # scale once, not every chunk
    m = torch.full((*q.shape[:-1], 1), float("-inf"))  # [B, h, Nq, 1] running max
    l = torch.zeros(*q.shape[:-1], 1)  # [B, h, Nq, 1] running sum of exp(s - m)
    o = torch.zeros(*q.shape[:-1], v.shape[-1])  # [B, h, Nq, d_v] running sum of exp(s - m) v
    for start in range(0, k.shape[-2], chunk_size):
        cols = slice(start, start + chunk_size)
        s = q @ k[:, :, cols].transpose(-2, -1)  # [B, h, Nq, chunk]
        if mask is not None:
            s = s.masked_fill(~mask[..., cols], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        shift = torch.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: shift by 0, exp(-inf) = 0
        p = torch.exp(s - shift)  # [B, h, Nq, chunk]
        rescale = torch.exp(m - shift)  # [B, h, Nq, 1]: the old sums were relative to the old max
        l = rescale * l + p.sum(dim=-1, keepdim=True)
        o = rescale * o + p @ v[:, :, cols]
        m = m_new
    return o / torch.where(l == 0, 1.0, l)  # a query with no key: 0 / 1 = 0


assert check_online_softmax_attention(online_softmax_attention)

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

# %% tags=["exercise"]
def adagn_modulation(h, emb_out, norm):
    """GN(h) * (1 + scale) + shift;  h: [B, C, H, W], emb_out: [B, 2C] = [scale, shift]."""
    raise NotImplementedError  # your code here


check_adagn_modulation(adagn_modulation);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def adagn_modulation(h, emb_out, norm):
    """GN(h) * (1 + scale) + shift;  h: [B, C, H, W], emb_out: [B, 2C] = [scale, shift]."""
    scale, shift = emb_out.chunk(2, dim=1)  # [B, C] each
    return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


assert check_adagn_modulation(adagn_modulation)

# %% [markdown]
# ## Summary
#
# * DDPM's ResBlock adds the time signal *before* a GroupNorm, which subtracts the part shared within
#   each group and divides every channel of the group by the same $\sigma_g$: the bias cannot set one
#   channel's gain on its own. AdaGN (ADM) applies $\mathrm{GN}(h)\odot(1+s)+m$ *after* the norm. In a
#   controlled experiment (same weights, data, timesteps and noise) AdaGN reached a lower loss at equal
#   steps, by 1.5-2 %; Stable Diffusion's UNets kept the additive block, and chapter 6's transformers
#   bring scale and shift back as adaLN.
# * Zero-initialising each residual branch makes the network start as the identity and predict
#   $\hat\epsilon = 0$: the loss starts at 1 instead of far above it.
# * Attention divides by $\sqrt d$ so that the scores keep unit spread at any head width and the
#   softmax does not saturate.
# * Attention has one formula and several implementations. The fused SDPA kernel and the chunked
#   version agree with the textbook einsum to float32 rounding, and their memory grows linearly with
#   the sequence instead of quadratically.
#
# Next, chapter 3 uses attention in a new way: **cross-attention**, where the image's tokens ask and
# the tokens of a text prompt answer.
