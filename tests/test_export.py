"""course_lib.export: a course autoencoder in LDM's layout computes what diffusers' AutoencoderKL computes."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from course_lib import config
from course_lib.autoencoder import LDM_LAYOUT, AutoencoderConfig, AutoencoderKL
from course_lib.export import LayoutError, autoencoder_to_diffusers
from course_lib.models import model_from_checkpoint

RECORDED = Path(__file__).parent / "data" / "diffusers_autoencoder.safetensors"
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                                     reason="diffusers is not installed (the optional extra: pip install -e "
                                            "'.[bridge]'); the recorded diffusers outputs are still checked")


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
    vae, _ = model_from_checkpoint(config.REPO_ROOT / "data" / "checkpoints" / "vae-small.safetensors")
    with pytest.raises(LayoutError, match=r"norm_eps=1e-05 \(diffusers computes 1e-06\); downsample_padding="
                                          r"'symmetric' \(diffusers computes 'right_bottom'\)"):
        autoencoder_to_diffusers(vae)
    wide = AutoencoderKL(AutoencoderConfig.tiny(decoder_base_channels=32, **LDM_LAYOUT))
    with pytest.raises(LayoutError, match="a decoder wider or deeper than the encoder"):
        autoencoder_to_diffusers(wide)
