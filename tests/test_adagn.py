"""The AdaGN residual block (scale-and-shift conditioning) and the UNet switch that uses it."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.checkpoint import load_checkpoint, save_checkpoint
from course_lib.config import sample_dir
from course_lib.data import StepBatches, load_cifar10
from course_lib.parameterization import diffusion_loss
from course_lib.profiling import count_parameters
from course_lib.schedules import NoiseSchedule
from course_lib.trainer import TrainConfig, fit
from course_lib.unet import AdaGNResBlock, ResBlock, UNet, UNetConfig

EMB_DIM = 64


def _block(in_channels=16, out_channels=32, seed=0):
    torch.manual_seed(seed)
    return AdaGNResBlock(in_channels, out_channels, emb_dim=EMB_DIM, num_groups=8)


def _inputs(B=2, C=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, 8, 8, generator=g), torch.randn(B, EMB_DIM, generator=g)


@pytest.mark.parametrize("in_channels, out_channels", [(16, 32), (32, 32), (32, 16)])
def test_shapes(in_channels, out_channels):
    block = _block(in_channels, out_channels)
    x, emb = _inputs(C=in_channels)
    assert block(x, emb).shape == (2, out_channels, 8, 8)
    assert block.emb_proj.out_features == 2 * out_channels  # a scale and a shift per channel


def test_block_starts_as_its_shortcut():
    """conv2 is zero-initialised, so at init the residual branch adds exactly nothing."""
    x, emb = _inputs(C=32)
    assert torch.equal(_block(32, 32)(x, emb), x)  # same channels: the identity
    x, emb = _inputs(C=16)
    block = _block(16, 32)
    assert torch.equal(block(x, emb), block.shortcut(x))  # new channel count: the 1x1 shortcut conv
    assert isinstance(block.shortcut, nn.Conv2d)


def test_scale_and_shift_are_applied_after_the_second_norm():
    """With conv2 replaced by the identity, the output is shortcut(x) + SiLU(norm(h) * (1 + scale) + shift)."""
    block = _block(16, 32)
    block.conv2 = nn.Identity()
    x, emb = _inputs()
    with torch.no_grad():
        nn.init.normal_(block.norm2.weight, 1.0, 0.2)  # a non-trivial GroupNorm affine
        nn.init.normal_(block.norm2.bias, 0.0, 0.2)
        h = block.conv1(F.silu(block.norm1(x)))  # [B, 32, 8, 8]
        out_emb = F.silu(emb) @ block.emb_proj.weight.T + block.emb_proj.bias  # [B, 64]
        scale, shift = out_emb[:, :32, None, None], out_emb[:, 32:, None, None]  # scale first, then shift
        normed = F.group_norm(h, 8, block.norm2.weight, block.norm2.bias)
        expected = block.shortcut(x) + F.silu(normed * (1 + scale) + shift)
        torch.testing.assert_close(block(x, emb), expected, atol=1e-5, rtol=1e-5)

        # scale = -1 wipes the normalised features out and shift alone sets each channel
        block.emb_proj.weight.zero_()
        block.emb_proj.bias.copy_(torch.cat([-torch.ones(32), torch.linspace(-2, 2, 32)]))
        constant = F.silu(torch.linspace(-2, 2, 32))[None, :, None, None].expand(2, 32, 8, 8)
        torch.testing.assert_close(block(x, emb) - block.shortcut(x), constant)


def test_the_embedding_changes_the_output():
    block = _block(16, 32)
    with torch.no_grad():
        block.conv2.weight.normal_(0, 0.05)
    x, emb = _inputs()
    assert not torch.allclose(block(x, emb), block(x, torch.randn_like(emb)), atol=1e-4)


def test_gradient_reaches_the_embedding_projection():
    """At init conv2 = 0 blocks the path to emb_proj and conv2 alone learns; once conv2 moves, both halves do."""
    block = _block(16, 32)
    x, emb = _inputs()
    emb.requires_grad_(True)
    block(x, emb).square().sum().backward()
    assert block.conv2.weight.grad.abs().max() > 0
    assert torch.equal(block.emb_proj.weight.grad, torch.zeros_like(block.emb_proj.weight))

    block.zero_grad()
    with torch.no_grad():
        block.conv2.weight.normal_(0, 0.05)  # as after the first optimiser steps
    block(x, emb).square().sum().backward()
    grad = block.emb_proj.weight.grad  # [64, EMB_DIM]: rows 0..31 make the scale, 32..63 the shift
    assert torch.isfinite(grad).all()
    assert grad[:32].abs().amax(dim=1).min() > 0 and grad[32:].abs().amax(dim=1).min() > 0
    assert emb.grad.abs().max() > 0  # and on into the time-embedding MLP


# --------------------------------------------------------------------------- the UNet switch


def test_unet_switch_changes_only_the_residual_blocks():
    additive, adagn = UNet(UNetConfig.tiny()), UNet(UNetConfig.tiny(resblock="adagn"))
    kinds = [type(m) for m in additive.modules() if isinstance(m, (ResBlock, AdaGNResBlock))]
    blocks = [m for m in adagn.modules() if isinstance(m, (ResBlock, AdaGNResBlock))]
    assert set(kinds) == {ResBlock} and {type(b) for b in blocks} == {AdaGNResBlock}
    assert len(blocks) == len(kinds)
    # the only new parameters: each emb_proj makes 2 C outputs instead of C
    extra = sum((b.emb_proj.in_features + 1) * b.emb_proj.out_features // 2 for b in blocks)
    assert count_parameters(adagn) - count_parameters(additive) == extra
    x = torch.randn(2, 3, 32, 32)
    out = adagn(x, torch.tensor([1, 900]))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))  # conv_out starts at zero, as in ch. 1


def test_paper_sized_adagn_unet_parameter_count():
    with torch.device("meta"):
        additive = count_parameters(UNet(UNetConfig.paper()))
        adagn = count_parameters(UNet(UNetConfig.paper(resblock="adagn")))
    assert additive == 35_746_307
    assert adagn - additive == 2_560_896  # 512 x C + C more per block (38.3M in all)


def test_adagn_unet_trains_with_fit_on_cifar10():
    data = load_cifar10("train", root=sample_dir(), limit=32, verbose=False)
    model = UNet(UNetConfig.tiny(resblock="adagn"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    schedule = NoiseSchedule.linear(1000)
    result = fit(model, lambda m, batch: diffusion_loss(m, schedule, batch[0]), StepBatches(data, 8),
                 TrainConfig(max_steps=3, lr=1e-3, progress=False), device="cpu")
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    # zero inits open the paths one step at a time: conv_out moves at step 1, conv2 at 2, emb_proj at 3
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(".emb_proj." in n for n in moved) and any(".conv2." in n for n in moved)


def test_config_and_checkpoint_round_trip(tmp_path):
    cfg = UNetConfig.tiny(resblock="adagn", attention_impl="chunked")
    assert UNetConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    model = UNet(cfg)
    path = save_checkpoint(tmp_path / "adagn.safetensors", model, step=1)
    restored = UNet(UNetConfig.from_dict(load_checkpoint(path).card["model_config"]))
    load_checkpoint(path, restored)  # checks that the config and every tensor shape match
    assert restored.config == cfg
    with pytest.raises(ValueError, match="resblock must be one of"):
        UNetConfig(resblock="film")


def test_a_checkpoint_saved_before_chapter_2_still_loads(tmp_path):
    """Chapter-1 checkpoints have no `resblock` / `attention_impl` in their card: they load with the defaults."""
    model = UNet(UNetConfig.tiny())
    old = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in ("resblock", "attention_impl")}
    model.config = dataclasses.make_dataclass("UNetConfig", list(old))(**old)  # the config as chapter 1 saved it
    path = save_checkpoint(tmp_path / "chapter1.safetensors", model)
    card = load_checkpoint(path).card
    assert "resblock" not in card["model_config"]
    load_checkpoint(path, UNet(UNetConfig.from_dict(card["model_config"])))
