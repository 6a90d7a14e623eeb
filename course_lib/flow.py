"""Rectified flow: ODE samplers for velocity models, and how straight their paths are.

Rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast"; the same objective is flow matching
with the linear path, Lipman et al. 2023, and Stable Diffusion 3's, Esser et al. 2024) joins data x_0
and noise eps by straight lines and learns the velocity along them. **Direction: data at t = 0, noise
at t = 1**, as in SD3 and as on every trajectory axis of this course (Liu et al. put noise at 0):

    x_t = (1 - t) x_0 + t eps,        v = dx_t / dt = eps - x_0.

Sampling integrates the ODE dx/dt = v_theta(x, t) backwards, from noise at t = 1 to data at t = 0,
on a grid 1 = t_0 > t_1 > ... > t_N = 0 (steps h_i = t_{i+1} - t_i < 0):

    Euler:  x_{i+1} = x_i + h_i v(x_i, t_i)                                           (1 evaluation)
    Heun:   x' = x_i + h_i v(x_i, t_i);  x_{i+1} = x_i + h_i (v(x_i, t_i) + v(x', t_{i+1})) / 2   (2)

Euler is first order (error ~ 1/N), Heun second order (~ 1/N^2; Karras et al. 2022 use it for
diffusion ODEs). A path that is exactly straight is integrated exactly by one Euler step: that is why
straight paths make few-step sampling possible.

Straightness (Liu et al. 2022, eq. 5, in this direction): S = int_0^1 E || (X_1 - X_0) - v(X_t, t) ||^2 dt,
0 for straight paths. :func:`straightness` estimates it on a sampler's grid, divided by E || X_1 - X_0 ||^2
so that runs on different data compare; :func:`path_chord_ratio` is path length over chord length (1
for a straight path).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .samplers import SamplerOutput, start_noise, warn_if_training
from .schedules import NoiseSchedule

__all__ = ["flow_time_grid", "flow_sample", "average_velocity_sample", "straightness", "path_chord_ratio",
           "ddpm_path_as_flow", "ddpm_flow_velocity", "SAMPLERS"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the samplers (ODE solvers) of a flow, with the model evaluations each step costs (Heun's last step: 1)
SAMPLERS = {"euler": 1, "heun": 2}


def flow_time_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The sampling grid 1 = t_0 > ... > t_N = 0: [N + 1] float64.

    ``shift`` > 1 spends more steps at high noise: t -> shift t / (1 + (shift - 1) t), the timestep
    shift of SD3 (Esser et al. 2024, eq. 23); 1 is the uniform grid.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def flow_sample(model: ModelFn, shape: Sequence[int] | None = None, *, x_T: torch.Tensor | None = None,
                num_steps: int = 50, sampler: str = "euler", times: Sequence[float] | torch.Tensor | None = None,
                time_scale: float = 1.0, generator: torch.Generator | None = None, return_trajectory: bool = False,
                progress: bool = False, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor | SamplerOutput:
    """Integrate dx/dt = v(x, t) from noise at t = 1 to data at t = 0 with Euler or Heun.

        Euler: x_{i+1} = x_i + h v(x_i, t_i),                   h = t_{i+1} - t_i < 0
        Heun:  x_{i+1} = x_i + h (v(x_i, t_i) + v(x_i + h v(x_i, t_i), t_{i+1})) / 2

    Heun's last step, to t = 0, is an Euler step, as in Karras et al. (2022, Algorithm 1) and diffusers'
    ``FlowMatchHeunDiscreteScheduler``: N Heun steps cost 2N - 1 network evaluations, not 2N (one Euler step,
    of local error O(h^2), keeps the method second order).

    model(x, time_scale * t) -> v [B, ...]; ``time_scale`` maps t in [0, 1] onto what the network's time
    embedding was trained with (1000 for the course's UNets, as diffusers' SD3 scheduler does).
    ``times``: a decreasing grid from 1 to 0 (default :func:`flow_time_grid` with ``num_steps``).
    Returns the samples [B, ...], or a :class:`~course_lib.samplers.SamplerOutput` with the trajectory
    [N + 1, B, ...] (x at every grid time), ``x0_preds`` [N, B, ...] = x - t v (the straight-line guess of the
    data at each step), ``timesteps`` [N] (the network's times) and ``times`` [N + 1] (the grid).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    grid = flow_time_grid(num_steps) if times is None else torch.as_tensor(times, dtype=torch.float64).flatten()
    if len(grid) < 2 or grid[0] != 1.0 or grid[-1] != 0.0 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("times must decrease from 1 (noise) to 0 (data), e.g. flow_time_grid(8); got "
                         f"{grid.tolist()}")
    warn_if_training(model)
    x = start_noise(shape, x_T, generator, device, dtype)  # [B, ...] at t = 1: pure noise

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), t * time_scale, device=x.device, dtype=torch.float32)  # [B]
        return model(x, t_batch).to(x.dtype)

    trajectory, x0_preds = [x.cpu()], []
    for i in tqdm(range(len(grid) - 1), desc=f"{sampler} ({len(grid) - 1} steps)", disable=not progress,
                  leave=False):
        t, t_next = float(grid[i]), float(grid[i + 1])
        h = t_next - t  # < 0: towards the data
        v = velocity(x, t)
        if return_trajectory:
            x0_preds.append((x - t * v).cpu())
        if sampler == "heun" and t_next > 0:  # the last step, to t = 0, is Euler's (Karras et al. 2022)
            x_euler = x + h * v
            x = x + h * 0.5 * (v + velocity(x_euler, t_next))
        else:
            x = x + h * v
        if return_trajectory:
            trajectory.append(x.cpu())
    if not return_trajectory:
        return x
    return SamplerOutput(sample=x, trajectory=torch.stack(trajectory), x0_preds=torch.stack(x0_preds),
                         timesteps=(grid[:-1] * time_scale).float(), times=grid)


def average_velocity_sample(model: Callable[..., torch.Tensor], shape: Sequence[int] | None = None, *,
                            x_T: torch.Tensor | None = None, num_steps: int = 1, time_scale: float = 1.0,
                            generator: torch.Generator | None = None, return_trajectory: bool = False,
                            progress: bool = False, device: torch.device | str | None = None,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor | SamplerOutput:
    """From noise at t = 1 to data at t = 0 in ``num_steps`` steps of an average velocity u(z, r, t) (MeanFlow,
    Geng et al. 2025; chapter 7), on the uniform grid 1 = t_0 > t_1 > ... > t_N = 0:

        z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, t_{i+1}, t_i)          one step: z_0 = z_1 - u(z_1, 0, 1)

    exact for every step size when u is the ODE's average velocity over [r, t]. The network is called as
    ``model(z, s t, interval=s (t - r))``, s = ``time_scale``: the time and the interval's length in the units its
    time embedding was trained with (``course_lib.meanflow.text_average_velocity``'s convention). Returns the
    samples [B, ...], or a :class:`~course_lib.samplers.SamplerOutput`: the trajectory [N + 1, B, ...], as
    ``x0_preds`` [N, B, ...] the state after each step (no extra pass), the network's times and the grid.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    warn_if_training(model)
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    z = start_noise(shape, x_T, generator, device, dtype)  # [B, ...] at t = 1: pure noise
    trajectory = [z.cpu()]
    for i in tqdm(range(num_steps), desc=f"average velocity ({num_steps} steps)", disable=not progress, leave=False):
        t, r = float(grid[i]), float(grid[i + 1])
        t_batch = torch.full((z.shape[0],), t * time_scale, device=z.device, dtype=torch.float32)  # [B]
        gap = torch.full((z.shape[0],), (t - r) * time_scale, device=z.device, dtype=torch.float32)  # [B]
        z = z - (t - r) * model(z, t_batch, interval=gap).to(z.dtype)
        if return_trajectory:
            trajectory.append(z.cpu())
    if not return_trajectory:
        return z
    return SamplerOutput(sample=z, trajectory=torch.stack(trajectory), x0_preds=torch.stack(trajectory[1:]),
                         timesteps=(grid[:-1] * time_scale).float(), times=grid)


def straightness(trajectory: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Normalised straightness of sampled paths (Liu et al. 2022, eq. 5) on their grid: a scalar >= 0.

        S = sum_i |t_{i+1} - t_i| E || (x(1) - x(0)) - v_i ||^2  /  E || x(1) - x(0) ||^2,
        v_i = (x_{i+1} - x_i) / (t_{i+1} - t_i)   (the velocity the solver moved with on step i)

    trajectory [N + 1, B, ...] from t = 1 (noise) to t = 0 (data), times [N + 1] (a grid over a shorter
    span [t_N, t_0] is treated the same way: chord velocity over the span, deviations averaged over it).
    0 for straight paths travelled at constant speed; measured in units of the chord's own mean squared
    length, so that runs on different data and scales compare.
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    if trajectory.shape[0] != len(times) or len(times) < 2:
        raise ValueError(f"trajectory has {trajectory.shape[0]} states for {len(times)} times; give the "
                         "SamplerOutput's trajectory and times")
    x = trajectory.double().flatten(2)  # [N + 1, B, D]
    span = times[0] - times[-1]  # 1 for a flow's grid; a DDPM path mapped by ddpm_path_as_flow starts just below 1
    chord = (x[0] - x[-1]) / span  # [B, D]: the straight path's constant velocity, x(1) - x(0) on a full grid
    dt = (times[1:] - times[:-1]).reshape(-1, 1, 1)  # [N, 1, 1], negative
    v = (x[1:] - x[:-1]) / dt  # [N, B, D]
    deviation = (chord - v).pow(2).sum(-1).mean(-1)  # [N]: E || chord - v_i ||^2
    return (dt.abs().flatten() * deviation).sum() / (span * chord.pow(2).sum(-1).mean())


def path_chord_ratio(trajectory: torch.Tensor) -> torch.Tensor:
    """Path length over chord length, averaged over the batch: 1 for straight paths, more when they bend.

    trajectory [N + 1, B, ...]; the path is the polyline through the states.
    """
    x = trajectory.double().flatten(2)  # [N + 1, B, D]
    path = (x[1:] - x[:-1]).norm(dim=-1).sum(0)  # [B]
    chord = (x[-1] - x[0]).norm(dim=-1)  # [B]
    return (path / chord.clamp_min(1e-12)).mean()


def ddpm_path_as_flow(out: SamplerOutput, schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """A DDPM / DDIM trajectory in rectified-flow coordinates, so both can be drawn and measured together.

    DDPM's x_t = alpha x_0 + sigma eps (alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)) divided by
    alpha + sigma is exactly a point of the straight path:

        x_t / (alpha + sigma) = (1 - s) x_0 + s eps,     s = sigma / (alpha + sigma)   (the same signal-to-noise ratio).

    So the probability-flow ODE of a DDPM model is an ODE on the rectified-flow time axis s in [0, 1], and
    DDIM with eta = 0, which is Euler's method for that ODE in the variables (x / alpha, sigma / alpha)
    (Song et al. 2021, eq. 14), moves along it. ``out``: a DDPM process's ``SamplerOutput`` (``timesteps`` [S]
    the integer step of each state but the last, which is the sample at alpha_bar = 1). Returns
    (trajectory [S + 1, B, ...] rescaled, times s [S + 1] from about 1 down to 0).
    """
    alpha_bar = torch.cat([schedule.alpha_bar.double().cpu()[out.timesteps.long().cpu()],
                           torch.ones(1, dtype=torch.float64)])  # [S + 1]
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    scale = (alpha + sigma).reshape(-1, *([1] * (out.trajectory.ndim - 1)))  # [S + 1, 1, ...]
    return out.trajectory.double() / scale, sigma / (alpha + sigma)


def ddpm_flow_velocity(eps_model: ModelFn, schedule: NoiseSchedule) -> ModelFn:
    """A DDPM epsilon model's probability-flow ODE as a velocity field on the rectified-flow axis.

    At flow time s (see :func:`ddpm_path_as_flow`) the DDPM state is x = (alpha + sigma) y with
    sigma / alpha = s / (1 - s), i.e. alpha_bar = 1 / (1 + (s / (1 - s))^2); the DDPM step t with that
    alpha_bar is found by interpolating the schedule (a fractional t: the time embedding takes any real).
    Then, with eps_hat = eps_model(x, t) and x0_hat = (x - sigma eps_hat) / alpha,

        v(y, s) = eps_hat - x0_hat,

    the velocity of the straight line through (x0_hat, eps_hat) that y lies on. Euler's method on this field
    takes the same step as DDIM (eta = 0) between the same noise levels: both move y along that line. The
    returned ``v(y, t)`` takes t = s in [0, 1] (clamped to the schedule's last noise level), like a flow model
    with ``time_scale`` 1.
    """
    alpha_bar = schedule.alpha_bar.double()  # [T], decreasing

    def velocity(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1).expand(len(y)).cpu()  # [B]
        ratio = (s / (1 - s).clamp_min(1e-12)).clamp(max=float(((1 - alpha_bar[-1]) / alpha_bar[-1]).sqrt()))
        target = 1 / (1 + ratio ** 2)  # [B] alpha_bar at flow time s
        # alpha_bar falls with t: interpolate t(alpha_bar) on the reversed (increasing) table
        idx = torch.searchsorted(alpha_bar.flip(0), target).clamp(1, len(alpha_bar) - 1)
        lo, hi = alpha_bar.flip(0)[idx - 1], alpha_bar.flip(0)[idx]
        frac = ((target - lo) / (hi - lo)).clamp(0, 1)
        t = (len(alpha_bar) - 1) - (idx - 1 + frac)  # [B] fractional DDPM step
        a, sig = target.sqrt(), (1 - target).sqrt()  # [B]
        shape = (-1,) + (1,) * (y.ndim - 1)
        a_, sig_ = a.reshape(shape).to(y), sig.reshape(shape).to(y)
        x = (a_ + sig_) * y
        eps = eps_model(x, t.float().to(y.device))
        x0 = (x - sig_ * eps) / a_
        return eps - x0

    return velocity
