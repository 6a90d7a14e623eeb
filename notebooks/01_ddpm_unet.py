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
# 5. **sample** the course's trained model with ancestral DDPM (all $T$ steps; 100 of them in fast
#    mode) and with DDIM (10, 50, 250 steps), and watch the model denoise;
# 6. write five pieces yourself (`q_sample`, `eps_to_x0`, the training loss, one ancestral step,
#    one DDIM step), with a check that says right or wrong.
#
# Everything the notebook calls lives in `course_lib` (`schedules`, `parameterization`, `unet`,
# `train`, `samplers`); open those modules to read the full implementations.

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# 1. compute $x_t$ from $x_0$ with `q_sample` in one jump, and say what $\bar\alpha_t$ is (the share of the
#    signal's variance left at $t$, $\prod_{s \le t}(1 - \beta_s)$) and how it gives the SNR;
# 2. convert between the $\epsilon$, $x_0$ and $v$ predictions, and explain why $x_0$ from $\epsilon$
#    amplifies an error by $1/\sqrt{\mathrm{SNR}}$;
# 3. write the simple training loss of Ho et al.'s Algorithm 1 and say how it differs from the ELBO's
#    weighting;
# 4. write one ancestral (DDPM) step and one deterministic DDIM step, and say which of the two samplers is
#    deterministic and why few DDIM steps give samples that are too narrow;
# 5. read a sample grid with the classifier score and FD_clf, beside the same numbers for real images.
#
# **Before it you need**
#
# * PyTorch basics: tensors and broadcasting, `nn.Module`, one optimizer step.
# * Gaussian noise: mean, variance, and that $a\,\epsilon$ with $\epsilon \sim \mathcal N(0, I)$ has variance $a^2$.
# * Chapter 0 (the data, in $[-1, 1]$).

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (Intel(R) Xeon(R) Processor with AVX-512 and AMX), 2026-12-03; the code cells' seconds per section,
# without the kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 4 s | 3 s |
# | 1. The forward process | < 1 s | < 1 s |
# | 2. Noise schedules and the signal-to-noise ratio | < 1 s | < 1 s |
# | 3. Explore the schedules | < 1 s | < 1 s |
# | 4. What the network predicts: $\epsilon$, $x_0$ or $v$ | < 1 s | < 1 s |
# | 5. The classic UNet | < 1 s | < 1 s |
# | 6. Training: predict the noise | 8 s | 20 s |
# | 7. A trained model | < 1 s | < 1 s |
# | 8. Ancestral sampling (DDPM) | 4 s | 80 s |
# | 9. DDIM: the same model, fewer steps | 13 s | 2 min 10 s |
# | 10. Watching the model denoise | 1 s | 2 s |
# | **the whole notebook** | **32 s** | **3 min 57 s** |
#
# The longest cell in full mode takes 1 min 51 s.

# %%
import contextlib
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib import config
from course_lib.conditioning import timestep_embedding
from course_lib.data import CIFAR10_CLASSES, load_cifar10, to_uint8
from course_lib.evaluation import classifier_score, sample_images
from course_lib.export import export_checkpoint, import_folder
from course_lib.exercises import (check_ddim_step, check_ddpm_step, check_eps_to_x0, check_q_sample, check_simple_loss,
                                  solved)
from course_lib.features import (ClassifierFeatures, FeatureStats, extract_features, real_features,
                                 reference_statistics)
from course_lib.generation import Pipeline
from course_lib.metrics import frechet_distance, precision_recall
from course_lib.parameterization import eps_to_x0, eps_x0_to_v, v_to_eps, v_to_x0, x0_to_eps
from course_lib.models import model_from_checkpoint
from course_lib.profiling import count_parameters
from course_lib.recipes import RECIPES
from course_lib.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from course_lib.schedules import NoiseSchedule, gather
from course_lib.toy import eight_gaussians, gaussian_eps_model
from course_lib.trainer import fit
from course_lib.unet import UNet, UNetConfig
from course_lib.viz import describe_card, plot_losses, show_images
from course_lib.widgets import schedule_explorer

config.setup_cpu_speedups()
config.seed_everything(0)
device = config.get_device()
FAST = config.fast_mode()
print(f"device: {device} · fast mode: {FAST}"
      + (" (a short training demo of a tiny model; the pictures come from the shipped checkpoint)" if FAST else ""))

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
# `schedule.q_sample` and tells you what is wrong if it differs. Stuck? `check_q_sample.hint()` gives a
# hint, `check_q_sample.hint(2)` the next one, and `check_q_sample.solution()` a worked solution; every
# exercise's check in the course has the same three.

# %% tags=["exercise"]
def my_q_sample(schedule, x0, t, eps):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps;  x0, eps: [B, C, H, W], t: [B]."""
    raise NotImplementedError  # your code here


check_q_sample(my_q_sample);


# %% [markdown] tags=["solution"]
# A solution (the cell is collapsed; click to expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
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

# %% tags=["exercise"]
def my_eps_to_x0(eps, x_t, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar);  alpha_bar: [B, 1, 1, 1]."""
    raise NotImplementedError  # your code here


check_eps_to_x0(my_eps_to_x0);


# %% tags=["solution"] jupyter={"source_hidden": true}
def my_eps_to_x0(eps, x_t, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar);  alpha_bar: [B, 1, 1, 1]."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


assert check_eps_to_x0(my_eps_to_x0)

# %% [markdown]
# ### Why predict $\epsilon$? Because it is the score
#
# A network trained with a squared loss learns the *conditional mean* of its target: the best
# $\epsilon_\theta(x_t, t)$ is $\mathbb E[\epsilon \mid x_t]$, the average of all the noises that could
# have produced $x_t$. **Tweedie's formula** (Efron 2011) says what that average is: for
# $x_t = a\,x_0 + b\,\epsilon$ with $a = \sqrt{\bar\alpha_t}$, $b = \sqrt{1-\bar\alpha_t}$,
#
# $$\mathbb E[x_0 \mid x_t] = \frac{x_t + b^2\,\nabla_{x_t}\log p_t(x_t)}{a}, \qquad
# \mathbb E[\epsilon \mid x_t] = -\,b\,\nabla_{x_t}\log p_t(x_t),$$
#
# where $p_t$ is the density of the noisy data and $\nabla\log p_t$ its **score**. So a trained
# noise predictor *is* a score model, up to the factor $-1/\sqrt{1-\bar\alpha_t}$:
#
# $$\nabla_{x_t}\log p_t(x_t) \approx -\frac{\hat\epsilon}{\sqrt{1-\bar\alpha_t}}, \qquad
# \hat x_0 = \frac{x_t + (1-\bar\alpha_t)\,\nabla\log p_t(x_t)}{\sqrt{\bar\alpha_t}}
# = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}},$$
#
# the same $\hat x_0$ as Exercise 2. Predicting the noise, denoising and estimating the score are one
# task (Vincent 2011's denoising score matching; Song et al. 2021 build the continuous-time theory of
# chapter 5 on it). The score points uphill in density, towards where the data is likely; $-\hat\epsilon$
# points the same way.
#
# <details><summary>Derivation of Tweedie's formula (three lines)</summary>
#
# $p_t(x_t) = \int p(x_0)\,\mathcal N(x_t; a x_0, b^2 I)\,dx_0$. Differentiate under the integral: the
# Gaussian's gradient is $\mathcal N(\cdot)\,(a x_0 - x_t)/b^2$, so
#
# $$\nabla\log p_t(x_t) = \frac{1}{p_t(x_t)}\int p(x_0)\,\mathcal N(x_t; a x_0, b^2 I)\,\frac{a x_0 - x_t}{b^2}\,dx_0
# = \frac{a\,\mathbb E[x_0 \mid x_t] - x_t}{b^2},$$
#
# because $p(x_0)\,\mathcal N(x_t; a x_0, b^2 I)/p_t(x_t) = p(x_0 \mid x_t)$ (Bayes). Solve for
# $\mathbb E[x_0 \mid x_t]$; then $\mathbb E[\epsilon \mid x_t] = (x_t - a\,\mathbb E[x_0 \mid x_t])/b = -b\,\nabla\log p_t(x_t)$.
# Nothing was assumed about $p(x_0)$: it holds for images as for the toy below.
# </details>
#
# **Measured** on data where everything is known exactly: eight Gaussians on a circle
# (`course_lib.toy.eight_gaussians`), noised to $t = 150$ of the linear schedule. Two independent
# computations: the score, by differentiating the noised mixture's density; and the ideal noise
# prediction $\mathbb E[\epsilon \mid x_t]$, by Bayes' rule (which component $k$ produced $x_t$, with
# probability $r_k$, and each Gaussian component's own posterior mean of $x_0$).

# %%
toy_data = eight_gaussians(radius=2.0, std=0.15)  # p(x_0): 8 Gaussians, radius 2, std 0.15
t_toy = 150
ab_toy = schedules["linear"].alpha_bar[t_toy].double()
a_toy, b_toy = ab_toy.sqrt(), (1 - ab_toy).sqrt()
g = torch.Generator().manual_seed(0)
x0_toy = toy_data.sample(2000, generator=g).double()  # [N, 2]
xt_toy = a_toy * x0_toy + b_toy * torch.randn(x0_toy.shape, generator=g, dtype=torch.float64)  # [N, 2]

score = toy_data.noised_score(xt_toy, ab_toy)  # grad log p_t(x_t), exact: [N, 2]
# Bayes, component by component: x_t | k ~ N(a mu_k, a^2 s_k^2 + b^2), and x_0 | x_t, k is Gaussian too
mu, s2 = toy_data.means, toy_data.stds**2  # [K, 2] each
var_k = ab_toy * s2 + (1 - ab_toy)  # [K, 2], the variance of x_t within component k
diff = xt_toy[:, None] - a_toy * mu  # [N, K, 2]
r = (toy_data.weights.log() - 0.5 * (diff**2 / var_k + var_k.log()).sum(-1)).softmax(-1)  # [N, K] = p(k | x_t)
x0_bayes = (r[..., None] * (mu + a_toy * s2 / var_k * diff)).sum(1)  # E[x_0 | x_t]: [N, 2]
eps_bayes = (xt_toy - a_toy * x0_bayes) / b_toy  # E[eps | x_t], the best possible eps-prediction: [N, 2]

gaps = {"score vs -eps_hat / sqrt(1 - alpha_bar)": (score + eps_bayes / b_toy).abs().max().item(),
        "x0_hat from the score (Tweedie) vs Bayes": ((xt_toy + b_toy**2 * score) / a_toy - x0_bayes).abs().max().item()}
print(f"t = {t_toy}: alpha_bar = {ab_toy.item():.3f}; {len(xt_toy)} noisy points; |score| up to {score.norm(dim=1).max().item():.2f}")
for what, gap in gaps.items():
    print(f"{what:42s} max difference {gap:.1e}")
assert max(gaps.values()) < 1e-10  # float64: equal up to rounding

fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
grid_1d = torch.linspace(-3, 3, 21, dtype=torch.float64)
grid = torch.cartesian_prod(grid_1d, grid_1d)  # [289, 2]
field = toy_data.noised_score(grid, ab_toy)
field = field / field.norm(dim=1, keepdim=True).clamp(min=1e-9) * field.norm(dim=1, keepdim=True).clamp(max=4) / 4
axes[0].scatter(*xt_toy.T, s=3, color="0.7", label=r"noisy points $x_t$")
axes[0].quiver(*grid.T, *field.T, color="tab:blue", angles="xy", scale_units="xy", scale=3.5, width=0.003,
               label=r"score $\nabla\log p_t = -\hat\epsilon/\sqrt{1-\bar\alpha_t}$")
axes[0].set_title(rf"the score of the noisy data ($t = {t_toy}$, $\bar\alpha_t$ = {ab_toy.item():.2f})")
show = slice(0, 60)
axes[1].scatter(*xt_toy[show].T, s=12, color="0.5", label=r"$x_t$")
axes[1].quiver(*xt_toy[show].T, *(x0_bayes[show] - xt_toy[show]).T, angles="xy", scale_units="xy", scale=1,
               width=0.003, color="tab:orange", alpha=0.8)
axes[1].scatter(*x0_bayes[show].T, s=12, color="tab:orange", label=r"$\hat x_0$ (Tweedie)")
axes[1].scatter(*mu.T, s=60, marker="x", color="k", label=r"the eight means of $p(x_0)$")
axes[1].set_title(r"each $x_t$ and its denoised guess $\hat x_0 = \mathbb{E}[x_0 \mid x_t]$")
for ax in axes:
    ax.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal")
    ax.legend(loc="lower left", fontsize=8)
plt.show()

# %% [markdown]
# Left: the arrows (shortened where long) point towards the ring, strongest in the empty centre and
# outside. Right: $\hat x_0$ lands near a mean when one component clearly explains $x_t$, and *between*
# means when several could have: the average of the possibilities, which is why the $\hat x_0$ of a
# real model looks blurry at high noise (section 10).

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
# `UNetConfig.paper()` has the paper's layout and its 35.7M parameters; two details differ from Ho et
# al.'s TensorFlow code: GroupNorm's eps is PyTorch's 1e-5 (theirs 1e-6), and the stride-2 downsampling
# conv pads all sides by one pixel (their 'SAME' padding pads right and bottom only). The course trains
# the paper's layout at a quarter of the width (`UNetConfig.small()`), which a CPU can train in hours;
# fast mode uses a two-level `tiny()` config. Parameter counts, measured:

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
# the recipe's settings, for a short run: fewer steps and a learning-rate warm-up of 20 steps (the shipped
# ddpm-small warmed up over 1000 steps and ran far longer: section 7 prints its card)
train_cfg = dataclasses.replace(recipe_cfg, max_steps=config.pick(30, 50), batch_size=config.pick(16, 32),
                                warmup_steps=min(recipe_cfg.warmup_steps, 20))
print(f"{train_cfg.max_steps} steps of {train_cfg.batch_size} images: "
      + ("about 10 s" if FAST else "0.5-2 minutes on 2 CPU cores (15-55 images/s), seconds on a GPU"))
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
# about a million images seen, which is hours of training on a CPU (the card below says how long).

# %% [markdown]
# ### Exercise 3: the training loss
#
# Write the loss of Ho et al.'s Algorithm 1 for one batch. You are given the images `x0`, their
# timesteps `t` `[B]` and the noise `noise` `[B, C, H, W]` (drawn for you, so that the check can
# compare); noise the images in one jump and return the mean squared error between the noise and
# the model's prediction from $x_t$:
#
# $$L = \operatorname{mean}\Big(\big(\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t)\big)^2\Big).$$
#
# `model(x_t, t)` returns $\hat\epsilon$ `[B, C, H, W]`; the result is one number (a 0-d tensor). The
# check compares with `course_lib.parameterization.diffusion_loss`, which the recipe trained with above,
# using a fixed stand-in for the network.

# %% tags=["exercise"]
def my_simple_loss(model, schedule, x0, t, noise):
    """mean (noise - model(x_t, t))^2 with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise;  t: [B]."""
    raise NotImplementedError  # your code here


check_simple_loss(my_simple_loss);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def my_simple_loss(model, schedule, x0, t, noise):
    """mean (noise - model(x_t, t))^2 with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise;  t: [B]."""
    x_t = my_q_sample(schedule, x0, t, noise)  # Exercise 1
    return ((noise - model(x_t, t)) ** 2).mean()  # the mean over every number: batch, channels, pixels


assert check_simple_loss(my_simple_loss)

# %% [markdown]
# ### Why this loss? It is the likelihood bound, reweighted
#
# DDPM is a latent-variable model, and its honest training objective is the variational bound on
# the negative log-likelihood (the ELBO), a sum of one term per step. Ho et al. (2020, eq. 12) show
# that with reverse variances $\sigma_t^2$ fixed and the mean written through $\epsilon_\theta$, the term for
# step $t$ is, up to a constant,
#
# $$L_{t-1} = \mathbb E_{x_0, \epsilon}\Big[\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}
# \big\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t)\big\|^2\Big]:$$
#
# the simple loss at step $t$, times a weight. Their $L_\text{simple}$ (eq. 14) drops the weight, i.e.
# sets it to 1 for every $t$. Same minimiser for a network that can be perfect at every $t$ (each
# term is minimised by $\mathbb E[\epsilon \mid x_t]$ on its own); different trade-offs for a real one, which
# must share its capacity across $t$. The weights for the linear schedule, measured:
#
# <details><summary>Where the weight comes from, and the same weight in terms of the SNR</summary>
#
# $L_{t-1}$ is the KL divergence between two Gaussians with the same variance $\sigma_t^2$: the forward
# posterior $q(x_{t-1} \mid x_t, x_0)$ with mean $\tilde\mu_t$ and the model $p_\theta(x_{t-1} \mid x_t)$ with mean $\mu_\theta$, so
# it is $\|\tilde\mu_t - \mu_\theta\|^2 / (2\sigma_t^2)$ (eq. 8). Both means have the form of eq. 11,
# $\frac{1}{\sqrt{\alpha_t}}(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon)$, with the true $\epsilon$ and with $\epsilon_\theta$;
# their difference is $\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}(\epsilon - \epsilon_\theta)$, and squaring gives eq. 12.
#
# With $\sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ the weight simplifies to
# $\frac{\beta_t}{2\alpha_t(1-\bar\alpha_{t-1})} = \frac12\Big(\frac{\mathrm{SNR}(t-1)}{\mathrm{SNR}(t)} - 1\Big)$:
# how much the signal-to-noise ratio changes in one step, the form in which Kingma et al. (2021)
# write the bound. The cell checks this identity numerically. The term of the very last step, $L_0$,
# is a decoder term of its own (eq. 13) and is left out of the plot.
# </details>

# %%
beta = schedules["linear"].betas.double()  # [T]; everything below in float64 (1 - alpha_bar near t = 0 needs it)
alpha = 1 - beta
ab = torch.cumprod(alpha, dim=0)
ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
beta_tilde = (1 - ab_prev) / (1 - ab) * beta  # [T]; 0 at t = 0
steps_elbo = torch.arange(1, T)  # course index t >= 1: the terms L_{t-1} (index 0 is L_0, the decoder term)
elbo_weight = {  # eq. 12 for the two fixed variances Ho et al. tried: [T - 1] each
    "beta_tilde": (beta**2 / (2 * beta_tilde.clamp(min=1e-30) * alpha * (1 - ab)))[1:],
    "beta": (beta**2 / (2 * beta * alpha * (1 - ab)))[1:],
}
snr = ab / (1 - ab)
via_snr = 0.5 * (snr[:-1] / snr[1:] - 1)  # [T-1]: SNR(t-1)/SNR(t) for t = 1..T-1
assert torch.allclose(elbo_weight["beta_tilde"], via_snr, rtol=1e-9)

fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
for (name, w), color in zip(elbo_weight.items(), ["tab:blue", "tab:green"]):
    label = r"ELBO, $\sigma_t^2 = \tilde\beta_t$" if name == "beta_tilde" else r"ELBO, $\sigma_t^2 = \beta_t$"
    ax.plot(steps_elbo, w / w.mean(), color=color, label=label)  # normalised: mean weight 1 over t
    share = (w[:100].sum() / w.sum()).item()
    print(f"ELBO with sigma_t^2 = {name:10s} weight at t = 1: {w[0] / w.mean():7.1f} x the mean, at t = 999: "
          f"{w[-1] / w.mean():.2f} x;  the first 100 of 999 steps carry {share:.0%} of the total")
ax.axhline(1.0, color="tab:orange", lw=2, label=r"$L_\mathrm{simple}$: weight 1 for every $t$")
ax.set(yscale="log", xlabel="timestep t", ylabel="weight / its mean over t",
       title=r"the weight of $\|\epsilon - \epsilon_\theta\|^2$ at each step (linear schedule)")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# The bound weights the first steps far more than the rest (the numbers printed above): there the
# image is nearly clean, the noise is easy to predict, and the likelihood is decided by fine detail.
# Relative to the bound, $L_\text{simple}$ takes weight off those steps and gives it to the noisier
# middle of the chain, where the network must make up content ("more difficult denoising tasks",
# in Ho et al.'s words). Ho et al. (Sec. 3.4 and Table 2) found that this gave their best samples,
# while the true bound gave better log-likelihoods; Nichol & Dhariwal (2021) later recovered good
# likelihoods by adding a small bound term to learn $\sigma_t$. Other weightings (min-SNR, the flow-matching
# losses of chapters 5 and 6) are different choices of this same weight.

# %% [markdown]
# ## 7. A trained model
#
# The rest of the chapter samples from `ddpm-small.safetensors`, in fast mode too: the `small` UNet
# trained by the course's own command, `python -m course_lib.train ddpm-small --minutes 240`, which
# writes the EMA weights and a *card* saying how they were made. (A few dozen steps, as above, would
# give pictures of noise.) Only if the file is missing do we sample from the model just trained, and
# say so.

# %%
ckpt_path = config.checkpoint_dir() / "ddpm-small.safetensors"
sampler_model, process = result.ema.eval(), recipe.process
trained = ckpt_path.exists()  # False: the pictures below come from the short run above and will be noise
if trained:
    pipeline = Pipeline.from_checkpoint(ckpt_path, device=device)  # the UNet and the process on its card
    sampler_model, process, card = pipeline.denoiser, pipeline.process, pipeline.card
    # the card: size, steps, training time in all (runs resume each other), the last run's command and
    # hardware, the runs it continued from and its learning-rate cool-down (course_lib.trainer.learning_rate)
    print(f"loaded {ckpt_path.name}\n{describe_card(card)}")
    batch = card["training"]["train_config"]["batch_size"]
    print(f"\n{card['step']:,} steps of {batch} images: {card['step'] * batch / 1e6:.2f}M images seen, against "
          f"{result.step * train_cfg.batch_size:,} in the short run above")
else:
    print(f"{ckpt_path} is missing. Make it with\n    python -m course_lib.train ddpm-small --minutes 240\n"
          f"(it resumes where it stopped, if you run it again). For now: the model trained above ({result.step} "
          "steps), whose samples will look like noise.")
schedule = process.noise_schedule
assert process.parameterization == "eps" and schedule.T == T
print(f"sampling with the {schedule.name} schedule, T = {schedule.T}")

# %% [markdown]
# **To diffusers and back.** The UNet is built to compute what diffusers' `UNet2DModel` computes, and
# `course_lib.export` proves it by round trip: the checkpoint becomes a `DDPMPipeline` folder that diffusers
# loads with `from_pretrained` (UNet and `DDPMScheduler`), and the folder comes back as a course checkpoint, the
# weights unchanged. Two lines:

# %%
if trained:
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_checkpoint(ckpt_path, Path(tmp) / "ddpm-small-diffusers")  # what from_pretrained reads
        back = import_folder(folder["folder"], Path(tmp) / "ddpm-small-again.safetensors")  # and the course again
        print(f"written: {folder['written']}\nfiles: {sorted(p.name for p in Path(folder['folder']).iterdir())}")
        again, _ = model_from_checkpoint(back)
        same = all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), sampler_model.state_dict().values()))
        print(f"imported back: {type(again).__name__}, every weight equal to the original: {same}")

# %% [markdown]
# The same road leads the other way, to a published model. Ho et al.'s own CIFAR-10 model, converted to
# diffusers as `google/ddpm-cifar10-32` (35.7M parameters, `UNetConfig.paper`'s layout in TensorFlow's details:
# GroupNorm eps 1e-6, stride-2 convolutions padded at the right and bottom, the sinusoid's frequency shift 1,
# all options of the course's UNet), imports into a course checkpoint; then this chapter's sampling cells,
# the classifier score and `python -m course_lib.evaluation` work on it. It needs a network, once (nothing in
# the course downloads by itself):
#
# ```python
# from huggingface_hub import snapshot_download
# folder = snapshot_download("google/ddpm-cifar10-32")
# import_folder(folder, config.checkpoint_dir() / "ddpm-cifar10-32.safetensors")
# pipeline = Pipeline.from_checkpoint(config.checkpoint_dir() / "ddpm-cifar10-32.safetensors")
# ```
#
# Its published FID is 3.17 (Ho et al. 2020, Table 1, over 50,000 samples). The course measures FID-2k, which
# is biased upwards at 2,000 samples (even real test images score 14.4 there), so compare it with the course's
# models at the same N, never with the paper's number.

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
#
# **Fast mode** cannot afford 1000 network calls per image on a CPU, so it runs the same ancestral
# sampler on every 10th timestep: the chain is *respaced* to 100 steps (Nichol & Dhariwal 2021, Sec. 4)
# and each step draws from the posterior of the shorter chain, $\sigma_t^2 = \tilde\beta_t$ computed
# from the $\bar\alpha$ of the kept steps. That is DDIM's sampler with $\eta = 1$ (section 9;
# Song et al. 2021, Sec. 4.1), which on all $T$ steps is exactly the chain above. Full mode runs all 1000.

# %%
n_samples = config.pick(4, 8)
print(f"{n_samples} images x {100 if FAST else schedule.T} network calls: "
      + ("about 10 s" if FAST else "about 2 minutes on 2 CPU cores"))
x_T = torch.randn(n_samples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
timings = {}
start = time.perf_counter()
if FAST:  # ancestral sampling on 100 of the 1000 timesteps (eta = 1: fresh noise at each step)
    ddpm_steps = 100
    ddpm = ddim_sample(sampler_model, schedule, x_T=x_T, num_steps=ddpm_steps, eta=1.0,
                       generator=torch.Generator().manual_seed(1), return_trajectory=True, device=device)
else:  # Ho et al.'s Algorithm 2: all T steps
    ddpm_steps = schedule.T
    ddpm = ddpm_sample(sampler_model, schedule, x_T=x_T, generator=torch.Generator().manual_seed(1),
                       return_trajectory=True, device=device)
ddpm_label = f"DDPM {ddpm_steps}"  # the number of network calls per image
timings[f"DDPM, {ddpm_steps} steps"] = time.perf_counter() - start
print(f"{n_samples} ancestral (DDPM) samples, {ddpm_steps} steps of the T = {schedule.T} chain, in "
      f"{timings[f'DDPM, {ddpm_steps} steps']:.1f} s")
assert ddpm.sample.shape == x_T.shape and torch.isfinite(ddpm.sample).all()
show_images(ddpm.sample.cpu(), nrow=8, scale=1.1,
            title=f"DDPM samples ({ddpm_steps} ancestral steps)" + ("" if trained else " · untrained model: noise"))
plt.show()

# %% [markdown]
# ### Exercise 4: one ancestral step
#
# Write one step of Algorithm 2 in Ho et al.'s own form, their eq. 11 for the mean (the posterior
# mean above with $\hat x_0$ substituted, no clipping):
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\hat\epsilon\Big) + \sigma_t z,
# \qquad \sigma_t^2 = \tilde\beta_t \ (\texttt{schedule.posterior\_variance[t]}),$$
#
# and no noise at $t = 0$ (the course's 0-indexed last step). `t` is a Python `int` (the same step for the
# whole batch, as in the sampler); `schedule.alphas`, `.alpha_bar`, `.betas` are tensors `[T]`; `z` is
# the standard normal noise to use. The check compares with the library's `ddpm_sample`
# (`clip_x0=False`) step, computed from `NoiseSchedule.q_posterior` with the same `z`.

# %% tags=["exercise"]
def my_ddpm_step(schedule, x_t, eps_hat, t, z):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z  (no noise at t = 0)."""
    raise NotImplementedError  # your code here


check_ddpm_step(my_ddpm_step);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def my_ddpm_step(schedule, x_t, eps_hat, t, z):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z  (no noise at t = 0)."""
    alpha, alpha_bar, beta = schedule.alphas[t], schedule.alpha_bar[t], schedule.betas[t]  # 0-d tensors
    mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps_hat) / alpha.sqrt()
    if t == 0:
        return mean  # the last step: x_0 is the sample
    return mean + schedule.posterior_variance[t].sqrt() * z  # sigma_t = sqrt(beta_tilde_t)


assert check_ddpm_step(my_ddpm_step)

# %% [markdown]
# Your step, looped over all 1000 timesteps with the sampler's own noise draws, *is* `ddpm_sample`
# (without clipping). On one-dimensional Gaussian data, with the exact noise prediction of
# `course_lib.toy` as the model (section 9 says more), 1000 steps cost milliseconds:

# %%
toy_schedule = NoiseSchedule.linear(T)
toy_model = gaussian_eps_model(0.3, 0.5, toy_schedule)  # data N(0.3, 0.5^2); model(x [B, 1], t [B])
x_toy = torch.randn(2048, 1, 1, 1, generator=torch.Generator().manual_seed(0))  # [B, 1, 1, 1]: "images" of 1 pixel
library_toy = ddpm_sample(lambda x, t: toy_model(x[:, :, 0, 0], t)[:, :, None, None], toy_schedule, x_T=x_toy,
                          clip_x0=False, progress=False, generator=torch.Generator().manual_seed(1))
if solved(check_ddpm_step, my_ddpm_step):
    g = torch.Generator().manual_seed(1)  # the sampler draws z from this generator at t = 999, ..., 1
    for t_ in range(T - 1, -1, -1):
        eps_hat = toy_model(x_toy[:, :, 0, 0], torch.full((len(x_toy),), t_))[:, :, None, None]
        z = torch.randn(x_toy.shape, generator=g) if t_ > 0 else None
        x_toy = my_ddpm_step(toy_schedule, x_toy, eps_hat, t_, z)
    gap = (x_toy - library_toy).abs().max().item()
    print(f"your sampler vs ddpm_sample: max difference {gap:.1e}; sample mean {x_toy.mean().item():.3f} (data 0.3), "
          f"std {x_toy.std().item():.3f} (data 0.5)")
    assert gap < 1e-4
else:
    print(f"my_ddpm_step is not solved yet (exercise above); ddpm_sample alone: sample mean "
          f"{library_toy.mean().item():.3f} (data 0.3), std {library_toy.std().item():.3f} (data 0.5)")

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
# Below: DDPM and DDIM at 250, 50 and 10 steps (50, 20 and 10 in fast mode) from the **same**
# starting noise $x_T$.

# %%
ddim_steps = config.pick((50, 20, 10), (250, 50, 10))
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
show_images(grid, nrow=n_show, scale=1.1, row_labels=[ddpm_label] + [f"DDIM {s}" for s in ddim_steps],
            title="the same starting noise $x_T$ in every column")
plt.show()

# %% [markdown]
# How far each sampler lands from the DDIM image with the most steps, from the same $x_T$ (mean
# absolute pixel difference in $[-1, 1]$), and the spread (standard deviation) of the sample pixels
# against the training images'. DDIM's results converge as the steps grow; DDPM adds fresh noise at
# every step and lands elsewhere. (On a handful of images, as in fast mode, the spread is rough.)

# %%
reference = ddim[ddim_steps[0]]
print(f"pixel std of the training images: {train.sample(1000).images.std().item():.3f}")
for label, x in [(ddpm_label, ddpm.sample.cpu())] + [(f"DDIM {s}", ddim[s]) for s in ddim_steps]:
    print(f"{label:10s} distance to DDIM {ddim_steps[0]}: {(x - reference).abs().mean().item():.3f}   "
          f"pixel std: {x.std().item():.3f}")

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
# real images scored the same way. On 8 images (4 in fast mode) they are rough; the command line measures on more:
# `python -m course_lib.evaluation data/checkpoints/ddpm-small.safetensors --samples 200 --steps 100`.

# %%
classifier, classifier_card = model_from_checkpoint(config.checkpoint_dir() / "cifar-classifier.safetensors",
                                                    device=device)
print(f"classifier: {classifier_card['metrics']}")
judged = {ddpm_label: ddpm.sample.cpu(), **{f"DDIM {s}": ddim[s] for s in ddim_steps},
          "training images": train.sample(n_samples).images}
scores = {label: classifier_score(classifier, x) for label, x in judged.items()}
for label, score in scores.items():
    print(f"{label:16s} mean confidence {100 * score.confidence:5.1f} %   classifier score {score.inception_score:.2f}"
          f"   ({score.n} images)")

probs = scores[ddpm_label].probs  # [N, 10]
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
# confidence stays well below the training images' until the objects appear.

# %% [markdown]
# ### From judging images to comparing distributions: FID
#
# The classifier score looks at the samples alone: a model that drew one perfect ship a thousand
# times would score well. The measure the field reports compares the **distribution** of the samples
# with that of real images (Heusel et al. 2017): map each image to a feature vector, fit a Gaussian
# $\mathcal N(\mu, \Sigma)$ to each set, and take the Fréchet distance between the two Gaussians,
#
# $$d^2 = \lVert \mu_r - \mu_g \rVert^2 + \operatorname{Tr}\big(\Sigma_r + \Sigma_g - 2\,(\Sigma_r \Sigma_g)^{1/2}\big),$$
#
# which is 0 only when means and covariances agree. With the 2048 pool features of TensorFlow's
# Inception-v3 this is the **FID**; `course_lib.features` runs that network exactly as the published
# numbers do (`python -m course_lib.evaluation CHECKPOINT --num-samples 2000`), at about 10 images per
# second on two CPU cores. Here we use the same formula in the 128 features of our classifier
# (**FD_clf**): a hundred times cheaper, comparable only with itself. Two more numbers on the same
# features (Kynkäänniemi et al. 2019): **precision**, the share of samples that fall near some real
# image (fidelity), and **recall**, the share of real images that some sample comes near (coverage).
#
# All three depend on the number of images N (FID and FD_clf are biased upwards at small N), so the
# samples are compared with as many *real* images, whose score is the floor a perfect model would reach:

# %%
n_fd, fd_steps = config.pick(50, 500), config.pick(6, 25)  # full mode: about 100 s on 2 CPU cores
clf_features = ClassifierFeatures(device=device)
train_stats = reference_statistics(clf_features, "train")  # all training images of the source, computed once
fd_pipeline = pipeline if trained else Pipeline(sampler_model, process)
fd_sets = {f"ddpm-small, DDIM {fd_steps}": sample_images(fd_pipeline, n_fd, num_steps=fd_steps, seed=2).images[0],
           "real test images": to_uint8(load_cifar10("test", limit=n_fd, verbose=False).images)}
real_train = real_features(clf_features, n_fd, "train")  # [n_fd, 128], for precision and recall
for label, images in fd_sets.items():
    f = extract_features(clf_features, images, progress=False)  # [n_fd, 128]
    pr = precision_recall(real_train, f)
    print(f"{label:22s} FD_clf {frechet_distance(FeatureStats.of(f), train_stats):6.2f}   precision {pr.precision:.2f}"
          f"   recall {pr.recall:.2f}   ({n_fd} images vs {train_stats.n:,} training images)")

# %% [markdown]
# The real test images set the floor at this N; the samples sit well above it. Precision says how
# many samples look like *some* training image to the classifier, recall how much of the training set
# the samples reach. In the runs we made (fast mode: 100 images, with the bundled sample and with the
# full training set; full mode: 500 images, FD_clf 4.06 against 0.24 for real test images) the samples'
# precision was as high as the real images' and their recall clearly lower (about 0.6 against 0.86-0.9):
# blurred samples land near real images, but they do not reach as much of the data's variety. The shipped model's Inception FID over 2,000 samples is in the README's
# results table, beside the same figure for 2,000 real test images (`data/results.jsonl` holds every run).

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
# would show in the pixel std printed for the samples before. Better ODE solvers (Heun, DPM-Solver) and paths
# straightened by reflow (chapter 5, which also shows that this ODE is the one a rectified flow learns) are the
# cures.
#
# ## 10. Watching the model denoise
#
# The DDPM run above kept its whole trajectory: the current $x_t$ and the model's guess
# $\hat x_0$ at every step. A network trained with a squared loss predicts the *average* of
# everything that could have produced $x_t$ (the posterior mean), so at high noise expect a blurry
# guess that sharpens as $t$ falls.

# %%
wanted_t = [999, 800, 600, 400, 300, 200, 100, 0]
# the step whose t is closest to each wanted t (all of them are there with 1000 steps; fast mode's 100 come near)
index = [int((ddpm.timesteps - t_).abs().argmin()) for t_ in wanted_t]
strip_t = [int(ddpm.timesteps[i]) for i in index]
rows, labels = [], []
for i in range(min(2, n_samples)):
    rows += [ddpm.trajectory[index, i], ddpm.x0_preds[index, i]]
    labels += [f"$x_t$ (sample {i + 1})", rf"$\hat x_0$ (sample {i + 1})"]
show_images(torch.cat(rows), nrow=len(strip_t), row_labels=labels, col_labels=[f"t = {t_}" for t_ in strip_t],
            scale=1.15, title=r"DDPM sampling: the noisy $x_t$ and the predicted $\hat x_0$ along the way")
plt.show()

# %% [markdown]
# ### What do the skip connections carry?
#
# Every up block of the UNet reads two inputs, concatenated along the channels: the features coming up
# from the coarser level, and the **skip connection** from the down path at its own resolution
# (section 5). To see what each resolution's skips contribute, replace them with zeros, only at
# sampling time and only in the trained model's up path, and ask it for $\hat x_0$ from the same $x_t$. The
# hooks below do this without touching the model's code: forward hooks note the width of every skip as
# the down path makes it, and pre-hooks on the up blocks zero those channels of their input.

# %%
@contextlib.contextmanager
def skips_zeroed(unet, resolution):
    """Within the block, unet's up path receives zeros instead of the skip connections at `resolution` (pixels)."""
    widths = []  # channels of each skip, in the order the down path makes them (the up path pops them)

    def remember(module, args, out):
        widths.append(out.shape[1])

    def zero_skip(module, args):
        h, *rest = args  # h = [features from below, skip]: [B, C_up + C_skip, r, r]
        c = widths.pop()
        if h.shape[-1] == resolution:
            h = torch.cat([h[:, :-c], torch.zeros_like(h[:, -c:])], dim=1)
        return (h, *rest)

    handles = [m.register_forward_hook(remember) for m in [unet.conv_in, *unet.down]]
    handles += [m.register_forward_pre_hook(zero_skip) for m in unet.up]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


skip_ckpt = config.checkpoint_dir() / "ddpm-small.safetensors"
if skip_ckpt.exists():
    skip_pipeline = Pipeline.from_checkpoint(skip_ckpt, device=device)  # the trained UNet and its schedule
    unet, skip_schedule = skip_pipeline.denoiser.eval(), skip_pipeline.process.noise_schedule
    t_skip = torch.full((4,), 200, device=device)  # moderate noise
    x0_skip = x0_demo[:4].to(device)
    eps_skip = torch.randn(x0_skip.shape, generator=torch.Generator().manual_seed(2)).to(device)
    xt_skip = skip_schedule.q_sample(x0_skip, t_skip, eps_skip)
    ab_skip = gather(skip_schedule.alpha_bar, t_skip)
    variants, rows = [None, 32, 16, 8, 4], []
    print(f"t = 200 (alpha_bar = {skip_schedule.alpha_bar[200].item():.2f}): the loss ||eps - eps_hat||^2 and "
          "the error of x0_hat, per variant (4 images)")
    with torch.no_grad():
        for res in variants:
            with skips_zeroed(unet, res) if res else contextlib.nullcontext():
                eps_hat = unet(xt_skip, t_skip)
            x0_hat = eps_to_x0(eps_hat, xt_skip, ab_skip).clamp(-1, 1)
            rows.append(x0_hat.cpu())
            label = "intact" if res is None else f"no {res}x{res} skips"
            print(f"{label:16s} loss {(eps_hat - eps_skip).square().mean().item():.3f}   "
                  f"mean |x0_hat - x0| {(x0_hat - x0_skip).abs().mean().item():.3f}")
    grid = torch.stack([x0_skip.cpu(), xt_skip.clamp(-1, 1).cpu(), *rows], dim=1).flatten(0, 1)
    show_images(grid, nrow=2 + len(variants), scale=1.1,
                col_labels=["$x_0$", "$x_t$\n(t = 200)", "$\\hat x_0$\nintact"]
                + [f"no {r}x{r}\nskips" for r in variants[1:]],
                title=r"$\hat x_0$ from the trained ddpm-small with the skip connections of one resolution zeroed")
    plt.show()
else:
    print(f"{skip_ckpt} is missing: this experiment needs the trained model (see section 7)")

# %% [markdown]
# The full-resolution skips carry what the network needs to say *which* noise was added, pixel by
# pixel: without them its $\hat\epsilon$ misses most of the noise (the loss jumps), so $\hat x_0$ keeps
# it and looks like $x_t$. Without the 16×16 skips the noise is mostly removed but medium-scale
# blotches remain; without the 8×8 or 4×4 ones almost nothing changes, because the path through the
# bottleneck carries the coarse content anyway. The skips are how a UNet hands fine detail around its
# bottleneck, and for a denoiser fine detail *is* the job. (Zeroing is a blunt probe: the up blocks
# never saw zeros in training, so the numbers measure dependence, not a clean split of roles.)

# %% [markdown]
# ### Exercise 5: one DDIM step
#
# Write one deterministic DDIM step from level $t$ to the earlier level $t_\text{prev}$:
# first $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$, then
# $x_{t_\text{prev}} = \sqrt{\bar\alpha_{t_\text{prev}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t_\text{prev}}}\,\hat\epsilon$.
# `alpha_bar_t` and `alpha_bar_prev` are 0-d tensors (single numbers).

# %% tags=["exercise"]
def my_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    """One DDIM step (eta = 0): x_t [B, C, H, W] at level alpha_bar_t -> x at level alpha_bar_prev."""
    raise NotImplementedError  # your code here


check_ddim_step(my_ddim_step);


# %% tags=["solution"] jupyter={"source_hidden": true}
def my_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    """One DDIM step (eta = 0): x_t [B, C, H, W] at level alpha_bar_t -> x at level alpha_bar_prev."""
    x0_hat = my_eps_to_x0(eps_hat, x_t, alpha_bar_t)
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat


assert check_ddim_step(my_ddim_step)

# %% [markdown]
# With your step, a whole 10-step DDIM sampler is a short loop; it reproduces the library's
# `ddim_sample` (without clipping, which the loop leaves out) on the model of section 7:

# %%
if solved(check_ddim_step, my_ddim_step):
    taus = ddim_timesteps(schedule.T, 10)  # [999, 888, ..., 0]
    x = x_T.to(device)
    with torch.no_grad():
        for i, t_ in enumerate(taus):
            eps_hat = sampler_model(x, torch.full((len(x),), t_, device=device))
            ab_prev = schedule.alpha_bar[taus[i + 1]] if i + 1 < len(taus) else torch.tensor(1.0)  # 1: the data
            x = my_ddim_step(x, eps_hat, schedule.alpha_bar[t_].to(device), ab_prev.to(device))
    library = ddim_sample(sampler_model, schedule, x_T=x_T, num_steps=10, clip_x0=False, progress=False,
                          device=device)
    gap = (x - library).abs().max().item() / library.abs().max().item()
    print(f"your 10-step sampler vs ddim_sample: max relative difference {gap:.1e}")
    assert gap < 1e-3
else:
    print("my_ddim_step is not solved yet (exercise above): this cell compares your sampler with ddim_sample "
          "once it is")

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
