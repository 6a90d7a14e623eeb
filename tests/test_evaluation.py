"""Prompt accuracy: generate from class prompts, classify, count."""

from types import SimpleNamespace

import pytest
import torch

from course_lib.captions import class_prompt
from course_lib.checkpoint import save_checkpoint
from course_lib.classifier import CIFARClassifier, ClassifierConfig, predict
from course_lib.evaluation import main, prompt_accuracy
from course_lib.generation import Pipeline
from course_lib.processes import DDPMProcess
from course_lib.text2image import Text2ImageConfig, TextToImageModel


class BrightnessClassifier(torch.nn.Module):
    """Reads the class off an image's mean brightness: mean = -1 + 2 (k + 0.5) / 10 is class k."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # predict() asks for the model's device

    def forward(self, x):
        centres = -1 + 2 * (torch.arange(10) + 0.5) / 10  # [10]
        return -(x.mean(dim=(1, 2, 3))[:, None] - centres).pow(2)  # [B, 10]


class PromptPainter:
    """A stand-in text-to-image pipeline: paints the prompted class's brightness when w >= 1, else class 0.

    It records the noise it was given, to check that every guidance weight starts from the same noise."""

    text_conditional = True
    denoiser = SimpleNamespace(sample_shape=(3, 8, 8))
    device = torch.device("cpu")

    def __init__(self):
        self.noise = {}

    def generate(self, prompts, guidance, num_steps, x_T, sampler=None, size=None):
        classes = torch.tensor([[class_prompt(k) for k in range(10)].index(p) for p in prompts])
        target = classes if guidance >= 1 else torch.zeros_like(classes)
        self.noise.setdefault(guidance, []).append(x_T.clone())
        brightness = -1 + 2 * (target + 0.5) / 10  # [B]
        return brightness[:, None, None, None] + 0 * x_T


def test_a_generator_that_follows_its_prompts_scores_one_and_ignoring_them_scores_chance():
    painter = PromptPainter()
    results = prompt_accuracy(painter, BrightnessClassifier(), guidances=(0, 1, 3), per_class=3, batch_size=7)
    assert list(results) == [0.0, 1.0, 3.0]
    assert results[1.0].accuracy == 1.0 and results[3.0].accuracy == 1.0 and results[1.0].stderr == 0.0
    ignored = results[0.0]  # everything painted as class 0: right for the 3 airplane prompts only
    assert ignored.n == 30 and ignored.accuracy == pytest.approx(0.1)
    assert ignored.per_class.tolist() == [1.0] + [0.0] * 9
    assert ignored.confusion[:, 0].tolist() == [3] * 10 and ignored.confusion.sum() == 30
    assert ignored.stderr == pytest.approx((0.1 * 0.9 / 30) ** 0.5)
    assert "10.0% (± 5.5) of 30 images" in str(ignored)
    assert ignored.images.shape == (30, 3, 8, 8)
    # batches of 7 prompts, the same noise at every w
    assert [len(x) for x in painter.noise[0.0]] == [7, 7, 7, 7, 2]
    for w in (1.0, 3.0):
        assert all(torch.equal(a, b) for a, b in zip(painter.noise[0.0], painter.noise[w]))


def test_labels_follow_the_class_prompts():
    results = prompt_accuracy(PromptPainter(), BrightnessClassifier(), guidances=(1,), per_class=2)
    assert results[1.0].labels.tolist() == [k for k in range(10) for _ in range(2)]


def test_the_prompt_function_picks_the_prompts():
    """A painter that knows only the canonical prompts paints every unseen prompt as class 0."""
    from course_lib.captions import unseen_prompt

    class CanonicalPainter(PromptPainter):
        def generate(self, prompts, guidance, num_steps, x_T, sampler=None, size=None):
            known = [class_prompt(k) for k in range(10)]
            self.prompts = getattr(self, "prompts", []) + list(prompts)
            return super().generate([p if p in known else known[0] for p in prompts], guidance, num_steps, x_T)

    painter = CanonicalPainter()
    result = prompt_accuracy(painter, BrightnessClassifier(), guidances=(1,), per_class=2, prompt=unseen_prompt)[1.0]
    assert painter.prompts[:3] == ["a photo of an airliner", "a photo of an airliner", "a photo of a limousine"]
    assert result.accuracy == pytest.approx(0.1) and result.labels.tolist() == [k for k in range(10) for _ in range(2)]


def test_runs_the_pipeline_on_shared_noise_and_classifies_its_images():
    torch.manual_seed(0)
    pipeline = Pipeline(TextToImageModel(Text2ImageConfig.tiny()).eval(), DDPMProcess())
    classifier = CIFARClassifier(ClassifierConfig.tiny()).eval()
    results = prompt_accuracy(pipeline, classifier, guidances=(0, 3), per_class=1, num_steps=2, seed=4)
    noise = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    prompts = [class_prompt(k) for k in range(10)]
    for w, r in results.items():
        assert torch.equal(r.images, pipeline.generate(prompts, guidance=w, num_steps=2, x_T=noise))
        assert torch.equal(r.predicted, predict(classifier, r.images)[0])
        assert r.labels.tolist() == list(range(10))
    with pytest.raises(ValueError, match="needs a text-to-image pipeline"):
        prompt_accuracy(_unconditional(), classifier)


def _unconditional() -> Pipeline:
    from course_lib.unet import UNet, UNetConfig

    return Pipeline(UNet(UNetConfig.tiny()).eval(), DDPMProcess())


@pytest.mark.parametrize("kwargs, message", [
    (dict(per_class=0), "per_class"),
    (dict(num_steps=0), "num_steps"),
    (dict(guidances=()), "at least one guidance weight"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prompt_accuracy(PromptPainter(), BrightnessClassifier(), **kwargs)


@pytest.mark.slow
def test_command_line_reports_and_records_each_guidance_weight_and_seed(tmp_path, capsys):
    import json

    torch.manual_seed(0)
    model = save_checkpoint(tmp_path / "t2i.safetensors", TextToImageModel(Text2ImageConfig.tiny()), kind="inference",
                            training={"process": DDPMProcess().to_dict()})
    classifier = save_checkpoint(tmp_path / "clf.safetensors", CIFARClassifier(ClassifierConfig.tiny()).eval(),
                                 kind="inference")
    results = tmp_path / "results.jsonl"
    assert main([str(model), "--classifier", str(classifier), "--guidance", "0,2", "--per-class", "1",
                 "--steps", "2", "--seeds", "2", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "w = 0:" in out and "w = 2:" in out and "of 10 images" in out and "per class (%): airplane" in out
    assert "prompts like 'a photo of a cat'" in out and "noise seeds 1, 2" in out
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["kind"], r["settings"]["guidance"], r["settings"]["seed"]) for r in records] == [
        ("prompt_accuracy", 0.0, 1), ("prompt_accuracy", 2.0, 1), ("prompt_accuracy", 0.0, 2),
        ("prompt_accuracy", 2.0, 2)]
    assert [r["nfe"] for r in records] == [2.0, 4.0, 2.0, 4.0]  # counted: w = 0 one pass a step, w = 2 two
    assert records[0]["settings"]["per_class"] == 1 and records[0]["settings"]["prompts"] == "class"
    assert 0 <= records[0]["metrics"]["prompt_accuracy"] <= 1 and records[0]["images"] == 10
    assert main([str(model), "--classifier", str(classifier), "--guidance", "1", "--per-class", "1",
                 "--steps", "2", "--prompts", "unseen", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "prompts like 'a photo of a kitten'" in out and "does not know (read as <unk>): airliner, amphibian" in out
    with pytest.raises(SystemExit):
        main([str(model), "--classifier", str(classifier), "--guidance", "zero"])
    assert "--guidance takes numbers separated by commas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(classifier), "--classifier", str(classifier)])
    assert "names no generative process on its card: it is not a denoiser" in capsys.readouterr().err


def test_classifier_score_closed_forms():
    """IS = exp(mean KL(p(y|x) || p(y))): K for confident, balanced classes; 1 for identical distributions."""
    from course_lib.evaluation import ClassifierScore

    balanced = ClassifierScore(torch.eye(10).repeat(3, 1))  # 30 images, each surely one class, 3 per class
    assert balanced.inception_score == pytest.approx(10.0) and balanced.confidence == pytest.approx(1.0)
    assert torch.allclose(balanced.class_share, torch.full((10,), 0.1))
    two = ClassifierScore(torch.eye(10)[[0, 0, 1, 1]])  # confident, but only two classes
    assert two.inception_score == pytest.approx(2.0)
    alike = ClassifierScore(torch.softmax(torch.randn(10), 0).repeat(8, 1))  # every image the same distribution
    assert alike.inception_score == pytest.approx(1.0) and alike.confidence < 1.0
    assert "classifier score 10.00 (of at most 10), mean confidence 100.0%, over 30 images" in str(balanced)


def test_classifier_score_of_images_sees_what_the_classifier_sees():
    from course_lib.evaluation import classifier_score

    brightness = -1 + 2 * (torch.arange(10) + 0.5) / 10  # one image at each class's brightness
    score = classifier_score(BrightnessClassifier(), brightness[:, None, None, None].expand(10, 3, 8, 8).clone())
    assert score.n == 10 and score.probs.argmax(-1).tolist() == list(range(10))
    assert score.inception_score > 1.0 and torch.allclose(score.class_share.sum(), torch.tensor(1.0))


@pytest.mark.slow
def test_command_line_scores_an_unconditional_unet_beside_real_images(tmp_path, isolated_data, capsys):
    from course_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = save_checkpoint(tmp_path / "unet.safetensors", UNet(UNetConfig.tiny()).eval(), kind="inference",
                           training={"diffusion": {"schedule": "linear", "T": 1000, "parameterization": "eps"}})
    classifier = save_checkpoint(tmp_path / "clf.safetensors", CIFARClassifier(ClassifierConfig.tiny()).eval(),
                                 kind="inference")
    assert main([str(unet), "--classifier", str(classifier), "--samples", "3", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 DDIM samples (2 steps, eta = 0)" in out
    assert "samples (" in out and "over 3 images" in out and "3 real test images (bundled sample" in out
    assert out.count("classes seen (%): airplane") == 2
    with pytest.raises(SystemExit):
        main([str(unet), "--classifier", str(classifier), "--samples", "0"])
    assert "--samples must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sample quality (FID, KID, P/R, FD_clf)


class PixelFeatures:
    """A stand-in for Inception (which scores about 10 images/s on a CPU): 4x4 average-pooled pixels, [B, 48]."""

    name, digest, dim, device = "pixels", "f" * 64, 48, torch.device("cpu")

    def __init__(self, device="cpu"):
        pass

    def __call__(self, images_uint8):
        return torch.nn.functional.avg_pool2d(images_uint8.float() / 255, 8).flatten(1)


def _tiny_unet_checkpoint(path):
    from course_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)
    return save_checkpoint(path, UNet(UNetConfig.tiny()).eval(), kind="inference",
                           training={"process": DDPMProcess().to_dict(), "wall_seconds_total": 90.0})


@pytest.mark.slow
def test_quality_command_records_and_saves_exactly_the_images_it_scored(tmp_path, isolated_data, capsys,
                                                                         monkeypatch):
    import json

    import numpy as np

    from course_lib import evaluation
    from course_lib.evaluation import sample_images, sample_quality
    from course_lib.features import sha256_file

    monkeypatch.setattr(evaluation, "InceptionFeatures", PixelFeatures)
    unet = _tiny_unet_checkpoint(tmp_path / "unet.safetensors")
    results, npz = tmp_path / "results.jsonl", tmp_path / "samples.npz"
    args = [str(unet), "--num-samples", "12", "--steps", "2", "--save-samples", str(npz), "--results", str(results)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 samples, ddim 2 steps, noise seed 1" in out and "saved 12 images" in out
    assert "FID-12: " in out and "KID: " in out and "precision " in out and "FD_clf: " in out
    assert "vs the statistics of 3000 train images, bundled sample" in out  # every figure names N and reference
    saved = np.load(npz)["images"]
    assert saved.dtype == np.uint8 and saved.shape == (12, 32, 32, 3)
    images = torch.from_numpy(saved).permute(0, 3, 1, 2)  # [12, 3, 32, 32]
    record = json.loads(results.read_text().splitlines()[-1])
    assert sample_quality(images, progress=False).metrics == record["metrics"]  # scored = saved, to the last bit
    run = sample_images(Pipeline.from_checkpoint(unet), 12, num_steps=2, seed=1, progress=False)
    assert run.images[0].equal(images) and run.nfe == 2.0
    assert record["checkpoint_sha256"] == sha256_file(unet) and record["training_minutes"] == 1.5
    assert record["kind"] == "samples" and record["nfe"] == 2.0  # two DDIM steps, one pass each
    assert record["settings"] == {"num_samples": 12, "steps": 2, "sampler": "ddim", "guidance": None, "seed": 1,
                                  "spacing": "linspace", "shift": None, "decoder": None, "decoder_sha256": None}
    assert record["reference"]["fid_n"] == 3000 and record["reference"]["real_n"] == 12
    assert set(record["seconds"]) >= {"sampling", "inception_total", "classifier"}
    assert 0 <= record["metrics"]["precision"] <= 1 and record["metrics"]["fid"] > 0
    assert main(args[:5] + ["--metrics", "fd_clf", "--results", str(results)]) == 0  # a second line, not a rewrite
    assert len(results.read_text().splitlines()) == 2


def test_quality_command_scores_real_test_images_and_checks_its_arguments(tmp_path, isolated_data, capsys):
    import json

    results = tmp_path / "results.jsonl"
    assert main(["cifar10:test", "--num-samples", "40", "--metrics", "fd_clf", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "40 real CIFAR-10 test images from bundled sample" in out and "FD_clf: " in out
    record = json.loads(results.read_text())
    assert record["model"].startswith("CIFAR-10 test images") and record["settings"] == {"num_samples": 40}
    assert record["kind"] == "real" and "nfe" not in record
    assert record["metrics"]["fd_clf"] > 0 and record["metrics"]["precision_clf"] > 0.5  # real images look real
    for bad, message in ((["--metrics", "fid,sharpness"], "--metrics takes a comma-separated subset"),
                         (["--num-samples", "1"], "--num-samples must be >= 2")):
        with pytest.raises(SystemExit):
            main(["cifar10:test", "--no-record", *bad])
        assert message in capsys.readouterr().err
    unet = _tiny_unet_checkpoint(tmp_path / "unet.safetensors")
    with pytest.raises(SystemExit):
        main([str(unet), "--num-samples", "4", "--steps", "1", "--guidance", "3", "--metrics", "fd_clf",
              "--no-record"])
    with pytest.raises(ValueError, match="unconditional"):
        from course_lib.evaluation import sample_images
        sample_images(Pipeline.from_checkpoint(unet), 4, num_steps=1, guidance=3.0)
    with pytest.raises(SystemExit):
        main([str(unet), "--num-samples", "4", "--save-samples", str(tmp_path / "x.png"), "--metrics", "fd_clf"])


def test_fid_labels_carry_n():
    from course_lib.results import fid_label

    assert [fid_label(n) for n in (50_000, 10_000, 2_000, 500, 2_500)] == ["FID-50k", "FID-10k", "FID-2k",
                                                                             "FID-500", "FID-2500"]


def test_a_missing_eval_extra_is_reported_before_any_sampling(tmp_path, isolated_data, capsys, monkeypatch):
    from course_lib import evaluation, features

    monkeypatch.setattr(features.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(evaluation, "sample_images", lambda *a, **k: pytest.fail("sampled before the check"))
    unet = _tiny_unet_checkpoint(tmp_path / "unet.safetensors")
    with pytest.raises(SystemExit):
        main([str(unet), "--num-samples", "4", "--metrics", "fid", "--no-record"])
    err = capsys.readouterr().err
    assert "pip install -e '.[eval]'" in err and "FD_clf" in err


def test_quality_command_scores_an_autoencoders_reconstructions_of_the_test_images(tmp_path, isolated_data, capsys):
    import json

    import numpy as np

    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from course_lib.data import load_cifar10, to_uint8
    from course_lib.results import results_page

    torch.manual_seed(0)
    autoencoder = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    path = save_checkpoint(tmp_path / "ae.safetensors", autoencoder, kind="inference")
    results, npz = tmp_path / "results.jsonl", tmp_path / "recon.npz"
    assert main([str(path), "--num-samples", "20", "--metrics", "fd_clf", "--results", str(results),
                 "--save-samples", str(npz)]) == 0
    assert "reconstructions of 20 CIFAR-10 test images" in capsys.readouterr().out
    record = json.loads(results.read_text())
    assert record["settings"]["reconstruction"].startswith("decode(mode(q(z|x)))") and record["model"] == "ae"
    assert record["kind"] == "reconstructions" and len(record["settings"]["decoder_sha256"]) == 64
    test = load_cifar10("test", limit=20, verbose=False).images
    with torch.no_grad():
        expected = to_uint8(autoencoder(test, sample_posterior=False)[0].clamp(-1, 1))  # [20, 3, 32, 32]
    saved = torch.from_numpy(np.load(npz)["images"]).permute(0, 3, 1, 2)
    assert saved.equal(expected)  # the scored images are the reconstructions of the first 20 test images
    from course_lib.autoencoder import psnr

    metrics = record["metrics"]  # what the pixels and the latents say, beside the feature metrics
    recon = autoencoder(test, sample_posterior=False)[0].clamp(-1, 1).detach()
    assert metrics["psnr"] == pytest.approx(float(psnr(recon, test).mean()), rel=1e-5)
    mu = autoencoder.encode(test).mode().detach()
    assert metrics["latent_channels"] == 4 and metrics["latent_std"] == pytest.approx(float(mu.std()), rel=1e-5)
    assert metrics["scaled_latent_std"] == pytest.approx(float(mu.std()) * float(autoencoder.scaling_factor), rel=1e-5)
    assert metrics["scaled_latent_max_channel_mean"] >= 0
    assert "| ae | reconstructions of test images |" in results_page([record])
    with pytest.raises(SystemExit):
        main([str(path), "--metrics", "fd_clf", "--no-record"])
    assert "how many test images to reconstruct" in capsys.readouterr().err


@pytest.mark.slow
def test_seeds_and_decoders_each_get_a_line_from_one_sampling_per_seed(tmp_path, isolated_data, monkeypatch, capsys):
    """--seeds 2 with two --decoder: each seed is sampled once and decoded by both decoders (four lines that all
    survive in the results file: they differ in seed or decoder), and the results merge the seeds."""
    from course_lib import config, evaluation
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from course_lib.checkpoint import read_card
    from course_lib.processes import RectifiedFlowProcess
    from course_lib.results import points, read_results

    vae = config.checkpoint_dir() / "vae-small.safetensors"
    torch.manual_seed(0)
    other = save_checkpoint(tmp_path / "other-decoder.safetensors", AutoencoderKL(AutoencoderConfig.tiny()).eval(),
                            kind="inference")
    model = save_checkpoint(tmp_path / "latent.safetensors", TextToImageModel(Text2ImageConfig.latent_tiny()).eval(),
                            kind="inference", training={"process": RectifiedFlowProcess().to_dict(), "autoencoder": {
                                "checkpoint": "vae-small.safetensors", "sha256": read_card(vae)["sha256"]}})
    sampled = []
    real_sample_images = evaluation.sample_images
    monkeypatch.setattr(evaluation, "sample_images",
                        lambda *a, **k: sampled.append(k["seed"]) or real_sample_images(*a, **k))
    results = tmp_path / "results.jsonl"
    assert main([str(model), "--num-samples", "10", "--steps", "2", "--guidance", "3", "--seeds", "2",
                 "--decoder", str(vae), "--decoder", str(other), "--metrics", "fd_clf", "--results",
                 str(results)]) == 0
    assert sampled == [1, 2]  # one sampling per seed, decoded twice
    records = read_results(results)
    assert len(records) == 4 and len(results.read_text().splitlines()) == 4
    assert [(r["settings"]["seed"], r["settings"]["decoder"]) for r in records] == [
        (1, "vae-small"), (1, "other-decoder"), (2, "vae-small"), (2, "other-decoder")]
    assert {r["nfe"] for r in records} == {4.0}  # 2 Euler steps, each a guided (doubled) pass
    assert len({r["settings"]["decoder_sha256"] for r in records}) == 2
    assert {r["settings"]["shift"] for r in records} == {1.0} and records[0]["settings"]["spacing"] == "linspace"
    merged = points("latent", records=records)
    assert len(merged) == 2 and all(p.seeds == [1, 2] and len(p.values("fd_clf")) == 2 for p in merged)
    assert "(2 seeds)" in merged[0].text("fd_clf")
    with pytest.raises(SystemExit):
        main([str(model), "--num-samples", "4", "--decoder", str(model), "--no-record", "--metrics", "fd_clf"])
    assert "not an autoencoder" in capsys.readouterr().err


def test_the_ddim_spacing_is_a_setting_of_the_line(tmp_path, isolated_data, capsys):
    import json

    from conftest import randomize_zero_init
    from course_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)  # the zero-initialised layers randomised: a model predicting eps = 0 samples alike on any grid
    unet = save_checkpoint(tmp_path / "unet.safetensors", randomize_zero_init(UNet(UNetConfig.tiny()), 0.1).eval(),
                           kind="inference", training={"process": DDPMProcess().to_dict()})
    results = tmp_path / "results.jsonl"
    for spacing in ("linspace", "trailing"):
        assert main([str(unet), "--num-samples", "4", "--steps", "2", "--spacing", spacing, "--metrics", "fd_clf",
                     "--results", str(results)]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["settings"]["spacing"] for line in lines] == ["linspace", "trailing"]
    assert lines[0]["metrics"] != lines[1]["metrics"]  # another grid, other samples
    with pytest.raises(SystemExit):
        main([str(unet), "--num-samples", "4", "--sampler", "ddpm", "--spacing", "trailing", "--no-record"])
    assert "--spacing trailing spaces DDIM's timesteps" in capsys.readouterr().err
