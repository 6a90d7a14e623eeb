"""held_out_loss is a paired, repeatable comparison; timestep_sensitivity measures the share of variance due to t
(on inputs noised at the t the network is told); chapter 2's paired runs train, save and load."""

import warnings

import pytest
import torch
from torch import nn

from course_lib.checkpoint import CheckpointError, read_card, save_checkpoint
from course_lib.data import TensorSplit
from course_lib.diagnostics import (PAIR_FILES, copy_shared_weights, held_out_loss, load_pair_run, paired_train_config,
                                    paired_unets, save_pair_run, shipped_pair, timestep_sensitivity, train_pair)
from course_lib.schedules import NoiseSchedule
from course_lib.unet import UNet, UNetConfig


def _tiny(resblock="additive", seed=0):
    torch.manual_seed(seed)
    return UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                           dropout=0.0, num_groups=4, resblock=resblock))


def _randomise(model, seed=1):
    """Give the zero-initialised layers weights, so the blocks pass their conditioning on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


class ZeroModel(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_held_out_loss_is_repeatable_and_exact_for_a_known_model():
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    schedule = NoiseSchedule.linear(100)
    a = held_out_loss(ZeroModel(), schedule, images, draws=3, seed=7)
    b = held_out_loss(ZeroModel(), schedule, images, draws=3, seed=7)
    assert a == b
    # predicting zero noise costs E[eps^2], computed here from the same draws
    g = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(3):
        torch.randint(0, 100, (10,), generator=g)
        expected.append(torch.randn(images.shape, generator=g).pow(2).mean())
    assert a == pytest.approx(float(torch.stack(expected).mean()), rel=1e-6)


def test_held_out_loss_restores_training_mode():
    model = _tiny().train()
    held_out_loss(model, NoiseSchedule.linear(50), torch.zeros(2, 3, 8, 8))
    assert model.training


class InputSpy(nn.Module):
    """Records every (x, t) it is called with; its one residual block makes timestep_sensitivity accept it."""

    def __init__(self):
        super().__init__()
        self.block = _tiny().down[0][0]  # a ResBlock (EmbedBlock with conv2)
        self.seen = []

    def forward(self, x, t):
        self.seen.append((x.clone(), t.clone()))
        return self.block(x.new_zeros(x.shape[0], 16, *x.shape[2:]), torch.zeros(x.shape[0], 64))


def test_sensitivity_noises_the_images_at_each_timestep_the_network_is_told():
    """Each pass is on the training distribution: x_t ~ q(x_t | x_0) at the t given to the network,
    with the same noise at every t (the old probe fed one x noised at t = 500 with six different t)."""
    schedule = NoiseSchedule.linear(1000)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    spy = InputSpy()
    timestep_sensitivity(spy, schedule, x0, [50, 500, 950], seed=3)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    assert [int(t[0]) for _, t in spy.seen] == [50, 500, 950]
    for x, t in spy.seen:
        assert torch.all(t == t[0])
        expected = schedule.alpha_bar[t].sqrt()[:, None, None, None] * x0 \
            + (1 - schedule.alpha_bar[t]).sqrt()[:, None, None, None] * eps
        torch.testing.assert_close(x, expected)


def test_with_the_embedding_cut_the_noise_level_of_the_input_still_moves_the_features():
    """The old probe (one x, several t) gave exactly 0 here; on-distribution inputs change with t."""
    model = _randomise(_tiny("adagn"))
    with torch.no_grad():
        for block in [m for m in model.modules() if hasattr(m, "emb_proj")]:
            block.emb_proj.weight.zero_()  # the time embedding no longer reaches any block
    schedule = NoiseSchedule.linear(1000)
    x0 = torch.randn(2, 3, 8, 8)
    sens = timestep_sensitivity(model, schedule, x0, [0, 500, 999])
    assert len(sens) == 8  # 1 per level down, 2 in the middle, 2 per level up (num_res_blocks + 1)
    assert min(sens.values()) > 1e-2


def test_sensitivity_is_between_zero_and_one_and_sees_the_embedding():
    x0 = torch.randn(2, 3, 8, 8)
    schedule = NoiseSchedule.linear(1000)
    for resblock in ("additive", "adagn"):
        sens = timestep_sensitivity(_randomise(_tiny(resblock)), schedule, x0, [0, 300, 600, 999])
        assert all(0.0 <= s <= 1.0 for s in sens.values())
        assert max(sens.values()) > 1e-3


def test_sensitivity_input_errors():
    schedule = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match="at least two timesteps"):
        timestep_sensitivity(_tiny(), schedule, torch.zeros(1, 3, 8, 8), [5])
    with pytest.raises(ValueError, match="schedule's range"):
        timestep_sensitivity(_tiny(), schedule, torch.zeros(1, 3, 8, 8), [5, 100])
    with pytest.raises(ValueError, match="no residual blocks"):
        timestep_sensitivity(ZeroModel(), schedule, torch.zeros(1, 3, 8, 8), [1, 2])


def test_copy_shared_weights_makes_the_variants_equal_except_emb_proj():
    additive, adagn = _tiny("additive", seed=0), _tiny("adagn", seed=1)
    different = copy_shared_weights(additive, adagn)
    assert different and all(".emb_proj." in name for name in different)
    a, b = additive.state_dict(), adagn.state_dict()
    for name in b:
        if name not in different:
            assert torch.equal(a[name], b[name]), name


def _pair_setup():
    config = lambda **kw: UNetConfig(**{**dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,  # noqa: E731
                                             attention_resolutions=(), num_groups=4), **kw})
    data = TensorSplit(torch.rand(12, 3, 8, 8) * 2 - 1, torch.zeros(12, dtype=torch.long), source="random test images")
    cfg = paired_train_config(fast=True, max_steps=3, batch_size=4, progress=False, bf16=False, channels_last=False)
    return config, data, cfg


def test_paired_unets_differ_only_in_emb_proj_and_repeat():
    config, _, _ = _pair_setup()
    (models, different), (again, _) = paired_unets(config, seed=5), paired_unets(config, seed=5)
    assert different and all(".emb_proj." in n for n in different)
    assert [type(b).__name__ for b in models["adagn"].modules() if hasattr(b, "emb_proj")][0] == "AdaGNResBlock"
    for kind in models:
        for name, w in models[kind].state_dict().items():
            assert torch.equal(w, again[kind].state_dict()[name]), (kind, name)


def test_train_pair_is_paired_and_its_runs_round_trip_through_checkpoints(tmp_path):
    config, data, cfg = _pair_setup()
    schedule = NoiseSchedule.linear(100)
    seen = []
    runs = train_pair(paired_unets(config)[0], data, schedule, cfg, report=lambda kind, r: seen.append(kind))
    assert seen == ["additive", "adagn"] and all(r.step == 3 and len(r.losses) == 3 for r in runs.values())
    # paired: at step 0 both models are the same function (conv2 and conv_out start at zero), and they
    # see the same batch, t and noise, so their first losses agree exactly
    assert runs["additive"].losses[0] == runs["adagn"].losses[0]
    assert runs["additive"].losses[1:] != runs["adagn"].losses[1:]
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 70])
    for kind, result in runs.items():
        path = save_pair_run(tmp_path / PAIR_FILES[kind], kind, result, cfg, data_source=data.source,
                             data_images=len(data))
        loaded = load_pair_run(path)
        assert loaded.losses == result.losses and loaded.step == 3 and loaded.stopped_by == "loaded"
        assert loaded.ema.config.resblock == kind
        with torch.no_grad():
            torch.testing.assert_close(loaded.ema(x, t), result.ema.eval()(x, t), rtol=0, atol=0)
    assert shipped_pair(tmp_path) == {kind: tmp_path / name for kind, name in PAIR_FILES.items()}
    (tmp_path / PAIR_FILES["adagn"]).unlink()
    assert shipped_pair(tmp_path) is None


def test_load_pair_run_names_the_tool_for_a_checkpoint_without_a_loss_history(tmp_path):
    path = save_checkpoint(tmp_path / "x.safetensors", _tiny())
    with pytest.raises(CheckpointError, match="train_chapter2_pair"):
        load_pair_run(path)


def test_the_pair_tool_writes_both_runs_that_the_notebook_loads(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "train_chapter2_pair", Path(__file__).resolve().parent.parent / "tools" / "train_chapter2_pair.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    paths = tool.main(["--steps", "2", "--batch-size", "2", "--out", str(tmp_path)])
    assert shipped_pair(tmp_path) == paths
    runs = {kind: load_pair_run(path) for kind, path in paths.items()}
    assert all(r.step == 2 and len(r.losses) == 2 for r in runs.values())
    assert runs["additive"].losses[0] == runs["adagn"].losses[0]  # same start, same batch, t and noise
    assert runs["adagn"].ema.config == UNetConfig.tiny(resblock="adagn", dropout=0.0)
    card = read_card(paths["adagn"])
    assert card["training"]["train_config"]["max_steps"] == 2
    assert "tools/train_chapter2_pair.py" in card["training"]["command"]


def test_load_pair_run_warns_when_the_run_was_trained_with_other_settings(tmp_path):
    config, data, cfg = _pair_setup()
    runs = train_pair(paired_unets(config)[0], data, NoiseSchedule.linear(100), cfg)
    path = save_pair_run(tmp_path / "a.safetensors", "additive", runs["additive"], cfg)
    with pytest.warns(UserWarning, match=r"max_steps 3 \(expected 1500\), batch_size 4 \(expected 32\)"):
        load_pair_run(path, expect=paired_train_config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pair_run(path, expect=cfg)
