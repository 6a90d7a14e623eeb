"""The DDPM UNet: shapes, the paper's parameter count, attention, errors, and that it learns."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_zero_init

from course_lib.attention import HookableAttention
from course_lib.conditioning import TimeEmbedding
from course_lib.parameterization import diffusion_loss
from course_lib.profiling import count_parameters
from course_lib.schedules import NoiseSchedule
from course_lib.unet import AttentionBlock, ResBlock, UNet, UNetConfig


@pytest.mark.parametrize(
    "config, shape",
    [
        (UNetConfig.tiny(), (2, 3, 32, 32)),
        (UNetConfig.small(), (1, 3, 32, 32)),
        (UNetConfig.tiny(), (2, 3, 16, 24)),  # any size divisible by 2**(levels-1)
        (UNetConfig(in_channels=4, out_channels=8, base_channels=16, channel_mult=(1, 2, 3),
                    num_res_blocks=2, attention_resolutions=(4, 2), image_size=8, num_groups=8,
                    num_heads=2, dropout=0.1), (3, 4, 8, 8)),
    ],
)
def test_output_shape(config, shape):
    model = UNet(config)
    x = torch.randn(shape)
    out = model(x, torch.randint(0, 1000, (shape[0],)))
    assert out.shape == (shape[0], config.resolved_out_channels, *shape[2:])
    assert out.dtype == x.dtype


def test_paper_config_has_35_7M_parameters():
    with torch.device("meta"):  # counts without allocating 143 MB
        model = UNet(UNetConfig.paper())
    assert count_parameters(model) == 35_746_307  # Ho et al.'s 35.7M
    attention_blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert len(attention_blocks) == 2 + 1 + 3  # 16x16 on the way down, the middle, 16x16 on the way up


def test_small_and_tiny_configs_are_the_sizes_they_claim():
    with torch.device("meta"):
        assert count_parameters(UNet(UNetConfig.small())) == 2_245_763  # "2.25M"
        assert count_parameters(UNet(UNetConfig.tiny())) == 285_667  # "0.29M"


def test_the_unet_is_built_from_the_shared_blocks():
    """The time embedding comes from course_lib.conditioning and self-attention is hookable (course_lib.capture)."""
    model = UNet(UNetConfig.tiny())
    assert type(model.time_embed) is TimeEmbedding and model.time_embed.time_scale == 1.0
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == 4 and all(isinstance(b, HookableAttention) and b.self_attention_only for b in blocks)
    # the checkpoints' parameter names (data/checkpoints/*.safetensors)
    names = set(model.state_dict())
    assert {"time_embed.fc1.weight", "time_embed.fc2.bias", "middle.1.norm.weight", "middle.1.qkv.weight",
            "middle.1.proj_out.bias"} <= names


def test_config_survives_a_json_round_trip():
    config = UNetConfig.small()
    restored = UNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config))))
    assert restored == config and isinstance(restored.channel_mult, tuple)
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNetConfig.from_dict({"base_chanels": 64})


def test_attention_block_mixes_positions_and_starts_as_identity():
    block = AttentionBlock(32, num_heads=2, num_groups=8)
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(block(x), x)  # proj_out is zero-initialised
    randomize_zero_init(block, std=0.05)
    y = block(x)
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0  # change one position: every other position's output changes too
    assert (block(x2) - y)[:, :, 5, 5].abs().max() > 1e-4


def test_res_block_adds_the_time_embedding_per_channel():
    block = randomize_zero_init(ResBlock(16, 32, emb_dim=64, num_groups=8), std=0.05)
    x = torch.randn(2, 16, 8, 8)
    emb1, emb2 = torch.randn(2, 64), torch.randn(2, 64)
    assert block(x, emb1).shape == (2, 32, 8, 8)
    # the embedding enters before norm2, so it changes the output; the same x and emb give the same output
    assert not torch.allclose(block(x, emb1), block(x, emb2))
    assert torch.equal(block(x, emb1), block(x, emb1))
    # with conv2 at zero (its init), the block is exactly its shortcut
    fresh = ResBlock(16, 16, emb_dim=64, num_groups=8)
    assert torch.equal(fresh(x, emb1), x)


def test_unet_output_depends_on_t_and_accepts_float_and_scalar_t():
    model = randomize_zero_init(UNet(UNetConfig.tiny()).eval(), std=0.05)
    x = torch.randn(2, 3, 16, 16)
    out_int = model(x, torch.tensor([5, 5]))
    assert torch.allclose(model(x, torch.tensor([5.0, 5.0])), out_int, atol=1e-6)
    assert torch.allclose(model(x, 5), out_int, atol=1e-6)
    assert not torch.allclose(model(x, torch.tensor([500, 500])), out_int, atol=1e-3)


@pytest.mark.parametrize(
    "x, t, message",
    [
        (torch.zeros(2, 1, 32, 32), torch.zeros(2), "1 channels but this UNet was built for in_channels=3"),
        (torch.zeros(2, 3, 31, 32), torch.zeros(2), "divisible by 2\\*\\*\\(levels-1\\) = 2"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(3), "t must have shape \\[B\\] = \\[2\\]"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, 1), "t must have shape"),
        (torch.zeros(3, 32, 32), torch.zeros(2), "4-D tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, t, message):
    model = UNet(UNetConfig.tiny())
    with pytest.raises(ValueError, match=message):
        model(x, t)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_groups=32 must divide"):
        UNetConfig(base_channels=48)
    with pytest.raises(ValueError, match="image_size=36 must be divisible"):
        UNetConfig(image_size=36)
    with pytest.raises(TypeError, match="floating-point"):
        UNet(UNetConfig.tiny())(torch.zeros(1, 3, 32, 32, dtype=torch.long), torch.zeros(1))


def test_tiny_unet_loss_falls_on_real_cifar10():
    """A few Adam steps on 16 real CIFAR-10 images (the bundled sample) must cut the loss.

    Measured on fixed (t, noise) pairs before and after, so the comparison is not luck of the draw.
    The zero-initialised output makes the starting loss E[eps^2] ~ 1.
    """
    from course_lib.config import sample_dir
    from course_lib.data import load_cifar10

    images = load_cifar10("train", root=sample_dir(), limit=16, verbose=False).images  # [16, 3, 32, 32]
    assert images.shape == (16, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(1000)
    model = UNet(UNetConfig.tiny())
    t_eval = torch.randint(0, 1000, (16,))
    noise_eval = torch.randn_like(images)

    def eval_loss():
        with torch.no_grad():
            return diffusion_loss(model, schedule, images, t=t_eval, noise=noise_eval).item()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(12):
        loss = diffusion_loss(model, schedule, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after)
    assert before == pytest.approx(1.0, abs=0.1)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("resblock", ["additive", "adagn"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_unet_runs_in_any_floating_dtype(dtype, resblock):
    """The timestep embedding is computed in float32 and must reach the MLP in the model's dtype."""
    from conftest import assert_runs_in_dtype, randomize_zero_init

    torch.manual_seed(0)
    model = randomize_zero_init(UNet(UNetConfig.tiny(resblock=resblock)), std=0.05)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    assert_runs_in_dtype(model, lambda m, dt: m(x.to(dt), t), dtype)


def test_downsample_pads_right_and_bottom_as_ldm_or_on_every_side():
    """"right_bottom": pad one zero column and row at the end, then a stride-2 conv without padding (LDM, diffusers,
    TF's 'SAME'); "symmetric": the conv's own padding 1. Same weights, outputs on grids shifted by a pixel."""
    from course_lib.unet import Downsample

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    ldm, ours = Downsample(4, "right_bottom"), Downsample(4)
    ours.load_state_dict(ldm.state_dict())
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), ldm.conv.weight, ldm.conv.bias, stride=2)
    assert torch.equal(ldm(x), expected) and ldm(x).shape == ours(x).shape == (2, 4, 4, 4)
    torch.testing.assert_close(ours(x), F.conv2d(x, ours.conv.weight, ours.conv.bias, stride=2, padding=1))
    assert not torch.allclose(ldm(x), ours(x))
    with pytest.raises(ValueError, match="padding must be one of"):
        Downsample(4, "left")


def test_layout_options_reach_every_block_and_default_to_the_shipped_layout():
    cfg = UNetConfig.tiny(norm_eps=1e-6, downsample_padding="right_bottom", freq_shift=1)
    unet = UNet(cfg)
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.eps for m in norms} == {1e-6}
    downs = [m for m in unet.modules() if type(m).__name__ == "Downsample"]
    assert downs and {m.padding for m in downs} == {"right_bottom"} and unet.time_embed.freq_shift == 1
    default = UNetConfig.tiny()
    assert (default.norm_eps, default.downsample_padding, default.freq_shift) == (1e-5, "symmetric", 0.0)
    with pytest.raises(ValueError, match="downsample_padding must be one of"):
        UNetConfig.tiny(downsample_padding="same")
