"""Chapter 5's exercises (rectified flow): the loss, one Euler step of the sampling ODE, and the reflow.

:func:`check_rf_loss` and :func:`check_euler_step` (warm-ups; both call chapter 1's
:class:`~course_lib.exercises.ch01_ddpm.ProbeDenoiser` as the velocity model) and :func:`check_reflow`, the
chapter's idea: a trained flow's own coupling (each noise point and its ODE endpoint), checked against the
library, then trained on to show that it straightens the paths. Each with its cases, named mistakes and hints.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..data import TensorSplit
from ..flow import flow_sample, flow_time_grid, straightness
from ..metrics import wasserstein2
from ..processes import RectifiedFlowProcess
from ..reflow import reflow_loss
from ..toy import ToyMLP, eight_gaussians
from ..trainer import TrainConfig, fit
from .ch01_ddpm import ProbeDenoiser
from .harness import Case, close, exercise, run_cases, verdict

__all__ = ["check_rf_loss", "check_euler_step", "check_reflow"]


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


# --------------------------------------------------------------------------- chapter 5: the reflow (the chapter's idea)


def _reflow_pairs(velocity: Callable, noise: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's answer: each noise point x_1 and the data point x_0 = ODE(x_1) of Euler's ``num_steps`` steps."""
    return flow_sample(velocity, x_T=noise, num_steps=num_steps), noise


def _wrong_time(velocity: Callable, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Euler with the velocity asked at 1 - t (noise-at-0 convention): a likely slip."""
    x, grid = noise.clone(), flow_time_grid(num_steps)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x = x + (t_next - t) * velocity(x, torch.full((len(x),), 1 - t))
    return x


def _wrong_way(velocity: Callable, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Euler steps of the wrong sign (towards t > 1)."""
    x, grid = noise.clone(), flow_time_grid(num_steps)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x = x - (t_next - t) * velocity(x, torch.full((len(x),), t))
    return x


def _straighten(x0: torch.Tensor, x1: torch.Tensor, steps: int, seed: int) -> tuple[float, float, Callable]:
    """Train a fresh :class:`~course_lib.toy.ToyMLP` on the pairs with the reflow loss; (straightness on 16 Euler
    steps, the one-step W2 to the data, its velocity field)."""
    process = RectifiedFlowProcess(time_scale=1.0)
    pairs = TensorSplit(x0.detach().float(), x1.detach().float())
    torch.manual_seed(seed)
    model = ToyMLP()

    def batches(step: int):
        return pairs.batch(torch.randint(0, len(pairs), (256,), generator=torch.Generator().manual_seed(seed + step)))

    cfg = TrainConfig(max_steps=steps, batch_size=256, lr=2e-3, warmup_steps=20, ema_decay=0.99, progress=False,
                      checkpoint_minutes=None)
    result = fit(model, lambda m, b: reflow_loss(m, process, *b), batches, cfg, device="cpu")
    velocity = process.velocity_field(result.ema.eval())
    return (*_path_quality(velocity, seed), velocity)


@torch.no_grad()
def _path_quality(velocity: Callable, seed: int) -> tuple[float, float]:
    """(straightness on 16 Euler steps, W2 of one Euler step's samples to 1,000 data points) of a flow."""
    data = eight_gaussians()
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(seed + 7))
    out = flow_sample(velocity, x_T=z, num_steps=16, return_trajectory=True)
    one_step = flow_sample(velocity, x_T=z, num_steps=1)
    return float(straightness(out.trajectory, out.times)), wasserstein2(one_step, data.sample(1000, seed=seed + 5))


@exercise(
    "x0 is where the flow's ODE carries each noise point: integrate dx/dt = velocity(x, t) from t = 1 to 0 with "
    "Euler (x = x + (t_next - t) velocity(x, t), t a [N] tensor), and return (x0, noise): pair i is noise i and its "
    "own endpoint.",
    "The pairs must stay in order: x0[i] is the endpoint of noise[i]. Shuffling them, or taking x0 from the data "
    "set, gives back the independent coupling the 1-rectified flow was trained on, and nothing straightens.",
    "t runs from 1 (noise) to 0 (data) in this course: the steps are negative, and velocity is asked at the t you "
    "are at (Liu et al. put the noise at t = 0: their figures read the other way).",
)
def check_reflow(reflow_pairs_of: Callable, seed: int = 0, train_steps: int = 150) -> bool:
    """Check ``reflow_pairs_of(velocity, noise, num_steps) -> (x0, x1)``, the coupling a trained flow defines
    (Liu et al. 2022, Sec. 2.2 and 3), then what it is for:

        x1 = noise [N, 2];   x0 = ODE_{1 -> 0}(velocity; x1), Euler with ``num_steps`` steps      [N, 2] each

    ``velocity(x [N, 2], t [N]) -> [N, 2]``: here the exact velocity of a 1-rectified flow from N(0, I) to the
    chapter's eight Gaussians (``GaussianMixture.flow_velocity``). The pairs are compared with
    ``course_lib.flow.flow_sample``'s Euler endpoints; then a fresh 2-D MLP is trained on them for ``train_steps``
    steps with the reflow loss (the 2-rectified flow), and its paths must be straighter (at least 10x, by
    ``course_lib.flow.straightness``) and its one-step samples closer to the data (W2 at most half the 1-rectified
    flow's) than the 1-rectified flow's. Calibrated here: with the right pairs and 150 steps, three training
    seeds gave straightness 0.012-0.015 against the 1-rectified flow's 1.18 (about 80x) and one-step W2 0.82-0.89
    against 2.52. Prints the verdict; returns True if correct.
    """
    if not callable(reflow_pairs_of):
        return verdict(False, f"expected a function reflow_pairs_of(velocity, noise, num_steps), got "
                               f"{type(reflow_pairs_of).__name__}.")
    data = eight_gaussians()

    def velocity(x, t):
        return data.flow_velocity(x, t)

    num_steps = 16
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(seed + 31))
    try:
        got = reflow_pairs_of(velocity, noise.clone(), num_steps)
    except NotImplementedError:
        return verdict(False, "reflow_pairs_of is not written yet: replace the `raise NotImplementedError` line with "
                               "your code, then run the cell again.")
    except Exception as err:  # noqa: BLE001 - the learner's error, shown as it is
        return verdict(False, f"reflow_pairs_of raised {type(err).__name__}: {err}.")
    if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(g, torch.Tensor) for g in got)):
        return verdict(False, "reflow_pairs_of should return two tensors, (x0, x1): the endpoints and the noise.")
    x0, x1 = got
    if x0.shape != noise.shape or x1.shape != noise.shape:
        return verdict(False, f"x0 and x1 should have the noise's shape {tuple(noise.shape)}; got {tuple(x0.shape)} "
                               f"and {tuple(x1.shape)}.")
    expected, _ = _reflow_pairs(velocity, noise, num_steps)
    if close(x1, expected) and close(x0, noise):
        return verdict(False, "the pair is reversed: return (x0, x1) = (the ODE's endpoint, the noise it came from); "
                               "the reflow loss interpolates x_t = (1 - t) x0 + t x1 with the data at t = 0.")
    if not close(x1, noise):
        return verdict(False, "x1 must be the noise you were given: the ODE carries exactly that noise to x0. New noise "
                               "pairs each endpoint with a stranger (the independent coupling again).")
    again = reflow_pairs_of(velocity, noise.clone(), num_steps)[0]
    if not torch.equal(again, x0):
        return verdict(False, "two calls with the same noise gave different x0: the coupling of a flow is "
                               "deterministic, x0 = ODE(x1); do not draw random numbers.")
    if not close(x0, expected, rtol=1e-3):
        other = reflow_pairs_of(velocity, -noise, num_steps)[0]
        order = torch.argsort(x0[:, 0] * 1e3 + x0[:, 1])
        if close(x0[order], expected[torch.argsort(expected[:, 0] * 1e3 + expected[:, 1])], rtol=1e-3):
            return verdict(False, "the endpoints are right but not in order: x0[i] must be the endpoint of noise[i]. "
                                   "Shuffled (independent) pairs are the coupling the 1-rectified flow already had.")
        if close(other, x0):
            return verdict(False, "x0 does not depend on the noise: take the endpoints from the ODE, not from the data "
                                   "set (data points paired with random noise are the independent coupling again).")
        if close(x0, _wrong_time(velocity, noise, num_steps), rtol=1e-3):
            return verdict(False, "the velocity was asked at 1 - t: in this course t = 1 is noise and t = 0 data, "
                                   "and the velocity is v(x, t) at the time you are at (Liu et al.'s convention is "
                                   "the reverse).")
        if close(x0, _wrong_way(velocity, noise, num_steps), rtol=1e-3):
            return verdict(False, "the steps go the wrong way: from t = 1 to t = 0 the step t_next - t is negative, "
                                   "x = x + (t_next - t) v(x, t).")
        gap = float((x0 - expected).abs().max())
        return verdict(False, f"x0 differs from flow_sample(velocity, x_T=noise, num_steps=num_steps) by up to "
                               f"{gap:.3g}: integrate from t = 1 to t = 0 with {num_steps} Euler steps.")
    base_straightness, base_w2 = _path_quality(velocity, seed)
    straightness_2, w2_2, _ = _straighten(x0, x1, train_steps, seed)
    report = (f"1-rectified flow: straightness {base_straightness:.3f}, one-step W2 {base_w2:.2f}; trained on your "
              f"pairs: {straightness_2:.4f} and {w2_2:.2f}")
    if not (straightness_2 < base_straightness / 10 and w2_2 < base_w2 / 2):
        return verdict(False, f"the pairs are the ODE's, but training on them did not straighten the flow ({report}); "
                               "run the check again, and if it persists, tell the course's maintainers.")
    return verdict(True, f"your pairs are the flow's own coupling, and reflow on them straightened it ({report}).")
