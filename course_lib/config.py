"""Course-wide configuration: fast mode, device, seeding and where files live.

This is the only module with global switches. Everything here reads the environment
when it is called (not at import time), so a test or a notebook can change a variable
and see the effect at once.

Environment variables
---------------------
``COURSE_FAST``            ``1`` selects tiny models and few steps (the tests set it).
``COURSE_LONG``            ``1`` lets full-mode notebooks run the cells that take longer than about two
                           minutes (retraining what they otherwise load); off by default, so that a
                           notebook fits a 90-minute lab.
``COURSE_DEVICE``          force a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
``COURSE_DATA_DIR``        where downloads and caches go (default: ``<repo>/data``).
``COURSE_CIFAR10_DIR``     an ImageFolder-layout copy of CIFAR-10 (``train/<class>/*.jpg``).
``COURSE_CHECKPOINT_DIR``  where checkpoints are read and written (default: ``<repo>/data/checkpoints``).
"""

from __future__ import annotations

import os
import platform
import random
import shlex
from pathlib import Path

import torch

_TRUE = {"1", "true", "yes", "on"}

#: the repository root (``course_lib``'s parent folder)
REPO_ROOT = Path(__file__).resolve().parent.parent


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to 1/true/yes/on: tiny configs, few steps."""
    return os.environ.get("COURSE_FAST", "").strip().lower() in _TRUE


def long_cells() -> bool:
    """True when ``COURSE_LONG`` is 1/true/yes/on and fast mode is off: run the cells that take longer than
    about two minutes (retrain instead of loading the shipped result). Such a cell prints its expected time first."""
    return not fast_mode() and os.environ.get("COURSE_LONG", "").strip().lower() in _TRUE


def pick(fast, full):
    """Return ``fast`` in fast mode and ``full`` otherwise: ``steps = pick(20, 20_000)``."""
    return fast if fast_mode() else full


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``prefer``, else ``COURSE_DEVICE``, else cuda, mps, cpu.

    A device asked for but not present raises a ``RuntimeError`` that says what is there.
    """
    name = prefer or os.environ.get("COURSE_DEVICE", "").strip() or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available here; "
                           "unset COURSE_DEVICE or use 'cpu'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {name!r} was asked for but MPS is not available here; "
                           "unset COURSE_DEVICE or use 'cpu'")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy (if present) and torch so that a run repeats on the same machine.

    Returns a ``torch.Generator`` seeded the same way, for code that prefers explicit generators.
    Repeatability holds for the same machine, library versions and thread count; different
    hardware may round differently.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        pass
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 autocast is fast: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX.

    Elsewhere (an AVX2-only CPU such as AMD Zen 3, Apple's MPS) bf16 arithmetic is emulated: on the
    course's small UNet it trained about 10x *slower* than float32 on an AVX2 CPU
    (``benchmarks/bench_ddpm.py`` measures it side by side).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                    "_is_amx_tile_supported"))
    return False


def cpu_name() -> str:
    """The CPU's model name where the system tells it (Linux: /proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and line.partition(":")[2].strip():
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    """A short description of where training ran, for checkpoint cards: the device, threads, native bf16."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = "native bf16" if native_bf16(device) else "no native bf16"
    threads = torch.get_num_threads()
    return (f"CPU {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{threads} thread{'' if threads == 1 else 's'}")


def setup_cpu_speedups() -> None:
    """Cheap, safe speed-ups: flush denormal floats to zero (measured ~3x on CPU forward passes)."""
    torch.set_flush_denormal(True)


def _dir_from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    """Root for data: downloads (torchvision's CIFAR-10), caches. ``COURSE_DATA_DIR`` overrides."""
    return _dir_from_env("COURSE_DATA_DIR", REPO_ROOT / "data")


def sample_dir() -> Path:
    """The small CIFAR-10 sample shipped with the repository (ImageFolder layout)."""
    return REPO_ROOT / "data" / "cifar10-sample"


def cifar10_dir() -> Path | None:
    """An ImageFolder-layout CIFAR-10 given by ``COURSE_CIFAR10_DIR``, or None."""
    value = os.environ.get("COURSE_CIFAR10_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else None


def checkpoint_dir() -> Path:
    """Where checkpoints live. ``COURSE_CHECKPOINT_DIR`` overrides ``<repo>/data/checkpoints``."""
    return _dir_from_env("COURSE_CHECKPOINT_DIR", REPO_ROOT / "data" / "checkpoints")


def portable_path(path: str | Path) -> str:
    """``path`` as a checkpoint card should record it: relative to the repository when it lies inside
    (``data/checkpoints/ddpm-small.safetensors``), else just its last component: an absolute path names
    the machine that trained the model, and means nothing on the learner's."""
    path = Path(path).expanduser().resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.name


def portable_command(prefix: str, argv: list[str]) -> str:
    """The command line a checkpoint card records: ``prefix`` and the arguments, every absolute path among
    them (also in ``--flag=/path``) shortened by :func:`portable_path`."""
    def portable(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        return flag + eq + portable_path(value) if value and Path(value).is_absolute() else arg
    return " ".join([prefix, *(shlex.quote(portable(a)) for a in argv)])


def cache_dir() -> Path:
    """Decoded-data caches (not committed): ``<data_dir>/cache``."""
    return data_dir() / "cache"
