"""Widgets update when their controls change (no browser: set the control, check what was drawn)."""

import ipywidgets as widgets
import pytest
import torch

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
