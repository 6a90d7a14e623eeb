"""Shared test setup: fast mode on, few threads, and a tiny model with a config dataclass."""

import os
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("COURSE_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
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


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No configured CIFAR-10 folder and an empty data root: the bundled sample is what is found."""
    monkeypatch.delenv("COURSE_CIFAR10_DIR", raising=False)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data-root"))
    return tmp_path
