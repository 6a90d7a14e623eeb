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
# # 5 · Rectified flow: curved against straight paths, reflow, few-step sampling
#
# A diffusion model samples by integrating an ODE from noise to data (chapter 1's DDIM is one way to do
# it), and its paths are curved: a solver needs many small steps to follow them. **Rectified flow** (Liu,
# Gong & Liu 2022; the same objective is flow matching with straight paths, Lipman et al. 2023, and it is
# what Stable Diffusion 3 and Flux train) asks the network for the velocity along *straight* lines from
# data to noise. The paths it learns are not straight either (section 2 shows why); **reflow** makes them
# straight, until one Euler step from noise lands on the data.
#
# In this chapter you will
#
# * train a diffusion model and a rectified flow on the same 2-D data and draw their paths from the same noise;
# * see why the flow's paths still bend (crossing pairs), separate that from an imperfect network with the
#   *exact* velocity of a Gaussian mixture, and measure straightness;
# * write the rectified-flow loss and an Euler step yourself;
# * measure quality against the number of steps (Wasserstein-2 distance to the data), then reflow one, two,
#   three times;
# * explore all of it with the **trajectory explorer**;
# * go to images: chapter 4's latent model trained as a rectified flow and then reflowed, sampled in 1 to 50
#   steps beside the latent diffusion model's DDIM from the same noise, with FD_clf and FID against steps.
#
# **Direction of time.** Here, as in SD3 and everywhere in this course, the data sit at $t = 0$ and the
# noise at $t = 1$; Liu et al. write it the other way round. The code is in `course_lib.processes`
# (`RectifiedFlowProcess`), `course_lib.flow`, `course_lib.reflow`, `course_lib.toy` and `course_lib.widgets`.

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# 1. write the rectified-flow interpolation $x_t = (1 - t)\,x_0 + t\,\epsilon$, its velocity
#    $v = \epsilon - x_0$ and the loss, and take an Euler step from $t$ to $t_\text{next} < t$;
# 2. explain why a flow trained on straight lines still has curved paths (independent pairs cross), and
#    use the exact mixture velocity to separate the coupling's curvature from the network's;
# 3. define straightness and read W2 against the number of steps, against the real-vs-real band;
# 4. describe reflow, what it costs, and why `rf2-small` is sampled at $w = 1$;
# 5. compare DDIM, the 1-rectified flow and the 2-rectified flow at 1 to 50 steps on images, from the
#    measured FID-2k and FD_clf.
#
# **Before it you need**
#
# * Chapter 1's DDIM (an ODE sampler) and chapter 4's latent model (`vae-small`, `ldm-small`).
# * Euler's method for an ODE, the idea: follow the slope for a short step.

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (Intel(R) Xeon(R) Processor with AVX-512 and AMX), 2026-12-03; the code cells' seconds per section,
# without the kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 4 s | 4 s |
# | 1. Two models, one data set | 5 s | 15 s |
# | 2. Why straight lines make curved paths | < 1 s | < 1 s |
# | 3. Reflow: straighten by re-pairing | 16 s | 41 s |
# | 4. The trajectory explorer | 6 s | 4 s |
# | 5. Images: a rectified flow in chapter 4's latent space | 21 s | 89 s |
# | **the whole notebook** | **52 s** | **2 min 33 s** |
#
# The longest cell in full mode takes 57 s.

# %%
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from course_lib import config
from course_lib.exercises import check_euler_step, check_reflow, check_rf_loss
from course_lib.flow import ddpm_path_as_flow, flow_sample, path_chord_ratio, straightness
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


def train_toy(loss_fn, batches=batches):
    """A fresh ToyMLP trained with ``loss_fn(model, batch)``; returns its EMA copy and the run's seconds."""
    config.seed_everything(0)
    run = fit(ToyMLP(), loss_fn, batches, toy_cfg, device="cpu")
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
# Both bend: DDPM's paths first head for the centre of the data (at high noise the best guess of $x_0$ is
# the mean), then turn towards a mode. The flow's paths bend too, about as much as DDIM's (the numbers are
# in section 2). Why, if it was trained on straight lines?
#
# ## 2. Why straight lines make curved paths
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
exact = lambda y, t: exact_velocity(data, noise_source, y, t)  # noqa: E731
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
# curvature is not the network's fault. To straighten the paths, change the coupling.
#
# Note the two DDPM rows: the same ODE, two grids. DDIM's 64 steps are evenly spaced in the DDPM timestep,
# which puts many of them at high noise (its first step only moves $s$ from 0.994 to about 0.99), where the
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
# ## 3. Reflow: straighten by re-pairing
#
# The trained flow's ODE maps every noise point to *one* sample, and its paths never cross. Train a new
# flow on those pairs $(x_0, x_1) = (\mathrm{ODE}(x_1), x_1)$ instead of independent ones: the lines no
# longer cross, so there is nothing to average, and the new flow's paths are straighter (Liu et al.,
# Sec. 2.2; their Sec. 3 shows that rectifying never increases a convex transport cost and that repeated
# reflow drives the straightness towards 0). That is **reflow**; the result is the 2-rectified flow, and the
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
flows = {1: flow_1}
reflow_seconds = {}
for k in (2, 3):
    start = time.perf_counter()
    source = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(100 + k))
    pairs = reflow_pairs(flows[k - 1], rf, source, num_steps=64, sampler="heun")


    def pair_batches(step, pairs=pairs):
        index = torch.randint(0, len(pairs), (toy_cfg.batch_size,), generator=torch.Generator().manual_seed(step))
        return pairs.batch(index)  # (x0, x1)


    flows[k], _ = train_toy(lambda m, b: reflow_loss(m, rf, *b), pair_batches)
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
ax.set(xscale="log", yscale="log", xlabel="sampling steps (Euler; DDIM for DDIM)", ylabel="W2 to the data",
       title=f"{len(z)} samples against {len(test_points)} data points")
ax.set_xticks(step_counts)
ax.set_xticklabels([str(s) for s in step_counts])
ax.legend(fontsize=8)
plt.show()
print(f"{'':30s} {'S':>7s}   W2 at " + "  ".join(f"{n:>5d}" for n in (1, 4, 16)) + " steps")
for name in w2:
    cols = [w2[name][step_counts.index(n)] for n in (1, 4, 16)]
    print(f"{name:30s} {straight.get(name, float('nan')):7.4f}         " + "  ".join(f"{c:5.2f}" for c in cols))

# %% [markdown]
# Reading the plot: at many steps every model reaches the band; at **one step** DDPM's ODE (and DDIM) land
# far from the data, the 1-rectified flow much closer, and the reflowed flows on it. Each reflow round cuts
# the straightness $S$, the 2-rectified flow by far the most; a third round adds little. Reflow is not free:
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


mix_1, _ = train_toy(lambda m, b: reflow_loss(m, rf, *b), mixture_batches)  # independent pairs: a 1-RF
mix_pairs = reflow_pairs(mix_1, rf, source_mix.sample(n_pairs, seed=21), num_steps=64, sampler="heun")
mix_2, _ = train_toy(lambda m, b: reflow_loss(m, rf, *b),
                     lambda step: mix_pairs.batch(torch.randint(0, n_pairs, (toy_cfg.batch_size,),
                                                                generator=torch.Generator().manual_seed(step))))
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
# ## 4. The trajectory explorer
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
# ## 5. Images: a rectified flow in chapter 4's latent space
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
# From the same latent noise and prompts, DDIM on the diffusion model and Euler on the flow, at 1 to 50
# steps (guidance $w = 3$ for both):

# %%
step_list = [1, 2, 4, 8, 16, 50]
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
from pathlib import Path

from course_lib.checkpoint import read_card
from course_lib.results import fid_label, points


def measured(name, metric):
    """(NFE, steps, value) of one model's 2,000-sample points at its guidance and sampler, from data/results.jsonl
    (the mean over sampling seeds where several were measured)."""
    found = points(name, kind="samples", num_samples=2000, guidance=GUIDANCE[name], sampler=SAMPLER[name].lower())
    return sorted((p.nfe, p.settings["steps"], p.mean(metric)) for p in found if p.values(metric))


costs = {}
for name, pipe in pipes.items():
    training = pipe.card["training"]
    minutes = training["wall_seconds_total"] / 60
    line = f"{name:9s} trained {minutes:5.0f} min ({pipe.card['step']:,} steps) on {training['hardware']}"
    if "reflow" in training:
        pairs = training["reflow"]["pairs"]
        teacher = config.checkpoint_dir() / Path(pairs["teacher"]).name
        teacher_minutes = read_card(teacher)["training"]["wall_seconds_total"] / 60 if teacher.exists() else 0
        line += (f";\n{'':9s} + its {pairs['pairs']:,} pairs: {pairs['generation_seconds'] / 60:.0f} thread-minutes "
                 f"({pairs['solver']} {pairs['steps']} steps, w = {pairs['guidance']:g}) + its teacher's "
                 f"{teacher_minutes:.0f} min")
        minutes += pairs["generation_seconds"] / 60 + teacher_minutes
    costs[name] = minutes
    print(line)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
for ax, (metric, label) in zip(axes, [("fid", fid_label(2000)), ("fd_clf", "FD_clf")]):
    for name in ckpt_paths:
        found = measured(name, metric)
        if found:
            nfe, _steps, values = zip(*found)
            ax.plot(nfe, values, "o-", label=f"{name} ({SAMPLER[name]}, w = {GUIDANCE[name]:g}; "
                                             f"{costs.get(name, float('nan')):.0f} CPU-min in all)")
    nfe_ticks = sorted({nfe for name in ckpt_paths for nfe, _, _ in measured(name, metric)})
    ax.set(xscale="log", xlabel="network evaluations per image (NFE; a guided step is 2)",
           ylabel=f"{label} (lower is better)", title=f"{label}, 2,000 samples per point")
    ax.set_xticks(nfe_ticks)
    ax.set_xticklabels([f"{n:g}" for n in nfe_ticks], fontsize=7)
    ax.minorticks_off()
    ax.legend(fontsize=7)
plt.show()
for name in ckpt_paths:
    rows = measured(name, "fid")
    fds = {steps: value for _nfe, steps, value in measured(name, "fd_clf")}
    print(f"{name:9s} " + "  ".join(f"{steps:2d} steps (NFE {nfe:g}): {fid:5.1f} / {fds.get(steps, float('nan')):5.2f}"
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
# $\sqrt{\bar\alpha_T} \approx 0.006$ to predict $\hat x_0$ from pure noise, and in latent space nothing clips
# the result (chapter 4); with 2 steps the second step starts at $t = 0$ and changes almost nothing. The
# 1-rectified flow's one-step sample is $\hat x_0 = x_1 - v(x_1, 1)$, the *average* latent for the prompt: a
# blurred but plausible picture. The 2-rectified flow's one-step sample is already a picture, close to what it
# draws in 50 steps: its velocity barely changes along a path. In 256 dimensions the diffusion model's and
# the 1-rectified flow's paths are nearly straight already (path/chord close to 1; straightness 0.111 and
# 0.094 on these four paths with the shipped checkpoints); `rf2-small`'s are straight (0.002, path/chord 1.001).
#
# The measured curves (2,000 samples per point, `data/results.jsonl`): at every step count the 1-rectified
# flow has the lower FID-2k (143 against DDIM's 210 at one step, 78 against 86 at four), while in the
# classifier's features it is worse than DDIM below 8 steps: its blurred averages are far from any real
# image in Inception's eyes but even further, for a classifier, from a recognisable class. Both reach about 65
# at 50 steps. The 2-rectified flow is the one that changes the picture: FID-2k 72.6 in **one** step (DDIM needs
# 8 steps for 72.3) and 68.2 in four, FD_clf 6.0 in one step against the 1-rectified flow's 25.8. It does not
# quite reach the many-step models (DDIM at 50 steps: FID-2k 65.4, FD_clf 4.9): a reflowed model learns its
# teacher's 25-step samples, errors included, and `rf2-small` trained for 50 minutes. Its cost is in the
# legend: its teacher's training, 106 thread-minutes of simulating 50,000 pairs, and its own 50 minutes.

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
# * With independent pairs the lines cross, and the learned (and even the exact) velocity bends; straightness
#   measures how much. DDPM's probability-flow ODE, drawn on the same axis, bends more.
# * **Reflow** trains on the flow's own pairs, which do not cross: straighter paths, good samples in one step.
#
# * On images, in chapter 4's latent space, one reflow of `rf-small` gives `rf2-small`, whose one-step samples
#   score as DDIM's 8-step ones, at the price of simulating tens of thousands of pairs.
#
# Next: chapter 6 replaces the UNet with the transformer of SD3 and Flux.
