"""What the benchmark scripts share: their options, how they set torch up, and their first line.

Every ``bench_*.py`` script in this folder runs from a checkout without installing the package
(importing this module puts the checkout first on ``sys.path``), and

* builds its command line with :func:`benchmark_parser`: the script's docstring as the help, and the
  options every benchmark has: ``--threads`` (``torch.set_num_threads``), ``--repeats`` (interleaved
  timed runs per variant, where the script times in repeats) and ``--device`` (where it can run on a GPU);
* sets torch up with :func:`setup_torch`: the thread count, and denormal floats flushed to zero as in
  the course (``course_lib.config.setup_cpu_speedups``; denormals are ~3x slower on CPUs);
* prints :func:`header` first: the hardware (``course_lib.config.hardware_description``: the CPU's model,
  vector unit, native bf16 and threads, or the GPU and its host CPU), torch's version, then its settings.

Times are medians of runs interleaved across variants, so that the machine's slow drifts hit every
variant alike: ``course_lib.profiling.time_per_call`` (``bench_ddpm.py`` interleaves its own runs, to
synchronise a GPU around each and report the spread between repeats). Compare numbers printed by the
same run only: on a shared machine timings vary several-fold from run to run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from course_lib.config import cpu_name, hardware_description, native_bf16, setup_cpu_speedups  # noqa: E402

PROMPT_CLASSES = ("cat", "ship", "horse", "truck", "bird")


def benchmark_parser(doc: str, *, repeats: int | None = 3, threads: int | None = None,
                     device: bool = False) -> argparse.ArgumentParser:
    """A parser whose help is the script's docstring (first paragraph), with the shared options.

    Args:
        doc: the script's ``__doc__``.
        repeats: the default of ``--repeats``, the interleaved timed runs per variant; None: no such option.
        threads: the default of ``--threads``; None leaves torch's own choice.
        device: add ``--device`` (``cpu``, the default, or ``cuda``).
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_threads = threads if threads else "torch's choice"
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch.set_num_threads (default: {default_threads})")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats,
                            help=f"interleaved timed runs per variant (default {repeats})")
    if device:
        parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return parser


def setup_torch(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(args.threads)`` when given; flush denormal floats to zero, as the course does."""
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_cpu_speedups()


def header(*facts: str, device: torch.device | str = "cpu") -> str:
    """The first line a benchmark prints: the hardware, torch's version, then ``facts`` (the settings).

    On a CPU the hardware is ``hardware_description``'s (model, vector unit, native bf16 or not, threads);
    on a GPU it is the GPU's name and the host's CPU model.
    """
    device = torch.device(device)
    machine = hardware_description(device)
    if device.type != "cpu":
        machine += f" (host CPU {cpu_name()}, {torch.get_num_threads()} threads)"
    return ", ".join([machine, f"torch {torch.__version__}", *facts])


def precisions(device: torch.device | str = "cpu") -> list[str]:
    """The training precisions worth timing here: float32, and bf16 autocast where the hardware has native bf16."""
    return ["float32"] + (["bf16 autocast"] if native_bf16(device) else [])


def sample_prompts(n: int) -> list[str]:
    """``n`` captions cycling through a few CIFAR-10 classes, for timing text-to-image sampling."""
    return [f"a photo of a {PROMPT_CLASSES[i % len(PROMPT_CLASSES)]}" for i in range(n)]
