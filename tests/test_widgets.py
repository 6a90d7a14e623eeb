"""Widgets update when their controls change (no browser: set the control, check what was drawn)."""

import json
import ipywidgets as widgets
import pytest
import torch
from conftest import randomize_zero_init

from course_lib.schedules import NoiseSchedule
from course_lib.widgets import FigureExplorer, schedule_explorer

T = 200  # a short chain keeps the tests quick; the explorer does not care


@pytest.fixture(scope="module")
def schedules():
    return {"linear": NoiseSchedule.linear(T), "cosine": NoiseSchedule.cosine(T)}


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_explorer_is_a_widget_that_draws_at_once(images, schedules):
    explorer = schedule_explorer(images, schedules, t=20)
    assert isinstance(explorer, widgets.Widget) and isinstance(explorer, FigureExplorer)
    assert explorer.state["t"] == 20
    assert set(explorer.state["x_t"]) == {"linear", "cosine"}
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG is shown
    assert explorer.slider.max == T - 1


def test_moving_the_slider_redraws(images, schedules):
    explorer = schedule_explorer(images, schedules, t=20)
    before_png, before = explorer.image.value, explorer.state
    explorer.slider.value = 150
    after = explorer.state
    assert after["t"] == 150
    assert explorer.image.value != before_png
    for name, schedule in schedules.items():
        assert not torch.equal(after["x_t"][name], before["x_t"][name])
        assert after["alpha_bar"][name] == pytest.approx(float(schedule.alpha_bar[150]))
        assert after["snr"][name] == pytest.approx(float(schedule.snr[150]), rel=1e-6)
        assert after["alpha_bar"][name] < before["alpha_bar"][name]  # later t, more noise


def display_data(widget) -> dict:
    """What a kernel puts in a notebook's display data for ``widget`` (IPython's own formatter)."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(widget)
    return data


def test_display_data_has_a_static_picture_of_the_current_figure(images, schedules):
    import base64

    explorer = schedule_explorer(images, schedules, t=20)
    explorer.slider.value = 150
    data = display_data(explorer)
    assert "application/vnd.jupyter.widget-view+json" in data  # JupyterLab still draws the live widget
    assert base64.b64decode(data["image/png"]) == explorer.image.value  # the figure as it is now
    assert data["text/plain"].startswith("ScheduleExplorer (") and "150" in data["text/plain"]
    assert "VBox" not in data["text/plain"]


def test_the_same_noise_is_used_for_every_t(images, schedules):
    """x_t - sqrt(alpha_bar) x_0 divided by sqrt(1 - alpha_bar) gives back one fixed eps at any t."""
    explorer = schedule_explorer(images, schedules, t=10)
    noises = []
    for t in (10, 100, 190):
        explorer.slider.value = t
        s = schedules["linear"]
        x_t = explorer.state["x_t"]["linear"]
        noises.append((x_t - s.sqrt_alpha_bar[t] * images) / s.sqrt_one_minus_alpha_bar[t])
    assert torch.allclose(noises[0], noises[1], atol=1e-4) and torch.allclose(noises[1], noises[2], atol=1e-4)
    # the schedules differ at the same t
    assert not torch.allclose(explorer.state["x_t"]["linear"], explorer.state["x_t"]["cosine"])


def test_play_drives_the_slider(images, schedules):
    explorer = schedule_explorer(images, schedules, t=0)
    explorer.play.value = 120
    assert explorer.slider.value == 120 and explorer.state["t"] == 120


def test_the_seed_picks_the_noise(images, schedules):
    a = schedule_explorer(images, schedules, t=50, seed=0).state["x_t"]["cosine"]
    b = schedule_explorer(images, schedules, t=50, seed=0).state["x_t"]["cosine"]
    c = schedule_explorer(images, schedules, t=50, seed=1).state["x_t"]["cosine"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs_are_explained(images, schedules):
    with pytest.raises(ValueError, match="same number of steps"):
        schedule_explorer(images, {"a": NoiseSchedule.linear(100), "b": NoiseSchedule.linear(200)})
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        schedule_explorer(images[0], schedules)
    with pytest.raises(ValueError, match="at least one schedule"):
        schedule_explorer(images, {})
    with pytest.raises(ValueError, match="t must lie"):
        schedule_explorer(images, schedules, t=T)


# --------------------------------------------------------------------------- chapter 3: guidance slider, attention maps

from course_lib.capture import capture_attention  # noqa: E402
from course_lib.guidance import ClassifierFreeGuidance  # noqa: E402
from course_lib.samplers import ddim_sample, ddim_timesteps  # noqa: E402
from course_lib.text import TextEncoder, TextEncoderConfig, Tokenizer, encode_prompts  # noqa: E402
from course_lib.unet import UNet, UNetConfig  # noqa: E402
from course_lib.viz import token_heatmap  # noqa: E402
from course_lib.widgets import attention_explorer, guidance_explorer, pipeline_guidance_explorer  # noqa: E402

PROMPTS = ["a photo of a cat", "a dog"]
STEPS = 4


@pytest.fixture(scope="module")
def text2image():
    """A tiny text-conditional UNet (cross-attention at 16x16 and 8x8, 2 heads) and a small text encoder.

    The zero-initialised layers (e.g. each SpatialTransformer's proj_out) are randomised so that the
    caption changes the output, as it does after training.
    """
    torch.manual_seed(0)
    tokenizer = Tokenizer.for_cifar10()
    encoder = TextEncoder(TextEncoderConfig.for_tokenizer(tokenizer, dim=32, depth=1)).eval()
    unet = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16, 8),
                           image_size=16, num_groups=4, num_heads=2, dropout=0.0, context_dim=32,
                           attention_impl="sdpa")).eval()
    randomize_zero_init(unet, std=0.2, seed=0)
    schedule = NoiseSchedule.linear(T)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def encode(prompts):
        with torch.no_grad():
            return encode_prompts(prompts, tokenizer, encoder)

    def run_fn(prompt):
        """One image for ``prompt`` with every cross-attention map recorded, and the prompt's tokens."""
        context, batch = encode([prompt]), tokenizer.encode([prompt])
        with capture_attention(unet) as record:
            image = ddim_sample(lambda x, t: unet(x, t, context.tokens, context.mask), schedule, x_T=x_T[:1],
                                num_steps=STEPS, progress=False)[0]
        return image, record, [tokenizer.vocab[i] for i in batch.ids[0][batch.mask[0]].tolist()]

    def sample_fn(scale):
        """The same two prompts from the same x_T at guidance scale ``scale``."""
        cond, uncond = encode(PROMPTS), encode([""])
        guided = ClassifierFreeGuidance(unet, cond.tokens, cond.mask, uncond.tokens, uncond.mask, guidance=scale)
        return ddim_sample(guided, schedule, x_T=x_T, num_steps=STEPS, progress=False)

    return {"unet": unet, "encode": encode, "run_fn": run_fn, "sample_fn": sample_fn, "schedule": schedule,
            "x_T": x_T}


def _spy(fn, calls):
    def wrapped(arg):
        calls.append(arg)
        return fn(arg)
    return wrapped


def test_guidance_slider_samples_each_scale_once_and_redraws(text2image):
    calls = []
    explorer = guidance_explorer(_spy(text2image["sample_fn"], calls), [0, 1, 7], titles=PROMPTS)
    assert isinstance(explorer, FigureExplorer) and explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert calls == [0.0] and explorer.state["guidance"] == 0.0
    unconditional, png = explorer.state["images"], explorer.image.value
    assert unconditional.shape == (2, 3, 16, 16)

    explorer.slider.value = 7.0
    assert calls == [0.0, 7.0] and explorer.state["guidance"] == 7.0
    assert explorer.image.value != png
    assert (explorer.state["images"] - unconditional).abs().max() > 1e-2  # guidance changed the images

    explorer.slider.value = 0.0  # from the cache: no new sampling, the same images
    assert calls == [0.0, 7.0] and torch.equal(explorer.state["images"], unconditional)
    assert "cache" in explorer.status.value


def test_guidance_status_says_sampling_while_it_samples(text2image):
    seen = []  # the status label's value at the moment sample_fn runs
    holder = {}

    def sample_fn(scale):
        seen.append(holder["explorer"].status.value if "explorer" in holder else None)
        return text2image["sample_fn"](scale)

    holder["explorer"] = explorer = guidance_explorer(sample_fn, [0, 3])
    explorer.slider.value = 3.0
    assert seen[-1] == "sampling w = 3 ..."
    assert explorer.status.value.startswith("w = 3: sampled in")  # cleared afterwards
    explorer.slider.value = 0.0  # cached: no sampling, no "sampling" message
    assert len(seen) == 2 and "cache" in explorer.status.value

    def failing(scale):
        if scale == 3:
            raise RuntimeError("out of memory")
        return text2image["sample_fn"](scale)

    explorer = guidance_explorer(failing, [0, 3])
    with pytest.raises(RuntimeError):
        explorer.slider.value = 3.0
    assert explorer.status.value == "w = 3: sampling failed"


def test_guidance_precompute_and_scale_one_is_the_conditional_model(text2image):
    calls = []
    explorer = guidance_explorer(_spy(text2image["sample_fn"], calls), [0, 1, 3], guidance=1, precompute=True)
    assert sorted(calls) == [0.0, 1.0, 3.0] and explorer.state["guidance"] == 1.0
    explorer.slider.value = 3.0
    assert len(calls) == 3  # everything was sampled up front
    unet, cond = text2image["unet"], text2image["encode"](PROMPTS)
    conditional = ddim_sample(lambda x, t: unet(x, t, cond.tokens, cond.mask), text2image["schedule"],
                              x_T=text2image["x_T"], num_steps=STEPS, progress=False)
    assert torch.allclose(explorer.cache[1.0], conditional, atol=1e-5)


class _RecordingPipeline:
    """Stands in for course_lib.generation.Pipeline: records each generate() call, returns images made from x_T."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, guidance, num_steps, x_T):
        self.calls.append((list(prompts), guidance, num_steps, x_T.clone()))
        return torch.tanh(x_T[:, :3] * (1 + guidance))  # [B, 3, H, W], different for every w


def test_pipeline_guidance_explorer_reuses_sampled_scales_and_fixed_noise():
    pipeline, x_T = _RecordingPipeline(), torch.randn(2, 4, 8, 8)
    grid = {3.0: torch.zeros(5, 3, 8, 8), 7.0: torch.ones(5, 3, 8, 8)}  # a grid of 5 prompts drawn earlier
    explorer = pipeline_guidance_explorer(pipeline, PROMPTS, x_T, num_steps=6, guidances=[0, 3, 7], sampled=grid)
    assert pipeline.calls == [] and explorer.state["guidance"] == 3.0  # starts at w = 3, taken from the grid
    assert torch.equal(explorer.state["images"], grid[3.0][:2]) and "cache" in explorer.status.value
    assert explorer.titles == PROMPTS
    explorer.slider.value = 0.0
    (prompts, scale, steps, noise), = pipeline.calls
    assert prompts == PROMPTS and scale == 0.0 and steps == 6 and torch.equal(noise, x_T)
    assert torch.equal(explorer.state["images"], torch.tanh(x_T[:, :3]))
    explorer.slider.value = 7.0
    assert len(pipeline.calls) == 1 and torch.equal(explorer.state["images"], grid[7.0][:2])
    with pytest.raises(ValueError, match="one per prompt"):
        pipeline_guidance_explorer(pipeline, PROMPTS, x_T[:1], num_steps=6)
    with pytest.raises(ValueError, match=r"sampled\[3\] has 1 images for 2 prompts"):
        pipeline_guidance_explorer(pipeline, PROMPTS, x_T, num_steps=6, sampled={3.0: torch.zeros(1, 3, 8, 8)})


def test_guidance_bad_inputs_are_explained():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="at least one guidance weight"):
        guidance_explorer(lambda w: images, [])
    with pytest.raises(ValueError, match="distinct"):
        guidance_explorer(lambda w: images, [1, 1.0])
    with pytest.raises(ValueError, match="not one of the guidances"):
        guidance_explorer(lambda w: images, [0, 1], guidance=3)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        guidance_explorer(lambda w: images[0], [0, 1])
    with pytest.raises(ValueError, match="one title per image"):
        guidance_explorer(lambda w: images, [0, 1], titles=["only one"])
    explorer = guidance_explorer(lambda w: images[: 1 + int(w)], [0, 1])
    with pytest.raises(ValueError, match="same prompts at every w"):
        explorer.slider.value = 1.0


def test_attention_explorer_controls_change_the_map(text2image):
    calls = []
    explorer = attention_explorer(_spy(text2image["run_fn"], calls), PROMPTS)
    state, run = explorer.state, explorer.cache[PROMPTS[0]]
    record = run["record"]
    assert calls == [PROMPTS[0]] and run["tokens"] == ["<start>", "a", "photo", "of", "a", "cat"]
    # starts at the last token, every step, the mean of the heads, the decoder's last 16x16 layer
    assert (state["token"], state["token_text"], state["t"], state["head"]) == (5, "cat", "all", "mean")
    assert state["layer"] == "up.3.1.blocks.0.attn2" and state["map"].shape == (16, 16)
    labels = [label for label, _ in explorer.layer.options]
    assert "up.3.1 (16x16)" in labels and "middle.1 (8x8)" in labels
    assert [v for _, v in explorer.head.options] == ["mean", 0, 1]
    assert [v for _, v in explorer.timestep.options] == ["all", *ddim_timesteps(T, STEPS)]
    assert torch.equal(state["map"], token_heatmap(record, state["layer"], 5))

    png = explorer.image.value
    explorer.token.value = 2  # "photo"
    assert explorer.state["token_text"] == "photo" and explorer.image.value != png
    assert not torch.allclose(explorer.state["map"], state["map"])
    assert torch.equal(explorer.state["map"], token_heatmap(record, state["layer"], 2))

    explorer.head.value = 1
    per_head = record.maps(state["layer"], head=None)  # [B, heads, h, w, M]
    assert torch.allclose(explorer.state["map"], per_head[0, 1, :, :, 2])

    t = ddim_timesteps(T, STEPS)[1]
    explorer.timestep.value = t
    assert explorer.state["t"] == t
    assert torch.equal(explorer.state["map"], token_heatmap(record, state["layer"], 2, t=t, head=1))

    explorer.layer.value = "middle.1.blocks.0.attn2"
    assert explorer.state["map"].shape == (8, 8) and explorer.state["head"] == 1 and explorer.state["t"] == t

    explorer.prompt.value = "a dog"  # 3 tokens: index 2 is still valid and is now "dog"
    assert calls == PROMPTS and explorer.state["token_text"] == "dog"
    assert [label for label, _ in explorer.token.options] == ["0: <start>", "1: a", "2: dog"]
    assert explorer.state["layer"] == "middle.1.blocks.0.attn2" and explorer.state["t"] == t

    explorer.prompt.value = PROMPTS[0]  # cached: run_fn is not called again
    assert calls == PROMPTS and explorer.state["token"] == 2
    explorer.token.value = 4
    explorer.prompt.value = "a dog"  # token 4 does not exist in "a dog": the last token is shown
    assert calls == PROMPTS and explorer.state["token"] == 2 and explorer.state["token_text"] == "dog"


def test_attention_explorer_starts_at_the_layer_and_timestep_it_is_given(text2image):
    layer, t = "middle.1.blocks.0.attn2", ddim_timesteps(T, STEPS)[1]
    explorer = attention_explorer(text2image["run_fn"], PROMPTS, layer=layer, t=t)
    assert (explorer.state["layer"], explorer.state["t"]) == (layer, t)
    assert torch.equal(explorer.state["map"], token_heatmap(explorer.cache[PROMPTS[0]]["record"], layer, 5, t=t))
    assert [v for _, v in explorer.timestep.options] == ["all", *ddim_timesteps(T, STEPS)]  # all options are back
    assert len(explorer.layer.options) > 1
    with pytest.raises(ValueError, match="not a cross-attention layer"):
        attention_explorer(text2image["run_fn"], PROMPTS, layer="middle.1")
    with pytest.raises(ValueError, match="not a sampling timestep"):
        attention_explorer(text2image["run_fn"], PROMPTS, t=123)


def test_one_token_prompt_attends_only_to_start(text2image):
    """softmax over a single real key: every position puts all its weight on <start>."""
    _, record, tokens = text2image["run_fn"]("")
    assert tokens == ["<start>"]
    for layer in record.layers:
        for t in (None, ddim_timesteps(T, STEPS)[0]):
            for head in ("mean", 0, 1):
                heat = token_heatmap(record, layer, 0, t=t, head=head)
                assert torch.allclose(heat, torch.ones_like(heat), atol=1e-5)
        assert token_heatmap(record, layer, 1).abs().max() == 0  # padding gets no attention


def test_token_heatmap_is_the_head_mean_of_the_recorded_maps(text2image):
    _, record, tokens = text2image["run_fn"](PROMPTS[0])
    layer = record.layers[0]
    per_head = record.maps(layer, head=None)  # [B, heads, h, w, M]
    assert torch.allclose(token_heatmap(record, layer, 5), per_head[0].mean(dim=0)[..., 5], atol=1e-6)
    steps = torch.stack([token_heatmap(record, layer, 5, t=t) for t in ddim_timesteps(T, STEPS)])
    assert torch.allclose(token_heatmap(record, layer, 5), steps.mean(dim=0), atol=1e-6)  # t=None: all steps
    with pytest.raises(ValueError, match="out of range"):
        token_heatmap(record, layer, 16)
    with pytest.raises(ValueError, match="one map"):
        token_heatmap(record, layer, 0, head=None)


def test_attention_explorer_bad_inputs_are_explained(text2image):
    run_fn = text2image["run_fn"]
    with pytest.raises(TypeError, match="wrap it"):
        attention_explorer(run_fn, "a cat")
    with pytest.raises(ValueError, match="not one of the prompts"):
        attention_explorer(run_fn, PROMPTS, prompt="a frog")
    with pytest.raises(TypeError, match="without the tokens"):
        attention_explorer(lambda p: run_fn(p)[:2], PROMPTS)
    with pytest.raises(ValueError, match="padding"):
        attention_explorer(lambda p: (*run_fn(p)[:2], ["w"] * 17), PROMPTS)

    def no_cross(prompt):
        image, record, tokens = run_fn(prompt)
        record.calls = [c for c in record.calls if c.kind != "cross"]
        return image, record, tokens

    with pytest.raises(ValueError, match="no cross-attention"):
        attention_explorer(no_cross, PROMPTS)


# --------------------------------------------------------------------------- chapter 5: trajectory explorer

from course_lib.processes import RectifiedFlowProcess  # noqa: E402
from course_lib.widgets import trajectory_explorer  # noqa: E402


def _toy_velocities():
    """Closed-form fields on the flow axis: straight paths to the origin, and a field that curls."""
    def straight(y, t):  # data = the origin: v = (y - 0) / t
        return y / torch.as_tensor(t, dtype=y.dtype).reshape(-1, 1).clamp_min(1e-3)

    def curl(y, t):
        return straight(y, t) + torch.stack([-y[:, 1], y[:, 0]], 1)

    return {"straight": straight, "curl": curl}


def test_trajectory_explorer_state_follows_every_control():
    data = 0.05 * torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    images = []

    def image_fn(method, sampler, steps, seed):
        images.append((method, sampler, steps, seed))
        if method == "straight" and steps == 4:
            return None  # no image model for this setting: the panel says so
        return torch.zeros(3, 8, 8), torch.randn(steps + 1, 2)

    explorer = trajectory_explorer(_toy_velocities(), data, num_points=50, steps=[1, 4, 16], seeds=[0, 1],
                                   image_fn=image_fn)
    assert isinstance(explorer, FigureExplorer) and explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    first = dict(explorer.state)
    assert first["method"] == "straight" and first["steps"] == 16 and first["straightness"] < 1e-9
    assert first["path_chord"] == pytest.approx(1.0) and first["w2"] < 0.1  # straight paths land on the data
    torch.testing.assert_close(first["positions"], first["samples"] + 0.5 * (explorer.paths("straight", "euler", 16, 0)
                                                                              ["trajectory"][0] - first["samples"]))
    explorer.method.value = "curl"
    assert explorer.state["method"] == "curl" and explorer.state["straightness"] > 0.01
    explorer.steps.value = 1
    assert explorer.state["steps"] == 1 and explorer.state["straightness"] < 1e-9  # one step is always a chord
    explorer.sampler.value = "heun"
    assert explorer.state["sampler"] == "heun"
    before = explorer.state["positions"]
    explorer.time.value = 0.9
    assert explorer.state["t"] == 0.9 and not torch.equal(before, explorer.state["positions"])
    explorer.seed.value = 1
    assert explorer.state["seed"] == 1 and not torch.equal(explorer.state["samples"], first["samples"])
    assert images[-1] == ("curl", "heun", 1, 1) and "straightness" in explorer.readout.value
    n_cached = len(explorer._paths)
    explorer.seed.value = 0  # back to a setting seen before: from the cache
    assert len(explorer._paths) == n_cached
    explorer.method.value, explorer.steps.value = "straight", 4
    assert explorer.state["image"] is None and "no image model" in explorer._axes[2].texts[0].get_text()


def test_trajectory_explorer_precomputes_and_explains_bad_input():
    data = torch.randn(100, 2)
    explorer = trajectory_explorer(_toy_velocities(), data, num_points=20, steps=[1, 2], seeds=[0], precompute=True)
    assert len(explorer._paths) == 2 * 2 * 2  # methods x solvers x steps
    with pytest.raises(ValueError, match="at least one method"):
        trajectory_explorer({}, data)
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        trajectory_explorer(_toy_velocities(), torch.randn(10, 3))


# --------------------------------------------------------------------------- chapter 6: joint-attention explorer

from course_lib.widgets import joint_attention_explorer  # noqa: E402


@pytest.fixture(scope="module")
def mmdit_pipeline():
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from course_lib.generation import Pipeline
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    torch.manual_seed(0)
    model = TextToImageModel(Text2ImageConfig.latent_mmdit_tiny()).eval()
    randomize_zero_init(model.mmdit, std=0.1)
    autoencoder = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    return Pipeline(model, RectifiedFlowProcess(), autoencoder=autoencoder)


def test_joint_attention_explorer_state_follows_every_control(mmdit_pipeline):
    prompts = ["a photo of a cat", "a ship"]
    explorer = joint_attention_explorer(mmdit_pipeline, prompts, num_steps=3, guidance=3.0)
    assert isinstance(explorer, widgets.VBox) and explorer.image.value[:4] == b"\x89PNG"
    s = explorer.state
    tokens = mmdit_pipeline.denoiser.prompt_tokens("a photo of a cat")
    T = len(tokens)
    assert s["token_text"] == tokens[-1] and s["matrix"].shape == (T + 64, T + 64)
    torch.testing.assert_close(s["matrix"].sum(-1), torch.ones(T + 64))  # padding dropped, rows still sum to 1
    assert [b for b in explorer.run(prompts[0])["blocks"]] == ["double_blocks.0.attn", "single_blocks.0.attn"]
    assert len(explorer.run(prompts[0])["steps"]) == 3 and len(s["time"]["image→text"]) == 3
    torch.testing.assert_close(s["token_map"].flatten(), s["matrix"][T:, T - 1])
    assert s["quadrants"]["image→text"] + s["quadrants"]["image→image"] == pytest.approx(1.0)
    seen = [dict(s)]
    for control, value in [(explorer.block, "double_blocks.0.attn"), (explorer.head, 1),
                           (explorer.step, explorer.step.options[2][1]), (explorer.token, 1),
                           (explorer.patch, 0), (explorer.prompt, "a ship")]:
        before = explorer.image.value
        control.value = value  # how fast it redraws is a benchmark's question, not a test's
        assert explorer.image.value != before
        seen.append(dict(explorer.state))
    assert seen[1]["block"] == "double_blocks.0.attn" and seen[2]["head"] == 1 and seen[3]["step"] != "all"
    assert seen[4]["token"] == 1 and seen[5]["patch"] == (0, 0)
    assert not torch.equal(seen[4]["token_map"], seen[3]["token_map"])
    assert not torch.equal(seen[5]["patch_map"], seen[4]["patch_map"])
    assert seen[6]["prompt"] == "a ship" and seen[6]["matrix"].shape[0] == len(
        mmdit_pipeline.denoiser.prompt_tokens("a ship")) + 64
    assert set(explorer.cache) == set(prompts)
    text = display_data(explorer)["text/plain"]
    assert "prompt = a ship" in text and "block = " in text and "image/png" in display_data(explorer)


def test_joint_attention_explorer_starts_at_the_last_word_not_a_marker(mmdit_pipeline):
    """MiniLM's tokens end with [SEP]: the explorer's first token is the prompt's last word."""
    from course_lib.widgets import JointAttentionExplorer

    inner = joint_attention_explorer(mmdit_pipeline, ["a photo of a cat"], num_steps=2).run_fn

    def run_fn(prompt):
        image, record, tokens = inner(prompt)
        return image, record, tokens[:-1] + ["[SEP]"]  # the same number of keys, the last one a marker

    explorer = JointAttentionExplorer(run_fn, ["a photo of a cat"], grid=(8, 8))
    assert explorer.state["token_text"] == "a" and explorer.state["token"] == 4  # <start> a photo of a [SEP]


def test_joint_attention_explorer_refuses_a_unet_pipeline():
    from course_lib.generation import Pipeline
    from course_lib.text2image import Text2ImageConfig, TextToImageModel

    unet_model = TextToImageModel(Text2ImageConfig.latent_tiny())
    with pytest.raises(TypeError, match="needs an MM-DiT"):
        joint_attention_explorer(Pipeline(unet_model, RectifiedFlowProcess()), ["a cat"])


# --------------------------------------------------------------------------- chapter 0, and every explorer's picture

from course_lib import widgets as explorers  # noqa: E402
from course_lib.widgets import class_explorer  # noqa: E402


def test_class_explorer_redraws_the_chosen_class():
    images = torch.rand(30, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(30) % 3  # classes 0, 1, 2: ten images each
    explorer = class_explorer(images, labels, ["cat", "dog", "ship"], value="dog", per_class=4)
    assert explorer.state["class"] == "dog" and torch.equal(explorer.state["images"], images[labels == 1][:4])
    png = explorer.image.value
    explorer.menu.value = "ship"
    assert torch.equal(explorer.state["images"], images[labels == 2][:4]) and explorer.image.value != png
    assert "class = ship" in display_data(explorer)["text/plain"]
    with pytest.raises(ValueError, match="'horse' is not one of the classes"):
        class_explorer(images, labels, ["cat", "dog", "ship"], value="horse")
    with pytest.raises(ValueError, match="one label per image"):
        class_explorer(images, labels[:5], ["cat", "dog", "ship"])


# every explorer in course_lib.widgets, built small: a new explorer without an entry here fails the test below
EXPLORER_BUILDERS = {
    "ClassExplorer": lambda request: class_explorer(torch.zeros(4, 3, 8, 8), torch.tensor([0, 0, 1, 1]), ["a", "b"]),
    "ScheduleExplorer": lambda request: schedule_explorer(torch.zeros(2, 3, 8, 8), {"linear": NoiseSchedule.linear(T)}),
    "GuidanceExplorer": lambda request: guidance_explorer(request.getfixturevalue("text2image")["sample_fn"], [0, 3],
                                                          titles=PROMPTS),
    "AttentionExplorer": lambda request: attention_explorer(request.getfixturevalue("text2image")["run_fn"], PROMPTS),
    "TrajectoryExplorer": lambda request: trajectory_explorer(_toy_velocities(), 0.05 * torch.randn(50, 2),
                                                              num_points=20, steps=[1, 4], seeds=[0]),
    "JointAttentionExplorer": lambda request: joint_attention_explorer(request.getfixturevalue("mmdit_pipeline"),
                                                                       ["a ship"], num_steps=2),
}


def test_every_explorer_has_a_builder_here():
    classes = {name for name in explorers.__all__
               if isinstance(getattr(explorers, name), type) and issubclass(getattr(explorers, name), FigureExplorer)
               and getattr(explorers, name) is not FigureExplorer}
    assert classes == set(EXPLORER_BUILDERS)


@pytest.mark.parametrize("name", sorted(EXPLORER_BUILDERS))
def test_every_explorers_display_data_has_its_picture(name, request):
    """What a notebook saves for an explorer: the live widget, a PNG of its current figure (what GitHub's viewer,
    nbconvert and the course site show) and a text/plain that names it, not 'VBox(...)'."""
    import base64

    explorer = EXPLORER_BUILDERS[name](request)
    assert type(explorer).__name__ == name
    data = display_data(explorer)
    assert "application/vnd.jupyter.widget-view+json" in data
    png = base64.b64decode(data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == explorer.image.value
    assert data["text/plain"].startswith(f"{name} (") and "VBox" not in data["text/plain"]


# --------------------------------------------------------------------------- the views a page without a kernel shows

from course_lib.widgets import explorer_views, shown_explorers  # noqa: E402
from course_lib.widgets.views import fit_limits, pick_values, view_options  # noqa: E402


def test_pick_values_is_evenly_spaced_keeps_the_start_and_never_exceeds_the_limit():
    options = [(str(v), v) for v in range(11)]
    assert [v for _, v in pick_values(options, 3)] == [0, 5, 10]
    assert [v for _, v in pick_values(options, 3, keep=7)] == [0, 7, 10]  # the nearest (5) gives way to the start
    assert [v for _, v in pick_values(options, 3, keep=1)] == [0, 1, 10]  # ... but not an end
    assert [v for _, v in pick_values(options, 2, keep=1)] == [1, 10]
    assert [v for _, v in pick_values(options, 1, keep=4)] == [4]
    assert pick_values(options, None) == options and pick_values(options, 20) == options
    assert fit_limits([5, 8, 2], 24) == [4, 3, 2] and fit_limits([3, 3], 100) == [3, 3]
    assert fit_limits([4, 4], 1) == [1, 1]


def test_view_options_of_each_kind_of_control():
    assert view_options(widgets.IntSlider(min=2, max=8, step=3)) == [("2", 2), ("5", 5), ("8", 8)]
    assert view_options(widgets.FloatSlider(min=0, max=1, step=0.5)) == [("0.00", 0.0), ("0.50", 0.5), ("1.00", 1.0)]
    assert view_options(widgets.Dropdown(options=[("mean", "mean"), ("0", 0)])) == [("mean", "mean"), ("0", 0)]
    assert view_options(widgets.ToggleButtons(options=["euler", "heun"])) == [("euler", "euler"), ("heun", "heun")]
    with pytest.raises(TypeError, match="sliders, menus or toggle buttons"):
        view_options(widgets.Text())


def test_picture_is_what_redraw_shows(images, schedules):
    import io

    from PIL import Image

    explorer = schedule_explorer(images, schedules, t=20)
    shown = Image.open(io.BytesIO(explorer.image.value))
    assert shown.size == explorer.picture().size == (1100, 420)  # figsize x dpi


def test_explorer_views_go_through_the_grid_and_leave_the_explorer_as_shown(images, schedules, tmp_path):
    explorer = schedule_explorer(images, schedules, t=20)
    display_data(explorer)  # displayed: noted as shown, with its controls' values then
    assert explorer in shown_explorers() and explorer.shown_values == {"t": 20}
    explorer.slider.value = 150  # a later cell moves it
    pngs = []
    explorer.image.observe(lambda change: pngs.append(change["new"]), names="value")
    views = explorer_views(explorer, tmp_path, max_values=4)
    t_values = [json.loads(frame["values"][0]) for frame in views["frames"]]
    assert t_values == [0, 20, 133, 199]  # four of 200, evenly spaced, the start (20) in place of 66
    assert views["frames"][views["start"]]["values"] == ["20"] and views["controls"][0]["play"]
    assert views["option_sets"][0]["total"] == T and len({f["picture"] for f in views["frames"]}) == 4
    assert all((tmp_path / f["picture"]).read_bytes()[8:12] == b"WEBP" for f in views["frames"])
    assert explorer.slider.value == 20 and explorer.state["t"] == 20 and len(pngs) == 1  # one redraw, at the end
    with explorer.paused():
        explorer.slider.value = 100
    assert explorer.state["t"] == 20  # no redraw while paused


def test_explorer_views_follow_dependent_controls_and_the_budget(text2image, tmp_path):
    explorer = attention_explorer(text2image["run_fn"], PROMPTS)
    explorer.view_budget = 6
    views = explorer_views(explorer, tmp_path)
    assert 1 < len(views["frames"]) <= 6
    names = [c["name"] for c in views["controls"]]
    assert names == ["prompt", "layer", "head", "t", "token"]
    for frame in views["frames"]:  # each frame's token menu is its own prompt's
        prompt = json.loads(frame["values"][0])
        labels = views["option_sets"][frame["options"][names.index("token")]]["labels"]
        tokens = explorer.run(prompt)["tokens"]
        assert all(label.split(": ", 1)[1] in tokens for label in labels)
