"""The harness that every exercise check shares: cases, running them, verdicts, hints and solutions.

A check builds a list of :class:`Case` (inputs, the library's answer, the answers of named mistakes) and hands
it to :func:`run_cases`, which calls the learner's function on each, compares with :func:`close` and prints the
verdict (:func:`verdict`). :func:`exercise` attaches a check's hints; :func:`hint` and :func:`solution` print
them and the worked solution, read from the cell tagged ``solution`` in the chapter's notebook
(:mod:`course_lib.classroom`); :func:`solved` runs a check without printing. The checks themselves live in
one file per chapter (``ch01_ddpm``, ...); see :mod:`course_lib.exercises`.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Case", "close", "clone_args", "hint_for_error", "solved", "hint", "solution", "exercise", "verdict",
           "run_cases"]


@dataclass
class Case:
    """One test of the learner's function: its inputs, the right answer, and known wrong answers."""

    args: tuple
    expected: torch.Tensor
    description: str
    mistakes: dict[str, torch.Tensor] = field(default_factory=dict)  # diagnosis -> what that mistake returns


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to float32 rounding, relative to the size of the values: the tolerance of every check
    (``rtol`` relative, and ``rtol`` times the largest value of ``b``, at least 1, absolute)."""
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * max(scale, 1.0)))


def clone_args(args: tuple) -> tuple:
    """A copy of a case's arguments with every tensor cloned, so that a function that writes into its
    inputs cannot change the case (and the check can see that it did)."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def hint_for_error(err: Exception) -> str:
    """The generic hint for an error the learner's function raised (a [B] coefficient that does not
    broadcast, ``math.sqrt`` on a tensor, an index out of range), to append to the verdict; "" for
    none. A chapter with its own usual errors passes its own ``hint_for`` to :func:`run_cases`."""
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
    # imported here, when a learner asks: nbformat (which classroom reads the notebooks with) imports jsonschema's
    # grammars, about 1.2 s of every kernel's start that only this function needs
    import nbformat

    from ..classroom import SOLUTION, sources  # the notebooks are the one source of the solutions

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


def exercise(*hints: str) -> Callable:
    """Give a check its hints and its solution, ``check_q_sample.hint(level)`` and ``check_q_sample.solution()``,
    and make a "Not yet" verdict end by saying so. The decorator of every ``check_*``: ``@exercise("hint 1",
    "hint 2", ...)``, the hints in order, each saying a little more than the one before."""
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


def verdict(ok: bool, message: str) -> bool:
    """Print the verdict, ``Correct! message`` or ``Not yet: message``, and return ``ok``."""
    print(("Correct! " if ok else "Not yet: ") + message)
    return ok


def run_cases(name: str, fn: Callable, cases: list[Case], summary: str,
         hint_for: Callable[[Exception], str] = hint_for_error,
         shape_hint: str = ("The result should have the shape of the images; check how the per-example "
                            "coefficients broadcast."),
         nonfinite_hint: str = ("look for a division by zero, the square root of a negative number, or a "
                                "softmax over a row whose scores are all -inf.")) -> bool:
    """Run ``fn`` on every case; print and return the verdict. The diagnosis names the first problem found,
    in the order of :mod:`course_lib.exercises`'s docstring (an error, the type or shape of the result,
    inputs changed in place, a random answer, a known mistake of ``Case.mistakes``, how far off).

    ``summary`` is the message of a ``Correct!`` verdict; with ``summary=""`` nothing is printed when every
    case passes and True is returned, for a check that goes on to test more. ``hint_for`` turns an error into a
    hint (default :func:`hint_for_error`); ``shape_hint`` and ``nonfinite_hint`` end the messages for a wrong
    shape and for NaN or infinite values."""
    if not callable(fn):
        return verdict(False, f"expected a function, got {type(fn).__name__}.")
    for case in cases:
        args = clone_args(case.args)
        try:
            out = fn(*args)
        except NotImplementedError:
            return verdict(False, f"{name} is not written yet: replace the `raise NotImplementedError` "
                                   "line with your code, then run the cell again.")
        except Exception as err:  # noqa: BLE001 - any error is the learner's to see
            return verdict(False, f"{name} raised {type(err).__name__}: {err} ({case.description}).{hint_for(err)}")
        if not isinstance(out, torch.Tensor):
            return verdict(False, f"{name} should return a torch.Tensor, got {type(out).__name__} "
                                   f"({case.description}). Did you forget the `return`?")
        if out.shape != case.expected.shape:
            return verdict(False, f"{name} returned shape {tuple(out.shape)}, expected {tuple(case.expected.shape)} "
                                   f"({case.description}). {shape_hint}")
        changed = [i for i, (a, b) in enumerate(zip(args, case.args))
                   if isinstance(a, torch.Tensor) and not torch.equal(a, b)]
        if changed:
            return verdict(False, f"{name} changed its input argument(s) {changed} in place (e.g. with `+=` or "
                                   "`mul_`); compute a new tensor instead.")
        if close(out, case.expected):
            continue
        if not torch.isfinite(out).all():
            return verdict(False, f"{name} returned NaN or infinite values ({case.description}): {nonfinite_hint}")
        try:
            again = fn(*clone_args(case.args))
        except Exception:  # noqa: BLE001 - a second call that fails is as bad as a different answer
            again = None
        if not (isinstance(again, torch.Tensor) and torch.equal(again, out)):
            return verdict(False, f"{name} gave two different answers for the same inputs: it draws random "
                                   "numbers. Use the noise you are given instead of drawing new noise.")
        for diagnosis, wrong in case.mistakes.items():
            if close(out, wrong):
                return verdict(False, f"{diagnosis} ({case.description}).")
        err = (out.double() - case.expected.double()).abs()
        worst = int(err.flatten(1).amax(1).argmax()) if err.ndim > 1 else 0
        return verdict(False, f"{name} differs from the library's answer by up to {float(err.max()):.3g} "
                               f"({case.description}; worst in example {worst}). Compare your formula with "
                               "the one in the text, term by term.")
    return verdict(True, summary) if summary else True  # no summary: the caller checks more and says
