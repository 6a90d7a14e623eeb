"""Checks for the notebooks' exercises: is the learner's function right, and if not, why not?

Each ``check_*`` function calls the learner's function on a few random test batches, compares
the result with the library's own implementation, prints ``Correct!`` or a diagnosis, and
returns True or False. A diagnosis names the first problem found, in this order:

1. the function is not written yet (``NotImplementedError``) or raised an error (with a hint
   for the usual ones, e.g. a [B] tensor that does not broadcast against [B, C, H, W] images);
2. it returned something that is not a tensor, or a tensor of the wrong shape;
3. it changed its inputs in place, or gives a different answer when called twice (random);
4. its result equals what a *known mistake* would give (alpha_t for alpha_bar_t, a forgotten
   square root, swapped coefficients, ...): the message says which one;
5. otherwise, how far it is from the library's answer, and where.

Chapter 1: :func:`check_q_sample`, :func:`check_eps_to_x0`, :func:`check_simple_loss` (Ho et al.'s
Algorithm 1), :func:`check_ddpm_step` (Algorithm 2), :func:`check_ddim_step`.
Chapter 2: :func:`check_adagn_modulation`; stretch: :func:`check_online_softmax_attention`.
Chapter 3: :func:`check_cross_attention`, :func:`check_classifier_free_guidance` (one batched pass).
Chapter 4: :func:`check_gaussian_kl` (the reparameterisation and the KL of a diagonal Gaussian).
Chapter 5: :func:`check_rf_loss` (the rectified-flow loss), :func:`check_euler_step` (one step of the ODE).
Chapter 6: :func:`check_gated_residual` (adaLN-Zero's modulate and gate), :func:`check_joint_attention`
(one attention over [text, image], split back).

**Stuck?** Every check has hints, each saying a little more than the one before, and a worked solution:
``check_q_sample.hint()``, ``check_q_sample.hint(2)``, ..., then ``check_q_sample.solution()`` (read from the
cell tagged ``solution`` in the chapter's notebook, the one source of the solutions). A "Not yet" verdict
ends by saying so.

Checks of code that calls a network pass it a fixed stand-in (:class:`ProbeDenoiser`,
:class:`ProbeConditionalDenoiser`): no training needed, and it records how it was called.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass, field
from typing import Callable

import nbformat
import torch
from einops import rearrange
from torch import nn

from .attention import einsum_attention
from .autoencoder import DiagonalGaussianDistribution
from .guidance import ClassifierFreeGuidance
from .parameterization import diffusion_loss, eps_to_x0
from .samplers import ddim_sample
from .schedules import NoiseSchedule, gather

__all__ = ["check_q_sample", "check_eps_to_x0", "check_simple_loss", "check_ddpm_step", "check_ddim_step",
           "check_adagn_modulation", "check_online_softmax_attention", "check_cross_attention",
           "check_classifier_free_guidance", "check_gaussian_kl", "check_rf_loss", "check_euler_step",
           "check_gated_residual", "check_joint_attention",
           "solved", "hint", "solution", "ProbeDenoiser", "ProbeConditionalDenoiser"]


@dataclass
class Case:
    """One test of the learner's function: its inputs, the right answer, and known wrong answers."""

    args: tuple
    expected: torch.Tensor
    description: str
    mistakes: dict[str, torch.Tensor] = field(default_factory=dict)  # diagnosis -> what that mistake returns


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to float32 rounding, relative to the size of the values."""
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * max(scale, 1.0)))


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _hint_for(err: Exception) -> str:
    text = str(err)
    if "must match the size of tensor" in text or "broadcast" in text:
        return (" Hint: a per-example quantity such as alpha_bar[t] has shape [B]; reshape it to "
                "[B, 1, 1, 1] (e.g. `.view(-1, 1, 1, 1)`, or `schedules.gather`) so that it "
                "broadcasts over the channels and pixels of each image.")
    if "only one element tensors" in text or "must be real number, not Tensor" in text:
        return (" Hint: `math.sqrt` takes a single number; on tensors use `torch.sqrt(x)` or `x ** 0.5`.")
    if "index" in text and "out of bounds" in text:
        return (" Hint: timesteps are 0-indexed (0..T-1) in this course; index the schedule's tensors "
                "with t directly.")
    return ""


def solved(check: Callable[..., bool], *functions: Callable) -> bool:
    """``check(*functions)`` without its printed verdict: True when the learner's functions are right.

    A later cell that runs the learner's function uses it to fall back on the library until the exercise
    is solved, so a notebook with its exercises still open (the student build) runs from top to bottom."""
    with contextlib.redirect_stdout(io.StringIO()):
        return bool(check(*functions))


def hint(check: Callable, level: int = 1) -> None:
    """Print hint number ``level`` (1, 2, ...) of an exercise, e.g. ``hint(check_q_sample)``, also
    written ``check_q_sample.hint()``. Each hint says a little more than the one before; after the last one,
    :func:`solution` shows a worked solution."""
    name, hints = getattr(check, "exercise", None), getattr(check, "hints", ())
    if name is None:
        raise ValueError(f"{getattr(check, '__name__', check)!r} is not one of the course's checks: pass the check, "
                         "e.g. hint(check_q_sample)")
    if not isinstance(level, int) or not 1 <= level <= len(hints):
        raise ValueError(f"{check.__name__} has hints 1 to {len(hints)}, not {level!r}")
    text = f"Hint {level} of {len(hints)} ({name}): {hints[level - 1]}"
    if level < len(hints):
        text += f"\n(More: {check.__name__}.hint({level + 1}).)"
    else:
        text += f"\n(That was the last hint; {check.__name__}.solution() shows a worked solution.)"
    print(text)


def solution(check: Callable) -> None:
    """Print the worked solution of an exercise (also ``check_q_sample.solution()``): the code cell
    tagged ``solution`` in the chapter's notebook that runs this check. Try the hints first: typing the
    answer yourself is how it sticks."""
    from .classroom import SOLUTION, sources  # the notebooks are the one source of the solutions

    name = getattr(check, "__name__", str(check))
    call = f"{name}("
    notebooks = sources()
    for path in notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and SOLUTION in cell.metadata.get("tags", []) and call in cell.source:
                print(f"A solution, from {path.parent.name}/{path.name}:\n\n{cell.source.strip()}")
                return
    if not notebooks:
        raise LookupError("the solutions are read from the course's notebooks/ folder, and this installation has "
                          "none: work in a clone of the course's repository")
    raise LookupError(f"no cell tagged {SOLUTION!r} calls {call}...) in {notebooks[0].parent}")


def _exercise(*hints: str) -> Callable:
    """Give a check its hints and its solution, ``check_q_sample.hint(level)`` and ``check_q_sample.solution()``,
    and make a "Not yet" verdict end by saying so."""
    def attach(check: Callable[..., bool]) -> Callable[..., bool]:
        @functools.wraps(check)
        def checked(*args, **kwargs) -> bool:
            ok = check(*args, **kwargs)
            if not ok:
                print(f"Stuck? {check.__name__}.hint() gives a hint ({len(hints)} in all, one at a time), "
                      f"{check.__name__}.solution() a worked solution.")
            return ok

        checked.exercise = check.__name__.removeprefix("check_")
        checked.hints = hints
        checked.hint = functools.partial(hint, checked)
        checked.solution = functools.partial(solution, checked)
        return checked
    return attach


def _verdict(ok: bool, message: str) -> bool:
    print(("Correct! " if ok else "Not yet: ") + message)
    return ok


def _run(name: str, fn: Callable, cases: list[Case], summary: str,
         hint_for: Callable[[Exception], str] = _hint_for,
         shape_hint: str = ("The result should have the shape of the images; check how the per-example "
                            "coefficients broadcast."),
         nonfinite_hint: str = ("look for a division by zero, the square root of a negative number, or a "
                                "softmax over a row whose scores are all -inf.")) -> bool:
    """Run ``fn`` on every case; print and return the verdict (see the module docstring)."""
    if not callable(fn):
        return _verdict(False, f"expected a function, got {type(fn).__name__}.")
    for case in cases:
        args = _clone(case.args)
        try:
            out = fn(*args)
        except NotImplementedError:
            return _verdict(False, f"{name} is not written yet: replace the `raise NotImplementedError` "
                                   "line with your code, then run the cell again.")
        except Exception as err:  # noqa: BLE001 - any error is the learner's to see
            return _verdict(False, f"{name} raised {type(err).__name__}: {err} ({case.description}).{hint_for(err)}")
        if not isinstance(out, torch.Tensor):
            return _verdict(False, f"{name} should return a torch.Tensor, got {type(out).__name__} "
                                   f"({case.description}). Did you forget the `return`?")
        if out.shape != case.expected.shape:
            return _verdict(False, f"{name} returned shape {tuple(out.shape)}, expected {tuple(case.expected.shape)} "
                                   f"({case.description}). {shape_hint}")
        changed = [i for i, (a, b) in enumerate(zip(args, case.args))
                   if isinstance(a, torch.Tensor) and not torch.equal(a, b)]
        if changed:
            return _verdict(False, f"{name} changed its input argument(s) {changed} in place (e.g. with `+=` or "
                                   "`mul_`); compute a new tensor instead.")
        if _close(out, case.expected):
            continue
        if not torch.isfinite(out).all():
            return _verdict(False, f"{name} returned NaN or infinite values ({case.description}): {nonfinite_hint}")
        try:
            again = fn(*_clone(case.args))
        except Exception:  # noqa: BLE001 - a second call that fails is as bad as a different answer
            again = None
        if not (isinstance(again, torch.Tensor) and torch.equal(again, out)):
            return _verdict(False, f"{name} gave two different answers for the same inputs: it draws random "
                                   "numbers. Use the noise you are given instead of drawing new noise.")
        for diagnosis, wrong in case.mistakes.items():
            if _close(out, wrong):
                return _verdict(False, f"{diagnosis} ({case.description}).")
        err = (out.double() - case.expected.double()).abs()
        worst = int(err.flatten(1).amax(1).argmax()) if err.ndim > 1 else 0
        return _verdict(False, f"{name} differs from the library's answer by up to {float(err.max()):.3g} "
                               f"({case.description}; worst in example {worst}). Compare your formula with "
                               "the one in the text, term by term.")
    return _verdict(True, summary) if summary else True  # no summary: the caller checks more and says


# --------------------------------------------------------------------------- q_sample


def _q_sample_cases(seed: int) -> list[Case]:
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


@_exercise(
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
    return _run("your q_sample", fn, _q_sample_cases(seed),
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


@_exercise(
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
    return _run("your eps_to_x0", fn, _eps_to_x0_cases(seed),
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


@_exercise(
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
    return _run("your ddim_step", fn, _ddim_step_cases(seed),
                "your ddim_step takes the same step as the library's ddim_sample (eta = 0), "
                "from t = 999 down to t = 0.")


# --------------------------------------------------------------------------- chapter 2: AdaGN modulation


def _adagn_hint(err: Exception) -> str:
    text = str(err)
    if "must match the size of tensor" in text or "broadcast" in text:
        return (" Hint: scale and shift have shape [B, C]; reshape them to [B, C, 1, 1] (e.g. "
                "`scale[:, :, None, None]`) so that they act on every pixel of each channel.")
    if "chunk" in text or "split" in text or "unpack" in text:
        return " Hint: emb_out has 2 C channels; `scale, shift = emb_out.chunk(2, dim=1)` gives two [B, C] halves."
    return ""


def _adagn_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 3)
    cases = []
    for B, C, H, W, groups in [(2, 8, 4, 4, 4), (3, 16, 2, 8, 8), (4, 4, 4, 4, 4)]:  # B = W = 4 in the last: silent broadcast
        h = torch.randn(B, C, H, W, generator=g) * 3 + 1
        emb_out = torch.randn(B, 2 * C, generator=g) * 0.5
        norm = nn.GroupNorm(groups, C)
        with torch.no_grad():  # a trained norm has its own affine parameters: make them visible
            norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=g))
            norm.bias.copy_(0.3 * torch.randn(C, generator=g))
        scale, shift = rearrange(emb_out, "b (two c) -> two b c 1 1", two=2)  # [B, C, 1, 1] each
        with torch.no_grad():
            normed = norm(h)
            expected = normed * (1 + scale) + shift
            mistakes = {
                "scale and shift are swapped: the first C channels of emb_out are the scale, the last C the shift":
                    normed * (1 + shift) + scale,
                "multiply by (1 + scale), not by scale: with scale = 0 at the start of training the block "
                "must pass norm(h) through unchanged": normed * scale + shift,
                "the modulation goes *after* the norm: norm(h) * (1 + scale) + shift; applied before it, "
                "GroupNorm normalises most of it away again": norm(h * (1 + scale) + shift),
                "you added the shift but forgot the scale (that is additive conditioning after the norm)":
                    normed + shift,
                "you applied the scale but forgot the shift": normed * (1 + scale),
                "apply the norm: h must be normalised with `norm(h)` before it is modulated": h * (1 + scale) + shift,
            }
            if (H, W) == (B, C):  # [B, C] against [B, C, H, W] broadcasts along (H, W) without an error
                flat_scale, flat_shift = emb_out.chunk(2, dim=1)  # [B, C] each
                mistakes["scale and shift must be reshaped to [B, C, 1, 1]: as [B, C] they broadcast against the "
                          "last two dimensions (H, W) of h and silently modulate the wrong numbers"] = (
                    normed * (1 + flat_scale) + flat_shift)
        cases.append(Case((h, emb_out, norm), expected,
                          f"B={B}, C={C}, {H}x{W} feature maps, GroupNorm({groups}, {C})", mistakes))
    return cases


@_exercise(
    "emb_out holds the scale and the shift side by side: `emb_out.chunk(2, dim=1)` splits it into two [B, "
    "C] tensors, the scale first.",
    "Normalise first, `norm(h)`; each [B, C] tensor then needs two trailing axes to broadcast over [B, C, "
    "H, W]: `scale[:, :, None, None]`.",
    "Multiply by (1 + scale), not by scale: a zero scale (the start of training) must leave the "
    "normalised features unchanged.",
)
def check_adagn_modulation(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(h, emb_out, norm) -> h_mod``, the AdaGN modulation of ``unet.AdaGNResBlock``
    (Nichol & Dhariwal 2021, "use_scale_shift_norm"):

        scale, shift = emb_out split in two halves         # emb_out [B, 2C] -> [B, C] each
        h_mod = norm(h) * (1 + scale) + shift             # broadcast over H, W

    h: [B, C, H, W];  emb_out: [B, 2C] (what ``emb_proj(SiLU(emb))`` gives);  norm: an ``nn.GroupNorm``.
    Prints the verdict; returns True if correct.
    """
    return _run("your adagn_modulation", fn, _adagn_cases(seed),
                "your adagn_modulation matches AdaGNResBlock's scale-and-shift after the GroupNorm.",
                hint_for=_adagn_hint)


# --------------------------------------------------------------------------- chapter 3: cross-attention


def _cross_attention_hint(err: Exception) -> str:
    text = str(err)
    if "mat1 and mat2" in text or "size of tensor" in text or "broadcast" in text or "shapes cannot be multiplied" in text:
        return (" Hint: queries come from the image tokens x [B, N, D_x] (x @ w_q: [B, N, d]); keys and values from "
                "the text tokens context [B, M, D_c] (context @ w_k, context @ w_v: [B, M, d]); the scores "
                "q @ k.transpose(-2, -1) are [B, N, M], and the mask [B, M] becomes mask[:, None, :].")
    if "masked_fill" in text or "Boolean" in text or "bool" in text:
        return " Hint: mask is boolean with True = real token; fill the *padding* with -inf: scores.masked_fill(~mask[:, None, :], float('-inf'))."
    return ""


def _cross_attention_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 4)
    cases = []
    for B, N, M, D_x, D_c, d in [(2, 16, 5, 12, 10, 8), (3, 9, 7, 8, 6, 4), (2, 7, 7, 6, 6, 6)]:
        x = torch.randn(B, N, D_x, generator=g)
        context = torch.randn(B, M, D_c, generator=g)
        mask = torch.ones(B, M, dtype=torch.bool)
        mask[0, M - 2:] = False  # the first caption is padded
        mask[-1, M // 2:] = False  # the last one more so
        context[~mask] = 10 * torch.randn(int((~mask).sum()), D_c, generator=g)  # loud padding: ignoring the mask shows
        w_q, w_k, w_v = (torch.randn(D, d, generator=g) / D**0.5 for D in (D_x, D_c, D_c))
        q, k, v = x @ w_q, context @ w_k, context @ w_v  # [B, N, d], [B, M, d], [B, M, d]
        scores = q @ k.transpose(-2, -1) / d**0.5  # [B, N, M]
        key_mask = mask[:, None, :]  # [B, 1, M]

        def softmax_masked(s):
            return s.masked_fill(~key_mask, float("-inf")).softmax(-1)

        expected = softmax_masked(scores) @ v
        mistakes = {
            "the padding mask is ignored: padded text tokens must get zero attention "
            "(fill their scores with -inf before the softmax)": scores.softmax(-1) @ v,
            "the scores must be divided by sqrt(d), the width of q and k": softmax_masked(q @ k.transpose(-2, -1)) @ v,
            "the softmax goes over the text tokens (the last dimension of the [B, N, M] scores): each image "
            "position's weights over the caption sum to 1": (scores.masked_fill(~key_mask, -1e9).softmax(1)) @ v,
            "the mask is inverted: True marks a real token, so fill the scores where mask is False":
                torch.nan_to_num(scores.masked_fill(key_mask, float("-inf")).softmax(-1)) @ v,
            "the values come from the text (context @ w_v), not from the keys": softmax_masked(scores) @ k,
        }
        if (N, D_x) == (M, D_c):  # keys and values from x by mistake run without an error only here
            mistakes["keys and values must come from the text (context), not from the image tokens x: "
                     "that would be self-attention"] = softmax_masked(q @ (x @ w_k).transpose(-2, -1) / d**0.5) @ (x @ w_v)
        cases.append(Case((x, context, mask, w_q, w_k, w_v), expected,
                          f"B={B}, {N} image tokens of width {D_x}, {M} text tokens of width {D_c}, d={d}", mistakes))
    return cases


@_exercise(
    "The queries come from the image tokens, the keys and values from the text: q = x @ w_q, k = context "
    "@ w_k, v = context @ w_v.",
    "scores = q @ k^T / sqrt(d) is [B, N, M]. mask [B, M] is True for real tokens: set the padded columns "
    "to -inf (`masked_fill(~mask[:, None, :], float('-inf'))`) before the softmax over the last axis, "
    "then multiply by v.",
)
def check_cross_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x, context, mask, w_q, w_k, w_v) -> out``, single-head cross-attention (the image asks,
    the text answers; Rombach et al. 2022, Sec. 3.3):

        Q = x W_q,  K = c W_k,  V = c W_v
        out = softmax(Q K^T / sqrt(d) + log mask) V      # padded text tokens get weight exactly 0

    x: [B, N, D_x] image tokens;  context: [B, M, D_c] text tokens;  mask: [B, M] bool, True = real token;
    w_q: [D_x, d], w_k, w_v: [D_c, d];  out: [B, N, d]. Prints the verdict; returns True if correct.
    """
    return _run("your cross_attention", fn, _cross_attention_cases(seed),
                "your cross_attention matches softmax(Q K^T / sqrt(d)) V with the padding masked, "
                "for captions of several lengths.", hint_for=_cross_attention_hint)


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


@_exercise(
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
    return _run("your simple_loss", fn, _simple_loss_cases(seed),
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


@_exercise(
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
    return _run("your ddpm_step", fn, _ddpm_step_cases(seed),
                "your ddpm_step takes the same step as the library's ddpm_sample (clip_x0=False) with the "
                "same z, from t = 999 down to t = 0.")


# --------------------------------------------------------------------------- chapter 3: batched guidance


class ProbeConditionalDenoiser(nn.Module):
    """A fixed stand-in for a text-conditional eps-network, ``model(x, t, context) -> [B, C, H, W]``,
    which records the batch size of every call in ``calls``:

        out = 0.7 tanh(x) + tanh(mean over tokens of context)[:, :C] + 0.1 sin(0.3 t)

    Every image's answer depends only on its own x, t and context (as a real network's in eval mode).
    """

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        if not isinstance(t, torch.Tensor) or t.shape != (B,):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must have shape [{B}], one timestep per image of x (got {shape}); "
                             "when x is doubled to [x; x], double t too: torch.cat([t, t])")
        if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != B:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context must have shape [{B}, M, D], one caption per image of x (got {shape}); "
                             "with x doubled, pass torch.cat([cond, uncond])")
        self.calls.append(B)
        text = torch.tanh(context.mean(dim=1)[:, :C])  # [B, C]
        return 0.7 * torch.tanh(x) + text[:, :, None, None] + 0.1 * torch.sin(0.3 * t.to(x.dtype))[:, None, None, None]


def _cfg_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 7)
    cases = []
    for B, M, D, w in [(2, 5, 8, 3.0), (3, 4, 6, 7.5), (4, 6, 8, 0.5)]:
        model = ProbeConditionalDenoiser()
        x = torch.randn(B, 4, 4, 4, generator=g)
        t = torch.randint(0, 1000, (B,), generator=g)
        cond = torch.randn(B, M, D, generator=g)
        uncond = (0.3 * torch.randn(1, M, D, generator=g)).expand(B, M, D).clone()  # the empty caption, per image
        with torch.no_grad():
            expected = ClassifierFreeGuidance(lambda x_, t_, c_, m_: model(x_, t_, c_), cond,
                                              uncond_context=uncond, scale=w)(x, t)
            e_c, e_u = model(x, t, cond), model(x, t, uncond)
        model.calls.clear()
        mistakes = {
            "the halves are swapped: the guided prediction starts at the *unconditional* one and moves towards "
            "the conditional one, uncond + w (cond - uncond); check the order of torch.cat([cond, uncond]) "
            "and of out.chunk(2)": e_c + w * (e_u - e_c),
            "that is Ho & Salimans' form (1 + w) cond - w uncond with their w; the course (like Stable "
            "Diffusion) writes uncond + w (cond - uncond), where w = 1 is the plain conditional model":
                e_c + w * (e_c - e_u),
            "w multiplies the difference (cond - uncond), then the unconditional prediction is added: "
            "uncond + w (cond - uncond)": e_u + w * e_c - e_u,
            "w goes on the difference only: uncond + w (cond - uncond), not w (uncond + cond - uncond)":
                w * e_c,
            "your result is the conditional prediction alone: either both halves of the batch got the caption "
            "(the second half needs uncond) or w was not applied": e_c,
            "your result is the unconditional prediction alone: the first half of the batch needs the "
            "caption, cond": e_u,
        }
        cases.append(Case((model, x, t, cond, uncond, w), expected,
                          f"B={B}, captions of {M} tokens of width {D}, w = {w}", mistakes))
    return cases


def _cfg_hint(err: Exception) -> str:
    text = str(err)
    if "must match the size of tensor" in text or "Sizes of tensors must match" in text:
        return (" Hint: concatenate along the batch dimension: torch.cat([x, x]) is [2B, C, H, W], "
                "torch.cat([cond, uncond]) is [2B, M, D], torch.cat([t, t]) is [2B].")
    return ""


@_exercise(
    "One call on 2B images: `torch.cat([x, x])`, the timesteps twice, and the two contexts stacked in the "
    "same order, `torch.cat([cond, uncond])`.",
    "Split the output with `.chunk(2)`: the first half belongs to cond, the second to uncond. Then "
    "eps_uncond + w (eps_cond - eps_uncond).",
)
def check_classifier_free_guidance(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(model, x, t, cond, uncond, w) -> eps_guided``, classifier-free guidance with ONE
    batched forward pass (Ho & Salimans 2022, eq. 6, in the course's and Stable Diffusion's convention),
    against ``guidance.ClassifierFreeGuidance``:

        out = model([x; x], [t; t], [cond; uncond])           # one call on a batch of 2B
        eps_cond, eps_uncond = the two halves of out          # [B, C, H, W] each
        eps_guided = eps_uncond + w (eps_cond - eps_uncond)

    model: ``model(x [B, C, H, W], t [B], context [B, M, D])``; x: [B, C, H, W]; t: [B]; cond, uncond:
    [B, M, D] (the caption's and the empty caption's tokens); w: a float. The check also counts the
    model's calls: exactly one, on 2B images. Prints the verdict; returns True if correct.
    """
    name = "your classifier_free_guidance"
    if not _run(name, fn, _cfg_cases(seed), "", hint_for=_cfg_hint):
        return False
    case = _cfg_cases(seed + 100)[0]
    model, B = case.args[0], case.args[1].shape[0]
    with torch.no_grad():
        fn(*_clone(case.args))
    if model.calls == [2 * B]:
        return _verdict(True, f"{name} matches guidance.ClassifierFreeGuidance for w in (0.5, 3, 7.5), with one "
                              f"forward pass on the doubled batch of 2B images.")
    if model.calls == [B, B]:
        return _verdict(False, f"{name} gives the right numbers but calls the model twice on B = {B} images. "
                               "Run both predictions in one call: model(torch.cat([x, x]), torch.cat([t, t]), "
                               "torch.cat([cond, uncond])), then split the output with .chunk(2).")
    return _verdict(False, f"{name} gives the right numbers, but the model was called {len(model.calls)} time(s) "
                           f"with batch sizes {model.calls}; expected exactly one call on 2B = {2 * B} images.")


# --------------------------------------------------------------------------- chapter 2 (stretch): online softmax


def _online_softmax_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            chunk_size: int, *, rescale_o: bool = True, rescale_l: bool = True,
                            scale: bool = True, guard_empty_rows: bool = True) -> torch.Tensor:
    """The online softmax over key chunks, with switches that reproduce the usual mistakes."""
    if scale:
        q = q * q.shape[-1] ** -0.5
    m = q.new_full((*q.shape[:-1], 1), float("-inf"))  # [B, h, Nq, 1]
    l = q.new_zeros((*q.shape[:-1], 1))  # [B, h, Nq, 1]
    o = q.new_zeros((*q.shape[:-1], v.shape[-1]))  # [B, h, Nq, d_v]
    for start in range(0, k.shape[-2], chunk_size):
        cols = slice(start, start + chunk_size)
        s = q @ k[:, :, cols].transpose(-2, -1)  # [B, h, Nq, chunk]
        if mask is not None:
            s = s.masked_fill(~mask[..., cols], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        # a row whose keys so far are all masked has m = -inf: shift it by 0 (exp(-inf) = 0), not by -inf (NaN)
        shift = m_new.masked_fill(m_new == float("-inf"), 0.0) if guard_empty_rows else m_new
        p = torch.exp(s - shift)
        c = torch.exp(m - shift)
        l = (l * c if rescale_l else l) + p.sum(dim=-1, keepdim=True)
        o = (o * c if rescale_o else o) + p @ v[:, :, cols]
        m = m_new
    return o / torch.where(l == 0, 1.0, l)


def _online_softmax_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 8)
    cases = []
    for B, h, Nq, Nk, d, chunk, masked in [(2, 2, 5, 16, 8, 4, False), (2, 3, 6, 13, 8, 5, True),
                                           (1, 2, 7, 20, 4, 3, True)]:
        q = 2.0 * torch.randn(B, h, Nq, d, generator=g)  # spread-out scores: the running max changes often
        k, v = torch.randn(B, h, Nk, d, generator=g), torch.randn(B, h, Nk, d, generator=g)
        mask = None
        if masked:
            mask = torch.rand(B, h, Nq, Nk, generator=g) > 0.3  # True = may attend
            mask[0, 0, 1] = False  # a query that may attend to no key at all: its output is 0
            mask[-1, -1, 2, :chunk + 1] = False  # the first chunk entirely masked for one query
        expected = einsum_attention(q, k, v, mask)
        variant = lambda **kw: _online_softmax_variant(q, k, v, mask, chunk, **kw)  # noqa: E731
        mistakes = {
            "when the running maximum grows from m to m', the running output must be rescaled too: "
            "o <- exp(m - m') o + sum exp(s' - m') v'": variant(rescale_o=False),
            "when the running maximum grows from m to m', the running sum must be rescaled too: "
            "l <- exp(m - m') l + sum exp(s' - m')": variant(rescale_l=False),
            "neither the running sum nor the running output was rescaled when the maximum changed: "
            "multiply both by exp(m - m')": variant(rescale_o=False, rescale_l=False),
            "the scores must be divided by sqrt(d)": variant(scale=False),
        }
        if masked:
            mistakes["the mask is ignored: masked keys (mask False) must get weight 0"] = (
                _online_softmax_variant(q, k, v, None, chunk))
            empty = ~mask.any(dim=-1, keepdim=True)  # [B, h, Nq, 1]
            mistakes["a query whose keys are all masked attends to nothing and its output is 0 (as in "
                     "course_lib.attention), not the average of the values: use -inf for masked scores and "
                     "divide by l only where l > 0"] = torch.where(empty, v.mean(dim=-2, keepdim=True), expected)
        cases.append(Case((q, k, v, mask, chunk), expected,
                          f"q [{B}, {h}, {Nq}, {d}], {Nk} keys in chunks of {chunk}"
                          + (", with masked keys and a fully masked query" if masked else ""), mistakes))
    return cases


@_exercise(
    "Scale q by 1/sqrt(d) once. Keep three running quantities per query while you visit the keys chunk by "
    "chunk: m, the largest score so far; l, the sum of exp(score - m); o, the sum of exp(score - m) v.",
    "When a chunk raises the maximum from m to m_new, the old sums were taken relative to m: multiply l "
    "and o by exp(m - m_new) before adding the chunk's exp(s - m_new) terms. The answer is o / l.",
    "Masked keys get the score -inf. A query that has so far seen only masked keys has m = -inf: shift by "
    "0 instead (exp(-inf) = 0, no NaN), and return 0 for a query whose l stays 0.",
)
def check_online_softmax_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(q, k, v, mask, chunk_size) -> out``, attention computed over key chunks with the online
    softmax (Milakov & Gimelshein 2018; the inner loop of FlashAttention, Dao et al. 2022), against
    ``attention.einsum_attention``. Per query keep m (running max of the scores), l (running sum of
    exp(s - m)) and o (running sum of exp(s - m) v); for each chunk with scores s':

        m' = max(m, max s');   l <- exp(m - m') l + sum exp(s' - m');   o <- exp(m - m') o + sum exp(s' - m') v'

    and return o / l (0 for a query whose keys are all masked). q [B, h, Nq, d], k [B, h, Nk, d],
    v [B, h, Nk, d_v]; mask None or bool [B, h, Nq, Nk] with True = may attend. Returns True if correct.
    """
    return _run("your online_softmax_attention", fn, _online_softmax_cases(seed),
                "your online_softmax_attention equals einsum_attention, masked keys and a fully masked "
                "query included.",
                shape_hint="The output has one row per query: [B, heads, Nq, d_v].",
                nonfinite_hint=("a query whose keys are all masked has every score -inf, so m stays -inf and "
                                "exp(s - m) is exp(-inf + inf) = NaN; shift by 0 where m is -inf, and return 0 "
                                "for such a query (divide by l only where l > 0)."))


# --------------------------------------------------------------------------- chapter 4: the posterior of the KL autoencoder


def _gaussian_hint(err: Exception) -> str:
    text = str(err)
    if "only one element tensors" in text or "must be real number, not Tensor" in text:
        return (" Hint: `math.exp` and `math.sqrt` take a single number; on tensors use `torch.exp(x)` "
                "(or `x.exp()`) and `torch.sqrt(x)`.")
    if "must match the size of tensor" in text or "broadcast" in text:
        return (" Hint: mean, logvar and eps all have the latent's shape [B, C, h, w]; they combine number by "
                "number, no reshaping needed. The KL is then summed over dims (1, 2, 3).")
    return ""


def _gaussian_moments(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int, str]]:
    """(mean, logvar, eps seed, description): posteriors like a trained encoder's, and the prior itself."""
    g = torch.Generator().manual_seed(seed + 9)
    out = []
    for B, C, h, w in [(3, 4, 8, 8), (2, 4, 4, 4), (4, 3, 2, 5)]:
        mean = 1.5 * torch.randn(B, C, h, w, generator=g)
        logvar = torch.empty(B, C, h, w).uniform_(-7.0, 1.5, generator=g)  # std from 0.03 to 2.1
        out.append((mean, logvar, seed * 101 + B * 7 + C, f"latents [{B}, {C}, {h}, {w}], logvar in [-7, 1.5]"))
    out.append((torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4), seed * 101 + 1,
                "the prior itself: mean 0, logvar 0 (KL = 0)"))
    return out


def _reparameterize_cases(seed: int) -> list[Case]:
    cases = []
    for mean, logvar, eps_seed, description in _gaussian_moments(seed):
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))  # the library's posterior
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(eps_seed))
        expected = posterior.sample(torch.Generator().manual_seed(eps_seed))  # the same eps: mean + std * eps
        std, var = torch.exp(0.5 * logvar), torch.exp(logvar)
        mistakes = {
            "eps must be scaled by the standard deviation exp(logvar / 2) = sqrt(var); you used the variance "
            "exp(logvar)": mean + var * eps,
            "logvar is the log of the variance: the standard deviation is exp(0.5 * logvar), not logvar itself":
                mean + logvar * eps,
            "exp(-0.5 * logvar) is 1 / std: the sign of the exponent is wrong": mean + torch.exp(-0.5 * logvar) * eps,
            "you returned the mean (the posterior's mode()); a sample adds the noise: z = mean + std * eps": mean,
            "the mean is missing: z = mean + std * eps, not std * eps": std * eps,
            "mean and std are swapped: z = mean + std * eps, not std + mean * eps": std + mean * eps,
            "mean and logvar are swapped: the mean is shifted by exp(logvar / 2) * eps":
                logvar + torch.exp(0.5 * mean) * eps,
            "only std multiplies eps: z = mean + std * eps, not (mean + std) * eps": (mean + std) * eps,
            "add the noise: the library (and LDM) write z = mean + std * eps; with the eps you are given, "
            "mean - std * eps is a different sample": mean - std * eps,
        }
        cases.append(Case((mean, logvar, eps), expected, description, mistakes))
    return cases[:-1]  # the prior's case tells nothing about z that the others do not


def _gaussian_kl_cases(seed: int) -> list[Case]:
    cases = []
    for mean, logvar, _eps_seed, description in _gaussian_moments(seed):
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()  # [B]
        std, var = torch.exp(0.5 * logvar), torch.exp(logvar)

        def total(terms):  # [B, C, h, w] -> [B]
            return terms.sum(dim=(1, 2, 3))

        mistakes = {
            "the factor 1/2 is missing: KL = 1/2 sum(mean^2 + var - 1 - logvar)":
                total(mean ** 2 + var - 1 - logvar),
            "the KL of independent Gaussians is the *sum* of their KLs over every latent number (C, h, w), not "
            "their mean": 0.5 * (mean ** 2 + var - 1 - logvar).mean(dim=(1, 2, 3)),
            "the log-variance is subtracted: 1/2 sum(mean^2 + var - 1 - logvar)":
                0.5 * total(mean ** 2 + var - 1 + logvar),
            "the -1 is missing (without it the prior N(0, I) itself would have KL = C h w / 2, not 0)":
                0.5 * total(mean ** 2 + var - logvar),
            "the mean^2 term is missing: a posterior far from 0 must cost KL": 0.5 * total(var - 1 - logvar),
            "the mean must be squared: mean^2, not mean": 0.5 * total(mean + var - 1 - logvar),
            "the formula needs the variance var = exp(logvar), not the standard deviation exp(logvar / 2)":
                0.5 * total(mean ** 2 + std - 1 - logvar),
            "logvar is log(sigma^2), not log(sigma): var = exp(logvar) and log var = logvar":
                0.5 * total(mean ** 2 + torch.exp(2 * logvar) - 1 - 2 * logvar),
            "that is KL(N(0, I) || q), the other direction; the autoencoder's term is KL(q(z|x) || N(0, I)) = "
            "1/2 sum(mean^2 + var - 1 - logvar)": 0.5 * total(logvar + (1 + mean ** 2) / var - 1),
        }
        cases.append(Case((mean, logvar), expected, description, mistakes))
    return cases


@_exercise(
    "reparameterize: the standard deviation is exp(logvar / 2); z = mean + std * eps, with torch "
    "operations so that gradients reach mean and logvar.",
    "For one number, KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), with sigma^2 "
    "= exp(logvar). The numbers of a latent are independent, so their KLs add: sum over dims (1, 2, 3) "
    "for one value per image.",
)
def check_gaussian_kl(reparameterize: Callable, gaussian_kl: Callable, seed: int = 0) -> bool:
    """Check the two halves of the KL autoencoder's posterior q(z|x) = N(mean, diag(exp(logvar))) against
    ``autoencoder.DiagonalGaussianDistribution`` (Kingma & Welling 2014, Sec. 2.4 and App. B):

        reparameterize(mean, logvar, eps) -> z = mean + exp(logvar / 2) * eps            [B, C, h, w]
        gaussian_kl(mean, logvar) -> 1/2 sum over (C, h, w) of (mean^2 + exp(logvar) - 1 - logvar)   [B]

    mean, logvar, eps: [B, C, h, w] (eps ~ N(0, I) is given: use it, do not draw new noise). The check then
    asks for what the trick is for: z must stay a differentiable function of mean and logvar (the encoder is
    trained through the sample), with dz/dmean = 1 and dz/dlogvar = std * eps / 2, and so must the KL.
    Prints ``Correct!`` or what is wrong; returns True if both are right.
    """
    if not (callable(reparameterize) and callable(gaussian_kl)):
        return _verdict(False, "check_gaussian_kl takes two functions, reparameterize(mean, logvar, eps) and "
                               f"gaussian_kl(mean, logvar); got {type(reparameterize).__name__} and "
                               f"{type(gaussian_kl).__name__}.")
    if not _run("your reparameterize", reparameterize, _reparameterize_cases(seed), "", hint_for=_gaussian_hint,
                shape_hint="z has the shape of mean, logvar and eps: [B, C, h, w]."):
        return False
    if not _run("your gaussian_kl", gaussian_kl, _gaussian_kl_cases(seed), "", hint_for=_gaussian_hint,
                shape_hint="The KL is one number per image, [B]: sum over the latent's dims (1, 2, 3) and keep "
                           "the batch dim (e.g. `.sum(dim=(1, 2, 3))`)."):
        return False
    case = _reparameterize_cases(seed + 100)[0]
    mean, logvar = (a.clone().requires_grad_(True) for a in case.args[:2])
    eps = case.args[2]
    try:
        z = reparameterize(mean, logvar, eps)
        kl = gaussian_kl(mean, logvar)
    except Exception as err:  # noqa: BLE001 - e.g. .numpy() on a tensor that requires grad
        return _verdict(False, f"your functions give the right numbers, but fail on inputs that require gradients "
                               f"({type(err).__name__}: {err}). Stay with torch operations on the tensors, so that "
                               "gradients can flow to mean and logvar.")
    if not (isinstance(z, torch.Tensor) and z.requires_grad):
        return _verdict(False, "your reparameterize gives the right numbers, but z carries no gradient back to mean "
                               "and logvar (was something detached, rebuilt with torch.tensor, or computed under "
                               "torch.no_grad?). The trick exists so that the encoder learns through the sample.")
    grad_mean, grad_logvar = torch.autograd.grad(z.sum(), (mean, logvar), allow_unused=True)
    want_logvar = 0.5 * torch.exp(0.5 * case.args[1]) * eps
    if grad_mean is None or not _close(grad_mean, torch.ones_like(grad_mean)):
        return _verdict(False, "your reparameterize gives the right numbers, but dz/dmean is not 1: part of the "
                               "path from the mean to z was detached.")
    if grad_logvar is None or not _close(grad_logvar, want_logvar):
        return _verdict(False, "your reparameterize gives the right numbers, but dz/dlogvar is not std * eps / 2: "
                               "the path from logvar to z was detached, so the encoder could not learn its variances.")
    if not (isinstance(kl, torch.Tensor) and kl.requires_grad):
        return _verdict(False, "your gaussian_kl gives the right numbers, but carries no gradient back to mean and "
                               "logvar: the KL term could not pull the encoder's posteriors towards N(0, I).")
    return _verdict(True, "z = mean + exp(logvar / 2) * eps and KL = 1/2 sum(mean^2 + var - 1 - logvar) match "
                          "DiagonalGaussianDistribution.sample() and .kl() on 3 posteriors and the prior, and "
                          "gradients flow through both to mean and logvar.")


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


@_exercise(
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
    return _run("your rf_loss", fn, _rf_loss_cases(seed),
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


@_exercise(
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
    return _run("your euler_step", fn, _euler_cases(seed),
                "your euler_step takes the step of course_lib.flow.flow_sample (solver 'euler').",
                shape_hint="x_next has the shape of x.")


# --------------------------------------------------------------------------- chapter 6: the MM-DiT block


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)  # no affine: the modulation is the affine


def _gated_residual_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 31)
    cases = []
    for B, N, D in [(2, 5, 8), (3, 16, 12), (1, 7, 16)]:
        x = torch.randn(B, N, D, generator=g) * 2 + 0.5
        shift, scale, gate = (torch.randn(B, 1, D, generator=g) * 0.5 for _ in range(3))
        weight = torch.randn(D, D, generator=g) / D ** 0.5

        def f(h, weight=weight):  # a fixed stand-in for the attention or the MLP
            return torch.tanh(h @ weight)

        normed = _layer_norm(x)
        expected = x + gate * f(normed * (1 + scale) + shift)
        mistakes = {
            "multiply by (1 + scale), not by scale: adaLN-Zero starts with every modulation at 0, and the sub-layer "
            "must then see LN(x) unchanged": x + gate * f(normed * scale + shift),
            "shift and scale are swapped: h = LN(x) * (1 + scale) + shift": x + gate * f(normed * (1 + shift) + scale),
            "the gate is missing: x + gate * f(h); without it the block is not the identity at initialisation":
                x + f(normed * (1 + scale) + shift),
            "the residual is missing: the block returns x + gate * f(h), not only the update":
                gate * f(normed * (1 + scale) + shift),
            "normalise first, then modulate: LN(x) * (1 + scale) + shift; a LayerNorm after the modulation "
            "undoes most of it": x + gate * f(_layer_norm(x * (1 + scale) + shift)),
            "apply the LayerNorm to x before modulating it": x + gate * f(x * (1 + scale) + shift),
            "the gate multiplies the sub-layer's output f(h), not its input": x + f(gate * (normed * (1 + scale) + shift)),
        }
        cases.append(Case((x, f, shift, scale, gate), expected, f"x [{B}, {N}, {D}], modulation [{B}, 1, {D}]",
                          mistakes))
    return cases


@_exercise(
    "LayerNorm without learned parameters is `F.layer_norm(x, x.shape[-1:], eps=1e-6)`; modulate it: "
    "LN(x) * (1 + scale) + shift.",
    "Run f on the modulated features, multiply by gate, and add the result to x: x + gate * f(h). With a "
    "zero gate the block is the identity (adaLN-Zero).",
)
def check_gated_residual(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(x, f, shift, scale, gate) -> x_new``, one modulated, gated sub-layer of a DiT / MM-DiT block
    (Peebles & Xie 2023, adaLN-Zero; ``course_lib.mmdit.DoubleStreamBlock``):

        h     = LayerNorm(x) * (1 + scale) + shift        # LayerNorm without its own affine, eps 1e-6
        x_new = x + gate * f(h)

    x [B, N, D] tokens; shift, scale, gate [B, 1, D] (one triple per example, the same for every token); f the
    sub-layer (attention or MLP), a function [B, N, D] -> [B, N, D]. Prints the verdict; returns True if correct.
    """
    return _run("your gated_residual", fn, _gated_residual_cases(seed),
                "your gated_residual is the modulate-and-gate step of DoubleStreamBlock and SingleStreamBlock.",
                shape_hint="x_new has the shape of x [B, N, D]; shift, scale and gate [B, 1, D] broadcast over "
                           "the tokens.")


def _joint_attention_reference(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v


def _joint_attention_cases(seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed + 37)
    cases = []
    for B, heads, L, N, d in [(2, 2, 3, 6, 8), (1, 4, 5, 16, 4), (3, 1, 2, 9, 16)]:
        txt_q, txt_k, txt_v = (torch.randn(B, heads, L, d, generator=g) for _ in range(3))
        img_q, img_k, img_v = (torch.randn(B, heads, N, d, generator=g) for _ in range(3))
        q, k, v = (torch.cat(p, dim=2) for p in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        expected = _joint_attention_reference(q, k, v)  # [B, heads, L + N, d]: text rows first
        separate = torch.cat([_joint_attention_reference(txt_q, txt_k, txt_v),
                              _joint_attention_reference(img_q, img_k, img_v)], dim=2)
        cross = torch.cat([_joint_attention_reference(txt_q, img_k, img_v),
                           _joint_attention_reference(img_q, txt_k, txt_v)], dim=2)
        no_scale = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        mistakes = {
            "each stream attended only to itself (two separate self-attentions); in joint attention every token "
            "attends over the concatenated [text, image] sequence": separate,
            "each stream attended only to the other one (cross-attention both ways); joint attention includes "
            "the stream's own tokens as keys too": cross,
            "divide the scores by sqrt(d), the head dimension, before the softmax": no_scale,
        }
        cases.append(Case((txt_q, txt_k, txt_v, img_q, img_k, img_v), expected,
                          f"{L} text and {N} image tokens, {heads} head(s) of {d}", mistakes))
    return cases


@_exercise(
    "Concatenate text and image along the token axis (dim 2 of [B, h, tokens, d]), text first, for q, k "
    "and v alike.",
    "One attention over all L + N tokens (`F.scaled_dot_product_attention(q, k, v)`), then split the "
    "output back at L = the number of text tokens: [:, :, :L] is the text's, [:, :, L:] the image's.",
)
def check_joint_attention(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(txt_q, txt_k, txt_v, img_q, img_k, img_v) -> (txt_out, img_out)``, the joint attention of SD3's
    MM-DiT block (Esser et al. 2024, Fig. 2; ``course_lib.mmdit.DoubleStreamBlock``):

        q, k, v = concat([txt_q, img_q]), ...            # along the tokens: [B, heads, L + N, d]
        out     = softmax(q k^T / sqrt(d)) v             # one attention over both streams
        txt_out, img_out = out[:, :, :L], out[:, :, L:]  # split back: [B, heads, L, d] and [B, heads, N, d]

    Prints the verdict; returns True if correct.
    """
    def joined(*args):
        out = fn(*args)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, torch.Tensor) for o in out)):
            raise TypeError(f"return two tensors, (txt_out, img_out), got {type(out).__name__}")
        txt_out, img_out = out
        if txt_out.shape != args[0].shape or img_out.shape != args[3].shape:
            raise ValueError(f"txt_out must have the text queries' shape {tuple(args[0].shape)} and img_out the image "
                             f"queries' shape {tuple(args[3].shape)}; got {tuple(txt_out.shape)} and "
                             f"{tuple(img_out.shape)}: split the joint output at L, the number of text tokens")
        return torch.cat([txt_out, img_out], dim=2)

    return _run("your joint_attention", joined, _joint_attention_cases(seed),
                "your joint_attention is the attention of DoubleStreamBlock (before RoPE and the output projections).",
                hint_for=lambda err: "")
