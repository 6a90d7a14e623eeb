"""Figures: image grids with labels at computed cell centres, loss curves, checkpoint cards, attention maps."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.utils import make_grid

from course_lib.capture import AttentionCall, AttentionRecord
from course_lib.data import to_uint8
from course_lib.viz import (
    cell_centres,
    describe_card,
    image_grid,
    moving_average,
    overlay,
    plot_losses,
    show_guidance_rows,
    show_images,
    to_rgb,
    token_heatmap,
    upsample_heatmap,
)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- image grids


@pytest.mark.parametrize("channels, size, expected", [(1, 8, [5.5, 15.5, 25.5]), (3, 32, [17.5, 51.5, 85.5])])
def test_labels_sit_at_the_centres_of_the_cells(channels, size, expected):
    """Black images on the white grid: each label's position is midway between the cell's first and
    last black pixel column (row), for 8x8 latent-sized and 32x32 images."""
    images = -torch.ones(6, channels, size, size)  # black
    ax = show_images(images, nrow=3, col_labels=["a", "b", "c"], row_labels=["first", "second"])
    assert ax.get_xticks().tolist() == expected and ax.get_yticks().tolist() == expected[:2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["first", "second"]
    black = (image_grid(images, nrow=3)[..., 0] == 0)  # [H', W']
    columns = black.any(dim=0).nonzero()[:, 0]  # the pixel columns that hold image pixels
    for k, centre in enumerate(expected):
        cell = columns[k * size:(k + 1) * size]
        assert cell[-1] - cell[0] == size - 1 and (cell[0] + cell[-1]) / 2 == centre
    assert cell_centres(3, size) == expected


def test_grid_layout_is_make_grid_s_and_errors_name_the_fix():
    for shape, nrow in [((5, 3, 32, 32), 8), ((17, 1, 8, 8), 4), ((3, 3, 16, 16), 2)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        expected = make_grid(to_uint8(x), nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0)
        assert torch.equal(image_grid(x, nrow), expected)
    assert image_grid(torch.zeros(1, 3, 8, 8)).shape == (12, 12, 3)  # a single image gets its border too
    with pytest.raises(ValueError, match=r"one channel at a time.*z\[:, c:c \+ 1\]"):
        show_images(torch.zeros(2, 4, 8, 8))
    assert show_images(torch.zeros(2, 4, 8, 8)[:, 1:2]) is not None  # what the error suggests works
    with pytest.raises(ValueError, match="4 labels for the 3 columns"):
        show_images(torch.zeros(6, 3, 8, 8), nrow=3, col_labels=list("abcd"))


# --------------------------------------------------------------------------- loss curves and cards


def test_guidance_rows_draw_one_labelled_row_per_scale():
    rows = {0.0: -torch.ones(4, 3, 8, 8), 3.0: torch.ones(4, 3, 8, 8)}
    fig = show_guidance_rows(rows, title="same noise")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["w = 0", "w = 3"]
    centre = (2 + 4, 2 + 4)  # padding 2, then the middle of the first 8x8 image
    assert fig.axes[0].images[0].get_array()[centre].max() == 0  # -1: black
    assert fig.axes[1].images[0].get_array()[centre].min() == 255  # +1: white
    assert fig._suptitle.get_text() == "same noise"
    with pytest.raises(ValueError, match="at least one guidance scale"):
        show_guidance_rows({})


def test_plot_losses_draws_the_centred_moving_average():
    ax = plot_losses([1.0, 2.0, 3.0, 4.0, 6.0, 8.0], window=3, label="run A")
    mean_line, step_line = ax.lines
    assert mean_line.get_xdata().tolist() == [1.0, 2.0, 3.0, 4.0]  # the middle step of each window
    assert mean_line.get_ydata().tolist() == pytest.approx([2.0, 3.0, 13 / 3, 6.0])
    assert step_line.get_ydata().tolist() == [1.0, 2.0, 3.0, 4.0, 6.0, 8.0]
    assert step_line.get_color() == mean_line.get_color() and step_line.get_alpha() < 1
    assert mean_line.get_label() == "run A (mean of 3 steps)" and ax.get_yscale() == "log"
    plot_losses(torch.tensor([5.0, 4.0, 3.0, 2.0]), window=2, ax=ax, label="run B")
    assert len(ax.lines) == 4 and ax.lines[2].get_color() != mean_line.get_color()  # a new colour per run
    positions, means = moving_average(torch.arange(10.0), 4)
    assert positions.tolist() == [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5] and means.tolist() == positions.tolist()
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0, 2.0], 3)


def test_describe_card_of_a_shipped_checkpoint():
    card = json.loads((CHECKPOINTS / "ddpm-small.json").read_text())
    text = describe_card(card)
    assert text.startswith("ddpm-small (UNet): 2.25M parameters, 20,480 steps of batch 64, 764 min")
    assert "on CPU AMD EPYC (AVX2, no native bf16), 2 threads, float32" in text
    assert "continued from the step-5,856 export ddpm-small.safetensors (ema weights)" in text
    assert "loss (last 100 steps): 0.0280" in text and "over the last 2,800 steps" in text
    classifier = describe_card(json.loads((CHECKPOINTS / "cifar-classifier.json").read_text()))
    assert "process: schedule linear, T 1000, parameterization eps" in text  # a card from before processes
    assert "test_accuracy: 0.837" in classifier and "process" not in classifier  # a classifier has no process
    new = describe_card({"training": {"process": {"name": "ddpm", "schedule": "cosine", "T": 500,
                                                  "parameterization": "v"}}})
    assert "process: name ddpm, schedule cosine, T 500, parameterization v" in new
    resumed = describe_card({"training": {"command": "python -m course_lib.train b --minutes 85", "earlier_runs": [
        {"command": "python pilot.py --minutes 15", "steps": 1687, "minutes": 15, "note": "the pilot"}]}})
    assert "resumed after python pilot.py --minutes 15 (1,687 steps, 15 min; the pilot)" in resumed
    assert describe_card({}) == "model"
    assert describe_card({"model_class": "UNet", "step": 3, "metrics": {"loss_last_100": 0.5}}) == (
        "UNet: 3 steps\nloss (last 100 steps): 0.5000")


# --------------------------------------------------------------------------- attention maps


def _record():
    """Two sampling steps (t = 500, 100) of one layer: 2 heads, a 2x2 map, 3 keys; token 1's column is set."""
    column = {500: [[0.2, 0.4, 0.6, 0.8], [0.0, 0.2, 0.4, 0.6]], 100: [[0.5] * 4, [0.5] * 4]}
    calls = []
    for call, t in enumerate((500, 100)):
        probs = torch.zeros(1, 2, 4, 3)  # [B, heads, Nq, Nk]
        probs[0, :, :, 1] = torch.tensor(column[t])
        probs[0, :, :, 0] = 1 - probs[0, :, :, 1]  # rows sum to 1
        calls.append(AttentionCall("up.1.attn2", "cross", call, t, probs))
    return AttentionRecord(calls, [torch.tensor([500]), torch.tensor([100])])


def test_token_heatmap_averages_heads_and_steps():
    record = _record()
    assert torch.allclose(token_heatmap(record, "up.1.attn2", 1), torch.tensor([[0.3, 0.4], [0.5, 0.6]]))
    assert torch.allclose(token_heatmap(record, "up.1.attn2", 1, t=500), torch.tensor([[0.1, 0.3], [0.5, 0.7]]))
    assert torch.allclose(token_heatmap(record, "up.1.attn2", 1, head=1), torch.tensor([[0.25, 0.35], [0.45, 0.55]]))
    assert token_heatmap(record, "up.1.attn2", 2).abs().max() == 0  # a padding key
    with pytest.raises(ValueError, match="out of range"):
        token_heatmap(record, "up.1.attn2", 3)
    with pytest.raises(TypeError, match="AttentionRecord"):
        token_heatmap({}, "up.1.attn2", 1)


def test_upsample_and_overlay():
    heat = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    nearest = upsample_heatmap(heat, (4, 4), mode="nearest")
    assert torch.equal(nearest, heat.repeat_interleave(2, 0).repeat_interleave(2, 1))
    bilinear = upsample_heatmap(heat, (8, 8))
    assert bilinear.shape == (8, 8) and bilinear.min() >= 0 and bilinear.max() <= 3
    assert torch.allclose(upsample_heatmap(torch.full((2, 2), 0.3), (6, 6)), torch.full((6, 6), 0.3))

    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = overlay(image, heat)
    assert out.shape == (8, 8, 3) and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(overlay(image, heat, alpha=0.0, gray=False), (image.permute(1, 2, 0) + 1) / 2, atol=1 / 255)
    colors = overlay(torch.zeros(3, 8, 8), heat, alpha=1.0)  # the colormap alone
    assert colors[7, 7].sum() > colors[0, 0].sum()  # more attention, brighter colour (inferno)
    flat = overlay(image, torch.ones(2, 2), alpha=1.0)
    assert torch.allclose(flat, flat[0, 0].expand_as(flat))  # a constant map tints evenly
    with pytest.raises(ValueError, match="one image"):
        overlay(image[None], heat)
    with pytest.raises(ValueError, match="bilinear"):
        upsample_heatmap(heat, (4, 4), mode="bicubic")


def test_to_rgb_is_the_image_as_uint8_for_imshow():
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rgb = to_rgb(image)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == torch.uint8
    assert torch.equal(rgb, to_uint8(image).permute(1, 2, 0))
    grey = to_rgb(image[:1])  # one channel: repeated to three
    assert grey.shape == (5, 7, 3) and torch.equal(grey[..., 0], grey[..., 2])
