"""Shared test setup: fast mode on, few threads, small models with config dataclasses; and how one session
runs the unit tests and the notebooks together.

``make test`` runs ``pytest tests build/student --nbval-lax -n 2 --dist loadscope``: a module's test functions,
a class's tests and a notebook's cells each stay on one worker (a notebook's cells share one kernel). (Not
``--dist loadgroup``: with pytest 9, pytest-xdist 3.8's groups do not reach its scheduler, and every test would
be its own unit.) Two more rules hold there (the hook at the end; pytest calls it with every collected item,
the notebooks' cells included):

- **Each chapter runs once.** ``tests/test_browser.py`` runs the learner's copies of the chapters that hold
  explorers in JupyterLab, in Chromium, and fails on any error a cell shows, as nbval would; when its test for
  a chapter is still selected after ``-k`` and ``-m`` (``trylast``), that chapter's nbval cells are deselected
  (the summary counts them). Without a browser those tests skip at collection, and nbval runs every chapter.
- **The longest first.** The browser tests, then the notebooks, then the modules (:func:`longest_first`), so that
  no long unit is left for one worker at the end.
"""

import os
import re
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("COURSE_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one thread each,
    os.environ["OMP_NUM_THREADS"] = "1"     # also for the notebook kernels they start
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@dataclass
class TinyConfig:
    dim_in: int = 4
    hidden: int = 16


class TinyNet(torch.nn.Module):
    """A two-layer MLP with a config, standing in for a chapter's model in loop/checkpoint tests."""

    def __init__(self, config: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = config
        self.net = torch.nn.Sequential(torch.nn.Linear(config.dim_in, config.hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(config.hidden, 1))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.net(x).squeeze(-1)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a JupyterLab server or a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No configured CIFAR-10 folder and an empty data root: the bundled sample is what is found."""
    monkeypatch.delenv("COURSE_CIFAR10_DIR", raising=False)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data-root"))
    return tmp_path


def randomize_zero_init(model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> torch.nn.Module:
    """Give random values (N(0, std^2), seeded) to every parameter that is all zeros and return the model.

    The course's blocks start as the identity (zero-initialised conv2, proj_out, conv_out, gates), so
    a fresh model ignores its time, text and attention inputs; tests of the wiring undo that first."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, std)
    return model


def tiny_conditional_unet(context_dim: int, **overrides):
    """A text-conditional UNet small enough for tests: 16/32 channels, cross-attention at 8x8 and in the
    middle, on 16x16 images; its zero-initialised layers (proj_out, conv_out) are randomised so that the
    text changes the output from the start."""
    from course_lib.unet import UNet, UNetConfig

    config = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), image_size=16,
                  num_groups=8, num_heads=2, dropout=0.0, context_dim=context_dim)
    return randomize_zero_init(UNet(UNetConfig(**{**config, **overrides})).eval(), std=0.2, seed=1)


@pytest.fixture(scope="session")
def conditional_unet():
    """``conditional_unet(context_dim, **overrides)`` builds :func:`tiny_conditional_unet`."""
    return tiny_conditional_unet


#: floating dtypes a model may be cast to (``model.half()``, ``.bfloat16()``, ``.double()``) and the relative
#: error its output may have against float32: bf16 keeps 8 bits of mantissa, fp16 11, fp64 more than fp32
CAST_DTYPES = {torch.float64: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def assert_runs_in_dtype(model: torch.nn.Module, call, dtype: torch.dtype) -> None:
    """``call(model, dtype)`` (a forward pass with inputs in ``dtype``) works on a copy of ``model`` cast to
    ``dtype``, returns ``dtype``, and agrees with the float32 model within ``CAST_DTYPES[dtype]`` (relative L2)."""
    import copy

    with torch.no_grad():
        reference = call(model.float().eval(), torch.float32)
        out = call(copy.deepcopy(model).to(dtype).eval(), dtype)
    assert out.dtype == dtype, f"a {dtype} model returned {out.dtype}"
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert error < CAST_DTYPES[dtype], f"{dtype}: relative error {error:.2e} against float32"


# --------------------------------------------------------------------------- one session: each chapter once

# tests/test_browser.py's tests that run a learner's copy of a chapter, the chapter as their parameter
BROWSER_TESTS = ("test_the_chapters_explorers_are_live_and_redraw", "test_explorers_render_and_respond_in_jupyterlab")


class EachChapterOnce:
    """Deselects nbval's run of a chapter whose browser test is selected (after -k and -m have deselected), and
    puts the longest tests first (:func:`longest_first`)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        pattern = rf"(?:{'|'.join(BROWSER_TESTS)})\[(\d\d_\w+)\]"
        in_browser = {m.group(1) for item in items if (m := re.fullmatch(pattern, item.name))}
        twice = [item for item in items if item.path.suffix == ".ipynb" and item.path.stem in in_browser]
        if twice:
            config.hook.pytest_deselected(items=twice)
            items[:] = [item for item in items if not (item.path.suffix == ".ipynb" and item.path.stem in in_browser)]
        items.sort(key=longest_first)  # stable: the order within each group stays


def longest_first(item) -> int:
    """The browser chapters (two classes of about 3 minutes each), the other browser tests, the notebooks, then the
    rest: the longest units of work first. ``make test``'s workers take the units (a class, a module, a notebook)
    in this order (``--no-loadscope-reorder``; pytest-xdist would otherwise put the units with the most tests
    first) and share the rest as each one frees up. With the two browser classes last, one worker ran alone for
    a minute at the end."""
    if item.path.name == "test_browser.py":
        return 0 if item.cls is not None else 1
    return 2 if item.path.suffix == ".ipynb" else 3


def pytest_configure(config):
    config.pluginmanager.register(EachChapterOnce(), "course-each-chapter-once")
