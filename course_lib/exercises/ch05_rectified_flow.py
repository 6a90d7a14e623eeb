"""Chapter 5's exercises (rectified flow): the rectified-flow loss and one Euler step of the sampling ODE.

:func:`check_rf_loss` and :func:`check_euler_step`, with their cases, named mistakes and hints; both call
chapter 1's :class:`~course_lib.exercises.ch01_ddpm.ProbeDenoiser` as the velocity model.
"""

from __future__ import annotations

from typing import Callable

import torch

from .ch01_ddpm import ProbeDenoiser
from .harness import Case, exercise, run_cases

__all__ = ["check_rf_loss", "check_euler_step"]


# --------------------------------------------------------------------------- chapter 5: rectified flow


def _rf_loss_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 21)
    model = ProbeDenoiser()
    cases = []
    for t in ([0.0, 0.3, 0.7, 1.0], [0.05, 0.5, 0.95], [0.2, 0.4, 0.6, 0.8, 0.9]):
        shape = (len(t), 4, 8, 8)
        x0 = torch.rand(shape, generator=g) * 2 - 1  # [B, C, H, W]
        noise = torch.randn(shape, generator=g)
        t = torch.tensor(t)  # [B] in [0, 1]
        tb = t.reshape(-1, 1, 1, 1)
        with torch.no_grad():
            x_t = (1 - tb) * x0 + tb * noise
            target = noise - x0

            def mse(target, x_t, t_model=t):
                return (target - model(x_t, t_model)).square().mean()

            expected = mse(target, x_t)
            mistakes = {
                "the target points the wrong way: with data at t = 0 and noise at t = 1, v = dx_t/dt = eps - x_0":
                    mse(x0 - noise, x_t),
                "x_t has data and noise swapped: x_t = (1 - t) x_0 + t eps (data at t = 0, as in SD3)":
                    mse(target, tb * x0 + (1 - tb) * noise),
                "that is Liu et al.'s convention (noise at t = 0): here the data sit at t = 0, x_t = (1 - t) x_0 + t eps":
                    mse(x0 - noise, tb * x0 + (1 - tb) * noise),
                "the network was asked at time 1 - t; give it the t of x_t": mse(target, x_t, 1 - t),
                "the target is the velocity eps - x_0, not the noise eps (that is DDPM's target)": mse(noise, x_t),
                "the loss is the mean of the squared error, not of the error itself":
                    (target - model(x_t, t)).mean(),
                "the loss is the mean squared error; you summed instead of averaging":
                    (target - model(x_t, t)).square().sum(),
            }
        cases.append(Case((model, x0, noise, t), expected, f"t = {t.tolist()}", mistakes))
    return cases


@exercise(
    "The straight line with the data at t = 0 and the noise at t = 1: x_t = (1 - t) x0 + t noise. t is "
    "[B]; reshape it to [B, 1, 1, 1].",
    "Along that line the velocity dx_t/dt is noise - x0, whatever t is: the loss is the mean of (noise - "
    "x0 - model(x_t, t)) ** 2.",
)
def check_rf_loss(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(model, x0, noise, t) -> loss``, the rectified-flow loss (Liu et al. 2022; SD3's direction):

        x_t  = (1 - t) x_0 + t eps            (data at t = 0, noise at t = 1)
        loss = mean over every number of (eps - x_0 - model(x_t, t))^2      # a 0-d tensor

    model: ``model(x_t [B, C, H, W], t [B]) -> v_hat`` (a fixed :class:`ProbeDenoiser`); x0, noise
    [B, C, H, W]; t [B] in [0, 1]. Checked against ``RectifiedFlowProcess(time_scale=1).loss`` with the same t
    and noise. Prints the verdict; returns True if correct.
    """
    return run_cases("your rf_loss", fn, _rf_loss_cases(seed),
                "your rf_loss is RectifiedFlowProcess.loss for the same t and noise (t from 0 to 1).",
                shape_hint="The loss is one number, a 0-d tensor: `((v - v_hat) ** 2).mean()`; t has shape [B], so "
                           "reshape it to [B, 1, 1, 1] to mix x_0 and eps.")


def _euler_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 22)
    model = ProbeDenoiser()
    cases = []
    for t, t_next in [(0.5, 0.25), (1.0, 0.75), (0.3, 0.0), (0.9, 0.85)]:  # t = 1 first would make x - v ambiguous
        x = torch.randn(3, 4, 8, 8, generator=g)

        def v(x, s):
            return model(x, torch.full((x.shape[0],), s))

        h = t_next - t
        with torch.no_grad():
            expected = x + h * v(x, t)
            mistakes = {
                "the step goes the wrong way: h = t_next - t is negative (from noise at 1 towards data at 0), "
                "x_next = x + (t_next - t) v": x - h * v(x, t),
                "the velocity must be taken where you are, at (x, t), not at t_next (that would be implicit Euler)":
                    x + h * v(x, t_next),
                "the step size is missing: x_next = x + (t_next - t) v(x, t)": x - v(x, t),
                "you took a full unit step: multiply v by the step size t_next - t": x + v(x, t),
                "that is x0_hat = x - t v, the straight-line guess of the data; one step only goes to t_next":
                    x - t * v(x, t),
            }
        cases.append(Case((v, x, t, t_next), expected, f"t = {t} -> {t_next}", mistakes))
    return cases


@exercise(
    "Euler's method follows the slope for one step: x_next = x + (t_next - t) v(x, t); v is a function, "
    "call it.",
    "Sampling runs from noise (t = 1) to data (t = 0), so t_next < t and the step t_next - t is negative; "
    "keep its sign.",
)
def check_euler_step(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(v, x, t, t_next) -> x_next``, one Euler step of the sampling ODE dx/dt = v(x, t):

        x_next = x + (t_next - t) v(x, t)          (t_next < t: from noise at 1 towards data at 0)

    v: ``v(x, t) -> velocity`` with t a float; x [B, C, H, W]. Checked against ``course_lib.flow.flow_sample``'s
    Euler step. Prints the verdict; returns True if correct.
    """
    return run_cases("your euler_step", fn, _euler_cases(seed),
                "your euler_step takes the step of course_lib.flow.flow_sample (sampler 'euler').",
                shape_hint="x_next has the shape of x.")
