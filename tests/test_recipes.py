"""The training command line and its recipes."""

import json

import pytest
import torch

from course_lib import models, recipes, train
from course_lib.checkpoint import CheckpointError, read_card, save_checkpoint
from course_lib.reflow import PairSettings
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


@pytest.mark.slow
def test_train_resume_and_export(tmp_path, isolated_data, capsys):
    state, export = tmp_path / "state.safetensors", tmp_path / "out" / "tiny.safetensors"
    args = ["ddpm-tiny", "--state", str(state), "--export", str(export), "--device", "cpu"]
    assert train.main(args + ["--steps", "3"]) == 0
    assert read_card(state)["step"] == 3
    assert train.main(args + ["--steps", "5"]) == 0  # resumes at 3, stops at 5
    card = read_card(export)
    assert card["step"] == 5 and card["kind"] == "inference" and card["exported_weights"] == "ema"
    assert card["training"]["recipe"] == "ddpm-tiny"
    assert card["training"]["process"] == {"name": "ddpm", "schedule": "linear", "T": 1000, "parameterization": "eps"}
    assert card["training"]["data_source"].startswith("bundled sample")
    assert card["training"]["wall_seconds_total"] > 0 and "CPU" in card["training"]["hardware"]
    assert json.loads(export.with_suffix(".json").read_text()) == card
    assert "stopped by steps at step 5" in capsys.readouterr().out

    model, card2 = models.model_from_checkpoint(export)
    assert isinstance(model, UNet) and model.config == UNetConfig.tiny() and card2 == card
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32), torch.tensor([0, 999])).shape == (2, 3, 32, 32)


@pytest.mark.slow
def test_without_a_state_the_cli_continues_from_the_export(tmp_path, isolated_data, capsys):
    """A fresh clone has the shipped export but no training state: training continues from the export
    instead of starting at step 0 and then overwriting the better export; --fresh starts at 0."""
    state, export = tmp_path / "state.safetensors", tmp_path / "tiny.safetensors"
    args = ["ddpm-tiny", "--state", str(state), "--export", str(export), "--device", "cpu"]
    assert train.main(args + ["--steps", "3"]) == 0
    state.unlink()  # the state is lost (a new machine); the export is kept
    capsys.readouterr()
    assert train.main(args + ["--steps", "5"]) == 0
    assert f"warm start from {export} (step 3" in capsys.readouterr().out
    card = read_card(export)
    assert card["step"] == 5 and card["training"]["warm_starts"] == [{"from": export.name, "step": 3, "weights": "ema"}]

    assert train.main(args + ["--steps", "2", "--fresh"]) == 0
    card = read_card(export)
    assert card["step"] == 2 and "warm_starts" not in card["training"]
    assert "warm start" not in capsys.readouterr().out

    # an explicit --init-from: used without a state, not used (and said so) when a state exists
    other = tmp_path / "other.safetensors"
    export.rename(other)
    assert train.main(args + ["--steps", "3", "--init-from", str(other)]) == 0
    assert "resumed; --init-from" in capsys.readouterr().out and read_card(export)["step"] == 3
    state.unlink()
    assert train.main(args + ["--steps", "4", "--init-from", str(other)]) == 0
    assert read_card(export)["training"]["warm_starts"][0] == {"from": other.name, "step": 2, "weights": "ema"}
    with pytest.raises(SystemExit):
        train.main(args + ["--fresh", "--init-from", str(other)])
    assert "give one of them" in capsys.readouterr().err


def test_model_from_checkpoint_rejects_unknown_classes(tmp_path):
    path = save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="holds a Linear, which this course version does not know"):
        models.model_from_checkpoint(path)


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


def test_classifier_recipe_is_listed_and_builds_a_classifier(capsys, isolated_data):
    assert train.main(["--list"]) == 0
    assert "cifar-classifier" in capsys.readouterr().out
    from course_lib.classifier import CIFARClassifier

    recipe = recipes.RECIPES["cifar-classifier"]
    assert isinstance(recipe, recipes.ClassifierRecipe)
    cfg = recipe.train_config()
    data = recipe.data()
    assert data.hflip
    x, y = recipe.batches(data, cfg)(0)
    assert x.shape == (cfg.batch_size, 3, 32, 32) and y.shape == (cfg.batch_size,)
    model = recipe.build_model()
    assert isinstance(model, CIFARClassifier)
    torch.manual_seed(0)
    loss = recipe.loss_fn()(model, (x[:32], y[:32]))
    assert loss.item() == pytest.approx(2.3026, abs=0.5)  # about ln 10 for a fresh network
    info = recipe.card_info()
    assert info["recipe"] == "cifar-classifier" and info["augmentation"]["crop_padding"] == 4
    json.dumps(info)


def test_model_from_checkpoint_builds_a_classifier(tmp_path):
    from course_lib.classifier import CIFARClassifier, ClassifierConfig

    torch.manual_seed(0)
    config = ClassifierConfig(widths=(8, 16), norm="group", num_groups=4)
    model = CIFARClassifier(config).eval()
    path = save_checkpoint(tmp_path / "clf.safetensors", model)
    loaded, card = models.model_from_checkpoint(path)
    assert isinstance(loaded, CIFARClassifier) and loaded.config == config and card["model_class"] == "CIFARClassifier"
    x = torch.randn(3, 3, 32, 32).clamp(-1, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_text_to_image_recipes_are_listed_and_start_at_the_simple_loss(capsys, isolated_data):
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    assert train.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("cond-tiny", "cond-small", "cond-small-minilm"):
        assert name in out and isinstance(recipes.RECIPES[name], recipes.Text2ImageRecipe)
    for name, encoder in (("cond-small", "small"), ("cond-small-minilm", "minilm")):
        recipe = recipes.RECIPES[name]
        cfg, info = recipe.train_config(), recipe.card_info()
        assert (cfg.batch_size, cfg.lr, cfg.ema_decay, cfg.bf16, cfg.channels_last) == (64, 2e-4, 0.9995, True, True)
        assert cfg.warmup_steps > 0 and info["text_encoder"] == encoder and info["p_uncond"] == 0.1
        assert info["process"] == {"name": "ddpm", "schedule": "linear", "T": 1000, "parameterization": "eps"}
        json.dumps(info)
    recipe = recipes.RECIPES["cond-tiny"]
    x, y = recipe.batches(recipe.data(), recipe.train_config())(0)
    model = recipe.build_model()
    assert isinstance(model, TextToImageModel) and model.config == Text2ImageConfig.tiny()
    assert model.config.kind == "unet" and model.backbone is model.unet
    torch.manual_seed(0)
    loss = recipe.loss_fn()(model, (x, y))
    assert loss.item() == pytest.approx(1.0, abs=0.05)  # zero-initialised output: E[eps^2] = 1
    assert models.MODELS["TextToImageModel"] == (TextToImageModel, Text2ImageConfig)
    # cards written before the denoiser registry name one class per backbone: both load as TextToImageModel
    assert models.model_class("TextToImageUNet") == models.model_class("TextToImageMMDiT") == (TextToImageModel,
                                                                                              Text2ImageConfig)


def test_model_from_checkpoint_builds_a_text_to_image_model(tmp_path):
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    torch.manual_seed(0)
    model = TextToImageModel(Text2ImageConfig.tiny()).eval()
    path = save_checkpoint(tmp_path / "t2i.safetensors", model)
    loaded, card = models.model_from_checkpoint(path)
    assert isinstance(loaded, TextToImageModel) and loaded.config == model.config
    assert all(torch.equal(p, q) for p, q in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_every_recipe_builds_the_model_its_config_names(isolated_data):
    from course_lib.classifier import CIFARClassifier
    from course_lib.text import pretrained_text_encoder_available
    from course_lib.text2image import TextToImageModel

    expected = {"ddpm-tiny": UNet, "ddpm-small": UNet, "ddpm-paper": UNet, "cifar-classifier": CIFARClassifier,
                "cond-tiny": "unet", "cond-small": "unet", "ldm-tiny": "unet", "ldm-small": "unet", "rf-tiny": "unet",
                "rf-small": "unet", "rf2-small": "unet", "mmdit-tiny": "mmdit", "mmdit-gd-tiny": "mmdit",
                "mmdit-meanflow-tiny": "mmdit"}
    if pretrained_text_encoder_available():
        expected["mmdit-small"], expected["rf-small-minilm"] = "mmdit", "unet"
        expected.update({name: "dit" for name in ("dit-in-context", "dit-cross-attention", "dit-adaln-zero")})
    for name, model_class in expected.items():
        recipe = recipes.RECIPES[name]
        model = recipe.build_model()
        if isinstance(model_class, str):  # a text-to-image model with that kind of denoiser
            assert type(model) is TextToImageModel and model.config.kind == model_class, name
            assert type(model.backbone).__name__ == {"unet": "UNet", "mmdit": "MMDiT", "dit": "DiT"}[model_class], name
        else:
            assert type(model) is model_class, name
        assert model.config == recipe.model_config(), name


def _stand_in_vae_small(checkpoints):
    """A tiny autoencoder (4x8x8 latents, as vae-small's, scaling factor 0.5) saved as checkpoints/vae-small."""
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    autoencoder = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    autoencoder.set_scaling_factor(0.5)
    return autoencoder, save_checkpoint(checkpoints / "vae-small.safetensors", autoencoder, kind="inference")


def test_latent_recipe_trains_on_cached_latents_and_generates_through_the_decoder_it_names(
        tmp_path, isolated_data, monkeypatch):
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from course_lib.data import load_cifar10
    from course_lib.generation import Pipeline

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    recipe = recipes.RECIPES["ldm-tiny"]
    with pytest.raises(FileNotFoundError, match="train it first"):
        recipe.data()
    assert recipe.autoencoder == "vae-small.safetensors"
    autoencoder, ae_path = _stand_in_vae_small(checkpoints)

    export = tmp_path / "ldm-tiny.safetensors"
    assert train.main(["ldm-tiny", "--steps", "2", "--state", str(tmp_path / "state.safetensors"),
                       "--export", str(export), "--device", "cpu"]) == 0
    card = read_card(export)
    named = card["training"]["autoencoder"]
    assert named["checkpoint"] == "vae-small.safetensors" and named["sha256"] == read_card(ae_path)["sha256"]
    n_train = len(load_cifar10("train", verbose=False))
    assert card["training"]["data_images"] == 2 * n_train  # each image and its mirror image, encoded once

    pipe = Pipeline.from_checkpoint(export)
    assert isinstance(pipe.autoencoder, AutoencoderKL) and pipe.denoiser.sample_shape == (4, 8, 8)
    torch.testing.assert_close(pipe.autoencoder.state_dict(), autoencoder.state_dict())
    images = pipe.generate(["a photo of a cat", "a ship"], guidance=3.0, num_steps=3)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1

    torch.manual_seed(1)  # another autoencoder under the same name: its latents mean something else
    save_checkpoint(ae_path, AutoencoderKL(AutoencoderConfig.tiny()), kind="inference")
    with pytest.raises(ValueError, match="not the autoencoder .* was trained with"):
        Pipeline.from_checkpoint(export)
    assert Pipeline.from_checkpoint(export, autoencoder=autoencoder).autoencoder is autoencoder  # knowingly
    ae_path.unlink()
    with pytest.raises(FileNotFoundError, match="latent model"):
        Pipeline.from_checkpoint(export)


def test_rectified_flow_recipe_trains_and_samples_with_its_process(tmp_path, isolated_data, monkeypatch):
    """rf-tiny: ldm-tiny's model and latents with RectifiedFlowProcess; the card names the process, so the
    pipeline samples with Euler / Heun, guidance and the decoder through the one generation path."""
    from course_lib.generation import Pipeline
    from course_lib.processes import RectifiedFlowProcess

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    recipe = recipes.RECIPES["rf-tiny"]
    assert recipe.model_config() == recipes.RECIPES["ldm-tiny"].model_config()  # only the process differs
    _stand_in_vae_small(checkpoints)
    export = tmp_path / "rf-tiny.safetensors"
    assert train.main(["rf-tiny", "--steps", "2", "--state", str(tmp_path / "state.safetensors"),
                       "--export", str(export), "--device", "cpu"]) == 0
    assert read_card(export)["training"]["process"] == RectifiedFlowProcess(time_sampling="logit_normal").to_dict()
    pipe = Pipeline.from_checkpoint(export)
    assert isinstance(pipe.process, RectifiedFlowProcess)
    for sampler in ("euler", "heun"):
        out = pipe.generate(["a photo of a cat", "a ship"], guidance=3.0, num_steps=2, sampler=sampler,
                            return_trajectory=True)
        assert out.sample.shape == (2, 3, 32, 32) and out.sample.min() >= -1 and out.sample.max() <= 1
        assert out.trajectory.shape == (3, 2, 4, 8, 8) and out.times.tolist() == [1.0, 0.5, 0.0]


def test_mmdit_recipe_trains_exports_and_samples_through_the_one_pipeline(tmp_path, isolated_data, monkeypatch):
    """mmdit-tiny: chapter 6's model on the latents with the rectified-flow process; the card names the class
    TextToImageModel and a denoiser of kind "mmdit", so model_from_checkpoint and Pipeline.from_checkpoint rebuild it."""
    from course_lib.generation import Pipeline
    from course_lib.text2image import TextToImageModel

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    _stand_in_vae_small(checkpoints)
    export = tmp_path / "mmdit-tiny.safetensors"
    assert train.main(["mmdit-tiny", "--steps", "2", "--state", str(tmp_path / "state.safetensors"),
                       "--export", str(export), "--device", "cpu"]) == 0
    card = read_card(export)
    assert card["model_class"] == "TextToImageModel" and card["model_config"]["denoiser"]["kind"] == "mmdit"
    model, _ = models.model_from_checkpoint(export)
    assert isinstance(model, TextToImageModel) and model.config == recipes.RECIPES["mmdit-tiny"].model_config()
    pipe = Pipeline.from_checkpoint(export)
    out = pipe.generate(["a photo of a cat", "a ship"], guidance=3.0, num_steps=2, return_trajectory=True)
    assert out.sample.shape == (2, 3, 32, 32) and out.times.tolist() == [1.0, 0.5, 0.0]


def test_reflow_recipe_trains_on_resumable_cached_pairs(tmp_path, isolated_data, monkeypatch):
    """rf-tiny -> its reflow pairs (python -m course_lib.reflow rf2-tiny: settings from the recipe alone, chunked and
    resumable) -> rf2-tiny trained on them."""
    from dataclasses import replace

    from course_lib.generation import Pipeline
    from course_lib.reflow import load_reflow_pairs, make_reflow_pairs
    from course_lib.reflow.__main__ import main as reflow_main

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    recipe = recipes.RECIPES["rf2-tiny"]
    with pytest.raises(FileNotFoundError, match="train the teacher first"):
        recipe.data()
    _stand_in_vae_small(checkpoints)
    teacher = checkpoints / "rf-tiny.safetensors"
    assert train.main(["rf-tiny", "--steps", "2", "--state", str(tmp_path / "rf.safetensors"), "--export",
                       str(teacher), "--device", "cpu"]) == 0
    # the error says in words what is missing (the pairs, their settings, the teacher), not a command to paste
    with pytest.raises(FileNotFoundError, match=r"trains on 64 reflow pairs \(euler 4 steps at guidance 3, noise seed "
                                                r"0\) of its teacher rf-tiny, and they have not been made yet"):
        recipe.data()
    assert recipe.pairs == PairSettings(num_pairs=64, steps=4)  # the defaults: guidance 3, euler, seed 0
    assert (PairSettings().num_pairs, PairSettings().guidance, PairSettings().steps) == (50_000, 3.0, 25)

    path = recipe.pairs_path()
    first = make_reflow_pairs(teacher, replace(recipe.pairs, seed=1), chunk=32, device="cpu", progress=False)
    assert first != path  # another seed, another file
    # two processes share the chunks (--shard 0/2 and 1/2); the one that finds them all joins them
    kw = dict(chunk=16, device="cpu", progress=False)
    seed2 = replace(recipe.pairs, seed=2)
    assert make_reflow_pairs(teacher, seed2, shard=(1, 2), **kw) is None  # chunks 1 and 3 made, 0 and 2 missing
    sharded = load_reflow_pairs(make_reflow_pairs(teacher, seed2, shard=(0, 2), **kw))
    for i in (5, 20, 63):  # pair i's noise comes from (seed, i) whichever shard made it
        shape = tuple(sharded.tensors[1].shape[1:])
        torch.testing.assert_close(sharded.tensors[1][i], torch.randn(shape, generator=torch.Generator().manual_seed(
            2 * 1_000_003 + i)))
    assert sharded.tensors[2].tolist() == [i % 10 for i in range(64)]
    with pytest.raises(ValueError, match="shard 2/2 does not exist"):
        make_reflow_pairs(teacher, seed2, shard=(2, 2), **kw)
    with pytest.raises(SystemExit):
        reflow_main(["rf2-tiny", "--shard", "1of2"])
    with pytest.raises(SystemExit):
        reflow_main(["rf-tiny"])  # not a reflow recipe
    interrupted = path.with_suffix(".parts")  # a run stopped after its first chunk: only chunk 2 is made now
    interrupted.mkdir(parents=True)
    reference = load_reflow_pairs(first)  # seed 1's pairs 0..31 stand in for seed 0's first chunk
    from safetensors.torch import save_file
    save_file({"x0": reference.tensors[0][:32].contiguous(), "x1": reference.tensors[1][:32].contiguous(),
               "labels": reference.tensors[2][:32].contiguous()}, str(interrupted / "00000000.safetensors"),
              metadata={"seconds": "1.0"})
    assert reflow_main(["rf2-tiny", "--chunk", "32", "--device", "cpu"]) == 0  # the recipe's settings, nothing else
    pairs = load_reflow_pairs(path)
    x0, x1, labels = pairs.tensors
    assert x0.shape == x1.shape == (64, 4, 8, 8) and labels.tolist() == [i % 10 for i in range(64)]
    assert torch.equal(x0[:32], reference.tensors[0][:32])  # the existing chunk was kept, not redone
    assert not interrupted.exists() and pairs.card["pairs"] == 64 and pairs.card["steps"] == 4
    pipe = Pipeline.from_checkpoint(teacher)  # chunk 2 is the teacher's guided Euler sample from its noise
    from course_lib.captions import class_prompt
    expected = pipe.process.sample(pipe.guided([class_prompt(int(y)) for y in labels[32:]], 3.0), x_T=x1[32:],
                                   sampler="euler", num_steps=4)
    torch.testing.assert_close(x0[32:], expected)

    export = tmp_path / "rf2-tiny.safetensors"
    assert train.main(["rf2-tiny", "--steps", "2", "--state", str(tmp_path / "rf2.safetensors"), "--export",
                       str(export), "--device", "cpu"]) == 0
    card = read_card(export)
    assert card["training"]["reflow"]["pairs"]["teacher_sha256"] == read_card(teacher)["sha256"]
    assert card["training"]["data_images"] == 64
    assert card["training"]["transplant"]["from"].endswith("rf-tiny.safetensors")  # the reflow starts from its teacher


def _tiny_teacher_and_student(tmp_path, monkeypatch, student: str):
    """mmdit-tiny trained 2 steps into a temporary checkpoint folder, then ``student`` from it: (teacher, export)."""
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    _stand_in_vae_small(checkpoints)
    teacher = checkpoints / "mmdit-tiny.safetensors"
    assert train.main(["mmdit-tiny", "--steps", "2", "--state", str(tmp_path / "t.safetensors"), "--export",
                       str(teacher), "--device", "cpu"]) == 0
    export = tmp_path / f"{student}.safetensors"
    assert train.main([student, "--steps", "2", "--state", str(tmp_path / "s.safetensors"), "--export",
                       str(export), "--device", "cpu"]) == 0
    return teacher, export


def test_guidance_distillation_starts_from_its_teacher_and_samples_in_one_pass_a_step(tmp_path, isolated_data,
                                                                                       monkeypatch):
    """mmdit-tiny -> mmdit-gd-tiny (chapter 7): the student starts from every teacher tensor but its guidance
    embedding, its card names the teacher, and its pipeline guides with one forward pass a step."""
    from course_lib.generation import Pipeline

    teacher, export = _tiny_teacher_and_student(tmp_path, monkeypatch, "mmdit-gd-tiny")
    training = read_card(export)["training"]
    assert training["guidance_distillation"]["teacher_sha256"] == read_card(teacher)["sha256"]
    fresh = training["transplant"]["fresh_tensors"]
    assert fresh and all(name.startswith("mmdit.guidance_in") for name in fresh)
    pipe = Pipeline.from_checkpoint(export)
    with pipe.count_nfe() as nfe:
        images = pipe.generate(["a photo of a cat", "a ship"], guidance=3.0, num_steps=3)
    assert images.shape == (2, 3, 32, 32) and nfe.per_image == 3


def test_meanflow_starts_from_its_teacher_and_samples_in_one_conditional_pass(tmp_path, isolated_data, monkeypatch):
    """mmdit-tiny -> mmdit-meanflow-tiny (chapter 7): the student starts from every teacher tensor but its interval
    embedding, its card names the MeanFlow process and the teacher's w, and its pipeline takes one pass a step."""
    from course_lib.generation import Pipeline
    from course_lib.processes import MeanFlowProcess

    teacher, export = _tiny_teacher_and_student(tmp_path, monkeypatch, "mmdit-meanflow-tiny")
    training = read_card(export)["training"]
    assert training["meanflow"]["teacher_sha256"] == read_card(teacher)["sha256"]
    assert training["meanflow"]["guidance"] == 3.0 and training["process"]["name"] == "meanflow"
    fresh = training["transplant"]["fresh_tensors"]
    assert fresh and all(name.startswith("mmdit.interval_in") for name in fresh)
    pipe = Pipeline.from_checkpoint(export)
    assert isinstance(pipe.process, MeanFlowProcess)
    with pipe.count_nfe() as nfe:
        images = pipe.generate(["a photo of a cat", "a ship"], guidance=3.0)  # MeanFlow's default: one step
    assert images.shape == (2, 3, 32, 32) and nfe.per_image == 1
    with pytest.raises(ValueError, match="guidance=3"):
        pipe.generate(["a photo of a cat"], guidance=1.0)
