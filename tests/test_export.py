"""course_lib.export, the bridge to diffusers, proved by round trip.

* Recorded diffusers outputs (tests/data/diffusers_*.safetensors, made by ``python tests/test_export.py record`` with
  diffusers 0.42.1) are checked always: the course's models, built from diffusers' weights by the importers, compute
  diffusers' numbers (an autoencoder in LDM's layout, a UNet2DModel in google/ddpm-cifar10-32's layout, an SD-1-style
  UNet2DConditionModel, a Flux transformer).
* Export and import are checked always: a course model goes to a diffusers folder and comes back bit for bit; the
  shipped checkpoints export (or are refused with the differences named); layouts the other side cannot compute
  are refused.
* With diffusers installed (the ``bridge`` extra), live: diffusers loads every export with ``from_pretrained`` and
  computes the course's outputs; its DDPM, DDIM and flow-matching Euler loops give the course's samples from the
  same noise; a folder diffusers itself writes in google/ddpm-cifar10-32's configuration imports and computes the same.
"""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from course_lib import config
from course_lib.autoencoder import LDM_LAYOUT, AutoencoderConfig, AutoencoderKL
from course_lib.checkpoint import load_checkpoint, read_card, save_checkpoint
from course_lib.classifier import CIFARClassifier, ClassifierConfig
from course_lib.export import (LayoutError, autoencoder_to_diffusers, ddim_scheduler_config, export_checkpoint,
                               flux_inputs, flux_output, from_diffusers, import_folder, load_folder,
                               process_from_scheduler, scheduler_for, to_diffusers)
from course_lib.export.__main__ import main as export_main
from course_lib.export.folders import diffusers_parts
from course_lib.export.mmdit import mmdit_config_from_diffusers, mmdit_config_to_diffusers, mmdit_from_diffusers
from course_lib.export.unet import unet_config_from_diffusers, unet_config_to_diffusers, unet_from_diffusers
from course_lib.flow import flow_time_grid
from course_lib.generation import Pipeline
from course_lib.mmdit import MMDiT, MMDiTConfig
from course_lib.models import model_from_checkpoint
from course_lib.processes import DDPMProcess, RectifiedFlowProcess
from course_lib.text2image import Text2ImageConfig, TextToImageModel
from course_lib.unet import UNet, UNetConfig

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "diffusers_autoencoder.safetensors"
CHECKPOINTS = config.REPO_ROOT / "data" / "checkpoints"
HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(not HAVE_DIFFUSERS,
                                     reason="diffusers is not installed (the optional extra: pip install -e "
                                            "'.[bridge]'); the recorded diffusers outputs are still checked")

#: google/ddpm-cifar10-32's unet/config.json (the published UNet2DModel; as copied with its snapshot ff056c9 into
#: derived repositories), at 1/16 of the width: the layout flags (padding 0, eps 1e-6, freq_shift 1, sines first,
#: one attention level, one head per block) are the published ones
CIFAR10_32 = {"_class_name": "UNet2DModel", "act_fn": "silu", "add_attention": True, "attention_head_dim": None,
              "block_out_channels": [8, 16, 16, 16], "center_input_sample": False, "class_embed_type": None,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
              "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
              "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 8,
              "num_class_embeds": None, "out_channels": 3, "resnet_time_scale_shift": "default", "sample_size": 32,
              "time_embedding_type": "positional",
              "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
#: its scheduler_config.json (Ho et al. sample CIFAR-10 with sigma_t^2 = beta_t: fixed_large)
CIFAR10_32_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                        "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
                        "variance_type": "fixed_large"}
#: a small UNet2DConditionModel in Stable Diffusion 1's layout: 1x1-convolution projections, cosines first
SD1_STYLE = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32],
             "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 8, "cross_attention_dim": 24,
             "attention_head_dim": 2, "use_linear_projection": False, "flip_sin_to_cos": True, "freq_shift": 0}
#: a small Flux transformer: 4-channel latents in 2x2 patches, 2 heads of 32, one block of each kind
FLUX_SMALL = {"in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 32,
              "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
              "axes_dims_rope": [8, 12, 12]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared CPU: one thread is faster than two fighting (and what `make test` uses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomised(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every weight random, the zero-initialised ones (conv2, proj_out, adaLN-Zero) too: a map that mixed two
    tensors up would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def recorded_file(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(DATA / name), framework="pt") as f:
        return json.loads(f.metadata()["config"]), {k: f.get_tensor(k) for k in f.keys()}


# --------------------------------------------------------------------------- the autoencoder, recorded


@pytest.fixture(scope="module")
def recorded():
    """A small LDM-layout autoencoder (every weight random, the zero-initialised ones too) and what diffusers'
    AutoencoderKL computed for it (recorded with diffusers 0.42.1: tests/data/diffusers_autoencoder.safetensors)."""
    with safe_open(str(RECORDED), framework="pt") as f:
        cfg = AutoencoderConfig(**json.loads(f.metadata()["config"]))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = AutoencoderKL(cfg).eval()
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model, tensors


def test_the_course_autoencoder_computes_the_recorded_diffusers_outputs(recorded):
    model, t = recorded
    assert model.config.norm_eps == 1e-6 and model.config.downsample_padding == "right_bottom"
    with torch.no_grad():
        posterior = model.encode(t["x"])
        torch.testing.assert_close(posterior.mean, t["diffusers.mean"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(posterior.logvar, t["diffusers.logvar"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.decode(t["z"]), t["diffusers.decoded"], atol=1e-5, rtol=1e-5)


def test_each_layout_detail_matters(recorded):
    """The same weights with vae-small's GroupNorm eps or symmetric padding compute another encoder: each of
    the two layout options is needed for the match above (the eps matters little, the padding a lot)."""
    model, t = recorded
    with torch.no_grad():
        reference = model.encode(t["x"]).mean
        for change in (dict(norm_eps=1e-5), dict(downsample_padding="symmetric")):
            other = AutoencoderKL(dataclasses.replace(model.config, **change)).eval()
            other.load_state_dict(model.state_dict())
            gap = (other.encode(t["x"]).mean - reference).abs().max().item()
            assert gap > 1e-6, change
    symmetric = (other.encode(t["x"]).mean - reference).norm() / reference.norm()
    assert symmetric > 0.05  # the grid shifted by one pixel: a different function, not a rounding


@needs_diffusers
def test_diffusers_computes_the_course_autoencoder_through_the_name_map(recorded):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    model, t = recorded
    cfg, state_dict = autoencoder_to_diffusers(model)
    theirs = DiffusersAutoencoderKL(**cfg).eval()
    loaded = theirs.load_state_dict(state_dict, strict=True)  # every tensor named, none left over
    assert not loaded.missing_keys and not loaded.unexpected_keys
    assert cfg["scaling_factor"] == pytest.approx(float(model.scaling_factor))
    with torch.no_grad():
        posterior = theirs.encode(t["x"]).latent_dist
        ours = model.encode(t["x"])
        torch.testing.assert_close(posterior.mean, ours.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(posterior.logvar, ours.logvar, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(t["z"]).sample, model.decode(t["z"]), atol=1e-5, rtol=1e-5)


def test_vae_small_is_refused_with_the_differences_named():
    vae, _ = model_from_checkpoint(CHECKPOINTS / "vae-small.safetensors")
    with pytest.raises(LayoutError, match=r"norm_eps=1e-05 \(diffusers computes 1e-06\); downsample_padding="
                                          r"'symmetric' \(diffusers computes 'right_bottom'\)"):
        autoencoder_to_diffusers(vae)
    wide = AutoencoderKL(AutoencoderConfig.tiny(decoder_base_channels=32, **LDM_LAYOUT))
    with pytest.raises(LayoutError, match="a decoder wider or deeper than the encoder"):
        autoencoder_to_diffusers(wide)


# --------------------------------------------------------------------------- diffusers' models, recorded


def _recorded_denoiser_output(model, t: dict, kind: str) -> torch.Tensor:
    with torch.no_grad():
        if kind == "unet":
            return model(t["x"], t["t"])
        if kind == "unet_condition":
            return model(t["x"], t["t"], t["context"], t["mask"].bool())
        return model(t["x"], t["t"] * 1000, t["context"], t["mask"].bool())  # the MM-DiT's time: 1000 t


@pytest.mark.parametrize("name, kind", [("diffusers_unet_cifar10_32.safetensors", "unet"),
                                        ("diffusers_unet_sd1_style.safetensors", "unet_condition"),
                                        ("diffusers_flux.safetensors", "flux")])
def test_imported_models_compute_the_recorded_diffusers_outputs(name, kind):
    """diffusers' weights and config -> the course's class (UNet in google/ddpm-cifar10-32's TF layout; a
    text-conditional UNet with SD 1's 1x1-conv projections and cosine-first sinusoid; a Flux transformer)
    -> the numbers diffusers computed."""
    dconfig, t = recorded_file(name)
    weights = {k[len("diffusers."):]: v.float() for k, v in t.items() if k.startswith("diffusers.")}
    class_name = dconfig.pop("_class_name")
    if kind == "flux":
        model = mmdit_from_diffusers(dconfig, weights, image_size=t["x"].shape[-1])
        assert (model.config.patch_size, model.config.in_channels) == (2, 4)  # FluxPipeline's 2x2 patches
    else:
        model = unet_from_diffusers(class_name, dconfig, weights)
    if kind == "unet":  # the published layout, as UNetConfig.paper() documents it
        c = model.config
        assert (c.norm_eps, c.downsample_padding, c.freq_shift, c.attention_resolutions) == (1e-6, "right_bottom", 1.0,
                                                                                               (16,))
    torch.testing.assert_close(_recorded_denoiser_output(model, t, kind), t["output"], atol=2e-5, rtol=1e-5)
    # and back: the same diffusers tensors (the two projections and the flipped sinusoid are re-expressed)
    again = diffusers_parts(model)[2]
    assert again.keys() == weights.keys()
    if kind != "unet_condition":
        assert all(torch.equal(again[k], weights[k]) for k in weights)


@needs_diffusers
@pytest.mark.parametrize("name, kind", [("diffusers_unet_cifar10_32.safetensors", "unet"),
                                        ("diffusers_unet_sd1_style.safetensors", "unet_condition"),
                                        ("diffusers_flux.safetensors", "flux")])
def test_the_installed_diffusers_still_computes_the_recorded_outputs(name, kind):
    """The recordings are diffusers' numbers, not the course's: today's diffusers, given the recorded weights, agrees."""
    import diffusers

    dconfig, t = recorded_file(name)
    theirs = getattr(diffusers, dconfig.pop("_class_name"))(**dconfig).eval()
    theirs.load_state_dict({k[len("diffusers."):]: v.float() for k, v in t.items() if k.startswith("diffusers.")})
    with torch.no_grad():
        if kind == "unet":
            out = theirs(t["x"], t["t"]).sample
        elif kind == "unet_condition":
            out = theirs(t["x"], t["t"], encoder_hidden_states=t["context"], encoder_attention_mask=t["mask"]).sample
        else:
            inputs = flux_inputs(t["x"], t["t"] * 1000, t["context"], t["mask"].bool(), patch_size=2)
            out = flux_output(theirs(**inputs).sample, 2, *t["x"].shape[-2:])
    torch.testing.assert_close(out, t["output"], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- export and import, no diffusers


def tiny_models() -> dict[str, tuple[torch.nn.Module, dict]]:
    """One small model of every kind, all weights random, with the card fields a checkpoint of it has."""
    ddpm, flow = DDPMProcess(T=50).to_dict(), RectifiedFlowProcess().to_dict()
    tiny = dict(image_size=16, attention_resolutions=(8,))
    text = Text2ImageConfig.latent_tiny()
    return {
        "unet": (randomised(UNet(UNetConfig.tiny(**tiny))), {"process": ddpm}),
        "unet-adagn-tf-layout": (randomised(UNet(UNetConfig.tiny(**tiny, resblock="adagn", num_heads=2, dropout=0.1,
                                                                 norm_eps=1e-6, downsample_padding="right_bottom",
                                                                 freq_shift=1))),
                                 {"process": DDPMProcess(schedule="cosine", T=30, parameterization="v").to_dict()}),
        "unet-text": (randomised(TextToImageModel(dataclasses.replace(
            text, denoiser=dataclasses.replace(text.denoiser, transformer_depth=2)))), {"process": flow}),
        "mmdit": (randomised(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny(
            denoiser=MMDiTConfig.tiny(time_dim=256, patch_size=2, qkv_bias=False)))), {"process": flow}),
        # a guidance-distilled MM-DiT (chapter 7): Flux-dev's guidance embedding, its zero-initialised layer random
        "mmdit-guidance": (randomised(TextToImageModel(Text2ImageConfig.latent_mmdit_tiny(
            denoiser=MMDiTConfig.tiny(time_dim=256, patch_size=2, guidance_embed=True)))), {"process": flow}),
        "autoencoder": (randomised(AutoencoderKL(AutoencoderConfig.tiny(mid_attention=False, shift_factor=0.25,
                                                                        **LDM_LAYOUT))), {}),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each tiny model saved as a course checkpoint and exported: {kind: (model, checkpoint, folder, summary,
    the card's training fields)}."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for kind, (model, training) in tiny_models().items():
        if kind == "autoencoder":
            model.set_scaling_factor(0.75)
        checkpoint = save_checkpoint(root / f"{kind}.safetensors", model, step=7, training=training)
        out[kind] = (model, checkpoint, root / kind, export_checkpoint(checkpoint, root / kind), training)
    return out


@pytest.mark.parametrize("kind", ["unet", "unet-adagn-tf-layout", "unet-text", "mmdit", "mmdit-guidance",
                                  "autoencoder"])
def test_export_then_import_gives_the_model_back_bit_for_bit(exported, kind):
    model, checkpoint, folder, summary, training = exported[kind]
    expected = {"unet": {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"},
                "unet-adagn-tf-layout": {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"},
                "unet-text": {"unet": "UNet2DConditionModel", "scheduler": "FlowMatchEulerDiscreteScheduler",
                              "course_text_encoder.safetensors": "the course's TextEncoder"},
                "mmdit": {"transformer": "FluxTransformer2DModel", "scheduler": "FlowMatchEulerDiscreteScheduler",
                          "course_text_encoder.safetensors": "the course's TextEncoder"},
                "autoencoder": {".": "AutoencoderKL"}}
    expected["mmdit-guidance"] = expected["mmdit"]
    expected = expected[kind]
    assert summary["written"] == expected and not summary["not_written"]
    assert (summary["pipeline"] == "DDPMPipeline") == (kind in ("unet", "unet-adagn-tf-layout"))
    back, fields, vae = load_folder(folder)
    assert type(back) is type(model) and back.config == model.config and vae is None
    assert same_weights(back, model)
    assert fields["step"] == 7
    if kind != "autoencoder":  # the process comes back from the scheduler (and the card's details with it)
        assert fields["training"]["process"] == training["process"]


def test_an_imported_checkpoint_samples_through_the_course_pipeline(exported, tmp_path):
    """What the explorers, the classifier score and the FID command read: a checkpoint whose card names the process."""
    path = import_folder(exported["unet"][2], tmp_path / "again.safetensors")
    pipe = Pipeline.from_checkpoint(path)
    assert isinstance(pipe.process, DDPMProcess) and pipe.process.T == 50
    assert same_weights(pipe.denoiser, exported["unet"][0])
    images = pipe.generate(num_images=2, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["imported_from"]["parts"] == {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}


def test_a_latent_model_travels_with_its_autoencoder(tmp_path, monkeypatch):
    """A latent model whose autoencoder is in LDM's layout exports with vae/ (its scheduler does not clip latents)
    and imports as two checkpoints, the denoiser's card naming the autoencoder's: the course's pipeline decodes."""
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    vae = randomised(AutoencoderKL(AutoencoderConfig.tiny(**LDM_LAYOUT)))
    vae.set_scaling_factor(0.5)
    vae_path = save_checkpoint(tmp_path / "vae.safetensors", vae)
    model = randomised(TextToImageModel(Text2ImageConfig.latent_tiny()))
    named = {"checkpoint": "vae.safetensors", "sha256": read_card(vae_path)["sha256"], "scaling_factor": 0.5}
    checkpoint = save_checkpoint(tmp_path / "ldm.safetensors", model,
                                 training={"process": DDPMProcess(T=50).to_dict(), "autoencoder": named})
    summary = export_checkpoint(checkpoint, tmp_path / "folder")
    assert summary["written"]["vae"] == "AutoencoderKL" and not summary["not_written"]
    scheduler = json.loads((tmp_path / "folder" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["clip_sample"] is False
    pipe = Pipeline.from_checkpoint(import_folder(tmp_path / "folder", tmp_path / "ldm-again.safetensors"))
    assert (tmp_path / "ldm-again-vae.safetensors").is_file()
    assert same_weights(pipe.denoiser, model) and same_weights(pipe.autoencoder, vae)
    assert pipe.generate(["a photo of a cat"], num_steps=2).shape == (1, 3, 32, 32)


def test_the_command_line_exports_and_imports(exported, tmp_path, capsys):
    checkpoint = exported["unet-text"][1]
    assert export_main([str(checkpoint), str(tmp_path / "folder")]) == 0
    out = capsys.readouterr().out
    assert "UNet2DConditionModel.from_pretrained" in out and "encoder_hidden_states=context.tokens" in out
    assert export_main(["--import", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    back, _ = model_from_checkpoint(tmp_path / "back.safetensors")
    assert same_weights(back, exported["unet-text"][0])
    with pytest.raises(FileExistsError):  # never over an existing folder
        export_checkpoint(checkpoint, tmp_path / "folder")
    classifier = save_checkpoint(tmp_path / "clf.safetensors", CIFARClassifier(ClassifierConfig()))
    assert export_main([str(classifier), str(tmp_path / "clf")]) == 2
    assert "CIFARClassifier has no diffusers counterpart" in capsys.readouterr().out
    assert not (tmp_path / "clf").exists()  # nothing half-written


def test_the_shipped_checkpoints_export_or_are_refused(tmp_path):
    """ddpm-small and mmdit-small go to diffusers and back bit for bit (every layout option of the shipped UNets,
    symmetric padding, GroupNorm eps 1e-5, freq_shift 0, has a diffusers twin); ldm-small's denoiser exports but its
    autoencoder, vae-small, is refused (not in LDM's layout), and the folder says so; vae-small alone is refused."""
    ddpm_small, _ = model_from_checkpoint(CHECKPOINTS / "ddpm-small.safetensors")
    cls, dconfig, weights = diffusers_parts(ddpm_small)
    back = unet_from_diffusers(cls, dconfig, weights, like=ddpm_small.config)
    assert cls == "UNet2DModel" and back.config == ddpm_small.config and same_weights(back, ddpm_small)
    # mmdit-small's MM-DiT alone (its text encoder, the frozen MiniLM, is another extra and not part of the map)
    card = read_card(CHECKPOINTS / "mmdit-small.safetensors")
    mmdit = MMDiT(Text2ImageConfig.from_dict(card["model_config"]).denoiser)
    mmdit.load_state_dict({k[len("mmdit."):]: v for k, v in load_checkpoint(CHECKPOINTS / "mmdit-small.safetensors")
                           .model.items() if k.startswith("mmdit.")})
    cls, dconfig, weights = diffusers_parts(mmdit)
    back = mmdit_from_diffusers(dconfig, weights, like=mmdit.config)
    assert cls == "FluxTransformer2DModel" and back.config == mmdit.config and same_weights(back, mmdit)
    summary = export_checkpoint(CHECKPOINTS / "ldm-small.safetensors", tmp_path / "ldm-small")
    assert summary["written"]["unet"] == "UNet2DConditionModel" and "vae" not in summary["written"]
    assert "norm_eps=1e-05 (diffusers computes 1e-06)" in summary["not_written"]["vae"]
    back, fields, vae = load_folder(tmp_path / "ldm-small")
    original, card = model_from_checkpoint(CHECKPOINTS / "ldm-small.safetensors")
    assert vae is None and same_weights(back, original) and back.config == original.config
    assert fields["training"]["autoencoder"] == card["training"]["autoencoder"]  # still decodes with vae-small
    with pytest.raises(LayoutError, match="downsample_padding='symmetric'"):
        export_checkpoint(CHECKPOINTS / "vae-small.safetensors", tmp_path / "vae-small")
    assert not (tmp_path / "vae-small").exists()


def test_processes_become_schedulers_and_back():
    for process in (DDPMProcess(), DDPMProcess(T=50), DDPMProcess(T=10, parameterization="x0"),
                    DDPMProcess(schedule="cosine", T=100, parameterization="v")):
        cls, dconfig = scheduler_for(process)
        assert cls == "DDPMScheduler" and dconfig["timestep_spacing"] == "trailing"
        assert ("trained_betas" in dconfig and dconfig["trained_betas"] is not None) == (process.T < 20)
        back, hints = process_from_scheduler(cls, dconfig)
        assert back == process and hints == {"clip_x0": True}
        assert process_from_scheduler("DDIMScheduler", dconfig)[0] == process
    assert not scheduler_for(DDPMProcess(), latent=True)[1]["clip_sample"]  # latents are not clipped
    cls, dconfig = scheduler_for(RectifiedFlowProcess(time_sampling="logit_normal"))
    assert cls == "FlowMatchEulerDiscreteScheduler" and dconfig["num_train_timesteps"] == 1000
    assert process_from_scheduler(cls, dconfig) == (RectifiedFlowProcess(), {})  # how t was drawn is the card's
    process, hints = process_from_scheduler("DDPMScheduler", {k: v for k, v in CIFAR10_32_SCHEDULER.items()
                                                              if not k.startswith("_")})
    assert process == DDPMProcess(schedule="linear", T=1000, parameterization="eps")
    assert hints == {"clip_x0": True, "variance": "beta"}  # Ho et al.'s sigma_t^2 = beta_t
    with pytest.raises(LayoutError, match="time_scale=0.5"):
        scheduler_for(RectifiedFlowProcess(time_scale=0.5))


@pytest.mark.parametrize("class_name, change, message", [
    ("DDPMScheduler", {"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
    ("DDPMScheduler", {"variance_type": "learned_range"}, "no learned one"),
    ("DDPMScheduler", {"beta_start": 0.00085, "beta_end": 0.012}, "from 0.00085 to 0.012 over T=1000"),
    ("DDPMScheduler", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ("EulerDiscreteScheduler", {}, "is not imported"),
    ("UNet2DModel", {"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
    ("UNet2DModel", {"attention_head_dim": 4, "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D",
                                                                   "DownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"]},
     r"different head counts \[2, 4\]"),
    ("UNet2DModel", {"resnet_time_scale_shift": "scale_shift"}, "attn_norm_num_groups=None"),
    ("UNet2DModel", {"downsample_padding": 2, "upsample_type": "resnet"}, "downsample_padding=2.*upsample_type"),
    ("UNet2DConditionModel", {"addition_embed_type": "text_time"}, "addition_embed_type='text_time'"),
    ("UNet2DConditionModel", {"attention_head_dim": [2, 4]}, r"attention_head_dim \(the head count\)=\[2, 4\]"),
    ("FluxTransformer2DModel", {"pooled_projection_dim": 768}, "Flux pools a second text encoder"),
])
def test_import_refuses_what_the_course_cannot_compute(class_name, change, message):
    base = {"DDPMScheduler": CIFAR10_32_SCHEDULER, "EulerDiscreteScheduler": CIFAR10_32_SCHEDULER,
            "UNet2DModel": CIFAR10_32, "UNet2DConditionModel": SD1_STYLE, "FluxTransformer2DModel": FLUX_SMALL}
    dconfig = {k: v for k, v in {**base[class_name], **change}.items() if not k.startswith("_")}
    with pytest.raises(LayoutError, match=message):
        if class_name.endswith("Scheduler"):
            process_from_scheduler(class_name, dconfig)
        elif class_name.startswith("UNet"):
            unet_config_from_diffusers(class_name, dconfig)
        else:
            mmdit_config_from_diffusers(dconfig, image_size=8)


def test_building_a_diffusers_object_without_diffusers_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '.\[bridge\]'"):
        to_diffusers(UNet(UNetConfig.tiny()))


def test_export_refuses_what_diffusers_cannot_compute():
    with pytest.raises(LayoutError, match=r"num_heads=2 over attention blocks 16 and 32 channels wide per head"):
        unet_config_to_diffusers(UNetConfig.tiny(num_heads=2, channel_mult=(1, 2), attention_resolutions=(32,)))
    with pytest.raises(LayoutError, match=r"time_dim=64 \(Flux's time sinusoid is 256 wide\); mlp_ratio=2.0"):
        mmdit_config_to_diffusers(MMDiTConfig.tiny(mlp_ratio=2.0))
    with pytest.raises(LayoutError, match=r"interval_embed=True \(MeanFlow's second time"):
        mmdit_config_to_diffusers(MMDiTConfig.tiny(time_dim=256, interval_embed=True))
    # the configs the course's layout options map onto exactly: ddpm-small's, and Ho et al.'s at full width
    small = UNetConfig.small()
    assert unet_config_from_diffusers("UNet2DModel", unet_config_to_diffusers(small)) == (small, False)
    published = {k: v for k, v in CIFAR10_32.items() if not k.startswith("_")}
    full = {**published, "block_out_channels": [128, 256, 256, 256], "norm_num_groups": 32}
    paper = UNetConfig.paper(norm_eps=1e-6, downsample_padding="right_bottom", freq_shift=1, dropout=0.0)
    assert unet_config_from_diffusers("UNet2DModel", full) == (paper, False)  # dropout: not in the published config


# --------------------------------------------------------------------------- live: diffusers loads and samples


@needs_diffusers
@pytest.mark.parametrize("kind", ["unet", "unet-adagn-tf-layout", "unet-text", "mmdit", "mmdit-guidance",
                                  "autoencoder"])
def test_diffusers_loads_each_export_and_computes_the_same(exported, kind):
    import diffusers

    model, _, folder, summary, _ = exported[kind]
    part, class_name = next(iter(summary["written"].items()))
    theirs = getattr(diffusers, class_name).from_pretrained(folder, subfolder=None if part == "." else part).eval()
    generator = torch.Generator().manual_seed(3)
    if kind == "autoencoder":
        x = torch.randn(2, 3, 32, 32, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x).latent_dist.mean, model.encode(x).mean, atol=1e-5, rtol=1e-5)
        assert theirs.config.scaling_factor == 0.75 and theirs.config.shift_factor == 0.25
        return
    x = torch.randn(2, *model.sample_shape, generator=generator)
    with torch.no_grad():
        if kind.startswith("unet") and kind != "unet-text":
            t = torch.tensor([3, 17])
            ours, out = model(x, t), theirs(x, t).sample
        else:
            context = model.encode(["a photo of a cat", ""])  # the course's text encoder, then diffusers' denoiser
            t = torch.tensor([250.0, 875.0])  # model time 1000 t
            w = torch.tensor([1.5, 4.0]) if kind == "mmdit-guidance" else None  # the guidance weight it embeds
            ours = model(x, t, context, guidance=w)
            if kind == "unet-text":
                out = theirs(x, t, encoder_hidden_states=context.tokens, encoder_attention_mask=context.mask).sample
            else:
                p = model.config.denoiser.patch_size
                out = flux_output(theirs(**flux_inputs(x, t, context.tokens, context.mask, patch_size=p,
                                                       guidance=w)).sample, p, *x.shape[-2:])
    torch.testing.assert_close(out, ours, atol=1e-5, rtol=1e-5)
    assert same_weights(from_diffusers(theirs, like=getattr(model.config, "denoiser", model.config)),
                        getattr(model, "backbone", model))


def _images(x: torch.Tensor) -> np.ndarray:
    """The course's samples as diffusers' pipelines return them (output_type="np")."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@needs_diffusers
def test_ddpm_and_ddim_pipelines_give_the_course_samples_from_the_same_noise(exported):
    """DDPMPipeline (all 50 steps, ancestral) and DDIMPipeline (5 steps, eta 0 and 1) from the exported folder,
    against the course's ddpm_sample and ddim_sample with the same generator: the same start noise, the same
    per-step noise, the same images. DDIM's grid is diffusers' trailing one (49, 39, 29, 19, 9)."""
    from diffusers import DDIMPipeline, DDPMPipeline

    model, checkpoint, folder, _, _ = exported["unet"]
    process = DDPMProcess(T=50)
    shape = (2, *model.sample_shape)
    theirs = DDPMPipeline.from_pretrained(folder)
    theirs.set_progress_bar_config(disable=True)
    images = theirs(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=50,
                    output_type="np").images
    ours = process.sample(model, shape, sampler="ddpm", generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(images, _images(ours), atol=5e-5)
    ddim = DDIMPipeline.from_pretrained(folder)
    ddim.set_progress_bar_config(disable=True)
    for eta in (0.0, 1.0):
        images = ddim(batch_size=2, generator=torch.Generator().manual_seed(2), num_inference_steps=5, eta=eta,
                      use_clipped_model_output=True, output_type="np").images
        steps = ddim.scheduler.timesteps.tolist()
        assert steps == [49, 39, 29, 19, 9]
        ours = process.sample(model, shape, sampler="ddim", timesteps=steps, eta=eta,
                              generator=torch.Generator().manual_seed(2))
        np.testing.assert_allclose(images, _images(ours), atol=5e-5)


@needs_diffusers
def test_the_schedulers_tables_are_the_course_schedules():
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    for process in (DDPMProcess(), DDPMProcess(T=10), DDPMProcess(schedule="cosine", T=100)):
        for theirs in (DDPMScheduler(**scheduler_for(process)[1]), DDIMScheduler(**ddim_scheduler_config(process))):
            torch.testing.assert_close(theirs.alphas_cumprod, process.noise_schedule.alpha_bar, rtol=2e-5, atol=1e-7)
    flow = FlowMatchEulerDiscreteScheduler.from_config(scheduler_for(RectifiedFlowProcess())[1])
    flow.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8))  # FluxPipeline's grid
    torch.testing.assert_close(flow.sigmas.double(), flow_time_grid(8))
    torch.testing.assert_close(flow.timesteps, flow.sigmas[:-1] * 1000)


@needs_diffusers
def test_flow_match_euler_gives_the_course_euler_samples(exported):
    """diffusers' FlowMatchEulerDiscreteScheduler driving the exported Flux transformer, on the course's uniform grid
    (sigmas 1, 7/8, ..., 1/8, then 0), against the course's Euler sampler with guidance 1, from the same noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    model, _, folder, _, _ = exported["mmdit"]
    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer").eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    context = model.encode(["a photo of a ship", "a photo of a dog"])
    x_T = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(4))
    p, (H, W) = model.config.denoiser.patch_size, x_T.shape[-2:]
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8))
    x = x_T
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            v = flux_output(transformer(**flux_inputs(x, timestep, context.tokens, context.mask, patch_size=p)).sample,
                            p, H, W)
            x = scheduler.step(v, timestep, x).prev_sample
    ours = RectifiedFlowProcess().sample(lambda x, t: model(x, t, context), x_T=x_T, sampler="euler", num_steps=8)
    torch.testing.assert_close(x, ours, atol=1e-4, rtol=1e-4)


@needs_diffusers
def test_a_folder_diffusers_writes_in_ddpm_cifar10_32s_configuration_imports(tmp_path):
    """A DDPMPipeline that diffusers builds (random weights) and saves with google/ddpm-cifar10-32's config.json
    (1/16 of the width; its keys only, so diffusers' defaults fill the rest) and its scheduler, its attention
    weights under their old names (query, key, value, proj_attn): the course's import computes what diffusers
    loads, so the published model would load correctly."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    published = {k: v for k, v in CIFAR10_32.items() if not k.startswith("_")}
    unet = randomised(UNet2DModel(**published), scale=0.1)
    scheduler = DDPMScheduler(**{k: v for k, v in CIFAR10_32_SCHEDULER.items() if not k.startswith("_")})
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "cifar")
    (tmp_path / "cifar" / "unet" / "config.json").write_text(json.dumps(CIFAR10_32))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    weights = {}
    for key, value in unet.state_dict().items():
        for new, old_name in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old_name}.")
        weights[key] = value.contiguous()
    assert "mid_block.attentions.0.proj_attn.weight" in weights
    save_file(weights, str(tmp_path / "cifar" / "unet" / "diffusion_pytorch_model.safetensors"))
    theirs = DDPMPipeline.from_pretrained(tmp_path / "cifar")  # diffusers reads the old names too
    path = import_folder(tmp_path / "cifar", tmp_path / "ddpm-cifar10-32.safetensors")
    ours, card = model_from_checkpoint(path)
    assert card["training"]["process"] == DDPMProcess().to_dict()
    assert card["training"]["imported_from"]["sampler_hints"] == {"clip_x0": True, "variance": "beta"}
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 999])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), theirs.unet(x, t).sample, atol=1e-5, rtol=1e-5)


@needs_diffusers
def test_ddpm_small_computes_the_same_in_diffusers():
    model, _ = model_from_checkpoint(CHECKPOINTS / "ddpm-small.safetensors")
    theirs = to_diffusers(model)
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t).sample, model(x, t), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- recording (needs diffusers)


def record() -> None:
    """Write tests/data/diffusers_{unet_cifar10_32,unet_sd1_style,flux}.safetensors: diffusers models with random
    weights (rounded to float16, stored so: each file < 1 MB), inputs, and what diffusers computes for them."""
    import diffusers

    def save(name: str, model, config: dict, inputs: dict, output: torch.Tensor) -> None:
        tensors = {f"diffusers.{k}": v.half().contiguous() for k, v in model.state_dict().items()}
        tensors.update({k: v.contiguous() for k, v in inputs.items()}, output=output.contiguous())
        metadata = {"config": json.dumps({"_class_name": type(model).__name__, **config}),
                    "diffusers_version": diffusers.__version__}
        save_file(tensors, str(DATA / name), metadata=metadata)
        print(name, (DATA / name).stat().st_size, "bytes")

    def build(cls, dconfig: dict, seed: int):
        model = randomised(cls(**dconfig), scale=0.1, seed=seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())  # what the file stores, exactly
        return model

    g = torch.Generator().manual_seed(0)
    published = {k: v for k, v in CIFAR10_32.items() if not k.startswith("_")}
    unet = build(diffusers.UNet2DModel, published, 1)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 500])
    with torch.no_grad():
        save("diffusers_unet_cifar10_32.safetensors", unet, published, {"x": x, "t": t}, unet(x, t).sample)
    unet = build(diffusers.UNet2DConditionModel, SD1_STYLE, 2)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([3, 700])
    context, mask = torch.randn(2, 5, 24, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
    save("diffusers_unet_sd1_style.safetensors", unet, SD1_STYLE, {"x": x, "t": t, "context": context, "mask": mask},
         out)
    flux = build(diffusers.FluxTransformer2DModel, FLUX_SMALL, 3)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.25, 0.875])
    context, mask = torch.randn(2, 5, 32, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = flux_output(flux(**flux_inputs(x, t * 1000, context, mask.bool(), patch_size=2)).sample, 2, 8, 8)
    save("diffusers_flux.safetensors", flux, FLUX_SMALL, {"x": x, "t": t, "context": context, "mask": mask}, out)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
