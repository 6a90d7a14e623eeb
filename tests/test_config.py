import torch
import pytest

from course_lib import config


def test_fast_mode_reads_environment(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    assert config.fast_mode() and config.pick("small", "big") == "small"
    monkeypatch.setenv("COURSE_FAST", "0")
    assert not config.fast_mode() and config.pick("small", "big") == "big"
    monkeypatch.delenv("COURSE_FAST")
    assert not config.fast_mode()


def test_device_default_and_override(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert config.get_device().type == expected
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert config.get_device() == torch.device("cpu")
    assert config.get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        config.get_device()


def test_seed_everything_repeats():
    g1 = config.seed_everything(123)
    a = torch.randn(5), torch.randn(3, generator=g1)
    g2 = config.seed_everything(123)
    b = torch.randn(5), torch.randn(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    config.seed_everything(124)
    assert not torch.equal(torch.randn(5), a[0])


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("COURSE_CIFAR10_DIR", str(tmp_path / "cifar"))
    assert config.data_dir() == tmp_path / "d"
    assert config.cache_dir() == tmp_path / "d" / "cache"
    assert config.checkpoint_dir() == tmp_path / "c"
    assert config.cifar10_dir() == tmp_path / "cifar"
    monkeypatch.delenv("COURSE_DATA_DIR")
    monkeypatch.delenv("COURSE_CHECKPOINT_DIR")
    monkeypatch.delenv("COURSE_CIFAR10_DIR")
    assert config.data_dir() == config.REPO_ROOT / "data"
    assert config.checkpoint_dir() == config.REPO_ROOT / "data" / "checkpoints"
    assert config.cifar10_dir() is None
    assert (config.sample_dir() / "train" / "cat").is_dir()


def test_long_cells_need_the_switch_and_full_mode(monkeypatch):
    monkeypatch.delenv("COURSE_LONG", raising=False)
    monkeypatch.setenv("COURSE_FAST", "0")
    assert not config.long_cells()
    monkeypatch.setenv("COURSE_LONG", "yes")
    assert config.long_cells()
    monkeypatch.setenv("COURSE_FAST", "1")  # fast mode never runs the long cells
    assert not config.long_cells()


def test_portable_path_keeps_no_machine_specific_prefix(tmp_path):
    inside = config.REPO_ROOT / "data" / "checkpoints" / "ddpm-small.safetensors"
    assert config.portable_path(inside) == "data/checkpoints/ddpm-small.safetensors"
    assert config.portable_path(tmp_path / "runs" / "state.safetensors") == "state.safetensors"
    assert config.portable_path(config.sample_dir()) == "data/cifar10-sample"


def test_portable_command_shortens_absolute_paths_only(tmp_path):
    inside = config.REPO_ROOT / "data" / "runs" / "x" / "state.safetensors"
    command = config.portable_command("python -m course_lib.train", [
        "ddpm-small", "--state", str(inside), f"--export={tmp_path / 'out.safetensors'}", "--minutes", "5",
        "--init-from", "data/checkpoints/ddpm-small.safetensors"])
    assert command == ("python -m course_lib.train ddpm-small --state data/runs/x/state.safetensors "
                       "--export=out.safetensors --minutes 5 --init-from data/checkpoints/ddpm-small.safetensors")
