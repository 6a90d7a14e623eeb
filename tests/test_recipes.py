"""The training command line and its recipes."""

import json

import pytest
import torch

from course_lib import recipes, train
from course_lib.checkpoint import CheckpointError, read_card, save_checkpoint
from course_lib.unet import UNet, UNetConfig


def test_list_names_every_recipe(capsys):
    assert train.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ddpm-tiny", "ddpm-small", "ddpm-paper"):
        assert name in out


def test_unknown_recipe_is_an_error(capsys):
    with pytest.raises(SystemExit):
        train.main(["ddpm-huge"])
    assert "unknown recipe 'ddpm-huge'" in capsys.readouterr().err


def test_train_resume_and_export(tmp_path, isolated_data, capsys):
    state, export = tmp_path / "state.safetensors", tmp_path / "out" / "tiny.safetensors"
    args = ["ddpm-tiny", "--state", str(state), "--export", str(export), "--device", "cpu"]
    assert train.main(args + ["--steps", "3"]) == 0
    assert read_card(state)["step"] == 3
    assert train.main(args + ["--steps", "5"]) == 0  # resumes at 3, stops at 5
    card = read_card(export)
    assert card["step"] == 5 and card["kind"] == "inference" and card["exported_weights"] == "ema"
    assert card["training"]["recipe"] == "ddpm-tiny"
    assert card["training"]["diffusion"] == {"schedule": "linear", "T": 1000, "parameterization": "eps"}
    assert card["training"]["data_source"].startswith("bundled sample")
    assert card["training"]["wall_seconds_total"] > 0 and "CPU" in card["training"]["hardware"]
    assert json.loads(export.with_suffix(".json").read_text()) == card
    assert "stopped by steps at step 5" in capsys.readouterr().out

    model, card2 = recipes.model_from_checkpoint(export)
    assert isinstance(model, UNet) and model.config == UNetConfig.tiny() and card2 == card
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32), torch.tensor([0, 999])).shape == (2, 3, 32, 32)


def test_model_from_checkpoint_rejects_unknown_classes(tmp_path):
    path = save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="holds a Linear, which this course version does not know"):
        recipes.model_from_checkpoint(path)


def test_recipe_loss_is_the_simple_diffusion_loss(isolated_data):
    recipe = recipes.RECIPES["ddpm-tiny"]
    data = recipe.data()
    cfg = recipe.train_config()
    x, y = recipe.batches(data, cfg)(0)
    assert x.shape == (cfg.batch_size, 3, 32, 32) and y.shape == (cfg.batch_size,)
    model = recipe.build_model()
    torch.manual_seed(0)
    loss = recipe.loss_fn()(model, (x, y))
    # a fresh UNet outputs zeros (zero-initialised last conv), so the eps-MSE is E[eps^2] = 1
    assert loss.item() == pytest.approx(1.0, abs=0.05)
