import math

import pytest
import torch

from conftest import TinyNet
from course_lib.checkpoint import export_inference, load_checkpoint, read_card
from course_lib.trainer import (NonFiniteLossError, TrainConfig, ema_decay_at, fit, learning_rate, seed_rng, step_seed,
                                update_ema)

W_TRUE = torch.tensor([1.0, -2.0, 0.5, 3.0])


def regression_batches(step: int):
    """A tiny regression problem; the batch is a pure function of the step."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 4, generator=g)
    return x, torch.tanh(x @ W_TRUE)


def mse(model, batch):
    x, y = batch
    # a random input perturbation: exercises the loop's per-step seeding of the global RNG
    return (model(x + 0.01 * torch.randn_like(x)) - y).pow(2).mean()


def cfg(**kw):
    base = dict(max_steps=40, lr=1e-2, ema_decay=0.9, progress=False, checkpoint_minutes=None)
    return TrainConfig(**{**base, **kw})


def test_loss_goes_down(tiny_net):
    result = fit(tiny_net, mse, regression_batches, cfg(max_steps=150), device="cpu")
    assert len(result.losses) == 150 and result.step == 150 and result.stopped_by == "steps"
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)
    assert result.images_per_second > 0


def test_resume_equals_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    straight = TinyNet()
    full = fit(straight, mse, regression_batches, cfg(max_steps=30), device="cpu")

    torch.manual_seed(0)
    first_half = TinyNet()
    path = tmp_path / "state.safetensors"
    fit(first_half, mse, regression_batches, cfg(max_steps=12), checkpoint_path=path, device="cpu")
    assert read_card(path)["step"] == 12

    torch.manual_seed(123)  # a differently initialised model: everything must come from the checkpoint
    resumed_model = TinyNet()
    resumed = fit(resumed_model, mse, regression_batches, cfg(max_steps=30), checkpoint_path=path, device="cpu")
    assert resumed.first_step == 12 and resumed.step == 30
    assert resumed.losses == full.losses  # the history carried over, then identical steps
    for a, b in zip(straight.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_periodic_checkpoints(tmp_path, tiny_net):
    path = tmp_path / "s.safetensors"
    fit(tiny_net, mse, regression_batches, cfg(max_steps=7, checkpoint_every=3), checkpoint_path=path, device="cpu")
    card = read_card(path)
    assert card["step"] == 7 and card["training"]["saved_because"] == "end (steps)"
    assert card["training"]["train_config"]["max_steps"] == 7 and card["has_ema"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_net):
    def poisoned(model, batch):
        loss = mse(model, batch)
        return loss * float("nan") if poisoned.calls == 7 else loss
    poisoned.calls = 0

    def counting(model, batch):
        out = poisoned(model, batch)
        poisoned.calls += 1
        return out

    path = tmp_path / "s.safetensors"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 7.*step 5\) was kept"):
        fit(tiny_net, counting, regression_batches, cfg(max_steps=20, checkpoint_every=5),
            checkpoint_path=path, device="cpu")
    ckpt = load_checkpoint(path, TinyNet())
    assert ckpt.step == 5 and all(math.isfinite(v) for v in ckpt.train["loss_history"].tolist())
    # the weights in memory were not touched by the bad step
    assert all(torch.isfinite(p).all() for p in tiny_net.parameters())


def test_nan_without_checkpoint_says_so(tiny_net):
    with pytest.raises(NonFiniteLossError, match="at step 0.*no checkpoint was written"):
        fit(tiny_net, lambda m, b: torch.tensor(float("inf"), requires_grad=True), regression_batches,
            cfg(max_steps=3), device="cpu")


def test_time_budget_stops_training(tiny_net):
    result = fit(tiny_net, mse, regression_batches, cfg(max_steps=None, max_minutes=0.5 / 60), device="cpu")
    assert result.stopped_by == "time" and result.step > 0
    assert result.seconds >= 0.5  # no upper bound: a busy machine may take long for the step after the budget


def test_budget_is_required():
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(max_steps=None, max_minutes=None)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_learning_rate_warms_up_holds_then_cools_down_to_zero():
    c = cfg(max_steps=100, lr=1.0, warmup_steps=10, cooldown_steps=20)
    lrs = [learning_rate(c, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0       # linear warm-up over 10 steps
    assert set(lrs[10:81]) == {1.0}                              # constant until the cool-down starts
    assert lrs[80] == 1.0 and lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(1 / 20)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))        # strictly falling, towards 0 at max_steps
    assert learning_rate(c, 100) == 0.0 and learning_rate(c, 150) == 0.0
    # a warm start at step 40 warms up again from there; the cool-down is unchanged
    assert learning_rate(c, 40, warmup_from=40) == pytest.approx(0.1) and learning_rate(c, 95, 40) == pytest.approx(0.25)
    assert [learning_rate(cfg(lr=0.5), s) for s in (0, 10**6)] == [0.5, 0.5]  # neither: constant
    with pytest.raises(ValueError, match="give max_steps"):
        TrainConfig(max_steps=None, max_minutes=1.0, cooldown_steps=10)
    with pytest.raises(ValueError, match="cooldown_steps"):
        TrainConfig(cooldown_steps=-1)


def test_fit_applies_the_cool_down_and_the_card_records_it(tmp_path):
    """Resume a constant-rate state and cool it down: the optimizer's last rate is lr / cooldown_steps."""
    state = tmp_path / "s.safetensors"
    torch.manual_seed(0)
    fit(TinyNet(), mse, regression_batches, cfg(max_steps=10), checkpoint_path=state, device="cpu")
    assert read_card(state)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2)
    fit(TinyNet(), mse, regression_batches, cfg(max_steps=20, cooldown_steps=8), checkpoint_path=state, device="cpu")
    card = read_card(state)
    assert card["step"] == 20 and card["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 / 8)
    assert card["training"]["train_config"]["cooldown_steps"] == 8


def test_ema_update_and_warmup():
    a, b = TinyNet(), TinyNet()
    target = 0.25 * a.net[0].weight + 0.75 * b.net[0].weight
    update_ema(a, b, decay=0.25)
    assert torch.allclose(a.net[0].weight, target)
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9999, 10**6) == 0.9999


def test_gradient_clipping_bounds_the_update(tiny_net, monkeypatch):
    before = [p.detach().clone() for p in tiny_net.parameters()]
    norms_after_clipping = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        clip(params, max_norm, *args, **kwargs)
        norms_after_clipping.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in params)).item())

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    huge = lambda model, batch: 1e6 * mse(model, batch)  # gradients far above the limit
    fit(tiny_net, huge, regression_batches, cfg(max_steps=2, grad_clip=0.5), device="cpu")
    assert len(norms_after_clipping) == 2 and all(n <= 0.5 + 1e-4 for n in norms_after_clipping)
    assert any(not torch.equal(p, q) for p, q in zip(before, tiny_net.parameters()))


def test_bf16_channels_last_trains_a_conv_net(monkeypatch, tmp_path):
    from course_lib import config
    from course_lib.unet import UNet, UNetConfig

    monkeypatch.setattr(config, "native_bf16", lambda device: True)  # the bf16 path, even on a CPU without it
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny())
    images = torch.randn(4, 3, 32, 32).clamp(-1, 1)
    loss_fn = lambda m, batch: (m(batch[0], torch.full((4,), 500)) - batch[0]).pow(2).mean()
    result = fit(model, loss_fn, lambda step: (images,), cfg(max_steps=3, bf16=True, channels_last=True, lr=1e-3),
                 checkpoint_path=tmp_path / "s.safetensors", device="cpu")
    assert all(math.isfinite(v) for v in result.losses) and result.losses[-1] < result.losses[0]
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert read_card(tmp_path / "s.safetensors")["training"]["precision"] == "bf16 autocast"


def test_bf16_falls_back_to_float32_without_native_support(monkeypatch, tmp_path, capsys):
    """Emulated bf16 (an AVX2-only CPU) trains ~10x slower than float32: the loop uses float32 and says so."""
    from course_lib import config

    monkeypatch.setattr(config, "native_bf16", lambda device: False)
    seen = []
    def loss_fn(model, batch):
        seen.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)  # bfloat16 under autocast
        return mse(model, batch)
    fit(TinyNet(), loss_fn, regression_batches, cfg(max_steps=2, bf16=True), checkpoint_path=tmp_path / "s.safetensors",
        device="cpu")
    assert seen == [torch.float32, torch.float32]
    assert "bf16 autocast off: cpu has no native bf16" in capsys.readouterr().err
    assert read_card(tmp_path / "s.safetensors")["training"]["precision"] == "float32"


def test_native_bf16_agrees_with_the_cpu_flags_the_kernel_reports():
    """Native bf16 on a CPU means the AVX-512 BF16 or AMX instructions, which Linux lists in /proc/cpuinfo."""
    from pathlib import Path

    from course_lib import config

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux): nothing independent to compare with")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.partition(":")[2].split())
    expected = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert config.native_bf16("cpu") == expected and config.native_bf16(torch.device("cpu")) == expected
    assert config.native_bf16("meta") is False


@pytest.mark.slow
def test_cli_saves_and_exports_on_sigterm_even_when_sigint_was_ignored(tmp_path, isolated_data):
    """A background job (``nohup ... &``) starts with SIGINT ignored; ``kill`` must still stop it cleanly."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    state, export = tmp_path / "state.safetensors", tmp_path / "export.safetensors"
    command = [sys.executable, "-m", "course_lib.train", "ddpm-tiny", "--steps", "100000", "--threads", "1",
               "--state", str(state), "--export", str(export)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 120
    seen = ""
    while not re.search(r"\b[1-9][0-9]*/100000", seen) and time.time() < deadline:  # a first step is done
        seen += proc.stdout.read(1)
    proc.send_signal(signal.SIGTERM)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "stopped by interrupt" in out
    assert state.exists() and export.exists()
    assert read_card(export)["step"] >= 1


def test_warm_start_from_an_inference_checkpoint(tmp_path):
    """No training state, only the exported EMA weights (a new machine): training carries on from them."""
    torch.manual_seed(0)
    first = fit(TinyNet(), mse, regression_batches, cfg(max_steps=12), checkpoint_path=tmp_path / "a.safetensors",
                device="cpu")
    export = export_inference(tmp_path / "a.safetensors", tmp_path / "export.safetensors")

    torch.manual_seed(123)  # everything must come from the export
    model = TinyNet()
    state = tmp_path / "b.safetensors"
    warm = fit(model, mse, regression_batches, cfg(max_steps=12, warmup_steps=10), checkpoint_path=state,
               init_from=export, device="cpu")
    assert warm.first_step == 12 and warm.step == 12 and warm.losses == first.losses  # history carried over
    for a, b, c in zip(first.ema.state_dict().values(), model.state_dict().values(), warm.ema.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)  # model and EMA both start at the exported EMA weights
    card = read_card(state)
    assert card["training"]["warm_starts"] == [{"from": export.name, "step": 12, "weights": "ema"}]
    assert card["training"]["wall_seconds_total"] >= read_card(export)["training"]["wall_seconds_total"]

    # two more steps: the learning rate warmed up again from the warm start (2/10 of lr), not from step 0
    fit(model, mse, regression_batches, cfg(max_steps=14, warmup_steps=10), checkpoint_path=state, device="cpu")
    card = read_card(state)
    assert card["step"] == 14 and card["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 * 2 / 10)
    assert len(card["training"]["warm_starts"]) == 1  # resuming the state is not another warm start


def test_a_training_state_wins_over_init_from(tmp_path):
    path = tmp_path / "s.safetensors"
    torch.manual_seed(0)
    fit(TinyNet(), mse, regression_batches, cfg(max_steps=5), checkpoint_path=path, device="cpu")
    missing = tmp_path / "not-there.safetensors"  # never read: the state is resumed instead
    result = fit(TinyNet(), mse, regression_batches, cfg(max_steps=7), checkpoint_path=path, init_from=missing,
                 device="cpu")
    assert result.first_step == 5 and "warm_starts" not in read_card(path)["training"]


def test_fit_transplant_from_starts_a_new_run_from_the_donor_and_records_it(tmp_path):
    """fit(transplant_from=...): step 0, the model *and* its EMA start from the donor's weights, and
    the card's record of it survives a resume; init_from together with it is refused."""
    from course_lib.checkpoint import save_checkpoint

    torch.manual_seed(1)
    donor_net = TinyNet()
    donor = save_checkpoint(tmp_path / "donor.safetensors", donor_net, step=9)
    path = tmp_path / "s.safetensors"
    torch.manual_seed(2)
    model = TinyNet()
    result = fit(model, mse, regression_batches, cfg(max_steps=0), checkpoint_path=path,
                 transplant_from=donor, device="cpu")  # 0 steps: the weights as the run begins
    assert result.first_step == 0 and result.step == 0
    for net in (model, result.ema):  # both began at the donor, not at seed 2
        for (name, ours), theirs in zip(net.state_dict().items(), donor_net.state_dict().values()):
            assert torch.equal(ours, theirs), name
    record = read_card(path)["training"]["transplant"]
    assert record["from"] == donor.name and record["step"] == 9 and record["fresh_tensors"] == []

    fit(TinyNet(), mse, regression_batches, cfg(max_steps=2), checkpoint_path=path, device="cpu")
    assert read_card(path)["training"]["transplant"] == record  # carried across the resume
    export = export_inference(path, tmp_path / "export.safetensors")
    warm = tmp_path / "warm.safetensors"
    fit(TinyNet(), mse, regression_batches, cfg(max_steps=3), checkpoint_path=warm, init_from=export, device="cpu")
    assert read_card(warm)["training"]["transplant"] == record  # and across a warm start from its export
    with pytest.raises(ValueError, match="give one of them"):
        fit(TinyNet(), mse, regression_batches, cfg(max_steps=1), init_from=donor, transplant_from=donor)


@pytest.mark.slow
def test_cli_transplant_starts_at_step_zero_and_the_card_keeps_it(tmp_path, isolated_data, capsys):
    """--transplant-from: a new run (step 0) whose matching tensors come from another checkpoint; the
    card records where they came from, also after the state is resumed."""
    from course_lib import train
    from course_lib.checkpoint import load_checkpoint, save_checkpoint
    from course_lib.recipes import RECIPES

    torch.manual_seed(5)  # not the recipe's seed: the donor's weights differ from a fresh model's
    donor = save_checkpoint(tmp_path / "donor.safetensors", RECIPES["cond-tiny"].build_model(), step=3)
    state, export = tmp_path / "s.safetensors", tmp_path / "e.safetensors"
    args = ["cond-tiny", "--threads", "1", "--state", str(state), "--export", str(export), "--transplant-from", str(donor)]
    assert train.main([*args, "--steps", "2"]) == 0
    assert "no training state: step 0 with" in capsys.readouterr().out
    card = read_card(state)
    assert card["step"] == 2 and "warm_starts" not in card["training"]
    transplant = card["training"]["transplant"]
    assert transplant["from"] == donor.name and transplant["step"] == 3 and transplant["fresh_tensors"] == []

    # it trained from the donor's weights: 2 small steps later it is far closer to them than a fresh
    # model is, yet not equal (it did train)
    ours, theirs = load_checkpoint(state).model, load_checkpoint(donor).model
    torch.manual_seed(0)
    fresh = RECIPES["cond-tiny"].build_model().state_dict()
    distance = lambda sd: sum((sd[k].float() - v.float()).abs().sum() for k, v in theirs.items())  # noqa: E731
    assert 0 < distance(ours) < 0.1 * distance(fresh)

    assert train.main([*args, "--steps", "3"]) == 0  # resumed: the transplant is not done again
    assert "is resumed; --transplant-from" in capsys.readouterr().out
    card = read_card(state)
    assert card["step"] == 3 and card["training"]["transplant"] == transplant

    with pytest.raises(SystemExit):
        train.main(["cond-tiny", "--steps", "1", "--transplant-from", str(donor), "--init-from", str(donor)])


@pytest.mark.parametrize("flags, message", [(["--minutes", "1", "--cooldown", "5"], "give --steps too"),
                                            (["--steps", "9", "--cooldown", "0"], "positive number")])
def test_cli_refuses_a_cooldown_without_an_end(flags, message, capsys):
    from course_lib import train
    with pytest.raises(SystemExit):
        train.main(["cond-tiny", *flags])
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_cooldown_reaches_the_card(tmp_path, isolated_data):
    from course_lib import train
    state, export = tmp_path / "s.safetensors", tmp_path / "e.safetensors"
    args = ["cond-tiny", "--threads", "1", "--state", str(state), "--export", str(export)]
    assert train.main([*args, "--steps", "4", "--cooldown", "2"]) == 0
    card = read_card(export)
    tc = card["training"]["train_config"]
    assert tc["cooldown_steps"] == 2 and "--cooldown 2" in card["training"]["command"]
    # cond-tiny: lr 1e-3, 20 warm-up steps; the last update (step 3) ran at 1e-3 * warm-up 4/20 * cool-down 1/2
    assert read_card(state)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


class AttendingNet(torch.nn.Module):
    """A regression net with one attention layer, for the monitor: x [B, 4] as 4 tokens of width 1 -> 8."""

    def __init__(self):
        super().__init__()
        from course_lib.attention import MultiHeadAttention
        self.embed = torch.nn.Linear(1, 8)
        self.attn = MultiHeadAttention(8, 2)
        self.out = torch.nn.Linear(32, 1)

    def forward(self, x):
        h = self.embed(x[..., None])  # [B, 4, 8]
        return self.out((h + self.attn(h)).flatten(1)).squeeze(-1)


def test_the_monitor_records_attention_statistics_without_changing_the_run(tmp_path):
    torch.manual_seed(0)
    plain_model = AttendingNet()
    plain = fit(plain_model, mse, regression_batches, cfg(max_steps=20), device="cpu")
    torch.manual_seed(0)
    watched_model = AttendingNet()
    path = tmp_path / "state.safetensors"
    watched = fit(watched_model, mse, regression_batches, cfg(max_steps=20, monitor_every=5), checkpoint_path=path,
                  device="cpu")
    assert watched.losses == plain.losses  # the probes draw their own noise and leave the training's alone
    monitor = read_card(path)["training"]["monitor"]
    assert [m["step"] for m in monitor] == [5, 10, 15, 20]
    assert all(0 < m["entropy"] <= m["max_entropy"] + 1e-6 and math.isfinite(m["max_logit"]) for m in monitor)
    assert monitor[-1]["max_entropy"] == pytest.approx(math.log(4), abs=1e-4)  # 4 keys a query
    fit(AttendingNet(), mse, regression_batches, cfg(max_steps=30, monitor_every=5), checkpoint_path=path,
        device="cpu")  # resumed: the history goes on
    assert [m["step"] for m in read_card(path)["training"]["monitor"]] == [5, 10, 15, 20, 25, 30]
    with pytest.raises(ValueError, match="monitor_every"):
        cfg(monitor_every=-1)


def test_a_step_is_seeded_as_torch_manual_seed_would_seed_it():
    """The trainer seeds each step's CPU generator itself (torch.manual_seed would also queue a seeding call for
    every unstarted accelerator, each step): the draws must be those of torch.manual_seed, step by step."""
    for step in (0, 1, 12_345):
        torch.manual_seed(step_seed(0, step))
        expected = torch.randn(4), torch.randint(0, 1000, (3,))
        torch.manual_seed(99)  # something else in between
        seed_rng(step_seed(0, step), torch.device("cpu"))
        drawn = torch.randn(4), torch.randint(0, 1000, (3,))
        assert all(torch.equal(a, b) for a, b in zip(expected, drawn))

