"""held_out_loss is a paired, repeatable comparison; timestep_sensitivity measures the share of variance due to t."""

import pytest
import torch
from torch import nn

from course_lib.diagnostics import copy_shared_weights, held_out_loss, timestep_sensitivity
from course_lib.schedules import NoiseSchedule
from course_lib.unet import UNet, UNetConfig


def _tiny(resblock="additive", seed=0):
    torch.manual_seed(seed)
    return UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                           dropout=0.0, num_groups=4, resblock=resblock))


def _randomise(model, seed=1):
    """Give the zero-initialised layers weights, so the blocks pass their conditioning on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


class ZeroModel(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_held_out_loss_is_repeatable_and_exact_for_a_known_model():
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    schedule = NoiseSchedule.linear(100)
    a = held_out_loss(ZeroModel(), schedule, images, draws=3, seed=7)
    b = held_out_loss(ZeroModel(), schedule, images, draws=3, seed=7)
    assert a == b
    # predicting zero noise costs E[eps^2], computed here from the same draws
    g = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(3):
        torch.randint(0, 100, (10,), generator=g)
        expected.append(torch.randn(images.shape, generator=g).pow(2).mean())
    assert a == pytest.approx(float(torch.stack(expected).mean()), rel=1e-6)


def test_held_out_loss_restores_training_mode():
    model = _tiny().train()
    held_out_loss(model, NoiseSchedule.linear(50), torch.zeros(2, 3, 8, 8))
    assert model.training


def test_sensitivity_is_zero_when_the_embedding_is_cut():
    model = _randomise(_tiny("adagn"))
    with torch.no_grad():
        for block in [m for m in model.modules() if hasattr(m, "emb_proj")]:
            block.emb_proj.weight.zero_()  # the time embedding no longer reaches any block
    x = torch.randn(2, 3, 8, 8)
    sens = timestep_sensitivity(model, x, [0, 500, 999])
    assert len(sens) == 8  # 1 per level down, 2 in the middle, 2 per level up (num_res_blocks + 1)
    assert max(sens.values()) < 1e-10


def test_sensitivity_is_between_zero_and_one_and_sees_the_embedding():
    x = torch.randn(2, 3, 8, 8)
    for resblock in ("additive", "adagn"):
        sens = timestep_sensitivity(_randomise(_tiny(resblock)), x, [0, 300, 600, 999])
        assert all(0.0 <= s <= 1.0 for s in sens.values())
        assert max(sens.values()) > 1e-3


def test_sensitivity_input_errors():
    with pytest.raises(ValueError, match="at least two timesteps"):
        timestep_sensitivity(_tiny(), torch.zeros(1, 3, 8, 8), [5])
    with pytest.raises(ValueError, match="no residual blocks"):
        timestep_sensitivity(ZeroModel(), torch.zeros(1, 3, 8, 8), [1, 2])


def test_copy_shared_weights_makes_the_variants_equal_except_emb_proj():
    additive, adagn = _tiny("additive", seed=0), _tiny("adagn", seed=1)
    different = copy_shared_weights(additive, adagn)
    assert different and all(".emb_proj." in name for name in different)
    a, b = additive.state_dict(), adagn.state_dict()
    for name in b:
        if name not in different:
            assert torch.equal(a[name], b[name]), name
