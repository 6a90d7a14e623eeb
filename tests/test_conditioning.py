"""Conditioning primitives: the timestep embedding (with a time scale), TimeEmbedding, modulate, zero_module."""

import math

import pytest
import torch
import torch.nn as nn

from course_lib.conditioning import TimeEmbedding, modulate, timestep_embedding, zero_module


# --------------------------------------------------------------------------- timestep_embedding


def test_timestep_embedding_is_the_sinusoidal_formula():
    """emb(t) = [sin(t f_0) .. sin(t f_7), cos(t f_0) .. cos(t f_7)] with f_i = 10000^(-i/8), written out by hand."""
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (4, 16) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # t = 0: sin 0, cos 0
    for row, step in [(1, 1), (2, 17), (3, 999)]:
        for i in (0, 3, 7):
            freq = 10000.0 ** (-i / 8)
            assert emb[row, i].item() == pytest.approx(math.sin(step * freq), abs=2e-4)
            assert emb[row, 8 + i].item() == pytest.approx(math.cos(step * freq), abs=2e-4)
    assert timestep_embedding(t, 7).shape == (4, 7) and torch.equal(timestep_embedding(t, 7)[:, 6], torch.zeros(4))
    # fractional timesteps are allowed and interpolate smoothly
    mid = timestep_embedding(torch.tensor([16.5]), 16)
    assert (mid - emb[2:3]).abs().max() < 0.51


def test_the_default_embedding_is_the_one_the_shipped_unets_were_trained_with():
    """Bit for bit the float32 arithmetic of chapter 1's embedding: exp(-ln(10000) i / half), t * freq, [sin, cos]."""
    t = torch.tensor([0, 3, 250, 999])
    half = 32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    expected = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    assert torch.equal(timestep_embedding(t, 64), expected)
    assert torch.equal(timestep_embedding(t, 64, time_scale=1.0), expected)
    assert torch.equal(timestep_embedding(t.float(), 64), expected)  # float and integer t alike


def test_freq_shift_gives_the_ddpm_code_s_frequencies():
    """freq_shift=1: f_i = 10000^(-i / (half - 1)), as hojonathanho/diffusion's get_timestep_embedding (and diffusers'
    downscale_freq_shift=1) space them: the last frequency is exactly 1/10000."""
    t = torch.tensor([3.0, 250.0])
    emb = timestep_embedding(t, 16, freq_shift=1)
    freqs = 10000.0 ** (-torch.arange(8, dtype=torch.float64) / 7)
    expected = torch.cat([torch.sin(t.double()[:, None] * freqs), torch.cos(t.double()[:, None] * freqs)], -1)
    torch.testing.assert_close(emb.double(), expected, atol=1e-4, rtol=0)
    assert not torch.allclose(emb, timestep_embedding(t, 16), atol=1e-3)  # the default spacing differs


def test_time_scale_embeds_continuous_time_as_integer_steps():
    """time_scale=1000 (Flux, SD3): t in [0, 1] embeds as step 1000 t."""
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])  # 1000 t is exact in float32
    steps = torch.tensor([0, 250, 500, 750, 1000])
    assert torch.equal(timestep_embedding(t, 64, time_scale=1000.0), timestep_embedding(steps, 64))
    t = torch.rand(16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(timestep_embedding(t, 64, time_scale=1000.0), timestep_embedding(1000 * t, 64),
                               atol=1e-4, rtol=0)
    # without the scale, t in [0, 1] would leave most frequencies near sin 0 / cos 1: all t look alike
    unscaled = timestep_embedding(torch.tensor([0.0, 1.0]), 64)
    scaled = timestep_embedding(torch.tensor([0.0, 1.0]), 64, time_scale=1000.0)
    assert (unscaled[1] - unscaled[0]).norm() < 0.25 * (scaled[1] - scaled[0]).norm()


def test_time_embedding_passes_its_time_scale_and_keeps_its_parameter_names():
    torch.manual_seed(0)
    steps = TimeEmbedding(16)
    assert [n for n, _ in steps.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert steps.fc1.out_features == steps.fc2.out_features == 64  # 4 dim by default
    continuous = TimeEmbedding(16, time_scale=1000.0)
    continuous.load_state_dict(steps.state_dict())  # the scale is a constant, not state
    t = torch.tensor([0.25, 0.5])
    with torch.no_grad():
        assert torch.equal(continuous(t), steps(1000 * t))
        assert not torch.allclose(steps(t), steps(1000 * t))
    assert TimeEmbedding(8, emb_dim=24).fc2.out_features == 24


# --------------------------------------------------------------------------- modulate


@pytest.mark.parametrize("h_shape, param_shape, channel", [
    ((2, 6, 4, 5), (2, 6, 1, 1), (1, 2)),  # feature maps: channel 2 of image 1 is h[1, 2]
    ((2, 7, 6), (2, 1, 6), (1, slice(None), 2)),  # tokens: channel 2 of every token of sequence 1 is h[1, :, 2]
], ids=["feature maps [B,C,H,W]", "tokens [B,L,D]"])
def test_modulate_is_identity_at_zero_and_scales_each_channel(h_shape, param_shape, channel):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(h_shape, generator=g)
    zero = torch.zeros(param_shape)
    assert torch.equal(modulate(h, zero, zero), h)  # zero shift and scale: unchanged
    shift, scale = torch.randn(param_shape, generator=g), torch.randn(param_shape, generator=g)
    out = modulate(h, shift, scale)
    assert out.shape == h.shape
    # one channel of one sample: the same gain and bias at every position
    s, m = scale[1].flatten()[2].item(), shift[1].flatten()[2].item()
    torch.testing.assert_close(out[channel], h[channel] * (1 + s) + m)
    # scale = -1 wipes h out: the shift alone is left
    assert torch.equal(modulate(h, shift, -torch.ones(param_shape)), shift.expand(h_shape))


def test_modulate_is_the_adagn_step_bit_for_bit():
    """AdaGNResBlock computes norm(h) * (1 + scale) + shift through modulate: same bits as the formula."""
    g = torch.Generator().manual_seed(1)
    h, shift, scale = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 1, 1, generator=g), torch.randn(
        2, 8, 1, 1, generator=g)
    assert torch.equal(modulate(h, shift, scale), h * (1 + scale) + shift)
    assert not torch.equal(modulate(h, shift, scale), modulate(h, scale, shift))  # argument order matters


# --------------------------------------------------------------------------- zero_module


def test_zero_module_zeros_every_parameter_and_returns_the_module():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 6), nn.SiLU(), nn.Conv2d(6, 6, 3), nn.GroupNorm(2, 6))
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()  # GroupNorm's bias starts at zero: make every parameter non-zero first
    out = zero_module(block)
    assert out is block
    params = dict(block.named_parameters())
    assert len(params) == 6  # weight and bias of the Linear, the conv and the norm
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params.values())
    # adaLN-Zero: a zero modulation Linear gives gate = 0, so x + gate * f(x) = x
    mod = zero_module(nn.Linear(8, 3 * 8))
    x = torch.randn(2, 5, 8)
    shift, scale, gate = mod(torch.randn(2, 8)).unsqueeze(1).chunk(3, dim=-1)  # [B, 1, D] each
    assert torch.equal(x + gate * modulate(x, shift, scale), x)
