import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import TinyConfig, TinyNet
from course_lib import checkpoint as ck
from course_lib.checkpoint import CheckpointError, export_inference, load_checkpoint, read_card, save_checkpoint


def trained_optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    return opt


def test_round_trip_restores_everything(tmp_path, tiny_net):
    opt = trained_optimizer(tiny_net)
    ema = TinyNet()
    path = save_checkpoint(tmp_path / "run.safetensors", tiny_net, step=3, ema=ema, optimizer=opt,
                           train_tensors={"loss_history": torch.tensor([3.0, 2.0, 1.0])},
                           metrics={"loss": 1.0}, training={"hardware": "test"})
    card = json.loads((tmp_path / "run.json").read_text())
    assert card == read_card(path)
    assert card["step"] == 3 and card["kind"] == "training_state" and card["model_class"] == "TinyNet"
    assert card["model_config"] == {"dim_in": 4, "hidden": 16} and card["metrics"] == {"loss": 1.0}
    assert card["parameters"] == sum(p.numel() for p in tiny_net.parameters()) and len(card["sha256"]) == 64

    model2, ema2 = TinyNet(), TinyNet()
    torch.manual_seed(99)
    ema2.net[0].weight.data.normal_()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ckpt = load_checkpoint(path, model2, ema=ema2, optimizer=opt2)
    assert ckpt.step == 3 and ckpt.train["loss_history"].tolist() == [3.0, 2.0, 1.0]
    for a, b in zip(tiny_net.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k]))
    # and a restored optimizer takes the same next step as the original
    x = torch.randn(8, 4)
    for m, o in ((tiny_net, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(tiny_net.net[0].weight, model2.net[0].weight)


def test_ema_weights_can_be_loaded_into_the_model(tmp_path, tiny_net):
    ema = TinyNet()
    save_checkpoint(tmp_path / "a.safetensors", tiny_net, ema=ema)
    target = TinyNet()
    load_checkpoint(tmp_path / "a.safetensors", target, weights="ema")
    assert torch.equal(target.net[0].weight, ema.net[0].weight)
    assert not torch.equal(target.net[0].weight, tiny_net.net[0].weight)


def test_config_mismatch_names_the_fields(tmp_path, tiny_net):
    save_checkpoint(tmp_path / "a.safetensors", tiny_net)
    with pytest.raises(CheckpointError, match=r"hidden: checkpoint 16 vs model 8"):
        load_checkpoint(tmp_path / "a.safetensors", TinyNet(TinyConfig(hidden=8)))
    with pytest.raises(CheckpointError, match="holds a TinyNet, not a Linear"):
        load_checkpoint(tmp_path / "a.safetensors", torch.nn.Linear(4, 1))


def test_shape_mismatch_with_equal_config_is_caught(tmp_path, tiny_net):
    save_checkpoint(tmp_path / "a.safetensors", tiny_net)
    other = TinyNet()
    other.net[2] = torch.nn.Linear(16, 2)  # the architecture changed, not the config
    with pytest.raises(CheckpointError, match=r"does not fit.*net\.2\.weight \(1, 16\) vs \(2, 16\)"):
        load_checkpoint(tmp_path / "a.safetensors", other)


def test_missing_file_lists_what_is_there(tmp_path, tiny_net):
    save_checkpoint(tmp_path / "present.safetensors", tiny_net)
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*absent.*present\.safetensors"):
        load_checkpoint(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("damage", ["flip_data_byte", "truncate", "empty", "garbage"])
def test_damaged_files_are_detected(tmp_path, tiny_net, damage):
    path = save_checkpoint(tmp_path / "a.safetensors", tiny_net)
    blob = bytearray(path.read_bytes())
    if damage == "flip_data_byte":
        blob[-3] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="damaged|truncated|not a readable"):
        load_checkpoint(path, TinyNet())


def test_stale_side_card_warns_and_inner_card_wins(tmp_path, tiny_net):
    path = save_checkpoint(tmp_path / "a.safetensors", tiny_net, step=5)
    side = json.loads((tmp_path / "a.json").read_text())
    side["sha256"] = "0" * 64
    (tmp_path / "a.json").write_text(json.dumps(side))
    with pytest.warns(UserWarning, match="stale card"):
        assert load_checkpoint(path).step == 5


def test_failed_write_keeps_the_old_checkpoint(tmp_path, tiny_net, monkeypatch):
    path = save_checkpoint(tmp_path / "a.safetensors", tiny_net, step=1)
    before = path.read_bytes()

    def crash_mid_write(p, data):  # write half the bytes to the temp file, then die
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        tmp.write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ck, "atomic_write", lambda p, d: crash_mid_write(p, d))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_net, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path).step == 1


def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path):
    """A process killed with SIGKILL while saving over and over leaves a whole checkpoint."""
    path = tmp_path / "big.safetensors"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from conftest import TinyNet, TinyConfig
        from course_lib.checkpoint import save_checkpoint
        model = TinyNet(TinyConfig(hidden=20000))   # ~0.5 MB of weights, several writes per second
        step = 0
        while True:
            step += 1
            save_checkpoint({str(path)!r}, model, step=step)
            if step == 1:
                open({str(ready)!r}, "w").close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None, "the writer died before its first save"
            assert time.time() < deadline, "the writer never finished a save"
            time.sleep(0.05)
        time.sleep(0.4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(path, TinyNet(TinyConfig(hidden=20000)))
    assert ckpt.step >= 1


def test_export_keeps_only_inference_weights(tmp_path, tiny_net):
    ema = TinyNet()
    opt = trained_optimizer(tiny_net)
    state = save_checkpoint(tmp_path / "state.safetensors", tiny_net, step=3, ema=ema, optimizer=opt,
                            train_tensors={"loss_history": torch.ones(3)}, training={"wall_seconds_total": 9})
    out = export_inference(state, tmp_path / "export" / "model.safetensors")
    card = read_card(out)
    assert card["kind"] == "inference" and card["optimizer"] is None and card["step"] == 3
    assert card["training"]["wall_seconds_total"] == 9 and card["exported_weights"] == "ema"
    ckpt = load_checkpoint(out, TinyNet())
    assert not ckpt.ema and not ckpt.optim
    assert torch.equal(ckpt.model["net.0.weight"], ema.net[0].weight)
    assert out.stat().st_size < state.stat().st_size
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(out, TinyNet(), optimizer=torch.optim.AdamW(TinyNet().parameters()))


def test_paths_must_be_safetensors(tmp_path, tiny_net):
    with pytest.raises(ValueError, match=r"end in \.safetensors"):
        save_checkpoint(tmp_path / "model.pt", tiny_net)


def test_config_field_added_later_with_its_default_still_loads(tmp_path, tiny_net):
    from dataclasses import dataclass

    path = save_checkpoint(tmp_path / "old.safetensors", tiny_net)

    @dataclass
    class TinyConfigV2(TinyConfig):  # a newer course version added a field with a default
        activation: str = "tanh"

    newer = TinyNet(TinyConfigV2())
    load_checkpoint(path, newer)
    assert torch.equal(newer.net[0].weight, tiny_net.net[0].weight)
    with pytest.raises(CheckpointError, match="activation: checkpoint 'tanh' vs model 'relu'"):
        load_checkpoint(path, TinyNet(TinyConfigV2(activation="relu")))


def test_transplant_copies_matching_tensors_and_leaves_the_rest_fresh(tmp_path):
    """A model with a wider input starts from a trained relative: only the first layer's weight is new."""
    torch.manual_seed(0)
    donor = TinyNet()  # dim_in 4
    path = save_checkpoint(tmp_path / "donor.safetensors", donor, step=42)
    torch.manual_seed(1)
    model = TinyNet(TinyConfig(dim_in=6))
    fresh_weight = model.net[0].weight.detach().clone()

    summary = ck.transplant_weights(path, model)

    assert torch.equal(model.net[0].weight, fresh_weight)  # [16, 6] vs the donor's [16, 4]: kept fresh
    for name in ("net.0.bias", "net.2.weight", "net.2.bias"):
        assert torch.equal(model.state_dict()[name], donor.state_dict()[name]), name
    assert summary["from"] == path.name and summary["step"] == 42 and summary["model_class"] == "TinyNet"
    assert summary["fresh_tensors"] == ["net.0.weight"] and summary["fresh_parameters"] == 16 * 6
    assert summary["copied_tensors"] == 4  # net.0.bias, net.2.weight, net.2.bias, the calls buffer
    assert summary["copied_parameters"] == 16 + 16 + 1 + 1 and summary["unused_tensors"] == 1
    json.dumps(summary)  # it goes into the checkpoint card


def test_transplant_from_an_unrelated_model_is_an_error(tmp_path):
    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = TinyConfig()
            self.proj = torch.nn.Linear(3, 3)

    path = save_checkpoint(tmp_path / "other.safetensors", Other())
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="shares no tensor"):
        ck.transplant_weights(path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
