"""Chapter 1's exercises (DDPM): the forward process, the simple loss and one step of each sampler.

:func:`check_q_sample` (x_t from x_0 in one jump), :func:`check_eps_to_x0`, :func:`check_simple_loss` (Ho et
al.'s Algorithm 1), :func:`check_ddpm_step` (Algorithm 2) and :func:`check_ddim_step` (eta = 0), with their
cases, named mistakes and hints; and :class:`ProbeDenoiser`, the fixed stand-in for a trained eps-network
that the checks of training and sampling code pass to the learner's function (chapter 5's checks use it too).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..parameterization import diffusion_loss, eps_to_x0
from ..samplers import ddim_sample
from ..schedules import NoiseSchedule, gather
from .harness import Case, exercise, run_cases

__all__ = ["check_q_sample", "check_eps_to_x0", "check_ddim_step", "check_simple_loss", "check_ddpm_step",
           "ProbeDenoiser", "q_sample_cases"]


# --------------------------------------------------------------------------- q_sample


def q_sample_cases(seed: int) -> list[Case]:
    """The cases of :func:`check_q_sample` for ``seed``: 3 batches, with the named mistakes of each."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    # [8, 3, 4, 8]: B = W = 8, so a [B] coefficient broadcast along the width runs without an error
    for schedule, shape, t in [
        (NoiseSchedule.linear(1000), (4, 3, 8, 8), [0, 37, 500, 999]),
        (NoiseSchedule.cosine(1000), (5, 3, 8, 8), [3, 120, 420, 760, 998]),
        (NoiseSchedule.linear(1000), (8, 3, 4, 8), [11, 90, 180, 300, 450, 600, 750, 900]),
    ]:
        x0 = torch.rand(shape, generator=g) * 2 - 1  # [B, C, H, W] in [-1, 1]
        eps = torch.randn(shape, generator=g)
        t = torch.tensor(t, dtype=torch.long)  # [B]
        expected = schedule.q_sample(x0, t, eps)

        def coef(values):  # [T] -> [B, 1, 1, 1] at t
            return gather(values, t, x0.ndim)

        ab, alpha, beta = coef(schedule.alpha_bar), coef(schedule.alphas), coef(schedule.betas)
        ab_prev = coef(schedule.alpha_bar_prev)
        mistakes = {
            "you used alpha_t = 1 - beta_t (one step of noise) where the jump from x_0 needs alpha_bar_t = "
            "alpha_0 * ... * alpha_t (`schedule.alpha_bar[t]`)": alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps,
            "you forgot both square roots: the coefficients are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), "
            "so that the variances add up to one": ab * x0 + (1 - ab) * eps,
            "the noise coefficient needs a square root: sqrt(1 - alpha_bar_t), a standard deviation, "
            "not the variance 1 - alpha_bar_t": ab.sqrt() * x0 + (1 - ab) * eps,
            "the signal coefficient needs a square root: sqrt(alpha_bar_t)": ab * x0 + (1 - ab).sqrt() * eps,
            "the two coefficients are swapped: x_0 gets sqrt(alpha_bar_t) and the noise sqrt(1 - alpha_bar_t)":
                (1 - ab).sqrt() * x0 + ab.sqrt() * eps,
            "you used beta_t as the noise variance; one jump from x_0 to x_t has variance 1 - alpha_bar_t":
                ab.sqrt() * x0 + beta.sqrt() * eps,
            "you used alpha_bar of the step before t (alpha_bar_prev); timesteps are 0-indexed and "
            "`schedule.alpha_bar[t]` is the one to use": ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps,
            "the noise should be added, not subtracted": ab.sqrt() * x0 - (1 - ab).sqrt() * eps,
            "your x_t equals x_0: no noise was added": x0,
            "your x_t is only the scaled noise: the signal term sqrt(alpha_bar_t) x_0 is missing":
                (1 - ab).sqrt() * eps,
            "the signal is scaled but the noise term sqrt(1 - alpha_bar_t) eps is missing": ab.sqrt() * x0,
        }
        if x0.shape[0] == x0.shape[-1]:
            flat_ab = schedule.alpha_bar[t]  # [B], broadcast along the last (width) axis
            mistakes["alpha_bar[t] has shape [B] and was broadcast along the image width, not over examples: "
                     "reshape it to [B, 1, 1, 1] (e.g. `.view(-1, 1, 1, 1)`)"] = (
                flat_ab.sqrt() * x0 + (1 - flat_ab).sqrt() * eps)
        cases.append(Case((schedule, x0, t, eps), expected,
                          f"{schedule.name} schedule, x0 of shape {list(shape)}, t = {t.tolist()}", mistakes))
    return cases


@exercise(
    "x_t mixes the clean images and the noise with two numbers per example, sqrt(alpha_bar_t) and sqrt(1 "
    "- alpha_bar_t). `schedule.alpha_bar` holds alpha_bar for every timestep (shape [T]); index it with "
    "the batch's t.",
    "`schedule.alpha_bar[t]` has shape [B] and the images [B, C, H, W]: reshape it to [B, 1, 1, 1] "
    "(`.view(-1, 1, 1, 1)`) so that each image gets its own coefficient.",
    "Both coefficients are square roots (standard deviations, not variances): sqrt of alpha_bar times x0, "
    "plus sqrt of (1 - alpha_bar) times eps. Use the eps you are given; do not draw new noise.",
)
def check_q_sample(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(schedule, x0, t, eps) -> x_t`` against ``schedule.q_sample`` (Ho et al. 2020, eq. 4):

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps

    schedule: a ``NoiseSchedule``;  x0, eps: [B, C, H, W];  t: [B] integer timesteps (0-indexed).
    Prints ``Correct!`` or what is wrong; returns True if correct.
    """
    return run_cases("your q_sample", fn, q_sample_cases(seed),
                "your q_sample matches schedule.q_sample on 3 batches (linear and cosine schedules, "
                "t from 0 to 999).")


# --------------------------------------------------------------------------- eps -> x0


def _eps_to_x0_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 1)
    cases = []
    for schedule, t in [(NoiseSchedule.linear(1000), [0, 250, 500, 900]),
                        (NoiseSchedule.cosine(1000), [10, 300, 650, 990])]:
        shape = (len(t), 3, 8, 8)
        x0 = torch.rand(shape, generator=g) * 2 - 1
        eps = torch.randn(shape, generator=g)
        t = torch.tensor(t, dtype=torch.long)
        x_t = schedule.q_sample(x0, t, eps)
        ab = gather(schedule.alpha_bar, t)  # [B, 1, 1, 1]
        a, b = ab.sqrt(), (1 - ab).sqrt()
        expected = eps_to_x0(eps, x_t, ab)
        mistakes = {
            "you forgot the square roots: x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)":
                (x_t - (1 - ab) * eps) / ab,
            "the noise coefficient needs a square root: sqrt(1 - alpha_bar)": (x_t - (1 - ab) * eps) / a,
            "divide by sqrt(alpha_bar), not by alpha_bar": (x_t - b * eps) / ab,
            "the noise should be subtracted from x_t, not added": (x_t + b * eps) / a,
            "you forgot to divide by sqrt(alpha_bar): x_t - sqrt(1 - alpha_bar) eps is sqrt(alpha_bar) x_0":
                x_t - b * eps,
            "multiply by 1 / sqrt(alpha_bar), i.e. divide by sqrt(alpha_bar); you multiplied by it":
                a * (x_t - b * eps),
            "only the noise term was divided: put brackets around (x_t - sqrt(1 - alpha_bar) eps) "
            "before dividing by sqrt(alpha_bar)": x_t - b * eps / a,
            "the coefficients are swapped: x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, "
            "so subtract sqrt(1 - alpha_bar) eps and divide by sqrt(alpha_bar)": (x_t - a * eps) / b,
            "x_t - eps forgets both coefficients": x_t - eps,
        }
        cases.append(Case((eps, x_t, ab), expected,
                          f"{schedule.name} schedule, t = {t.tolist()}, alpha_bar of shape [B, 1, 1, 1]", mistakes))
    return cases


@exercise(
    "Solve x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps for x0: move the noise term to the other "
    "side, then divide.",
    "alpha_bar is already [B, 1, 1, 1] and broadcasts; `alpha_bar.sqrt()` and `(1 - alpha_bar).sqrt()` "
    "are the two coefficients. Put brackets around the difference before dividing.",
)
def check_eps_to_x0(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(eps, x_t, alpha_bar) -> x0`` against ``parameterization.eps_to_x0``:

        x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)

    eps, x_t: [B, C, H, W];  alpha_bar: [B, 1, 1, 1]. Prints the verdict; returns True if correct.
    """
    return run_cases("your eps_to_x0", fn, _eps_to_x0_cases(seed),
                "your eps_to_x0 recovers x_0 exactly like parameterization.eps_to_x0 "
                "(linear and cosine schedules, t from 0 to 990).")


# --------------------------------------------------------------------------- one DDIM step


def _library_ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, eps_hat: torch.Tensor,
                       t: int, t_prev: int) -> torch.Tensor:
    """One eta = 0 step of the library's ``ddim_sample`` from t to t_prev, with a model that predicts eps_hat."""
    out = ddim_sample(lambda x, _t: eps_hat, schedule, x_T=x_t, timesteps=[t, t_prev], eta=0.0,
                      clip_x0=False, return_trajectory=True, progress=False)
    return out.trajectory[1]  # [x_T, x after step 1, x after step 2] -> the first step


def _ddim_step_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 2)
    schedule = NoiseSchedule.linear(1000)
    cases = []
    for t, t_prev in [(999, 899), (500, 450), (120, 0), (700, 300)]:
        x_t = torch.randn(3, 3, 8, 8, generator=g)
        eps_hat = torch.randn(3, 3, 8, 8, generator=g)
        ab, ab_prev = schedule.alpha_bar[t], schedule.alpha_bar[t_prev]  # 0-d tensors
        expected = _library_ddim_step(schedule, x_t, eps_hat, t, t_prev)
        x0 = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
        mistakes = {
            "the step lands on the predicted x_0 scaled by sqrt(alpha_bar_prev) but forgets the direction "
            "term sqrt(1 - alpha_bar_prev) eps_hat, which puts back the noise of the level t_prev":
                ab_prev.sqrt() * x0,
            "the direction term should use the noise level you step *to*: sqrt(1 - alpha_bar_prev) eps_hat, "
            "not sqrt(1 - alpha_bar_t) eps_hat": ab_prev.sqrt() * x0 + (1 - ab).sqrt() * eps_hat,
            "alpha_bar_t and alpha_bar_prev are swapped: predict x_0 with alpha_bar_t, then re-noise "
            "with alpha_bar_prev": (lambda x0s: ab.sqrt() * x0s + (1 - ab).sqrt() * eps_hat)(
                (x_t - (1 - ab_prev).sqrt() * eps_hat) / ab_prev.sqrt()),
            "you forgot the square roots in the last line: sqrt(alpha_bar_prev) x0_hat + "
            "sqrt(1 - alpha_bar_prev) eps_hat": ab_prev * x0 + (1 - ab_prev) * eps_hat,
            "the predicted x_0 is wrong (square roots forgotten): x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat)"
            " / sqrt(alpha_bar_t)": (lambda x0s: ab_prev.sqrt() * x0s + (1 - ab_prev).sqrt() * eps_hat)(
                (x_t - (1 - ab) * eps_hat) / ab),
            "you returned the predicted x_0; the step should go to x_{t_prev}, re-noised to alpha_bar_prev":
                x0,
            "you returned x_t unchanged": x_t,
        }
        cases.append(Case((x_t, eps_hat, ab.clone(), ab_prev.clone()), expected,
                          f"linear schedule, from t = {t} to t_prev = {t_prev}", mistakes))
    return cases


@exercise(
    "DDIM (eta = 0) first estimates the clean image from the predicted noise, x0_hat = (x_t - sqrt(1 - "
    "alpha_bar_t) eps_hat) / sqrt(alpha_bar_t): your my_eps_to_x0.",
    "Then it puts x0_hat back at the noise level alpha_bar_prev with the same predicted noise and no new "
    "noise: sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat.",
)
def check_ddim_step(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x_t, eps_hat, alpha_bar_t, alpha_bar_prev) -> x_prev``, one DDIM step with eta = 0
    (Song et al. 2021, eq. 12), against the library's ``ddim_sample``:

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)
        x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat

    x_t, eps_hat: [B, C, H, W];  alpha_bar_t, alpha_bar_prev: 0-d tensors. Returns True if correct.
    """
    return run_cases("your ddim_step", fn, _ddim_step_cases(seed),
                "your ddim_step takes the same step as the library's ddim_sample (eta = 0), "
                "from t = 999 down to t = 0.")


# --------------------------------------------------------------------------- chapter 1: the simple loss


class ProbeDenoiser(nn.Module):
    """A fixed stand-in for a trained eps-network, for checking training and sampling code:

        eps_hat(x_t, t) = 0.8 tanh(x_t) + 0.3 sin(0.37 t + c)        (c = 0, 1, 2, ... per channel)

    It has no parameters; its answer changes with every single step t (so calling it at the wrong
    timestep shows) and with x_t (so feeding it the wrong image shows). Records the batch size of
    every call in ``calls``.
    """

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0]:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"the model takes t as a tensor [B] = [{x.shape[0]}] (one timestep per image), got {shape}")
        self.calls.append(x.shape[0])
        phase = 0.37 * t.to(x.dtype)[:, None] + torch.arange(x.shape[1], dtype=x.dtype)  # [B, C]
        return 0.8 * torch.tanh(x) + 0.3 * torch.sin(phase)[:, :, None, None]


def _simple_loss_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 5)
    model = ProbeDenoiser()
    cases = []
    for schedule, t in [(NoiseSchedule.linear(1000), [0, 3, 420, 999]),
                        (NoiseSchedule.cosine(1000), [1, 90, 500, 870, 998]),
                        (NoiseSchedule.linear(1000), [2, 15, 60, 250, 640, 900])]:
        shape = (len(t), 3, 8, 8)
        x0 = torch.rand(shape, generator=g) * 2 - 1  # [B, C, H, W] in [-1, 1]
        noise = torch.randn(shape, generator=g)
        t = torch.tensor(t, dtype=torch.long)  # [B]
        with torch.no_grad():
            expected = diffusion_loss(model, schedule, x0, "eps", t=t, noise=noise)  # 0-d
            ab, alpha = gather(schedule.alpha_bar, t), gather(schedule.alphas, t)  # [B, 1, 1, 1]
            ab_prev = gather(schedule.alpha_bar_prev, t)

            def mse(target, x_t, t_model=t):
                return (target - model(x_t, t_model)).square().mean()

            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            per_pixel = (noise - model(x_t, t)).square()  # [B, C, H, W]
            mistakes = {
                "you forgot both square roots in x_t: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps":
                    mse(noise, ab * x0 + (1 - ab) * noise),
                "the noise coefficient of x_t needs a square root: sqrt(1 - alpha_bar_t)":
                    mse(noise, ab.sqrt() * x0 + (1 - ab) * noise),
                "the signal coefficient of x_t needs a square root: sqrt(alpha_bar_t)":
                    mse(noise, ab * x0 + (1 - ab).sqrt() * noise),
                "you used alpha_t = 1 - beta_t where the jump from x_0 needs alpha_bar_t (`schedule.alpha_bar[t]`)":
                    mse(noise, alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise),
                "you used alpha_bar of the step before t (alpha_bar_prev): timesteps are 0-indexed, "
                "use `schedule.alpha_bar[t]`": mse(noise, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * noise),
                "the model is asked at t + 1: in this course t is already the 0-indexed step the image was "
                "noised to, so call model(x_t, t)": mse(noise, x_t, t + 1),
                "the target is the noise eps that was added, not the clean image x_0 (this is an "
                "eps-prediction model, Ho et al.'s Algorithm 1)": mse(x0, x_t),
                "the model must see the noisy x_t, not the clean x_0": mse(noise, x0),
                "the loss is the *mean* of the squared errors over all numbers (F.mse_loss), not their sum":
                    per_pixel.sum(),
                "the loss is the mean over every number, not a sum over the pixels of each image averaged "
                "over the batch": per_pixel.flatten(1).sum(1).mean(),
                "square the errors: the simple loss is a mean *squared* error, not an absolute one":
                    (noise - model(x_t, t)).abs().mean(),
                "the root of the mean squared error is not the loss: no square root at the end":
                    per_pixel.mean().sqrt(),
            }
        cases.append(Case((model, schedule, x0, t, noise), expected,
                          f"{schedule.name} schedule, x0 of shape {list(shape)}, t = {t.tolist()}", mistakes))
    return cases


@exercise(
    "Ho et al.'s Algorithm 1: noise x0 to x_t with the noise you are given (your my_q_sample of exercise "
    "1 does it), ask the model for its prediction `model(x_t, t)`, and compare the prediction with that "
    "noise.",
    "The loss is the mean squared error over every number (batch, channels, pixels): the mean of (noise - "
    "prediction) ** 2, a 0-d tensor.",
)
def check_simple_loss(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(model, schedule, x0, t, noise) -> loss``, the simple loss of DDPM training
    (Ho et al. 2020, Algorithm 1 and eq. 14), against ``parameterization.diffusion_loss`` with the same
    t and noise:

        x_t  = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        loss = mean over every number of (eps - model(x_t, t))^2         # a 0-d tensor

    model: ``model(x_t [B, C, H, W], t [B]) -> eps_hat [B, C, H, W]`` (here a fixed
    :class:`ProbeDenoiser`); x0, noise: [B, C, H, W]; t: [B] integer timesteps (0-indexed).
    Prints the verdict; returns True if correct.
    """
    return run_cases("your simple_loss", fn, _simple_loss_cases(seed),
                "your simple_loss equals parameterization.diffusion_loss for the same t and noise "
                "(linear and cosine schedules, t from 0 to 999).",
                shape_hint="The loss is one number, a 0-d tensor: average over every element, e.g. "
                           "`((noise - eps_hat) ** 2).mean()`.")


# --------------------------------------------------------------------------- chapter 1: one ancestral step


def _library_ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, eps_hat: torch.Tensor, t: int,
                       z: torch.Tensor) -> torch.Tensor:
    """One step of the library's ``ddpm_sample`` (clip_x0=False, sigma_t^2 = beta_tilde_t) with noise z:
    the posterior mean ``NoiseSchedule.q_posterior`` at x0_hat, plus sigma_t z for t > 0."""
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long)
    x0_hat = eps_to_x0(eps_hat, x_t, gather(schedule.alpha_bar, t_batch))
    mean, var, _ = schedule.q_posterior(x0_hat, x_t, t_batch)
    return mean + var.sqrt() * z if t > 0 else mean


def _ddpm_step_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 6)
    cases = []
    for schedule, t in [(NoiseSchedule.linear(1000), 999), (NoiseSchedule.linear(1000), 600),
                        (NoiseSchedule.cosine(1000), 300), (NoiseSchedule.linear(1000), 37),
                        (NoiseSchedule.linear(1000), 1), (NoiseSchedule.linear(1000), 0)]:
        x_t = torch.randn(3, 3, 8, 8, generator=g) * (1.0 if t > 100 else 0.6)
        eps_hat = torch.randn(3, 3, 8, 8, generator=g)
        z = torch.randn(3, 3, 8, 8, generator=g)
        expected = _library_ddpm_step(schedule, x_t, eps_hat, t, z)
        a, ab, beta = schedule.alphas[t], schedule.alpha_bar[t], schedule.betas[t]  # 0-d tensors
        beta_tilde = schedule.posterior_variance[t]
        sigma = beta_tilde.sqrt() if t > 0 else torch.tensor(0.0)
        mean = (x_t - beta / (1 - ab).sqrt() * eps_hat) / a.sqrt()  # eq. 11
        x0_hat = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
        mistakes: dict[str, torch.Tensor] = {}  # the first match is named: the t-specific ones first
        if t > 0:
            mistakes["no noise was added: x_{t-1} = mean + sigma_t z for every t > 0" + (
                " (timesteps are 0-indexed: t = 1 here is the paper's t = 2; only t = 0, the paper's "
                "t = 1, is noise-free)" if t == 1 else "")] = mean
            mistakes["this course uses sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) "
                     "beta_t (`schedule.posterior_variance[t]`, the default of ddpm_sample); you used "
                     "sigma_t^2 = beta_t, Ho et al.'s other choice"] = mean + beta.sqrt() * z
        else:
            mistakes["no noise at t = 0: the last step returns the mean (x_0 is the sample), "
                     "add sigma_t z only for t > 0"] = mean + beta.sqrt() * z
            mistakes["no noise at t = 0: the last step returns the mean; `posterior_log_variance_clipped` "
                     "replaces beta_tilde_0 = 0 by beta_tilde_1, so it must not be used there"] = (
                mean + (0.5 * schedule.posterior_log_variance_clipped[0]).exp() * z)
        mistakes.update({
            "the 1/sqrt(alpha_t) factor is missing: x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat)"
            " / sqrt(alpha_t) + sigma_t z": mean * a.sqrt() + sigma * z,
            "divide by sqrt(alpha_t) (one step, `schedule.alphas[t]`), not by sqrt(alpha_bar_t)":
                mean * a.sqrt() / ab.sqrt() + sigma * z,
            "the eps_hat coefficient is beta_t / sqrt(1 - alpha_bar_t): a square root is missing":
                (x_t - beta / (1 - ab) * eps_hat) / a.sqrt() + sigma * z,
            "the eps_hat coefficient is beta_t / sqrt(1 - alpha_bar_t), the share of the noise removed in "
            "one step, not sqrt(1 - alpha_bar_t), all of it":
                (x_t - (1 - ab).sqrt() * eps_hat) / a.sqrt() + sigma * z,
            "the predicted noise must be subtracted from x_t, not added":
                (x_t + beta / (1 - ab).sqrt() * eps_hat) / a.sqrt() + sigma * z,
            "sigma_t is a standard deviation: multiply z by sqrt(beta_tilde_t), not by the variance beta_tilde_t":
                mean + (beta_tilde * z if t > 0 else 0 * z),
            "you returned the predicted x_0; the step goes to x_{t-1}, one noise level down": x0_hat,
            "you clipped x0_hat to [-1, 1]: ddpm_sample does that by default (clip_x0=True), but this "
            "exercise is Algorithm 2 as written, the eps form without clipping":
                schedule.q_posterior(x0_hat.clamp(-1, 1), x_t, torch.full((3,), t))[0] + sigma * z,
        })
        cases.append(Case((schedule, x_t, eps_hat, t, z), expected,
                          f"{schedule.name} schedule, t = {t}", mistakes))
    return cases


@exercise(
    "Read the schedule at this step: `schedule.alphas[t]`, `schedule.alpha_bar[t]` and "
    "`schedule.betas[t]` (t is one integer here, so these are single numbers that broadcast over the "
    "batch).",
    "The mean is (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_t); the noise's standard "
    "deviation is sigma_t = sqrt(schedule.posterior_variance[t]), times the z you are given.",
    "The last step (t = 0) adds no noise: return the mean alone there.",
)
def check_ddpm_step(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(schedule, x_t, eps_hat, t, z) -> x_{t-1}``, one step of ancestral sampling
    (Ho et al. 2020, Algorithm 2, with eq. 11's mean), against the library's ``ddpm_sample``
    (``clip_x0=False``, ``variance="beta_tilde"``), i.e. ``NoiseSchedule.q_posterior`` at x0_hat:

        x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z
        sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,   no noise at t = 0

    schedule: a ``NoiseSchedule``; x_t, eps_hat, z: [B, C, H, W]; t: a Python int, the 0-indexed step
    (the same for the whole batch, as in the sampler). Prints the verdict; returns True if correct.
    """
    return run_cases("your ddpm_step", fn, _ddpm_step_cases(seed),
                "your ddpm_step takes the same step as the library's ddpm_sample (clip_x0=False) with the "
                "same z, from t = 999 down to t = 0.")
