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
# # 5 · Rectified flow: one ODE in two coordinates, reflow, few-step sampling
#
# A diffusion model samples by integrating an ODE from noise to data (chapter 1's DDIM is one way to do it).
# **Rectified flow** (Liu, Gong & Liu 2022; the same objective is flow matching with straight paths, Lipman et
# al. 2023, and it is what Stable Diffusion 3 and Flux train) asks the network for the velocity along
# *straight* lines between data and noise. It is often said that diffusion's paths are curved and a flow's
# straight. For Gaussian noise that is not so, and this chapter measures why:
#
# * DDPM's probability-flow ODE, written in the flow's coordinates, **is** the 1-rectified flow's ODE: a
#   perfect diffusion model and a perfect flow carry each noise point to the same sample (section 2; Gao et al.
#   2025, "Diffusion meets flow matching: two sides of the same coin"). Trained models come close: from the same
#   noise, the course's diffusion model and its flows draw nearly the same picture.
# * Each *training* line is straight, but the lines cross, so the ODE both models learn bends (section 3).
#   **Reflow**, training on the flow's own pairs, is what straightens it, until one Euler step from noise lands
#   on the data (section 4).
# * What a flow changes is the parameterisation (a velocity, not $\epsilon$), the time grid and the times it
#   trains on. Those, not the path's shape, decide how the first models do in a few steps (sections 5 and 6).
#
# In this chapter you will
#
# * train a diffusion model and a rectified flow on the same 2-D data and draw their paths from the same noise;
# * derive the change of variables that turns one ODE into the other, and check it with the exact fields of a
#   Gaussian mixture;
# * see why the flow's paths still bend (crossing pairs), watch the ODE keep the marginals of the straight lines,
#   and measure straightness;
# * write the rectified-flow loss, an Euler step and the reflow yourself;
# * separate parameterisation and time grid from path shape in few-step sampling, and see SD3's and Flux's
#   choices of time (logit-normal training times, the shifted sampling grid);
# * explore all of it with the **trajectory explorer**;
# * go to images: chapter 4's latent model trained as a rectified flow and then reflowed, sampled at 1 to 100
#   network evaluations beside the latent diffusion model's DDIM from the same noise.
#
# **Direction of time.** Here, as in SD3 and everywhere in this course, the data sit at $t = 0$ and the
# noise at $t = 1$; Liu et al. write it the other way round. The code is in `course_lib.processes`
# (`RectifiedFlowProcess`), `course_lib.flow`, `course_lib.reflow`, `course_lib.toy` and `course_lib.widgets`.

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# 1. write the rectified-flow interpolation $x_t = (1 - t)\,x_0 + t\,\epsilon$, its velocity
#    $v = \epsilon - x_0$ and the loss, and take an Euler step from $t$ to $t_\text{next} < t$;
# 2. show that for Gaussian noise DDPM's probability-flow ODE and the 1-rectified flow's are one ODE in two
#    coordinates, and explain why both bend (independent pairs cross) while the marginals stay those of the lines;
# 3. define straightness, say why a straight path makes Euler exact, and read W2 against the number of
#    network evaluations;
# 4. write the reflow, say what it costs, and why `rf2-small` sampled at $w = 1$ is guidance distillation;
# 5. separate what buys few-step quality (parameterisation, time grid, reflow) from path shape, and explain SD3's
#    logit-normal times and SD3's and Flux's time shift as signal-to-noise choices;
# 6. compare DDIM, the 1-rectified flow and the 2-rectified flow at 1 to 100 NFE on images, from the measured
#    FID-2k and FD_clf, with what each cost.
#
# **Before it you need**
#
# * Chapter 1's DDIM (an ODE sampler) and chapter 4's latent model (`vae-small`, `ldm-small`).
# * Euler's method for an ODE, the idea: follow the slope for a short step.

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (AMD EPYC (AVX512, native bf16)), 2026-12-07; the code cells' seconds per section, without the
# kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 5 s | 6 s |
# | 1. Two models, one data set | 4 s | 13 s |
# | 2. One ODE in two coordinates | < 1 s | < 1 s |
# | 3. Why straight lines make curved paths | 2 s | 6 s |
# | 4. Reflow: straighten by re-pairing | 8 s | 46 s |
# | 5. What buys few steps | 3 s | 11 s |
# | 6. SD3's and Flux's time | 3 s | 9 s |
# | 7. The trajectory explorer | 7 s | 6 s |
# | 8. Images: a rectified flow in chapter 4's latent space | 16 s | 1 min 55 s |
# | **the whole notebook** | **48 s** | **3 min 32 s** |
#
# The longest cell in full mode takes 63 s.

# %%
import math
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib import config
from course_lib.exercises import check_euler_step, check_reflow, check_rf_loss
from course_lib.flow import ddpm_path_as_flow, flow_sample, flow_time_grid, path_chord_ratio, straightness
from course_lib.metrics import wasserstein2
from course_lib.processes import DDPMProcess, RectifiedFlowProcess
from course_lib.reflow import reflow_loss, reflow_pairs
from course_lib.toy import GaussianMixture, ToyMLP, eight_gaussians, exact_velocity, toy_batches
from course_lib.trainer import TrainConfig, fit
from course_lib.widgets import trajectory_explorer

config.setup_cpu_speedups()
config.seed_everything(0)
device = config.get_device()
FAST = config.fast_mode()
print(f"device: {device} · fast mode: {FAST}")

# %% [markdown]
# ## 1. Two models, one data set
#
# The data: eight Gaussians on a circle; the source: standard normal noise. Two small MLPs learn them.
#
# * **DDPM** (chapter 1): $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon$, the network
#   predicts $\epsilon$.
# * **Rectified flow**: the straight line $x_t = (1 - t)\,x_0 + t\,\epsilon$, $t \sim U[0, 1]$, and the network
#   predicts its velocity,
#
# $$L_\text{RF} = \mathbb E_{x_0, \epsilon, t}\,\big\| v_\theta(x_t, t) - (\epsilon - x_0) \big\|^2 .$$
#
# Both go through the course's one training loop (`fit`), the process deciding what is regressed.

# %%
data = eight_gaussians()  # radius 2.5, std 0.2
noise_source = GaussianMixture.standard_normal()
ddpm, rf = DDPMProcess("linear", 1000), RectifiedFlowProcess()
toy_cfg = TrainConfig(max_steps=config.pick(1000, 3000), batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99,
                      checkpoint_minutes=None, progress=False)
batches = toy_batches(lambda n, g: data.sample(n, g), toy_cfg.batch_size)


def train_toy(loss_fn, batches=batches, cfg=toy_cfg):
    """A fresh ToyMLP trained with ``loss_fn(model, batch)``; returns its EMA copy and the run's seconds."""
    config.seed_everything(0)
    run = fit(ToyMLP(), loss_fn, batches, cfg, device="cpu")
    return run.ema.eval(), run.seconds


start = time.perf_counter()
eps_model, ddpm_seconds = train_toy(lambda m, b: ddpm.loss(m, b[0]))
flow_1, rf_seconds = train_toy(lambda m, b: rf.loss(m, b[0]))
print(f"{toy_cfg.max_steps} steps of {toy_cfg.batch_size} points each: DDPM {ddpm_seconds:.0f} s, rectified flow "
      f"{rf_seconds:.0f} s")
velocity = {"DDPM (probability-flow ODE)": ddpm.velocity_field(eps_model), "1-rectified flow": rf.velocity_field(flow_1)}

# %% [markdown]
# **The same axis for both.** DDPM's $x_t = \alpha\,x_0 + \sigma\,\epsilon$ divided by $\alpha + \sigma$ is a
# point of the straight line, $(1 - s)\,x_0 + s\,\epsilon$ with $s = \sigma / (\alpha + \sigma)$
# (`ddpm_path_as_flow`), so DDIM's paths can be drawn in the flow's coordinates. And the DDPM model's
# probability-flow ODE is then a velocity field on the same axis, $v = \hat\epsilon - \hat x_0$
# (`ddpm_flow_velocity`): Euler's method on it takes exactly DDIM's steps. Paths from the same noise:

# %%
test_points = data.sample(config.pick(1000, 2000), seed=5)  # the reference for every W2 below
z = torch.randn(config.pick(300, 500), 2, generator=torch.Generator().manual_seed(1))  # shared starting noise
n_steps = 64
paths = {name: flow_sample(v, x_T=z, num_steps=n_steps, return_trajectory=True) for name, v in velocity.items()}
ddim = ddpm.sample(eps_model, x_T=z, num_steps=n_steps, return_trajectory=True, clip_x0=False)
ddim_path, ddim_s = ddpm_path_as_flow(ddim, ddpm.noise_schedule)


def draw_paths(ax, trajectory, title, lines=80):
    """Paths [S + 1, B, 2] from noise (light) to data (dark) over the data (grey)."""
    ax.scatter(test_points[:, 0], test_points[:, 1], s=2, color="0.82", zorder=0)
    for b in range(min(lines, trajectory.shape[1])):
        ax.plot(trajectory[:, b, 0], trajectory[:, b, 1], lw=0.7, color=plt.cm.viridis(b / lines), alpha=0.8)
    ax.scatter(trajectory[-1, :lines, 0], trajectory[-1, :lines, 1], s=5, color="black", zorder=3)
    ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", xticks=[], yticks=[], title=title)


fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
draw_paths(axes[0], ddim_path.float(), f"DDIM ({n_steps} steps), in flow coordinates")
draw_paths(axes[1], paths["DDPM (probability-flow ODE)"].trajectory, f"DDPM's ODE, Euler {n_steps} steps")
draw_paths(axes[2], paths["1-rectified flow"].trajectory, f"1-rectified flow, Euler {n_steps} steps")
fig.suptitle("the same 80 starting points (black dots: where they end)", fontsize=10)
plt.show()
gap = float((ddim_path[-1].float() - paths["DDPM (probability-flow ODE)"].sample).norm(dim=1).mean())
print(f"DDIM's samples and Euler's on DDPM's ODE differ by {gap:.3f} on average (DDIM steps on integer timesteps, "
      "Euler on a uniform grid in s)")

# %% [markdown]
# Both bend, and alike: the paths first head for the centre of the data (at high noise the best guess of $x_0$
# is the mean), then turn towards a mode. Two different networks, trained with different losses, even send most
# starting points to the same mode:

# %%
same_noise = float((ddim_path[-1].float() - paths["1-rectified flow"].sample).norm(dim=1).mean())
other_noise = float((ddim_path[-1].float() - paths["1-rectified flow"].sample.roll(1, 0)).norm(dim=1).mean())
print(f"DDIM (eps model) against the 1-rectified flow, {n_steps} steps each: mean distance between the samples "
      f"from the same noise {same_noise:.2f}, from different noise {other_noise:.2f}")

# %% [markdown]
# That is no accident. The next section shows that the two models learn one and the same ODE.
#
# ## 2. One ODE in two coordinates
#
# Write DDPM's state as $x = \alpha\,x_0 + \sigma\,\epsilon$ ($\alpha = \sqrt{\bar\alpha_t}$,
# $\sigma = \sqrt{1 - \bar\alpha_t}$) and change variables to
#
# $$y = \frac{x}{\alpha + \sigma}, \qquad s = \frac{\sigma}{\alpha + \sigma}, \qquad\text{so that}\qquad
#   y = (1 - s)\,x_0 + s\,\epsilon ,$$
#
# a point of the flow's straight line at time $s$, with the same ratio $\alpha/\sigma = (1 - s)/s$, hence the same
# signal-to-noise ratio $\alpha^2/\sigma^2$
# (`ddpm_path_as_flow`). DDPM's probability-flow ODE, which DDIM integrates (Song et al. 2021, eq. 14), reads
# $\mathrm d\bar x = \hat\epsilon\,\mathrm d\rho$ in $\bar x = x/\alpha$ and $\rho = \sigma/\alpha$, with
# $\hat\epsilon = \mathbb E[\epsilon \mid x]$. Since $y = \bar x/(1 + \rho)$ and $s = \rho/(1 + \rho)$,
#
# $$\frac{\mathrm dy}{\mathrm ds} = (1 + \rho)^2\Big(\frac{\hat\epsilon}{1 + \rho} - \frac{\bar x}{(1 + \rho)^2}\Big)
#   = \hat\epsilon + \rho\,\hat\epsilon - \bar x = \hat\epsilon - \hat x_0
#   = \mathbb E[\,\epsilon - x_0 \mid y_s = y\,],$$
#
# using $\bar x = \hat x_0 + \rho\,\hat\epsilon$ (the conditional mean of $x/\alpha = x_0 + \rho\,\epsilon$ given $x$).
# Conditioning on $x$ or on $y$ is the same, and $y_s$ is distributed as the flow's $x_s$: the right-hand side
# is exactly the velocity a perfect 1-rectified flow learns (section 3 writes it $v^*$). **For Gaussian noise, a
# perfect DDPM model and a perfect 1-rectified flow define one ODE** (Gao et al. 2025 make the same point; the
# two differ in what the network outputs, the time grid and the weighting of the loss over times, not in the
# paths).
#
# Checked numerically with the *exact* fields of the eight Gaussians: DDPM's best noise prediction
# $\hat\epsilon(x, t)$ (Tweedie's formula on the noised mixture, `GaussianMixture.eps_prediction`) integrated by
# DDIM on DDPM's own timesteps, against the exact flow velocity (`exact_velocity`) integrated by Euler on a
# grid even in $s$, from the same points:

# %%
schedule = ddpm.noise_schedule
exact = lambda y, t: exact_velocity(data, noise_source, y, t)  # noqa: E731  the perfect 1-rectified flow


def exact_eps(x, t):
    """The perfect DDPM model: E[eps | x_t] of the noised mixture at integer DDPM steps t [B]."""
    return data.eps_prediction(x, schedule.alpha_bar[t.long().cpu()].to(x.dtype))


alpha_T, sigma_T = float(schedule.alpha_bar[-1]) ** 0.5, float(1 - schedule.alpha_bar[-1]) ** 0.5
s_T = sigma_T / (alpha_T + sigma_T)  # DDPM's last step is not pure noise: s_T = 0.9937
fine = config.pick(250, 1000)
# the flow from t = 1 to s_T in 10 small steps, then `fine` steps even in s; DDIM starts where the flow is at s_T
grid = torch.cat([torch.linspace(1.0, s_T, 11, dtype=torch.float64),
                  torch.linspace(s_T, 0.0, fine + 1, dtype=torch.float64)[1:]])
flow_exact = flow_sample(exact, x_T=z, times=grid, return_trajectory=True)
ddim_exact = ddpm.sample(exact_eps, x_T=(alpha_T + sigma_T) * flow_exact.trajectory[10], num_steps=fine,
                         return_trajectory=True, clip_x0=False)
ddim_exact_path, ddim_exact_s = ddpm_path_as_flow(ddim_exact, schedule)

fig, ax = plt.subplots(figsize=(4.6, 4.4), layout="constrained")
ax.scatter(test_points[:, 0], test_points[:, 1], s=2, color="0.82", zorder=0)
for b in range(40):
    ax.plot(ddim_exact_path[:, b, 0], ddim_exact_path[:, b, 1], lw=2.2, color="tab:blue", alpha=0.35)
    ax.plot(flow_exact.trajectory[:, b, 0], flow_exact.trajectory[:, b, 1], lw=0.7, color="black", ls="--")
ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", xticks=[], yticks=[],
       title="exact DDPM ODE (DDIM, blue) and exact\n1-rectified flow (Euler, dashed): 40 paths", )
ax.title.set_fontsize(9)
plt.show()
end_gap = (ddim_exact_path[-1].float() - flow_exact.sample).norm(dim=1)
print(f"{fine} steps each: the two samples from the same noise differ by {float(end_gap.mean()):.4f} on average "
      f"(largest {float(end_gap.max()):.4f}); samples from different noise by "
      f"{float((flow_exact.sample - flow_exact.sample.roll(1, 0)).norm(dim=1).mean()):.2f}")
for s_mid in (0.75, 0.5, 0.25):
    i = int((ddim_exact_s - s_mid).abs().argmin())  # the DDIM state nearest s_mid, and the flow's nearest to it
    j = int((flow_exact.times - ddim_exact_s[i]).abs().argmin())
    print(f"  on the way, at s = {s_mid}: {float((ddim_exact_path[i].float() - flow_exact.trajectory[j]).norm(dim=1).mean()):.4f}")

# %% [markdown]
# The paths lie on top of each other; what is left is the two grids' discretisation error, and it shrinks as
# `fine` grows. So "diffusion's paths are curved, a flow's are straight" is wrong for the ODEs these models
# learn. What a rectified flow *does* change:
#
# * **what the network outputs**: $v$ rather than $\epsilon$. At pure noise $\hat x_0 = (x - \sigma\hat\epsilon)/\alpha$
#   divides the network's error by $\alpha_T = \sqrt{\bar\alpha_T} \approx 0.006$; a velocity model's
#   $\hat x_0 = x - t\,v$ does not divide at all (section 5 measures what that does to one-step samples);
# * **the time grid and the times trained on** (sections 5 and 6);
# * nothing about the paths, until **reflow** changes the pairs (section 4).
#
# Section 8 shows the same on images: the course's latent diffusion model and its rectified flows, trained
# separately, draw nearly the same picture from the same noise.
#
# ## 3. Why straight lines make curved paths
#
# The training pairs $(x_0, \epsilon)$ are drawn **independently**. Their lines cross: through one point
# $x_t$ pass lines to several modes, and the network can only learn their average direction,
#
# $$v^*(x, t) = \mathbb E\,[\,\epsilon - x_0 \mid x_t = x\,],$$
#
# which turns as $t$ moves. For Gaussian-mixture data this average has a closed form
# (`toy.exact_velocity`), so we can draw the paths a *perfect* network would follow and tell "curved
# because of the coupling" from "curved because the network is imperfect":

# %%
pairs_x0, pairs_eps = data.sample(40, seed=2), torch.randn(40, 2, generator=torch.Generator().manual_seed(3))
exact_paths = flow_sample(exact, x_T=z, num_steps=n_steps, return_trajectory=True)
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
ax = axes[0]
ax.scatter(test_points[:, 0], test_points[:, 1], s=2, color="0.82")
for a, b in zip(pairs_x0, pairs_eps):
    ax.plot([a[0], b[0]], [a[1], b[1]], lw=0.8, color="tab:blue", alpha=0.7)
ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", xticks=[], yticks=[],
       title="training pairs: independent, so their lines cross")
draw_paths(axes[1], exact_paths.trajectory, "the exact flow v* (a perfect network)")
draw_paths(axes[2], paths["1-rectified flow"].trajectory, "the learned 1-rectified flow")
plt.show()

measures = {"DDIM (DDPM, in flow coordinates)": (ddim_path, ddim_s),
            **{name: (p.trajectory, p.times) for name, p in paths.items()},
            "exact 1-rectified flow v*": (exact_paths.trajectory, exact_paths.times)}
print(f"{'':36s} {'straightness':>12s} {'path/chord':>11s}   ({n_steps} steps, {len(z)} paths)")
for name, (traj, times) in measures.items():
    print(f"{name:36s} {float(straightness(traj, times)):12.4f} {float(path_chord_ratio(traj)):11.3f}")

# %% [markdown]
# **Straightness** (Liu et al. 2022, eq. 5, normalised here by the squared chord),
# $S = \int_0^1 \mathbb E\,\|(X_1 - X_0) - v(X_t, t)\|^2 dt \,/\, \mathbb E\|X_1 - X_0\|^2$, is 0 exactly when
# every path is a straight line travelled at constant speed; the path/chord ratio is 1 then. The exact flow
# is not straight either: its curvature is the coupling's. The learned flow is close to it, so most of its
# curvature is not the network's fault; and by section 2 the DDPM model learns the same curved field. To
# straighten the paths, change the coupling.
#
# **Why straight means few steps.** If $S = 0$, the velocity along each path is constant and equal to its chord,
# $v(X_t, t) = X_1 - X_0$, so one Euler step from the noise, $X_1 - 1\cdot v(X_1, 1) = X_0$, lands exactly on the
# path's end, and so does every step of any grid: Euler's error is the change of $v$ along the path, which is
# what $S$ measures (Liu et al. 2022, Sec. 2.1).
#
# **The marginals stay those of the lines.** The ODE does not follow the training lines, yet at every time its
# points $Z_t$ are distributed exactly as the lines' points $X_t = (1 - t)\,x_0 + t\,\epsilon$ (Liu et al.,
# Theorem 3.3: $v^*$ satisfies the same continuity equation as the lines' random path). That is *why* the ODE
# started from noise ends on the data, and why a flow's own (noise, sample) pairs are a valid coupling of noise
# and data for reflow. Measured: integrate the exact and the learned velocity from fresh noise, stop at time $t$,
# and compare the points with fresh points of the lines, against two independent draws of the lines:

# %%
n_marg = config.pick(600, 2000)
z_marg = torch.randn(n_marg, 2, generator=torch.Generator().manual_seed(31))
marg_paths = {"exact v*": flow_sample(exact, x_T=z_marg, num_steps=64, return_trajectory=True),
              "learned 1-RF": flow_sample(velocity["1-rectified flow"], x_T=z_marg, num_steps=64,
                                          return_trajectory=True)}


def line_points(t, seed):
    """n_marg points X_t = (1 - t) x_0 + t eps of the training lines, x_0 and eps independent."""
    g = torch.Generator().manual_seed(seed)
    return (1 - t) * data.sample(n_marg, g) + t * torch.randn(n_marg, 2, generator=g)


print(f"W2 at time t, {n_marg} points each:   ODE (exact) vs lines   ODE (learned) vs lines   lines vs lines")
for k, t_m in enumerate((0.75, 0.5, 0.25)):
    i = round((1 - t_m) * 64)  # the Euler grid's index of time t_m
    lines_a, lines_b = line_points(t_m, 40 + k), line_points(t_m, 50 + k)
    print(f"  t = {t_m:4}: {wasserstein2(marg_paths['exact v*'].trajectory[i], lines_a):30.3f} "
          f"{wasserstein2(marg_paths['learned 1-RF'].trajectory[i], lines_a):24.3f} {wasserstein2(lines_b, lines_a):16.3f}")
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
lines_q, ode_q = line_points(0.25, 42), marg_paths["exact v*"].trajectory[48]  # t = 0.25: the modes show
for ax, pts, title in [(axes[0], lines_q, "the lines' points X_t at t = 0.25"),
                       (axes[1], ode_q, "the ODE's points Z_t at t = 0.25 (exact v*)")]:
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
    ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xticks=[], yticks=[], title=title)
    ax.title.set_fontsize(9)
angle = lambda p: torch.atan2(p[:, 1], p[:, 0])  # noqa: E731
axes[2].hist(angle(lines_q), bins=48, range=(-math.pi, math.pi), density=True, histtype="step", lw=1.5,
             label="lines X_t")
axes[2].hist(angle(ode_q), bins=48, range=(-math.pi, math.pi), density=True, histtype="step", lw=1.5,
             label="ODE Z_t (exact v*)")
axes[2].set(xlabel="angle of the point (radians)", ylabel="density", title="their angles: the same eight modes")
axes[2].title.set_fontsize(9)
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# The ODE's points are about as close to the lines' points as two draws of the lines are to each other (the
# exact field up to Euler's error, the learned one a little further), although no single path follows a line.
#
# Note the two DDPM rows: the same ODE, two grids. DDIM's 64 steps are evenly spaced in the DDPM timestep,
# which puts many of them at high noise (its first step only moves $s$ from 0.9937 to 0.9926), where the
# DDPM velocity $\hat\epsilon - \hat x_0$ changes fastest ($\hat x_0$ divides by $\sqrt{\bar\alpha} \approx 0.006$
# at the start). Euler on a grid even in $s$ takes big steps there, and its polyline is measured as more
# curved: straightness is measured on the path a *solver* draws, grid included.
#
# ### Exercise: the loss and one step
#
# Write the rectified-flow loss for given $t$ and noise, and one Euler step of the sampling ODE
# $dx/dt = v(x, t)$ from $t$ to $t_\text{next} < t$:
#
# $$x_{t} = (1 - t)\,x_0 + t\,\epsilon, \qquad L = \operatorname{mean}\big(\epsilon - x_0 - v_\theta(x_t, t)\big)^2,
#   \qquad x_\text{next} = x + (t_\text{next} - t)\, v(x, t).$$
#
# `t` is a tensor `[B]` in the loss (one time per example) and a float in the step.

# %% tags=["exercise"]
def rf_loss(model, x0, noise, t):
    """The rectified-flow loss: a 0-d tensor."""
    raise NotImplementedError  # your code here


def euler_step(v, x, t, t_next):
    """x + (t_next - t) v(x, t)."""
    raise NotImplementedError  # your code here


check_rf_loss(rf_loss)
check_euler_step(euler_step);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def rf_loss(model, x0, noise, t):
    """The rectified-flow loss: a 0-d tensor."""
    tb = t.reshape(-1, *([1] * (x0.ndim - 1)))  # [B, 1, 1, 1]: one time per example
    x_t = (1 - tb) * x0 + tb * noise  # the straight line, data at t = 0
    return ((noise - x0) - model(x_t, t)).square().mean()


def euler_step(v, x, t, t_next):
    """x + (t_next - t) v(x, t)."""
    return x + (t_next - t) * v(x, t)  # t_next < t: a negative step, from noise towards data


assert check_rf_loss(rf_loss) and check_euler_step(euler_step)

# %% [markdown]
# ## 4. Reflow: straighten by re-pairing
#
# The trained flow's ODE maps every noise point to *one* sample, and its paths never cross. Train a new
# flow on those pairs $(x_0, x_1) = (\mathrm{ODE}(x_1), x_1)$ instead of independent ones: the lines no
# longer cross, so there is nothing to average, and the new flow's paths are straighter (Liu et al.,
# Sec. 2.2; their Sec. 3 shows that rectifying never increases a convex transport cost, and that over $K$
# rounds of reflow the straightest flow has a straightness of order $1/K$). That is **reflow**; the result is the 2-rectified flow, and the
# procedure can be repeated. The pairs are simulated accurately (Heun, 64 steps), since the new flow learns them as given.
#
# ### Exercise: the reflow
#
# Write the coupling yourself: given a trained flow's velocity $v(x, t)$ and noise points $x_1$, return the pairs
# $(x_0, x_1)$ with $x_0$ the endpoint of the ODE $\mathrm dx/\mathrm dt = v(x, t)$ from $t = 1$ to $t = 0$ (Euler,
# `num_steps` steps; `t` is given to `velocity` as one time per point, shape `[N]`). The check hands your
# function the *exact* velocity of a 1-rectified flow to the eight Gaussians, compares the pairs with the library's,
# then trains a small network on your pairs for a few seconds and measures whether its paths came out straighter
# and its one-step samples closer to the data.

# %% tags=["exercise"]
def reflow_pairs_of(velocity, noise, num_steps):
    """(x0, x1): x1 = noise [N, 2], x0 = where the ODE dx/dt = velocity(x, t) carries it from t = 1 to t = 0."""
    raise NotImplementedError  # your code here


check_reflow(reflow_pairs_of);


# %% [markdown] tags=["solution"]
# A solution (collapsed; expand it once you have tried):

# %% tags=["solution"] jupyter={"source_hidden": true}
def reflow_pairs_of(velocity, noise, num_steps):
    """(x0, x1): x1 = noise [N, 2], x0 = where the ODE dx/dt = velocity(x, t) carries it from t = 1 to t = 0."""
    x, times = noise, torch.linspace(1.0, 0.0, num_steps + 1)
    for t, t_next in zip(times[:-1], times[1:]):  # Euler: follow the slope for one (negative) step at a time
        x = x + (t_next - t) * velocity(x, torch.full((len(x),), float(t)))
    return x, noise  # pair i: noise i and its own endpoint, in order


assert check_reflow(reflow_pairs_of)

# %% [markdown]
# The rounds below use the library's version of the same function (`course_lib.reflow.reflow_pairs`, with Heun's
# method and 64 steps), twice: the 2-rectified flow from the 1-rectified flow's pairs, the 3-rectified flow from
# the 2-rectified flow's.

# %%
n_pairs = config.pick(4000, 20000)
reflow_cfg = replace(toy_cfg, max_steps=config.pick(600, 3000))  # fast mode: straight pairs are quick to learn
flows = {1: flow_1}
reflow_seconds = {}
for k in (2, 3):
    start = time.perf_counter()
    source = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(100 + k))
    pairs = reflow_pairs(flows[k - 1], rf, source, num_steps=64, sampler="heun")


    def pair_batches(step, pairs=pairs):
        index = torch.randint(0, len(pairs), (toy_cfg.batch_size,), generator=torch.Generator().manual_seed(step))
        return pairs.batch(index)  # (x0, x1)


    flows[k], _ = train_toy(lambda m, b: reflow_loss(m, rf, *b), pair_batches, reflow_cfg)
    reflow_seconds[k] = time.perf_counter() - start
    velocity[f"{k}-rectified flow"] = rf.velocity_field(flows[k])
print("reflow rounds (pairs + training): " + ", ".join(f"{k}-RF {s:.0f} s" for k, s in reflow_seconds.items()))

# %% [markdown]
# Quality against the number of steps, for every model: the Wasserstein-2 distance between the samples
# and held-out data points (exact optimal transport between the two point sets, with POT). Even two sets of
# real data points are not at distance 0: the grey band is the range over 8 draws of real points, as many as
# the samples. It is wide because W2 is sensitive to how many points each mode gets (moving a point to
# another mode costs far more than moving it within one), and with a few hundred points that count
# fluctuates. A curve inside or below the band is as close to the data as real points are at this sample
# size; differences there mean little.

# %%
step_counts = [1, 2, 4, 8, 16, 32, 64, 100]
w2 = {name: [wasserstein2(flow_sample(v, x_T=z, num_steps=n), test_points) for n in step_counts]
      for name, v in velocity.items()}
w2["DDIM"] = [wasserstein2(ddpm.sample(eps_model, x_T=z, num_steps=n, clip_x0=False), test_points)
              for n in step_counts]
floors = [wasserstein2(data.sample(len(z), seed=11 + k), test_points) for k in range(8)]  # real against real
straight = {}
for name, v in velocity.items():
    p = flow_sample(v, x_T=z, num_steps=n_steps, return_trajectory=True)
    straight[name] = float(straightness(p.trajectory, p.times))
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
for name, values in w2.items():
    ax.plot(step_counts, values, "o-", ms=4, label=name + (f"  (S = {straight[name]:.3f})" if name in straight else ""))
ax.axhspan(min(floors), max(floors), color="0.85", label="real data against real data (8 draws)")
ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample (NFE: Euler's or DDIM's steps)",
       ylabel="W2 to the data",
       title=f"{len(z)} samples against {len(test_points)} data points")
ax.set_xticks(step_counts)
ax.set_xticklabels([str(s) for s in step_counts])
ax.legend(fontsize=8)
plt.show()
print(f"{'':30s} {'S':>7s}   W2 at " + "  ".join(f"{n:>5d}" for n in (1, 4, 16)) + " NFE")
for name in w2:
    cols = [w2[name][step_counts.index(n)] for n in (1, 4, 16)]
    print(f"{name:30s} {straight.get(name, float('nan')):7.4f}         " + "  ".join(f"{c:5.2f}" for c in cols))

# %% [markdown]
# Reading the plot: at many steps every model reaches the band; at **one step** DDPM's ODE (and DDIM) land
# far from the data, the 1-rectified flow much closer, and the reflowed flows on it. By section 2 the first
# three integrate the same ODE, so the one-step gap between DDPM and the 1-rectified flow is not the paths'
# shape; section 5 finds what it is. Each reflow round cuts the straightness $S$, the 2-rectified flow by far
# the most, and only the reflowed flows are good in one step; a third round adds little. Reflow is not free:
# each round simulates the previous flow for every pair and trains a new network, and its samples are only as
# good as the previous flow's (it copies them, errors included).
#
# ### Mixture to mixture: the rewiring
#
# Nothing requires the source to be Gaussian noise. Take two blobs on the left as the source and two on the
# right as the data (Liu et al.'s Figure 2). Independent pairs send half of the points to the opposite blob,
# so their lines cross in the middle. A flow cannot cross itself (an ODE has one velocity per point), so the
# 1-rectified flow **rewires** the pairing: top to top, bottom to bottom, with paths that bend away from the
# crossing; reflow then straightens the rewired paths.

# %%
source_mix = GaussianMixture(torch.ones(2), [[-3.0, 2.0], [-3.0, -2.0]], 0.35)
target_mix = GaussianMixture(torch.ones(2), [[3.0, 2.0], [3.0, -2.0]], 0.35)


def mixture_batches(step):
    g = torch.Generator().manual_seed(step)
    return target_mix.sample(toy_cfg.batch_size, g), source_mix.sample(toy_cfg.batch_size, g)  # (x0, x1)


mix_cfg = replace(toy_cfg, max_steps=config.pick(500, 3000))  # fast mode: two blobs need fewer steps
mix_1, _ = train_toy(lambda m, b: reflow_loss(m, rf, *b), mixture_batches, mix_cfg)  # independent pairs: a 1-RF
mix_pairs = reflow_pairs(mix_1, rf, source_mix.sample(n_pairs, seed=21), num_steps=64, sampler="heun")
mix_2, _ = train_toy(lambda m, b: reflow_loss(m, rf, *b),
                     lambda step: mix_pairs.batch(torch.randint(0, n_pairs, (toy_cfg.batch_size,),
                                                                generator=torch.Generator().manual_seed(step))),
                     mix_cfg)
start_points = source_mix.sample(60, seed=22)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
x0_ind, x1_ind = target_mix.sample(60, seed=23), start_points
axes[0].plot(torch.stack([x1_ind[:, 0], x0_ind[:, 0]]), torch.stack([x1_ind[:, 1], x0_ind[:, 1]]), lw=0.7,
             color="tab:blue", alpha=0.7)
axes[0].set_title("independent pairs (training data of the 1-RF)", fontsize=10)
for ax, (name, model) in zip(axes[1:], [("1-rectified flow", mix_1), ("2-rectified flow", mix_2)]):
    p = rf.sample(model, x_T=start_points, num_steps=64, return_trajectory=True)
    for b in range(len(start_points)):
        ax.plot(p.trajectory[:, b, 0], p.trajectory[:, b, 1], lw=0.7, color="tab:orange" if start_points[b, 1] > 0
                else "tab:green")
    ax.set_title(f"{name}: straightness {float(straightness(p.trajectory, p.times)):.4f}", fontsize=10)
for ax in axes:
    ax.set(xlim=(-4.5, 4.5), ylim=(-3.5, 3.5), aspect="equal", xticks=[], yticks=[])
plt.show()
crossed = float(((rf.sample(mix_1, x_T=start_points, num_steps=64)[:, 1] > 0) != (start_points[:, 1] > 0)).float().mean())
print(f"share of points that end in the opposite blob: independent pairs 50 % by construction, 1-RF {crossed:.0%}")

# %% [markdown]
# ## 5. What buys few steps
#
# At one step, DDIM on the DDPM model lands far from the data and Euler on the 1-rectified flow much closer,
# though both integrate the same ODE. Two controls separate the causes:
#
# * **Parameterisation.** DDIM's first step jumps to $\hat x_0 = (x_T - \sigma_T\,\hat\epsilon)/\alpha_T$, dividing
#   the network's error in $\hat\epsilon$ by $\alpha_T = \sqrt{\bar\alpha_T} \approx 0.006$: a 1 % error becomes 1.6 data
#   units. A DDPM model that predicts $x_0$ (the same process, loss and sampler; `DDPMProcess(parameterization=
#   "x0")`) gives $\hat x_0$ directly; so does a velocity model, $\hat x_0 = x - t\,v$.
# * **Time grid.** Chapter 1's DDIM grid includes $t = 0$ (`ddim_timesteps(..., spacing="linspace")`), so $N$
#   steps spend their last evaluation where nothing is left to denoise: 2 steps are $t = 999, 0$, no better
#   than 1. The *trailing* grid (Lin et al. 2024; diffusers' `timestep_spacing="trailing"`) starts at
#   $t = T - 1$ and spaces the steps by $T/N$ without the wasted end.
#
# Without guidance each step is one network evaluation (NFE), so the columns compare equal work:

# %%
ddpm_x0 = DDPMProcess("linear", 1000, parameterization="x0")
x0_model, x0_seconds = train_toy(lambda m, b: ddpm_x0.loss(m, b[0]))  # the same MLP, steps and data as above
nfe_list = [1, 2, 4, 8, 16]
controls = {
    "DDIM, eps-prediction, linspace grid": lambda n: ddpm.sample(eps_model, x_T=z, num_steps=n, clip_x0=False),
    "DDIM, eps-prediction, trailing grid": lambda n: ddpm.sample(eps_model, x_T=z, num_steps=n, clip_x0=False,
                                                                 spacing="trailing"),
    "DDIM, x0-prediction, linspace grid": lambda n: ddpm_x0.sample(x0_model, x_T=z, num_steps=n, clip_x0=False),
    "DDIM, x0-prediction, trailing grid": lambda n: ddpm_x0.sample(x0_model, x_T=z, num_steps=n, clip_x0=False,
                                                                   spacing="trailing"),
    "1-rectified flow, Euler": lambda n: flow_sample(velocity["1-rectified flow"], x_T=z, num_steps=n),
    "2-rectified flow, Euler": lambda n: flow_sample(velocity["2-rectified flow"], x_T=z, num_steps=n),
}
w2_controls = {name: [wasserstein2(sample(n), test_points) for n in nfe_list] for name, sample in controls.items()}
print(f"x0-prediction model: {toy_cfg.max_steps} steps in {x0_seconds:.0f} s.   W2 to the data at NFE "
      + " ".join(f"{n:>5d}" for n in nfe_list) + f"   (real against real: {min(floors):.2f}-{max(floors):.2f})")
for name, values in w2_controls.items():
    print(f"{name:38s}" + " ".join(f"{v:5.2f}" for v in values))

# %% [markdown]
# Read the first column. The $x_0$-predicting DDPM model, sampled by the very same DDIM, is about as good in one
# step as the 1-rectified flow: both return roughly the data's mean there, the best single guess from pure noise,
# and neither divides by $\alpha_T$. The $\epsilon$-predicting one is several times further from the data. The
# trailing grid makes DDIM's second evaluation count. The one-step gap between "diffusion" and "flow" is the
# parameterisation and the grid; the path is the same. What makes one step *good*, not just a blurred average,
# is the straight path of the 2-rectified flow: reflow, or another distillation (section 8 lists them).
#
# ## 6. SD3's and Flux's time
#
# Two more choices of a modern flow are about *time*, and both move signal-to-noise, like chapter 4's latent
# scale factor.
#
# **Which times to train on.** Liu et al. draw $t \sim U[0, 1]$. SD3 draws $t = \operatorname{sigmoid}(n)$,
# $n \sim \mathcal N(m, s^2)$, the *logit-normal* density
#
# $$\pi_\text{ln}(t; m, s) = \frac{1}{s\sqrt{2\pi}}\,\frac{1}{t(1 - t)}\,\exp\Big(-\frac{(\operatorname{logit} t - m)^2}{2s^2}\Big),$$
#
# which trains more at intermediate times, where predicting the velocity is hardest (Esser et al. 2024,
# Sec. 3.1; $m = 0$, $s = 1$ was among their best). Sampling $t$ from $\pi$ is the same, in expectation, as
# sampling it uniformly and weighting each time's loss by $\pi(t)$; SD3 writes it as a weight
# $w_t = \frac{t}{1 - t}\,\pi(t)$ on their common $\epsilon$-loss. `rf-small` and `mmdit-small` train this way.
#
# **Which times to sample at.** SD3 shifts the sampling grid towards noise, $t \mapsto \frac{\alpha t}{1 + (\alpha - 1)t}$
# (Esser et al., eq. 23; `flow_time_grid(n, shift=alpha)`): since $(1 - t')/t' = (1 - t)/(\alpha t)$, the shifted
# time has the signal-to-noise ratio $(1-t)^2/t^2$ divided by $\alpha^2$, as if the data were scaled by $1/\alpha$.
# Their reason is resolution: more pixels average the noise away, so a larger image needs more noise for the same
# uncertainty ($\alpha = \sqrt{m/n}$ for a new resolution of $m$ pixels and a schedule tuned at $n$; SD3 samples at
# $\alpha = 3$ at 1024²). Flux
# makes the shift grow with the image's token count $L$: $\alpha = e^{\mu}$, $\mu$ linear from 0.5 at 256 tokens to
# 1.15 at 4,096 (its `get_schedule` and `time_shift`), so $\alpha \approx 3.2$ at 1024² and 1.58 for this course's
# 8x8 latent in 2x2 patches ($L = 16$).

# %%
flow_ln = RectifiedFlowProcess(time_sampling="logit_normal")
flow_1_ln, _ = train_toy(lambda m, b: flow_ln.loss(m, b[0]))  # the same network, steps and data, logit-normal t
velocity_ln = flow_ln.velocity_field(flow_1_ln)
flux_shift = math.exp(0.5 + (16 - 256) * (1.15 - 0.5) / (4096 - 256))  # Flux's mu for L = 16 tokens

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
t_axis = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
logit = torch.log(t_axis / (1 - t_axis))
density = torch.exp(-logit ** 2 / 2) / (math.sqrt(2 * math.pi) * t_axis * (1 - t_axis))
axes[0].plot(t_axis, density, label="logit-normal (m = 0, s = 1): SD3, rf-small")
axes[0].plot(t_axis, torch.ones_like(t_axis), label="uniform: Liu et al., rf2-small")
axes[0].set(xlabel="t (0 = data, 1 = noise)", ylabel="density of training times", title="which times to train on")
axes[0].legend(fontsize=8)
for shift, label in [(1.0, "no shift"), (flux_shift, f"Flux, 16 tokens (shift {flux_shift:.2f})"),
                     (3.0, "SD3 at 1024² (shift 3)")]:
    grid_s = flow_time_grid(10, shift=shift)
    axes[1].plot(range(11), grid_s, "o-", ms=4, label=label)
axes[1].set(xlabel="sampling step", ylabel="t", title="which times to sample at: 10 steps")
axes[1].legend(fontsize=8)
plt.show()
print("W2 to the data at NFE       " + " ".join(f"{n:>5d}" for n in (1, 4, 16)))
for name, v in [("uniform t (the 1-RF above)", velocity["1-rectified flow"]), ("logit-normal t", velocity_ln)]:
    print(f"{name:28s}" + " ".join(f"{wasserstein2(flow_sample(v, x_T=z, num_steps=n), test_points):5.2f}"
                                   for n in (1, 4, 16)))

# %% [markdown]
# On the toy, logit-normal times gave the better one-step samples in our runs (W2 1.88 against 2.31 in fast
# mode, 2.00 against 2.35 in full mode; one training seed each); from 4 NFE on, both lie in or below the
# real-against-real band, where differences mean little (in full mode the uniform flow was the lower one there).
# Two dimensions are not where SD3 found its gain. Section 8 repeats the comparison where SD3 made it, on images: two runs of `rf-small`'s recipe,
# equal steps, one per time density; and `rf-small` sampled with and without the shift.
#
# ## 7. The trajectory explorer
#
# Every method, solver and step count, from the same noise: move the controls. The time slider shows
# where the points are at time $t$ and the velocity field there (the arrows point the way the points move,
# towards the data); the right panel is the quality-against-steps curve with the current setting circled.

# %%
explorer = trajectory_explorer(velocity, test_points, num_points=config.pick(150, 300),
                               seeds=(0, 1, 2), precompute=FAST)
display(explorer)

# %% [markdown]
# The widget is code too; a few settings, driven from here:

# %%
for method, steps in [("1-rectified flow", 1), ("2-rectified flow", 1), ("DDPM (probability-flow ODE)", 8)]:
    explorer.method.value, explorer.steps.value = method, steps
    s = explorer.state
    print(f"{method:28s} {s['sampler']}, {steps:2d} step(s): straightness {s['straightness']:.4f}, "
          f"path/chord {s['path_chord']:.3f}, W2 {s['w2']:.3f}")
explorer.time.value = 0.9
assert explorer.state["t"] == 0.9

# %% [markdown]
# ## 8. Images: a rectified flow in chapter 4's latent space
#
# `rf-small` is `ldm-small` with one change: the objective. Same network, text encoder, captions, guidance
# dropout and cached 4x8x8 latents of `vae-small`, trained with the rectified-flow loss and SD3's
# logit-normal times, $t = \operatorname{sigmoid}(n)$, $n \sim \mathcal N(0, 1)$, which spend more training
# on the middle of the path, where the velocity is hardest to predict (Esser et al. 2024, Sec. 3.1). The
# network's time embedding sees $1000\,t$, the range of its DDPM timesteps. A short run first:

# %%
from course_lib.captions import class_prompt
from course_lib.data import CIFAR10_CLASSES
from course_lib.generation import Pipeline
from course_lib.latents import cached_latents
from course_lib.recipes import RECIPES
from course_lib.text import MissingTextExtraError
from course_lib.viz import describe_card, plot_losses, show_images

ae_checkpoint = config.checkpoint_dir() / "vae-small.safetensors"
rf_recipe = RECIPES["rf-tiny" if FAST else "rf-small"]
if ae_checkpoint.exists():
    latents = cached_latents(ae_checkpoint, "train", limit=config.pick(500, 5000), progress=False)
    rf_short = TrainConfig(max_steps=config.pick(20, 60), batch_size=config.pick(16, 32), lr=2e-4, warmup_steps=10,
                           ema_decay=0.99, checkpoint_minutes=None)
    config.seed_everything(0)
    rf_run = fit(rf_recipe.build_model(), rf_recipe.loss_fn(), rf_recipe.batches(latents, rf_short), rf_short,
                 device=device)
    z0 = latents.batch(torch.arange(min(len(latents), 1000)), generator=torch.Generator().manual_seed(0))[0]
    zero_model = 1 + float(z0.square().mean())  # E||eps - z_0||^2 per number: what predicting v = 0 scores
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    plot_losses(rf_run.losses, window=config.pick(5, 10), ax=ax, title=f"a short run of {rf_recipe.name} "
                "(velocity loss)")
    ax.axhline(zero_model, color="grey", ls=":", label=f"predicting v = 0: 1 + E[z_0^2] = {zero_model:.2f}")
    ax.legend(fontsize=8)
    plt.show()
else:
    print(f"{ae_checkpoint} not found: chapter 4's autoencoder is needed for the latent models")

# %% [markdown]
# The trained models: `ldm-small` (chapter 4), `rf-small` (this chapter) and its reflow, `rf2-small`.
# Reflow on images is section 3's recipe at scale: `python -m course_lib.reflow
# data/checkpoints/rf-small.safetensors --pairs 50000` draws 50,000 latent noises $z_1$, 5,000 per class,
# and integrates `rf-small`'s guided ODE ($w = 3$, 25 Euler steps) from each to its sample $z_0$; `rf2-small`
# starts from `rf-small`'s weights and learns the straight lines between those fixed pairs (uniform $t$, the
# prompt a random caption of the pair's class, dropped 10 % of the time as before). The pairs already hold the
# guidance, so `rf2-small` is sampled with $w = 1$, the conditional velocity alone. Guiding it again helps
# little and soon hurts: FD_clf of 2,000 one-step samples 6.0 / 5.5 / 6.3 / 8.6 at $w$ = 1 / 1.5 / 2 / 3 (in
# `data/results.jsonl`; $w = 1.5$ is marginally better in FD_clf, with lower recall, 0.11 against 0.16).
# The cards say how long each step took and on what.

# %%
ckpt_paths = {name: config.checkpoint_dir() / f"{name}.safetensors" for name in ("ldm-small", "rf-small", "rf2-small")}
pipes = {name: Pipeline.from_checkpoint(path, device=device) for name, path in ckpt_paths.items() if path.exists()}
SAMPLER = {"ldm-small": "DDIM", "rf-small": "Euler", "rf2-small": "Euler"}
GUIDANCE = {"ldm-small": 3.0, "rf-small": 3.0, "rf2-small": 1.0}  # rf2-small's pairs hold w = 3 already
for name, pipe in pipes.items():
    print(describe_card(pipe.card).split("\n")[0])
missing = [name for name in ckpt_paths if name not in pipes]
if missing:
    print(f"not found: {', '.join(missing)} (python -m course_lib.train {missing[0]}); the image sections below "
          "skip what needs them")

# %% [markdown]
# **One map from noise to images.** By section 2, a perfect diffusion model and a perfect flow send each noise
# to the same sample. The trained models differ in loss (`ldm-small` predicts $\epsilon$ and is sampled with DDIM,
# `rf-small` predicts $v$ and is sampled with Euler) and even in network and text encoder (`mmdit-small`,
# chapter 6's transformer reading MiniLM). Protocol: the same prompts, `per_class` per class, each with its own
# latent noise shared by all three models; guidance $w = 3$; RMS difference of the decoded images in $[-1, 1]$
# units, between two models from the *same* noise and, as the yardstick, from another noise of the same prompt.

# %%
per_class = config.pick(2, 4)
same_steps = config.pick(8, 50)
same_prompts = [class_prompt(c) for c in range(10) for _ in range(per_class)]
z_same = torch.randn(len(same_prompts), 4, 8, 8, generator=torch.Generator().manual_seed(7))
mmdit_path = config.checkpoint_dir() / "mmdit-small.safetensors"
same_pipes = {name: pipes[name] for name in ("ldm-small", "rf-small") if name in pipes}
if mmdit_path.exists() and same_pipes:
    try:
        same_pipes["mmdit-small"] = Pipeline.from_checkpoint(mmdit_path, device=device)
    except MissingTextExtraError as err:  # mmdit-small reads the frozen MiniLM: the `text` extra
        print(f"mmdit-small left out: {err}")
if len(same_pipes) >= 2:
    start = time.perf_counter()
    same = {name: pipe.generate(same_prompts, guidance=3.0, num_steps=same_steps, x_T=z_same.to(device)).cpu()
            for name, pipe in same_pipes.items()}
    other = torch.arange(len(same_prompts)).reshape(10, per_class).roll(1, dims=1).flatten()  # same prompt, other noise
    rms = lambda a, b: float((a - b).square().flatten(1).mean(1).sqrt().mean())  # noqa: E731
    print(f"{len(same_prompts)} prompts x {len(same)} models, {same_steps} steps (NFE {2 * same_steps}) in "
          f"{time.perf_counter() - start:.0f} s.  RMS difference of the images:")
    names = list(same)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"  {a:11s} against {b:11s}: same noise {rms(same[a], same[b]):.3f}, other noise of the same "
                  f"prompt {rms(same[a], same[b][other]):.3f}")
    first = torch.arange(0, len(same_prompts), per_class)  # one noise per class
    fig, ax = plt.subplots(figsize=(10, 0.95 * len(same) + 0.6), layout="constrained")
    show_images(torch.cat([same[name][first] for name in names]), nrow=10, ax=ax,
                row_labels=[f"{name} ({'DDIM' if name == 'ldm-small' else 'Euler'})" for name in names])
    ax.set_title("one latent noise per column, the column's class as the prompt; w = 3, "
                 f"{same_steps} steps", fontsize=9)
    plt.show()

# %% [markdown]
# Same noise, nearly the same picture, across losses, samplers and even architectures; another noise of the
# same prompt gives another picture, several times further away. The noise-to-image map belongs to the data and
# the path, not to the network: what chapter 6's transformer changes is how well it learns the map.
#
# From the same latent noise and prompts, DDIM on the diffusion model and Euler on the flows, at 1 to 50
# steps (guidance $w = 3$ for the first two; a guided step costs 2 network evaluations):

# %%
step_list = config.pick([1, 2, 4, 8], [1, 2, 4, 8, 16, 50])
prompts = [class_prompt(c) for c in range(config.pick(4, 10))]
z_img = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
if len(pipes) >= 2:
    grid = {name: torch.cat([pipe.generate(prompts, guidance=GUIDANCE[name], num_steps=n, x_T=z_img.to(device)).cpu()
                             for n in step_list]) for name, pipe in pipes.items()}
    fig, axes = plt.subplots(1, len(grid), figsize=(len(grid) * 0.75 * len(prompts) + 2.5,
                                                     0.75 * len(step_list) + 1.2), layout="constrained")
    for ax, (name, images) in zip(axes, grid.items()):
        show_images(images, nrow=len(prompts), ax=ax, row_labels=[f"{n} steps" for n in step_list])
        ax.set_title(f"{name}: {SAMPLER[name]}, w = {GUIDANCE[name]:g}", fontsize=10)
    fig.suptitle("columns: " + " · ".join(CIFAR10_CLASSES[:len(prompts)]) + "  (the same noise for every model)",
                 fontsize=9)
    plt.show()

# %% [markdown]
# Quality against steps, measured: FD_clf (the Fréchet distance in the course classifier's features,
# chapter 1) of class-prompted samples against the training set, for each number of steps.

# %%
from course_lib.evaluation import sample_images
from course_lib.features import ClassifierFeatures, extract_features, reference_statistics
from course_lib.metrics import FeatureStats, frechet_distance

n_fd = config.pick(24, 100)  # images per point; full mode: about 1.5 minutes on 2 CPU cores (3 models)
fd_steps = config.pick([1, 4], step_list)
fd = {}
if pipes:
    clf = ClassifierFeatures(device=device)
    train_stats = reference_statistics(clf, "train")
    start = time.perf_counter()
    for name, pipe in pipes.items():
        fd[name] = [frechet_distance(FeatureStats.of(extract_features(
            clf, sample_images(pipe, n_fd, num_steps=n, guidance=GUIDANCE[name], seed=2, progress=False).images[0],
            progress=False)), train_stats) for n in fd_steps]
    print(f"{len(pipes)} models x {len(fd_steps)} step counts x {n_fd} images in {time.perf_counter() - start:.0f} s")
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for name, values in fd.items():
        ax.plot(fd_steps, values, "o-", label=f"{name} ({SAMPLER[name]}, w = {GUIDANCE[name]:g})")
    ax.set(xscale="log", xlabel="sampling steps", ylabel="FD_clf (lower is better)",
           title=f"{n_fd} samples per point, against the training set")
    ax.set_xticks(fd_steps)
    ax.set_xticklabels([str(n) for n in fd_steps])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# Forty or 100 samples per point give a rough curve. The same curves measured with 2,000 samples per point,
# FID-2k in Inception features (against all 50,000 training images) and FD_clf, come from the course's
# evaluation runs in `data/results.jsonl` (`python -m course_lib.evaluation CHECKPOINT --num-samples 2000
# --steps S --guidance W`); beside them what each model cost, from the cards. The 2-rectified flow's cost
# includes its teacher's training and the simulation of its pairs.

# %%
from course_lib.results import fid_label, points, training_minutes


def measured(name, metric, spacing="linspace"):
    """(NFE, steps, value) of one model's 2,000-sample points at its guidance and sampler, from data/results.jsonl
    (the mean over sampling seeds where several were measured; DDIM on the given grid, flows unshifted; decoded by
    vae-small, with which every step count was measured)."""
    extra = {"spacing": spacing} if SAMPLER[name] == "DDIM" else {"shift": 1.0}
    found = points(name, kind="samples", num_samples=2000, guidance=GUIDANCE[name], sampler=SAMPLER[name].lower(),
                   decoder="vae-small", **extra)
    return sorted((p.nfe, p.settings["steps"], p.mean(metric)) for p in found if p.values(metric))


costs = {}
for name, pipe in pipes.items():
    training = pipe.card["training"]
    own, simulation, teacher = training_minutes(pipe.card)  # a reflowed model: its pairs and teacher count too
    line = f"{name:9s} trained {own:5.0f} min ({pipe.card['step']:,} steps) on {training['hardware']}"
    if "reflow" in training:
        pairs = training["reflow"]["pairs"]
        line += (f";\n{'':9s} + its {pairs['pairs']:,} pairs: {simulation:.0f} thread-minutes "
                 f"({pairs['solver']} {pairs['steps']} steps, w = {pairs['guidance']:g}) + its teacher's "
                 f"{teacher:.0f} min")
    costs[name] = own + simulation + teacher
    print(line)
curves = [(name, "linspace") for name in ckpt_paths] + [("ldm-small", "trailing")]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for ax, (metric, label) in zip(axes, [("fid", fid_label(2000)), ("fd_clf", "FD_clf")]):
    for name, spacing in curves:
        found = measured(name, metric, spacing)
        if found:
            nfe, _steps, values = zip(*found)
            grid_name = f", {spacing} grid" if SAMPLER[name] == "DDIM" else ""
            ax.plot(nfe, values, "o-" if spacing == "linspace" else "s--",
                    label=f"{name} ({SAMPLER[name]}{grid_name}, w = {GUIDANCE[name]:g}; "
                          f"{costs.get(name, float('nan')):.0f} CPU-min in all)")
    nfe_ticks = sorted({nfe for name, spacing in curves for nfe, _, _ in measured(name, metric, spacing)})
    ax.set(xscale="log", xlabel="network evaluations per image (NFE; a guided step is 2)",
           ylabel=f"{label} (lower is better)", title=f"{label}, 2,000 samples per point")
    ax.set_xticks(nfe_ticks)
    ax.set_xticklabels([f"{n:g}" for n in nfe_ticks], fontsize=7)
    ax.minorticks_off()
    ax.legend(fontsize=6.5)
plt.show()
for name, spacing in curves:
    rows = measured(name, "fid", spacing)
    fds = {steps: value for _nfe, steps, value in measured(name, "fd_clf", spacing)}
    tag = f"{name} ({spacing})" if SAMPLER[name] == "DDIM" else name
    print(f"{tag:21s} " + "  ".join(f"NFE {nfe:3g}: {fid:5.1f} / {fds.get(steps, float('nan')):5.2f}"
                                    for nfe, steps, fid in rows) + f"   ({fid_label(2000)} / FD_clf)")

# %% [markdown]
# **Image trajectories, projected.** A latent path is a curve in 256 dimensions. Project all the points of
# both models' paths (the diffusion model's mapped onto the flow axis, as in section 1) onto their first two
# principal components and draw them:

# %%
if len(pipes) >= 2:
    out = {}
    for name, pipe in pipes.items():
        o = pipe.generate(prompts[:4], guidance=GUIDANCE[name], num_steps=50, x_T=z_img[:4].to(device),
                          return_trajectory=True)
        out[name] = ddpm_path_as_flow(o, pipe.process.noise_schedule) if name == "ldm-small" else (o.trajectory,
                                                                                                  o.times)
    states = torch.cat([traj.double().flatten(2).flatten(0, 1) for traj, _ in out.values()])  # [all states, 256]
    mean = states.mean(0)
    _, _, V = torch.linalg.svd(states - mean, full_matrices=False)
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for (name, (traj, times)), style in zip(out.items(), ["-", "--", ":"]):
        xy = (traj.double().flatten(2) - mean) @ V[:2].T  # [S + 1, B, 2]
        for b in range(xy.shape[1]):
            ax.plot(xy[:, b, 0], xy[:, b, 1], style, color=f"C{b}", lw=1.2,
                    label=prompts[b] if name == "ldm-small" else None)
            ax.plot(xy[0, b, 0], xy[0, b, 1], "o", color=f"C{b}", ms=4)
        print(f"{name:10s} straightness of the 4 image paths (50 steps): {float(straightness(traj, times)):.3f}, "
              f"path/chord {float(path_chord_ratio(traj)):.3f}")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="latent paths from noise (dots) to samples: "
           + ", ".join(f"{style} {name}" for name, style in zip(out, ["solid", "dashed", "dotted"])),
           xticks=[], yticks=[])
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    plt.show()

# %% [markdown]
# What to look for. In the grid, DDIM at 1 and 2 steps shows saturated blotches: its first step divides by
# $\sqrt{\bar\alpha_T} \approx 0.006$ to predict $\hat x_0$ from pure noise (section 5), and in latent space nothing
# clips the result (chapter 4); on the linspace grid the second of 2 steps starts at $t = 0$ and changes almost
# nothing. The 1-rectified flow's one-step sample is $\hat x_0 = x_1 - v(x_1, 1)$, the *average* latent for the
# prompt: a blurred but plausible picture. The 2-rectified flow's one-step sample is already a picture, close to
# what it draws in 50 steps: its velocity barely changes along a path. In 256 dimensions the diffusion model's
# and the 1-rectified flow's paths are nearly straight already (path/chord close to 1; straightness 0.111 and
# 0.094 on these four paths with the shipped checkpoints); `rf2-small`'s are straight (0.002, path/chord 1.001).
#
# The measured curves (2,000 samples per point, one sampling seed, `data/results.jsonl`; read them by NFE). From
# 2 to 32 NFE the 1-rectified flow has the lower FID-2k (143 against DDIM's 210 at 2 NFE, 78 against 86 at 8);
# at 100 NFE DDIM's is lower, 65.4 against 66.4 (ldm-small's spread over 3 seeds at its headline setting is
# ±0.6, so the two are about level there). At the headline setting of both, 25 steps with $w = 3$ and 3 sampling
# seeds (chapter 4, section 9), they are level with either decoder: FID-2k 65.4 ± 0.6 (`ldm-small`, DDIM) and
# 65.6 ± 0.7 (`rf-small`, Euler) through `vae-small`, 43.8 ± 0.5 and 43.7 ± 0.8 through `vae-small-ft`; the
# flow's prompt accuracy is the higher, 86.5 % ± 1.8 against 79.0 % ± 1.0 with the sharper decoder.
# In the classifier's features the flow is worse than DDIM below 16
# NFE (presumably its blurred averages are far from a real image for Inception, and further still from a
# recognisable class for the classifier; we did not measure why). DDIM on the trailing grid (dashed) no longer wastes its second evaluation: at 4 NFE
# (2 guided steps, $t$ = 999, 499) FID-2k 116.0 and FD_clf 8.6, against 209.5 and 13.5 on the linspace grid
# ($t$ = 999, 0). At 2 NFE the two grids are the same step; at 8 NFE trailing is ahead in FID-2k (79.7 against
# 85.5) and behind in FD_clf (10.4 against 9.7); at 16 NFE the two are level (71.6 against 72.3 FID-2k, inside the
# ±0.6 spread over seeds; FD_clf 8.2 against 8.4). Even so, at 4 NFE
# the flow (104.6) beats the better DDIM grid in FID-2k; what closes the gap at one step is reflow.
#
# The 2-rectified flow is the one that changes the picture: FID-2k 72.6 at **1** NFE (DDIM needs 16 NFE for
# 72.3) and 68.2 at 4, FD_clf 6.0 at 1 NFE against the 1-rectified flow's 25.8 at 2. The old aim of this
# chapter, "2-RF at 4 NFE at least as good as DDIM at 100 NFE (50 guided steps)", is **missed**: 68.2 against
# 65.4 FID-2k and 5.5 against 4.9 FD_clf. A reflowed model learns its teacher's 25-step samples, errors included,
# and `rf2-small` trained for 50 minutes. And it is not cheap: its teacher's 110 minutes, 106 thread-minutes of
# simulating 50,000 pairs and its own 50 minutes make 266 CPU-minutes, against `ldm-small`'s 125.
#
# **Guidance distillation, named.** `rf2-small`'s pairs were simulated with guidance $w = 3$, two evaluations per
# step; the student learns the guided ODE's endpoints and runs at $w = 1$, one evaluation per step. That is
# *guidance distillation* (Meng et al. 2023, "On distillation of guided diffusion models"): the guidance is baked
# into the weights. FLUX.1 [dev] does the same with a twist: it is guidance-distilled (its model card) and takes
# the guidance strength as an input, a guidance embedding added to its time and text vector (`guidance_in` in
# Flux's `model.py`), so one evaluation per step serves any $w$; it still samples 50 steps by default (Flux's
# `cli.py`). Neither Flux model gets its speed from "native" straightness: [dev]'s distillation halves the
# evaluations per step, and FLUX.1 [schnell], the 1-4 step model, is distilled with latent adversarial diffusion
# distillation (LADD; Sauer et al. 2024) and samples with no time shift.
#
# **A map of few-step methods** (chapter 7 builds some of them):
#
# | method | what the student learns | source |
# | --- | --- | --- |
# | reflow (this chapter) | straight lines between the teacher's own (noise, sample) pairs | Liu et al. 2022 |
# | progressive distillation | one student step = two teacher steps, halving the steps each round | Salimans & Ho 2022 |
# | guidance distillation | the guided model's output in one evaluation (then fewer steps) | Meng et al. 2023 |
# | consistency models | any point of a path maps to the path's end | Song et al. 2023 |
# | adversarial distillation (ADD, LADD) | few-step samples a discriminator cannot tell from real images, plus a distillation loss to the teacher (ADD: SDXL-Turbo), or from the teacher's samples, judged in the teacher's latent features (LADD: SD3-Turbo, FLUX.1 [schnell]) | Sauer et al. 2023, 2024 |

# %% [markdown]
# **SD3's time, on images.** Section 6's two choices, measured where SD3 made them (2,000 samples per point for
# FD_clf, 200 for prompt accuracy, 3 sampling seeds each, from `data/results.jsonl`). First, training times:
# `rf-small`'s recipe trained twice from scratch for the same number of steps, side by side on one machine, once
# with logit-normal and once with uniform $t$ (`python -m course_lib.train rf-small` and `rf-uniform`, `--steps
# 2200`), then sampled with Euler, 25 steps, $w = 3$. Second, sampling times: the shipped `rf-small` with its grid
# shifted as Flux would for 16 tokens (1.58) and as SD3 does at 1024² (3).

# %%
def point_text(model, metric, spec=".2f", scale=1.0, **settings):
    """'mean ± std (k seeds)' of one measured point, or 'not measured'."""
    found = [p for p in points(model, **settings) if p.values(metric)]
    return found[0].text(metric, spec, scale) if found else "not measured"


print("training times (equal steps, 25 Euler steps at w = 3):")
for name in ("rf-logitnormal", "rf-uniform"):
    runs = points(name, kind="samples")
    trained = (f"{runs[0].rows[0]['step']:,} steps, {runs[0].rows[0]['training_minutes']:.0f} min on "
               f"{runs[0].rows[0]['training_hardware']}") if runs else "no measurement yet"
    print(f"  {name:15s} FD_clf {point_text(name, 'fd_clf', kind='samples', num_samples=2000, steps=25):24s} "
          f"prompt accuracy {point_text(name, 'prompt_accuracy', '.1f', 100, kind='prompt_accuracy', steps=25, guidance=3.0)} %"
          f"   ({trained})")
print("sampling times (rf-small, Euler, w = 3), FD_clf:")
for steps in (4, 25):
    print(f"  {steps:2d} steps (NFE {2 * steps:3d}): " + "   ".join(
        f"shift {shift:g}: {point_text('rf-small', 'fd_clf', kind='samples', num_samples=2000, steps=steps, guidance=3.0, shift=shift)}"
        for shift in (1.0, 1.58, 3.0)))

# %% [markdown]
# **Training times.** Logit-normal came out ahead on both measures, FD_clf 7.91 ± 0.03 against 8.07 ± 0.03 and
# prompt accuracy 45.3 ± 1.5 against 43.2 ± 2.1 % (each run 2,200 steps, 32 minutes, the two side by side on one
# machine; the spreads are over 3 sampling seeds of one trained model each, so they do not include the training
# seed, and a 200-image accuracy alone has a standard error of 3.5 points). Small, in SD3's direction: their
# large study ranked rectified flows with logit-normal times among the best of its variants (Esser et al., Sec.
# 5.1). Both short runs are far from `rf-small` (110 minutes; 78.8 % prompt accuracy at 50 steps): read them as a
# controlled pair, not as models.
#
# **Sampling times.** The shift *hurts* here: at 4 steps FD_clf rises from 11.11 ± 0.05 without a shift to
# 12.36 ± 0.03 with Flux's 1.58 and 15.78 ± 0.09 with SD3's 3; at 25 steps (one seed) from 5.26 to 5.38 and
# 5.88. The shift is a rule for many tokens: many pixels average the noise away, so a large image still shows
# its content at a middle $t$ and needs more steps at high noise. This course's latent has 16 tokens, far below
# the 256 where Flux's rule starts (its line, extended below 256 tokens, gives $\mu \approx 0.46$) and SD3's 1024²
# images; SD3's own
# formula, $\alpha = \sqrt{m/n}$, asks for $\alpha < 1$ when $m$ is smaller than the resolution a schedule was
# tuned for. A schedule has to fit the data's signal-to-noise ratio, which is chapter 4's lesson about the scale
# factor too.

# %% [markdown]
# **The explorer with images.** The same controls, now with a fourth panel pair: for the chosen method,
# solver, steps and seed, the image model draws "a photo of a horse" from its own latent noise, and its 256-D
# latent trajectory is projected onto its first two principal components. The DDPM rows use `ldm-small`'s
# probability-flow ODE on the flow axis (`ddpm_flow_velocity`, with guidance), the 1-rectified flow uses
# `rf-small` and the 2-rectified flow `rf2-small`; the third reflow round exists only for the toy, and the panel
# says so.

# %%
from course_lib.flow import ddpm_flow_velocity

image_prompt = class_prompt(7)
IMAGE_FLOWS = {"1-rectified flow": "rf-small", "2-rectified flow": "rf2-small"}  # the 3-RF row has no image model


def image_fn(method, sampler, steps, seed):
    """The image sample and its projected latent path for one explorer setting (None: no image model)."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device)
    if method.startswith("DDPM") and "ldm-small" in pipes:
        pipe = pipes["ldm-small"]
        v = ddpm_flow_velocity(pipe.guided([image_prompt], 3.0), pipe.process.noise_schedule)
        out = flow_sample(v, x_T=z, num_steps=steps, sampler=sampler, return_trajectory=True)
        image = pipe.decode(out.sample)[0].cpu()  # at s = 0 the flow coordinates are the latent itself
    elif method in IMAGE_FLOWS and IMAGE_FLOWS[method] in pipes:
        name = IMAGE_FLOWS[method]
        out = pipes[name].generate([image_prompt], guidance=GUIDANCE[name], sampler=sampler, num_steps=steps, x_T=z,
                                   return_trajectory=True)
        image = out.sample[0].cpu()  # generate decodes the sample
    else:
        return None
    points = out.trajectory[:, 0].flatten(1).double()  # [S + 1, 256]
    centred = points - points.mean(0)
    _, _, V = torch.linalg.svd(centred, full_matrices=False)
    return image, centred @ V[:2].T  # [3, 32, 32], [S + 1, 2]


if pipes:
    image_explorer = trajectory_explorer(velocity, test_points, num_points=config.pick(150, 300),
                                         steps=config.pick((1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 32, 64)),
                                         seeds=(0, 1, 2), image_fn=image_fn, precompute=FAST)
    display(image_explorer)
    image_explorer.method.value = "1-rectified flow"
    assert image_explorer.state["image"] is not None or "rf-small" not in pipes
    print(image_explorer.readout.value)

# %% [markdown]
# ## Summary
#
# * Rectified flow regresses the velocity $\epsilon - x_0$ of straight lines between data ($t = 0$) and noise
#   ($t = 1$); sampling integrates $dx/dt = v$ backwards with Euler or Heun.
# * For Gaussian noise, DDPM's probability-flow ODE in the coordinates $y = x/(\alpha + \sigma)$,
#   $s = \sigma/(\alpha + \sigma)$ *is* the 1-rectified flow's ODE. Both bend, equally: independent pairs cross,
#   and the ODE follows their average while keeping the lines' marginals. Trained models agree too: from the same
#   noise, `ldm-small`, `rf-small` and `mmdit-small` draw nearly the same image.
# * What decides the first models' few-step quality is the parameterisation ($\epsilon$ divides by $\alpha_T$ at pure
#   noise; $x_0$ and $v$ do not) and the time grid (trailing wastes no step at $t = 0$). Count by NFE: a guided
#   step is 2.
# * **Reflow** trains on the flow's own pairs, which do not cross: straight paths, on which Euler is exact, and
#   good samples in one step. On images, `rf2-small` at 1 NFE scores as DDIM at 16, at the price of 266
#   CPU-minutes in all (`ldm-small`: 125); trained on guided pairs and run at $w = 1$, it is also guidance
#   distillation.
# * SD3 trains at logit-normal times and shifts its sampling grid towards noise; Flux shifts by sequence length.
#   Both, like chapter 4's scale factor, are choices of signal-to-noise. On this course's 16-token latents,
#   logit-normal training helped a little and the shift hurt.
#
# Next: chapter 6 replaces the UNet with the transformer of SD3 and Flux.
