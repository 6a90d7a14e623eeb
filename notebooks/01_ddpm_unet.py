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
# # 1 · DDPM with the classic UNet
#
# A denoising diffusion probabilistic model (DDPM; Ho, Jain & Abbeel, 2020) learns to generate
# images by learning to *remove noise*. Training destroys images with Gaussian noise in many
# small steps and teaches a network to predict the noise that was added; sampling starts from
# pure noise and runs the destruction backwards, one denoising step at a time.
#
# In this chapter you will
#
# 1. noise real CIFAR-10 images with the **forward process** $q(x_t \mid x_0)$, compare the
#    **linear** and **cosine** noise schedules and their **signal-to-noise ratio**, and explore
#    them with a slider;
# 2. see the three things a network can predict (**$\epsilon$, $x_0$ or $v$**) and convert between them;
# 3. build the **classic DDPM UNet** and trace the shapes through it;
# 4. **train** it for a few steps and look at the loss;
# 5. **sample** with ancestral DDPM (all $T$ steps) and with DDIM (10, 50, 250 steps), and watch
#    the model denoise;
# 6. write three pieces yourself (`q_sample`, `eps_to_x0`, one DDIM step), with a check that
#    says right or wrong.
#
# Everything the notebook calls lives in `course_lib` (`schedules`, `parameterization`, `unet`,
# `train`, `samplers`); open those modules to read the full implementations.

# %%
import dataclasses
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib import config
from course_lib.conditioning import timestep_embedding
from course_lib.data import CIFAR10_CLASSES
from course_lib.evaluation import classifier_score
from course_lib.exercises import check_ddim_step, check_eps_to_x0, check_q_sample
from course_lib.generation import Pipeline
from course_lib.parameterization import eps_to_x0, eps_x0_to_v, v_to_eps, v_to_x0, x0_to_eps
from course_lib.profiling import count_parameters
from course_lib.recipes import RECIPES, model_from_checkpoint
from course_lib.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from course_lib.schedules import NoiseSchedule, gather
from course_lib.toy import gaussian_eps_model
from course_lib.trainer import fit
from course_lib.unet import UNet, UNetConfig
from course_lib.viz import describe_card, plot_losses, show_images
from course_lib.widgets import schedule_explorer

config.setup_cpu_speedups()
config.seed_everything(0)
device = config.get_device()
FAST = config.fast_mode()
print(f"device: {device} · fast mode: {FAST}"
      + (" (tiny model, few steps: samples will look like noise)" if FAST else ""))

# %% [markdown]
# The training images, in $[-1, 1]$. Without the full data set configured, the course uses the
# bundled sample (3,000 training images) and says so.

# %%
recipe = RECIPES["ddpm-tiny" if FAST else "ddpm-small"]
train = recipe.data()
print(train)
# the images come sorted by class (airplanes first): train.sample(n) draws every subset below
# through one fixed shuffle, so each holds all classes
x0_demo = train.sample(5).images  # five images to noise, [5, 3, 32, 32]
show_images(x0_demo, nrow=5, title="five training images $x_0$", scale=1.3)
plt.show()

# %% [markdown]
# ## 1. The forward process
#
# The forward process adds Gaussian noise in $T$ small steps, with a variance $\beta_t$ per step:
#
# $$q(x_t \mid x_{t-1}) = \mathcal{N}\big(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big).$$
#
# The factor $\sqrt{1-\beta_t}$ shrinks the signal as the noise grows, so that data of unit
# variance keeps unit variance ("variance preserving"). Gaussians compose, so with
# $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ any step is reached from the
# data **in one jump** (Ho et al. 2020, eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal{N}\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\quad \epsilon \sim \mathcal{N}(0, I).$$
#
# That one jump is what makes training cheap: pick a random $t$, noise the image in one line,
# and ask the network about it. In `course_lib` timesteps are **0-indexed**, $t = 0, \dots, T-1$
# (index $t$ is the paper's step $t+1$); $T = 1000$ as in the paper.
#
# Below, the same two images and the same noise $\epsilon$ at increasing $t$, for the two schedules
# of section 2.

# %%
T = 1000
schedules = {"linear": NoiseSchedule.linear(T), "cosine": NoiseSchedule.cosine(T)}
shown_t = [0, 50, 100, 200, 300, 500, 700, 999]
eps_demo = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
rows, labels = [], []
for name, schedule in schedules.items():
    for i in range(2):
        x0 = x0_demo[i].expand(len(shown_t), -1, -1, -1)  # the same image at every t
        rows.append(schedule.q_sample(x0, torch.tensor(shown_t), eps_demo[i].expand_as(x0)))
        labels.append(f"{name}, image {i + 1}")
show_images(torch.cat(rows), nrow=len(shown_t), row_labels=labels, col_labels=[f"t = {t}" for t in shown_t],
            scale=1.15, title=r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (same $\epsilon$ along each row)")
plt.show()

# %% [markdown]
# **Variance preserving, measured.** If the pixels of $x_0$ have variance $\sigma_0^2$, then
# $\mathrm{Var}(x_t) = \bar\alpha_t\,\sigma_0^2 + (1 - \bar\alpha_t)$: it moves from the data's
# variance to 1, never blowing up. On 512 training images and fresh noise:

# %%
x0_batch = train.sample(512).images
var0 = x0_batch.var().item()
print(f"pixel variance of the data: {var0:.3f}")
print("schedule   t    alpha_bar   Var(x_t) measured   predicted")
for name, schedule in schedules.items():
    for t in (0, 250, 500, 999):
        x_t = schedule.q_sample(x0_batch, torch.full((512,), t), torch.randn_like(x0_batch))
        ab = schedule.alpha_bar[t].item()
        predicted = ab * var0 + 1 - ab
        print(f"{name:8s} {t:4d}   {ab:9.5f}   {x_t.var().item():17.3f}   {predicted:9.3f}")
        assert abs(x_t.var().item() - predicted) < 0.03 * predicted

# %% [markdown]
# ## 2. Noise schedules and the signal-to-noise ratio
#
# A schedule is the choice of $\beta_1, \dots, \beta_T$, or equivalently of the curve $\bar\alpha_t$.
#
# * **Linear** (Ho et al. 2020): $\beta_t$ grows linearly from $10^{-4}$ to $0.02$.
# * **Cosine** (Nichol & Dhariwal 2021, eq. 17): $\bar\alpha_t = f(t)/f(0)$ with
#   $f(t) = \cos^2\!\Big(\dfrac{t/T + s}{1 + s}\cdot\dfrac{\pi}{2}\Big)$, $s = 0.008$, and
#   $\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}$ clipped at $0.999$.
#
# What matters for the model is how much signal is left at each $t$. The **signal-to-noise ratio**
# (Kingma et al. 2021) is
#
# $$\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t},$$
#
# the ratio of the signal's variance to the noise's in $x_t$. It falls from very large to about 0;
# the schedules differ in *where* the steps are spent.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
steps = torch.arange(T)
for name, schedule in schedules.items():
    axes[0].plot(steps, schedule.betas, label=name)
    axes[1].plot(steps, schedule.alpha_bar, label=name)
    axes[2].plot(steps, schedule.snr.log10(), label=name)
axes[0].set(title=r"$\beta_t$ (noise added per step)", yscale="log", ylabel=r"$\beta_t$")
axes[1].set(title=r"$\bar\alpha_t$ (signal variance left)", ylabel=r"$\bar\alpha_t$")
axes[2].axhline(0, color="0.5", lw=0.8, ls=":")
axes[2].set(title=r"$\log_{10}\,\mathrm{SNR}(t)$", ylabel=r"$\log_{10}$ SNR")
for ax in axes:
    ax.set_xlabel("timestep t")
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()

# %% [markdown]
# Two numbers describe the difference: the step at which half of the signal variance is gone
# ($\bar\alpha_t = 0.5$, i.e. SNR $= 1$), and how many steps are spent on almost pure noise
# ($\bar\alpha_t < 0.01$, where the image is barely visible):

# %%
half, nearly_noise = {}, {}
for name, schedule in schedules.items():
    half[name] = int((schedule.alpha_bar < 0.5).nonzero()[0])
    nearly_noise[name] = (schedule.alpha_bar < 0.01).float().mean().item()
    print(f"{name:7s} SNR = 1 at t = {half[name]:4d};  {nearly_noise[name]:.0%} of the steps have alpha_bar < 0.01;"
          f"  alpha_bar at t = T-1: {schedule.alpha_bar[-1].item():.2e}")
assert half["cosine"] > half["linear"] and nearly_noise["linear"] > nearly_noise["cosine"]
print(f"the course's recipe {recipe.name!r} trains with: {recipe.process}")

# %% [markdown]
# The linear schedule destroys the image early and then spends about a third of its steps on
# near-pure noise. Nichol & Dhariwal (2021) found those last steps add little for small images
# such as CIFAR-10's and proposed the cosine schedule, which degrades the image gradually. This
# chapter's recipes keep the linear schedule of the original DDPM (printed above); a recipe can
# name either.
#
# ## 3. Explore the schedules
#
# Move the slider (or press play): the images are noised with the **same** $\epsilon$ at every $t$,
# so only the noise level changes. The right side marks $\bar\alpha_t$ and the SNR (log scale) of
# both schedules. Things to try: find the $t$ where you can no longer tell what the images show
# for each schedule; compare their SNR there.

# %%
# NBVAL_IGNORE_OUTPUT
explorer = schedule_explorer(x0_demo, schedules, t=250)
display(explorer)

# %% [markdown]
# (The check below moves the slider from code, as you would with the mouse, and asserts that the
# picture and the numbers followed.)

# %%
before = explorer.state
explorer.slider.value = 600
after = explorer.state
assert after["t"] == 600 and not torch.equal(before["x_t"]["linear"], after["x_t"]["linear"])
assert after["alpha_bar"]["cosine"] == schedules["cosine"].alpha_bar[600].item()
print({name: f"alpha_bar {after['alpha_bar'][name]:.3f}, SNR {after['snr'][name]:.3g}" for name in schedules})

# %% [markdown]
# ### Exercise 1: write `q_sample`
#
# Write the one-jump forward process $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$.
#
# * `schedule.alpha_bar` is a tensor `[T]`; `t` is a tensor `[B]` of timesteps, one per image;
# * `x0` and `eps` are `[B, 3, H, W]`: the coefficient of each image must broadcast over its
#   channels and pixels.
#
# Replace the `raise` line and run the cell; the check compares your function with
# `schedule.q_sample` and tells you what is wrong if it differs.

# %%
def my_q_sample(schedule, x0, t, eps):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps;  x0, eps: [B, C, H, W], t: [B]."""
    raise NotImplementedError  # your code here


check_q_sample(my_q_sample);


# %% [markdown]
# A solution (the cell is collapsed; click to expand it once you have tried):

# %% jupyter={"source_hidden": true}
def my_q_sample(schedule, x0, t, eps):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps;  x0, eps: [B, C, H, W], t: [B]."""
    alpha_bar = schedule.alpha_bar[t].view(-1, 1, 1, 1)  # [B] -> [B, 1, 1, 1]
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


assert check_q_sample(my_q_sample)

# %% [markdown]
# ## 4. What the network predicts: $\epsilon$, $x_0$ or $v$
#
# Given $x_t$ and $t$, knowing any one of $\epsilon$, $x_0$ or the "velocity"
# $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$ (Salimans & Ho 2022) gives the
# other two. With $a = \sqrt{\bar\alpha_t}$, $b = \sqrt{1 - \bar\alpha_t}$ (so $a^2 + b^2 = 1$):
#
# $$x_0 = \frac{x_t - b\,\epsilon}{a}, \qquad \epsilon = \frac{x_t - a\,x_0}{b}, \qquad
# x_0 = a\,x_t - b\,v, \qquad \epsilon = b\,x_t + a\,v.$$
#
# So a network can be trained to predict any of the three ("parameterisations"); DDPM predicts
# $\epsilon$, and samplers convert its output to $x_0$ when they need it. The conversions in
# `course_lib.parameterization`, checked on a batch:

# %%
schedule = schedules["linear"]
t = torch.tensor([10, 250, 500, 990])
x0, eps = train.sample(4).images, torch.randn(4, 3, 32, 32)
x_t = schedule.q_sample(x0, t, eps)
alpha_bar = gather(schedule.alpha_bar, t)  # [4, 1, 1, 1]
v = eps_x0_to_v(eps, x0, alpha_bar)
errors = {
    "x0 from eps": (eps_to_x0(eps, x_t, alpha_bar) - x0).abs().max().item(),
    "eps from x0": (x0_to_eps(x0, x_t, alpha_bar) - eps).abs().max().item(),
    "x0 from v": (v_to_x0(v, x_t, alpha_bar) - x0).abs().max().item(),
    "eps from v": (v_to_eps(v, x_t, alpha_bar) - eps).abs().max().item(),
}
for what, err in errors.items():
    print(f"{what:12s} max error {err:.1e}")
assert max(errors.values()) < 1e-3

# %% [markdown]
# What each target looks like: at small $t$, $v \approx \epsilon$; at large $t$, $v \approx -x_0$.
# $v$ moves smoothly between the two; Salimans & Ho chose it for their few-step (distilled) models.

# %%
ts = [50, 500, 950]
panels, rows = [], []
for t_ in ts:
    tt = torch.tensor([t_])
    ab = gather(schedule.alpha_bar, tt)
    xt_ = schedule.q_sample(x0_demo[:1], tt, eps_demo[:1])
    panels += [xt_, eps_demo[:1].clamp(-2, 2) / 2, x0_demo[:1], eps_x0_to_v(eps_demo[:1], x0_demo[:1], ab).clamp(-2, 2) / 2]
    rows.append(f"t = {t_}, " + r"$\bar\alpha$" + (f" = {ab.item():.2f}" if ab > 0.01 else f" = {ab.item():.0e}"))
show_images(torch.cat(panels), nrow=4, row_labels=rows, scale=1.4,
            col_labels=["input $x_t$", r"target $\epsilon$", "target $x_0$", "target $v$"],
            title=r"what the network could be asked to predict from $x_t$ ($\epsilon$ and $v$ at half scale)")
plt.show()

# %% [markdown]
# One consequence matters for sampling: $x_0 = (x_t - b\,\epsilon)/a$ divides by $a = \sqrt{\bar\alpha_t}$,
# which is tiny at the end of the chain. An error $\delta$ in the predicted $\epsilon$ becomes an
# error $\delta\,b/a = \delta/\sqrt{\mathrm{SNR}}$ in $x_0$: measured below for $\delta = 0.1$.
# That is why samplers clip the predicted $x_0$ to $[-1, 1]$ (`clip_x0=True` in `course_lib.samplers`).

# %%
for t_ in (10, 250, 500, 750, 999):
    tt = torch.full((4,), t_)
    ab = gather(schedule.alpha_bar, tt)
    xt_ = schedule.q_sample(x0, tt, eps)
    err = (eps_to_x0(eps + 0.1, xt_, ab) - x0).abs().mean().item()
    print(f"t = {t_:3d}: error 0.1 in eps -> error {err:7.3f} in x0   (1/sqrt(SNR) = {schedule.snr[t_].rsqrt().item():7.2f})")
    assert abs(err - 0.1 * schedule.snr[t_].rsqrt().item()) < 1e-3 * max(1.0, err)

# %% [markdown]
# ### Exercise 2: convert $\epsilon$ to $x_0$
#
# Write $x_0 = (x_t - \sqrt{1-\bar\alpha}\,\epsilon)/\sqrt{\bar\alpha}$. Here `alpha_bar` is
# already shaped `[B, 1, 1, 1]`.

# %%
def my_eps_to_x0(eps, x_t, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar);  alpha_bar: [B, 1, 1, 1]."""
    raise NotImplementedError  # your code here


check_eps_to_x0(my_eps_to_x0);


# %% jupyter={"source_hidden": true}
def my_eps_to_x0(eps, x_t, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar);  alpha_bar: [B, 1, 1, 1]."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


assert check_eps_to_x0(my_eps_to_x0)

# %% [markdown]
# ## 5. The classic UNet
#
# The network $\epsilon_\theta(x_t, t)$ maps an image and a timestep to an image-sized
# prediction. DDPM's (Ho et al. 2020, App. B) is a UNet:
#
# * **timestep embedding**: sinusoidal features of $t$ (as in the Transformer's positions),
#   then a 2-layer MLP with SiLU;
# * **ResBlocks**: GroupNorm, SiLU, 3×3 conv; the timestep embedding is projected and **added**
#   per channel; GroupNorm, SiLU, dropout, 3×3 conv; a residual connection;
# * **self-attention** at 16×16 (and in the middle, 4×4 here), written with `einsum`:
#   $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$ over the $H \times W$ positions;
# * **levels** with `channel_mult = (1, 2, 2, 2)`: 32×32 → 16×16 → 8×8 → 4×4, two ResBlocks per
#   level on the way down, three on the way up, each up block eating one **skip connection**.
#
# The course trains the paper's layout at a quarter of the width (`UNetConfig.small()`), which a
# CPU can train in hours; fast mode uses a two-level `tiny()` config. Parameter counts, measured:

# %%
with torch.device("meta"):  # build without allocating memory: only the parameter count is needed
    paper_params = count_parameters(UNet(UNetConfig.paper()))
small = UNet(UNetConfig.small())
for name, n in [("paper (Ho et al.)", paper_params), ("small (this course)", count_parameters(small)),
                ("tiny (fast mode)", count_parameters(UNet(UNetConfig.tiny())))]:
    print(f"{name:20s} {n / 1e6:6.2f}M parameters")
assert abs(paper_params / 1e6 - 35.7) < 0.1  # the paper reports 35.7M for CIFAR-10

parts = {"time_embed": small.time_embed, "conv_in": small.conv_in, "down": small.down,
         "middle": small.middle, "up": small.up, "out": [small.norm_out, small.conv_out]}
counts = {k: sum(count_parameters(m) for m in (v if isinstance(v, list) else [v])) for k, v in parts.items()}
print("small UNet by part: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items()))
assert sum(counts.values()) == count_parameters(small)

# %% [markdown]
# **Shapes through the network.** Hooks on every stage record its output for a batch of two
# images. Note the resolution halving on the way down and the channel count growing on the way
# up where skip connections are concatenated in.

# %%
trace = []


def record(name):
    def hook(module, inputs, output):
        kinds = "+".join(type(m).__name__ for m in module) if isinstance(module, torch.nn.Sequential) else type(module).__name__
        in_shape = tuple(inputs[0].shape)
        trace.append((name, kinds, in_shape, tuple(output.shape)))
    return hook


stages = ([("conv_in", small.conv_in)] + [(f"down[{i}]", m) for i, m in enumerate(small.down)]
          + [("middle", small.middle)] + [(f"up[{i}]", m) for i, m in enumerate(small.up)]
          + [("conv_out", small.conv_out)])
handles = [m.register_forward_hook(record(n)) for n, m in stages]
with torch.no_grad():
    out = small(torch.randn(2, 3, 32, 32), torch.tensor([10, 900]))
for h in handles:
    h.remove()
print(f"{'stage':9s} {'layers':40s} {'input':18s} output")
for name, kinds, i, o in trace:
    print(f"{name:9s} {kinds:40s} {str(i):18s} {o}")
assert out.shape == (2, 3, 32, 32)
print(f"\nthe output at initialisation: max |eps_hat| = {out.abs().max().item():.1e}")
assert out.abs().max() == 0  # conv_out starts at zero (as in the DDPM code): the untrained net predicts 0

# %% [markdown]
# The timestep reaches every ResBlock through the sinusoidal embedding
# $[\sin(t\,\omega_i), \cos(t\,\omega_i)]$ with frequencies $\omega_i = 10000^{-i/(d/2)}$:
# fast-oscillating features tell nearby steps apart, slow ones give the overall noise level.

# %%
emb = timestep_embedding(torch.arange(T), 64)  # [T, 64]
fig, ax = plt.subplots(figsize=(10, 3), layout="constrained")
im = ax.imshow(emb.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
ax.set(xlabel="timestep t", ylabel="feature (sin | cos)", title="sinusoidal timestep embedding, d = 64")
fig.colorbar(im, ax=ax, fraction=0.03)
plt.show()

# %% [markdown]
# ## 6. Training: predict the noise
#
# Training is Ho et al.'s Algorithm 1 with their "simple" loss: take a training image, a
# uniformly random $t$ and fresh noise, and regress the noise,
#
# $$L(\theta) = \mathbb{E}_{x_0,\ t \sim \mathcal{U}\{0..T-1\},\ \epsilon \sim \mathcal{N}(0, I)}
# \big\|\epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\big)\big\|^2 .$$
#
# The recipe (`course_lib.recipes`) holds the model, the loss and the batches; `fit` runs AdamW
# with warm-up, gradient clipping and an exponential moving average (EMA) of the weights, which
# is what we sample from. A short run here, to see the loss fall; predicting $\hat\epsilon = 0$
# scores exactly 1, the dashed line.

# %%
recipe_cfg = recipe.train_config()
# the recipe's settings, for a short run: fewer steps and a learning-rate warm-up of 20 steps (the recipe's
# own runs are hundreds of thousands of steps long and warm up over up to 1000)
train_cfg = dataclasses.replace(recipe_cfg, max_steps=config.pick(60, 200), batch_size=config.pick(16, recipe_cfg.batch_size),
                                warmup_steps=min(recipe_cfg.warmup_steps, 20))
config.seed_everything(0)
model = recipe.build_model()
result = fit(model, recipe.loss_fn(), recipe.batches(train, train_cfg), train_cfg, device=device)
print(f"{recipe.name}: {count_parameters(model) / 1e6:.2f}M parameters, {result.step} steps of "
      f"{train_cfg.batch_size} images in {result.seconds:.0f} s ({result.images_per_second:.0f} images/s on {device})")

# %%
losses = torch.tensor(result.losses)
window = config.pick(8, 20)
ax = plot_losses(losses, window=window,
                 title=f"training the {recipe.name} UNet ({len(losses)} steps, batch {train_cfg.batch_size})")
ax.axhline(1.0, color="0.4", ls="--", lw=1, label=r"predicting $\hat\epsilon = 0$")
ax.set_ylabel(r"$\|\epsilon - \epsilon_\theta\|^2$ (mean)")
ax.legend()
plt.show()
first, last = losses[:window].mean().item(), losses[-window:].mean().item()
print(f"loss: first {window} steps {first:.3f} -> last {window} steps {last:.3f}")
assert last < first

# %% [markdown]
# The loss starts at 1 (the zero-initialised output layer predicts $\hat\epsilon = 0$) and falls
# fast at first, then slowly. A short run like this one gets the easy part; good samples need
# millions of images seen, which is hours of training on a CPU (the card below says how long).
#
# ## 7. A trained model
#
# Without fast mode, the notebook loads `ddpm-small.safetensors`: the `small` UNet trained by the
# course's own command, `python -m course_lib.train ddpm-small --minutes 240`, which writes the
# EMA weights and a *card* saying how they were made. In fast mode (or if the file is missing)
# we sample from the model just trained, so **fast-mode samples look like noise**: a few dozen
# steps are far too few.

# %%
ckpt_path = config.checkpoint_dir() / "ddpm-small.safetensors"
sampler_model, process = result.ema.eval(), recipe.process
if FAST:
    print(f"fast mode: sampling from the {recipe.name} model trained above ({result.step} steps)")
elif ckpt_path.exists():
    pipeline = Pipeline.from_checkpoint(ckpt_path, device=device)  # the UNet and the process on its card
    sampler_model, process, card = pipeline.denoiser, pipeline.process, pipeline.card
    # the card: size, steps, training time in all (runs resume each other), the last run's command and
    # hardware, the runs it continued from and its learning-rate cool-down (course_lib.trainer.learning_rate)
    print(f"loaded {ckpt_path.name}\n{describe_card(card)}")
else:
    print(f"{ckpt_path} is missing. Make it with\n    python -m course_lib.train ddpm-small --minutes 240\n"
          f"(it resumes where it stopped, if you run it again). For now: the model trained above ({result.step} steps).")
schedule = process.noise_schedule
assert process.parameterization == "eps" and schedule.T == T
print(f"sampling with the {schedule.name} schedule, T = {schedule.T}")

# %% [markdown]
# ## 8. Ancestral sampling (DDPM)
#
# Sampling runs the chain backwards (Ho et al. 2020, Algorithm 2). From $x_{T} \sim \mathcal{N}(0, I)$,
# for $t = T, \dots, 1$: predict $\hat\epsilon = \epsilon_\theta(x_t, t)$, turn it into
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ (clipped to $[-1, 1]$),
# and draw $x_{t-1}$ from the Gaussian posterior of the forward process with $\hat x_0$ in place of $x_0$:
#
# $$x_{t-1} = \underbrace{\frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,\hat x_0
# + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t}_{\tilde\mu_t(x_t,\ \hat x_0)}
# + \sigma_t z, \qquad \sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t,\quad z \sim \mathcal{N}(0, I),$$
#
# with no noise at the last step. Every one of the $T = 1000$ steps calls the network once.

# %%
n_samples = config.pick(3, 16)
x_T = torch.randn(n_samples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
timings = {}
start = time.perf_counter()
ddpm = ddpm_sample(sampler_model, schedule, x_T=x_T, generator=torch.Generator().manual_seed(1),
                   return_trajectory=True, device=device)
timings[f"DDPM, {schedule.T} steps"] = time.perf_counter() - start
print(f"{n_samples} DDPM samples in {timings[f'DDPM, {schedule.T} steps']:.1f} s")
assert ddpm.sample.shape == x_T.shape and torch.isfinite(ddpm.sample).all()
show_images(ddpm.sample.cpu(), nrow=8, scale=1.1,
            title=f"DDPM samples ({schedule.T} steps)" + (" · fast mode: barely trained, noise-like" if FAST else ""))
plt.show()

# %% [markdown]
# ## 9. DDIM: the same model, fewer steps
#
# DDIM (Song, Meng & Ermon 2021) keeps the trained model and changes only the sampler. It jumps
# along a subsequence $\tau_S > \dots > \tau_1$ of the timesteps; with $\eta = 0$ each jump is
# **deterministic**: predict $\hat x_0$, then re-noise it to the next level with the *predicted*
# noise instead of fresh noise (eq. 12):
#
# $$x_{\tau_{i-1}} = \sqrt{\bar\alpha_{\tau_{i-1}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\tau_{i-1}}}\,\hat\epsilon .$$
#
# The same $x_T$ always gives the same image, and 50 steps instead of 1000 are 20 times cheaper.
# Below: DDPM and DDIM at 250, 50 and 10 steps from the **same** starting noise $x_T$.

# %%
ddim_steps = (250, 50, 10)
ddim = {}
for steps in ddim_steps:
    start = time.perf_counter()
    ddim[steps] = ddim_sample(sampler_model, schedule, x_T=x_T, num_steps=steps, device=device).cpu()
    timings[f"DDIM, {steps} steps"] = time.perf_counter() - start
for what, seconds in timings.items():
    print(f"{what:18s} {seconds:6.1f} s for {n_samples} images")
again = ddim_sample(sampler_model, schedule, x_T=x_T, num_steps=10, device=device).cpu()
assert torch.equal(again, ddim[10]), "DDIM with eta = 0 is deterministic"

n_show = min(n_samples, 8)
grid = torch.cat([ddpm.sample.cpu()[:n_show]] + [ddim[s][:n_show] for s in ddim_steps])
show_images(grid, nrow=n_show, scale=1.1, row_labels=[f"DDPM {schedule.T}"] + [f"DDIM {s}" for s in ddim_steps],
            title="the same starting noise $x_T$ in every column")
plt.show()

# %% [markdown]
# How far each sampler lands from the 250-step DDIM image of the same $x_T$ (mean absolute pixel
# difference in $[-1, 1]$), and the spread (standard deviation) of the sample pixels against the
# training images'. DDIM's results converge as the steps grow; DDPM adds fresh noise at every
# step and lands elsewhere. (In fast mode, with an untrained model, these numbers mean little.)

# %%
reference = ddim[250]
print(f"pixel std of the training images: {train.sample(1000).images.std().item():.3f}")
for label, x in [(f"DDPM {schedule.T}", ddpm.sample.cpu())] + [(f"DDIM {s}", ddim[s]) for s in ddim_steps]:
    print(f"{label:10s} distance to DDIM 250: {(x - reference).abs().mean().item():.3f}   pixel std: {x.std().item():.3f}")

# %% [markdown]
# ### How CIFAR-like are the samples? Ask a classifier
#
# Looking is a judgement; a number helps. `cifar-classifier` is a small ResNet the course trained on
# the CIFAR-10 training set (chapter 3 uses it too; its card gives its test accuracy). It gives each
# image a class distribution $p(y \mid x)$: confident on a clear photo of a ship, hesitant on a
# blob. Two summaries of a set of images: the mean **confidence** $\max_k p(k \mid x)$, and the
# **classifier score**, the Inception Score of Salimans et al. (2016) with this classifier in
# place of Inception,
#
# $$\mathrm{IS} = \exp\Big(\mathbb E_x\, \mathrm{KL}\big(p(y \mid x)\,\big\|\,p(y)\big)\Big), \qquad p(y) = \mathbb E_x\, p(y \mid x),$$
#
# which is 1 when every image gets the same distribution (all alike, or all ambiguous) and 10 at
# most (each image clearly one class, all classes equally often). Both mean something only beside
# real images scored the same way. On 16 images they are rough; the command line measures on more:
# `python -m course_lib.evaluation data/checkpoints/ddpm-small.safetensors --samples 200 --steps 100`.

# %%
classifier, classifier_card = model_from_checkpoint(config.checkpoint_dir() / "cifar-classifier.safetensors",
                                                    device=device)
print(f"classifier: {classifier_card['metrics']}")
judged = {f"DDPM {schedule.T}": ddpm.sample.cpu(), **{f"DDIM {s}": ddim[s] for s in ddim_steps},
          "training images": train.sample(n_samples).images}
scores = {label: classifier_score(classifier, x) for label, x in judged.items()}
for label, score in scores.items():
    print(f"{label:16s} mean confidence {100 * score.confidence:5.1f} %   classifier score {score.inception_score:.2f}"
          f"   ({score.n} images)")

probs = scores[f"DDPM {schedule.T}"].probs  # [N, 10]
rows = -(-n_samples // 8)
fig, axes = plt.subplots(rows, 1, figsize=(9, 1.6 * rows + 0.4), layout="constrained", squeeze=False)
for r, ax in enumerate(axes[:, 0]):
    p = probs[8 * r:8 * r + 8]
    confidence, k = p.max(dim=-1)
    show_images(ddpm.sample.cpu()[8 * r:8 * r + 8], nrow=8, ax=ax, label_size=8,
                col_labels=[f"{CIFAR10_CLASSES[int(k_)]}\n{100 * v:.0f} %" for v, k_ in zip(confidence, k)])
fig.suptitle("the DDPM samples and what the classifier sees in them (class, confidence)", fontsize=10)
plt.show()

# %% [markdown]
# Where the classifier is sure, look again at the image: is it the object it names? A young model
# makes photo-like scenes (sky, grass, water) before it makes objects, and the classifier's
# confidence stays well below the training images' until the objects appear. (In fast mode the
# model is untrained and these are verdicts on noise.)

# %% [markdown]
# **Few-step DDIM is biased.** DDIM with $\eta = 0$ is a first-order solver of an ordinary
# differential equation (the "probability-flow ODE" that chapter 5 returns to); with few steps it
# makes a discretisation error, and that error has a direction: the samples come out **too
# narrow**. Data where the answer is known makes this measurable. For one-dimensional Gaussian
# data $x_0 \sim \mathcal{N}(\mu, s^2)$ the best possible noise prediction has a closed form,
# $\mathbb{E}[\epsilon \mid x_t] = \sqrt{1-\bar\alpha_t}\,(x_t - \sqrt{\bar\alpha_t}\,\mu)/(\bar\alpha_t s^2 + 1 - \bar\alpha_t)$,
# so the samplers run with a *perfect* model and any error is the sampler's:

# %%
MU, S = 0.3, 0.5  # Gaussian "data", spread like CIFAR-10 pixels
# the formula above as model(x [B, 1], t [B]) -> E[eps | x_t] for data N(MU, S^2): course_lib.toy
perfect_eps = gaussian_eps_model(MU, S, schedule)

z = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
toy_steps = [5, 10, 20, 50, 100, 250, 1000]
toy_std = {n: ddim_sample(perfect_eps, schedule, x_T=z, num_steps=n, clip_x0=False, progress=False).std().item() / S
           for n in toy_steps}
toy_ddpm = ddpm_sample(perfect_eps, schedule, x_T=z, clip_x0=False, progress=False,
                       generator=torch.Generator().manual_seed(1)).std().item() / S
for n, r in toy_std.items():
    print(f"DDIM {n:4d} steps: sample std / data std = {r:.3f}")
print(f"DDPM {schedule.T} steps: sample std / data std = {toy_ddpm:.3f}")
assert toy_std[10] < 0.95 and abs(toy_std[1000] - 1) < 0.02 and abs(toy_ddpm - 1) < 0.02

fig, ax = plt.subplots(figsize=(6.5, 3.4), layout="constrained")
ax.plot(toy_steps, toy_std.values(), "o-", label=r"DDIM ($\eta = 0$)")
ax.axhline(toy_ddpm, color="tab:orange", ls="--", label=f"DDPM, {schedule.T} steps")
ax.axhline(1.0, color="0.4", lw=0.8)
ax.set(xscale="log", xlabel="sampling steps", ylabel="sample std / data std",
       title="sampling Gaussian data with a perfect model")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# With a perfect model, 10 DDIM steps give samples whose spread is clearly too small (the number
# above), 50 steps are close and 1000 steps are right, as is DDPM. On images, a too-narrow spread
# would show in the pixel std printed for the samples before (meaningful with the pretrained
# model, not in fast mode). Better ODE solvers (Heun, DPM-Solver) and straighter paths (rectified
# flow, chapter 5) are the cures.
#
# ## 10. Watching the model denoise
#
# The DDPM run above kept its whole trajectory: the current $x_t$ and the model's guess
# $\hat x_0$ at every step. A network trained with a squared loss predicts the *average* of
# everything that could have produced $x_t$ (the posterior mean), so at high noise expect a blurry
# guess that sharpens as $t$ falls (with the pretrained model; fast mode's is barely trained).

# %%
strip_t = [999, 800, 600, 400, 300, 200, 100, 0]
index = [int((ddpm.timesteps == t_).nonzero()) for t_ in strip_t]  # the step that was at each t
rows, labels = [], []
for i in range(min(2, n_samples)):
    rows += [ddpm.trajectory[index, i], ddpm.x0_preds[index, i]]
    labels += [f"$x_t$ (sample {i + 1})", rf"$\hat x_0$ (sample {i + 1})"]
show_images(torch.cat(rows), nrow=len(strip_t), row_labels=labels, col_labels=[f"t = {t_}" for t_ in strip_t],
            scale=1.15, title=r"DDPM sampling: the noisy $x_t$ and the predicted $\hat x_0$ along the way")
plt.show()

# %% [markdown]
# ### Exercise 3: one DDIM step
#
# Write one deterministic DDIM step from level $t$ to the earlier level $t_\text{prev}$:
# first $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$, then
# $x_{t_\text{prev}} = \sqrt{\bar\alpha_{t_\text{prev}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t_\text{prev}}}\,\hat\epsilon$.
# `alpha_bar_t` and `alpha_bar_prev` are 0-d tensors (single numbers).

# %%
def my_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    """One DDIM step (eta = 0): x_t [B, C, H, W] at level alpha_bar_t -> x at level alpha_bar_prev."""
    raise NotImplementedError  # your code here


check_ddim_step(my_ddim_step);


# %% jupyter={"source_hidden": true}
def my_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    """One DDIM step (eta = 0): x_t [B, C, H, W] at level alpha_bar_t -> x at level alpha_bar_prev."""
    x0_hat = my_eps_to_x0(eps_hat, x_t, alpha_bar_t)
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat


assert check_ddim_step(my_ddim_step)

# %% [markdown]
# With your step, a whole 10-step DDIM sampler is a short loop; it reproduces the library's
# `ddim_sample` (without clipping, which the loop leaves out) on the model of section 7:

# %%
taus = ddim_timesteps(schedule.T, 10)  # [999, 888, ..., 0]
x = x_T.to(device)
with torch.no_grad():
    for i, t_ in enumerate(taus):
        eps_hat = sampler_model(x, torch.full((len(x),), t_, device=device))
        ab_prev = schedule.alpha_bar[taus[i + 1]] if i + 1 < len(taus) else torch.tensor(1.0)  # 1: the data
        x = my_ddim_step(x, eps_hat, schedule.alpha_bar[t_].to(device), ab_prev.to(device))
library = ddim_sample(sampler_model, schedule, x_T=x_T, num_steps=10, clip_x0=False, progress=False, device=device)
gap = (x - library).abs().max().item() / library.abs().max().item()
print(f"your 10-step sampler vs ddim_sample: max relative difference {gap:.1e}")
assert gap < 1e-3

# %% [markdown]
# ## Summary
#
# * The forward process noises data in one jump, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$;
#   the schedule decides how fast the SNR $\bar\alpha_t/(1-\bar\alpha_t)$ falls (cosine: more gently than linear).
# * The network may predict $\epsilon$, $x_0$ or $v$; each converts exactly into the others, but
#   $x_0$ from $\epsilon$ amplifies errors by $1/\sqrt{\mathrm{SNR}}$ at high noise.
# * The DDPM UNet: ResBlocks with an *additive* timestep embedding, attention at 16×16, skip connections.
# * Training is plain regression of the noise; ancestral sampling needs all $T$ steps; DDIM
#   reuses the model deterministically with far fewer, at the price of a measurable bias with very few steps.
#
# **Next**, chapter 2 replaces the additive timestep injection with *adaptive GroupNorm* (scale and
# shift from the timestep) and looks at attention three ways.
