"""Looking at things: figures the chapters share.

* Image grids: :func:`image_grid` (a batch of images as one picture, cells of the images' size plus
  a padding) and :func:`show_images` (the grid on matplotlib axes, with row and column labels placed
  at the cell centres computed from the image size and the padding, so 8x8 latents label as well as
  32x32 images).
* Training: :func:`plot_losses` (loss per step and its centred moving average, :func:`moving_average`)
  and :func:`describe_card` (a checkpoint's card in words: how big, how long, on what, how good).
* Cross-attention maps (chapter 3): :func:`token_heatmap` (where one text token is attended to),
  :func:`upsample_heatmap` and :func:`overlay` (the map over the image). The interactive explorers
  of ``course_lib.widgets`` draw with these, and show images with :func:`to_rgb`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import torch
import torch.nn.functional as F
from einops import rearrange

from .capture import AttentionRecord
from .data import to_uint8

__all__ = [
    "image_grid",
    "cell_centres",
    "show_images",
    "show_guidance_rows",
    "moving_average",
    "plot_losses",
    "describe_card",
    "token_heatmap",
    "upsample_heatmap",
    "overlay",
    "to_rgb",
]


# --------------------------------------------------------------------------- image grids


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images [N, 1 or 3, H, W] in [-1, 1], got {got}")
    channels = images.shape[1]
    if channels == 4:
        raise ValueError(f"got {tuple(images.shape)}: 4 channels (latents?) are not colours; show one channel at a "
                         "time as grey images, e.g. show_images(z[:, c:c + 1]) for channel c, or every channel "
                         "as its own row: show_images(einops.rearrange(z, 'n c h w -> (n c) 1 h w'), nrow=4)")
    if channels not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W] (grey or RGB), got {channels} channels "
                         f"{tuple(images.shape)}; show the channels one at a time, e.g. images[:, c:c + 1]")


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """[N, 1 or 3, H, W] in [-1, 1] -> one uint8 picture [H', W', 3] for ``plt.imshow``.

    ``torchvision.utils.make_grid``'s layout (the tests compare the two): ``min(nrow, N)`` columns, every
    cell the image with a white border of ``padding`` pixels, so cell (r, c) starts at pixel
    (padding + r (H + padding), padding + c (W + padding)) and

        H' = padding + rows (H + padding),    W' = padding + columns (W + padding).

    Grey images become grey RGB; empty cells of the last row stay white. (Written with einops rather than
    calling ``make_grid``: importing torchvision costs a notebook's kernel about 1.5 s, for this alone.)
    """
    _check_images(images)
    x = to_uint8(images.detach().cpu().float())  # [N, C, H, W]
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> grey RGB
    columns = min(nrow, len(x))
    rows = -(-len(x) // columns)
    x = torch.cat([x, x.new_full((rows * columns - len(x), *x.shape[1:]), 255)])  # white empty cells
    x = F.pad(x, (0, padding, 0, padding), value=255)  # each cell: the image, then its right and bottom border
    grid = rearrange(x, "(r c) ch h w -> (r h) (c w) ch", r=rows, c=columns)  # [H' - padding, W' - padding, 3]
    return F.pad(grid, (0, 0, padding, 0, padding, 0), value=255)  # the top and left border: [H', W', 3]


def cell_centres(n: int, size: int, padding: int = 2) -> list[float]:
    """Pixel coordinates of the centres of ``n`` grid cells along one axis, for images ``size`` pixels
    wide: cell k covers pixels padding + k (size + padding) ... + size - 1, so its centre (in
    ``imshow`` coordinates, pixel j centred at j) is padding + k (size + padding) + (size - 1) / 2."""
    return [padding + k * (size + padding) + (size - 1) / 2 for k in range(n)]


def show_images(images: torch.Tensor, nrow: int = 8, *, title: str | None = None,
                row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                ax=None, scale: float = 0.9, padding: int = 2, label_size: float | None = None):
    """Show a grid of images in [-1, 1] (see :func:`image_grid`); returns the axes.

    ``row_labels`` name the rows (left of the grid, e.g. classes or schedules), ``col_labels`` the
    columns (below it, e.g. "t = 500"); each label sits at the centre of its cells, computed from
    the image size and ``padding`` (:func:`cell_centres`). Fewer labels than rows or columns label
    the first ones. ``label_size``: their font size. Images [N, 1 or 3, H, W] of any size; for
    4-channel latents show one channel at a time (the error says how).
    """
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow, padding)
    N, _, H, W = images.shape
    columns = min(nrow, N)
    rows = -(-N // columns)
    for labels, count, what in ((row_labels, rows, "rows"), (col_labels, columns, "columns")):
        if labels is not None and len(labels) > count:
            raise ValueError(f"{len(labels)} labels for the {count} {what} of the grid "
                             f"({N} images, nrow={nrow}); give at most one label per {what[:-1]}")
    if ax is None:
        label_lines = max((str(s).count("\n") + 1 for s in col_labels or ()), default=0)
        _, ax = plt.subplots(figsize=(scale * nrow + (1.2 if row_labels else 0),
                                      scale * rows + 0.4 + 0.2 * label_lines))
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_xticks(cell_centres(len(col_labels), W, padding) if col_labels else [])
    ax.set_yticks(cell_centres(len(row_labels), H, padding) if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels, fontsize=label_size)
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=label_size)
    if row_labels or col_labels:
        ax.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def show_guidance_rows(rows: Mapping[float, torch.Tensor], *, title: str | None = None, row_height: float = 1.5,
                       width: float = 12.0):
    """One row of images per guidance scale: ``rows`` is {w: images [B, 3, H, W] in [-1, 1]}, drawn top to
    bottom in the order given, each row labelled "w = ..." (chapter 3's and chapter 4's guidance grids,
    where every row starts from the same noise). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: give {w: images} for at least one guidance scale")
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, row_height * len(rows) + 0.6), layout="constrained",
                             squeeze=False)
    for ax, (w, images) in zip(axes[:, 0], rows.items()):
        show_images(images, nrow=len(images), ax=ax)
        ax.set_title(f"w = {w:g}", loc="left", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- training curves and cards


def moving_average(values: Sequence[float] | torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred moving average: (positions, means), both [S - window + 1], where

        means[i] = (values[i] + ... + values[i + window - 1]) / window,   positions[i] = i + (window - 1) / 2,

    so each mean is drawn at the middle step of its window."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()  # [S]
    if not 1 <= window <= len(x):
        raise ValueError(f"window must be in 1..{len(x)} (the number of values), got {window}")
    means = x.unfold(0, window, 1).mean(dim=1)  # [S - window + 1]
    return torch.arange(len(means)) + (window - 1) / 2, means


def plot_losses(losses: Sequence[float] | torch.Tensor, *, window: int | None = None, ax=None,
                label: str | None = None, title: str | None = None, color=None, log: bool = True):
    """The loss of every training step (faint) and its centred :func:`moving_average` over ``window``
    steps (default: a tenth of the run, at most 100). Returns the axes.

    Call it once per run on the same ``ax`` to compare runs: each call takes the next colour of the
    axes' cycle (or ``color``), and ``label`` names the run in the legend. ``log``: a logarithmic
    loss axis (diffusion losses fall over orders of magnitude).
    """
    import matplotlib.pyplot as plt

    y = torch.as_tensor(losses, dtype=torch.float64).flatten()  # [S]
    if len(y) == 0:
        raise ValueError("no losses to plot: the run has no steps (result.losses is empty)")
    window = min(len(y), max(1, min(100, len(y) // 10))) if window is None else int(window)
    positions, means = moving_average(y, window)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    mean_label = f"mean of {window} steps" if label is None else f"{label} (mean of {window} steps)"
    (line,) = ax.plot(positions.numpy(), means.numpy(), lw=2, color=color, label=mean_label)
    ax.plot(torch.arange(len(y)).numpy(), y.numpy(), color=line.get_color(), alpha=0.3, lw=0.8, zorder=1.5,
            label="loss per step" if label is None else None)
    ax.set(xlabel="training step", ylabel="loss")
    if log and bool((y > 0).all()):
        ax.set_yscale("log")
        if float(y.max() / y.min()) < 10:  # less than a decade: plain numbers (2.4, not 2.4 x 10^0)
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return ax


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" + (f" ({minutes / 60:.1f} h)" if minutes >= 90 else "")


def _value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def describe_card(card: Mapping) -> str:
    """A checkpoint card (``course_lib.checkpoint``) in a few lines: what was trained, how big, for how
    many steps of which batch, how long in all, the last run's command, hardware and precision, the
    runs it continued from, the loss of its last 100 steps and any other metrics.

    Keys a card lacks (a classifier's card, a tiny test model's) are left out, never an error.
    """
    training = card.get("training") or {}
    train_config = training.get("train_config") or {}
    name = training.get("recipe") or card.get("model_class") or "model"
    if card.get("model_class") and card["model_class"] != name:
        name += f" ({card['model_class']})"
    size = []
    if "parameters" in card:
        size.append(f"{card['parameters'] / 1e6:.2f}M parameters")
    if "step" in card:
        size.append(f"{_value(card['step'])} steps" + (f" of batch {train_config['batch_size']}"
                                                       if "batch_size" in train_config else ""))
    if "wall_seconds_total" in training:
        size.append(f"{_duration(training['wall_seconds_total'])} of training in all")
    lines = [name + (": " + ", ".join(size) if size else "")]
    if "data_source" in training:
        lines.append(f"data: {training['data_source']}"
                     + (f" ({training['data_images']:,} images)" if "data_images" in training else ""))
    process = training.get("process") or training.get("diffusion")  # cards before course_lib.processes: "diffusion"
    if process:
        lines.append("process: " + ", ".join(f"{k} {v}" for k, v in process.items()))
    run = [f"    {training['command']}"] if "command" in training else []
    where = ", ".join(str(training[k]) for k in ("hardware", "precision") if k in training)
    if where:
        run.append(f"    on {where}")
    for earlier in training.get("earlier_runs", []):  # a state resumed from a run under another name
        run.append(f"    resumed after {earlier.get('command', '?')} ({_value(earlier.get('steps', '?'))} steps, "
                   f"{_value(earlier.get('minutes', '?'))} min{'; ' + earlier['note'] if earlier.get('note') else ''})")
    for warm in training.get("warm_starts", []):  # runs that began from an exported checkpoint
        run.append(f"    continued from the step-{_value(warm.get('step', '?'))} export "
                   f"{Path(str(warm.get('from', '?'))).name} ({warm.get('weights', '?')} weights)")
    if "transplant" in training:
        t = training["transplant"]
        run.append(f"    started from the weights of {Path(str(t.get('from', '?'))).stem} at step "
                   f"{_value(t.get('step', '?'))}")
    if train_config.get("cooldown_steps"):
        run.append(f"    learning rate cooled down linearly from {_value(train_config.get('lr', '?'))} to 0 over the "
                   f"last {_value(train_config['cooldown_steps'])} steps")
    if run:
        lines += ["last run:", *run]
    metrics = dict(card.get("metrics") or {})
    if "loss_last_100" in metrics:
        lines.append(f"loss (last 100 steps): {metrics.pop('loss_last_100'):.4f}")
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {_value(v)}" for k, v in value.items())
        lines.append(f"{key}: {_value(value)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cross-attention maps (chapter 3)


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """One image [1 or 3, H, W] in [-1, 1] as uint8 [H, W, 3] for ``imshow`` (grey images repeated to three
    channels); the explorers of ``course_lib.widgets`` draw their images with it."""
    image = to_uint8(image.detach().cpu().float())  # [C, H, W]
    return image.expand(3, *image.shape[1:]).permute(1, 2, 0)  # [H, W, 3]


def token_heatmap(record: AttentionRecord, layer: str, token_index: int, t: float | int | None = None,
                  head: int | str = "mean", image: int = 0) -> torch.Tensor:
    """Where text token j is attended to in one cross-attention layer: a map [h, w] for image ``image``.

    The layer computes, for every image position i = (y, x) and text token j (Rombach et al. 2022, Sec. 3.3),

        P_h[i, j] = softmax_j(q_{h,i} . k_{h,j} / sqrt(d))          (padded tokens: weight 0)

    and the heat map is column j of P reshaped to the feature map, averaged over the chosen calls:

        A_j[y, x] = mean over steps s of  mean over heads h of  P_h^(s)[(y, x), j]

    ``t=None``: every recorded step; a number: the calls at that timestep. ``head="mean"``: the mean
    over heads (as above); an int: that head alone. Each entry lies in [0, 1]; with a one-token prompt
    (only ``<start>``) every entry is 1. Token 0 is the start token.
    """
    if not isinstance(record, AttentionRecord):
        raise TypeError(f"record must be an AttentionRecord from capture_attention(...), got {type(record).__name__}")
    if head is None:
        raise ValueError("token_heatmap draws one map: pass head='mean' or a head index, not None "
                         "(record.maps(layer, head=None) gives every head at once)")
    maps = record.maps(layer, t=t, head=head)  # [B, h, w, M]
    B, M = maps.shape[0], maps.shape[-1]
    if not -B <= image < B:
        raise ValueError(f"image={image} is out of range: the record holds {B} image(s) per call")
    if not 0 <= token_index < M:
        raise ValueError(f"token_index={token_index} is out of range: layer {layer!r} attends over {M} key tokens "
                         f"(0..{M - 1}, padding included; 0 is the start token)")
    return maps[image, :, :, token_index]  # [h, w]


def upsample_heatmap(heatmap: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """A map [h, w] resized to ``size`` = (H, W): "bilinear" (smooth; align_corners=False, so the
    values stay within the map's range) or "nearest" (each feature-map cell a visible block)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be one map [h, w], got shape {tuple(heatmap.shape)}; "
                         "take one image and token first, e.g. token_heatmap(record, layer, j)")
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    x = heatmap.detach().cpu().float()[None, None]  # [1, 1, h, w]
    return F.interpolate(x, size=tuple(size), mode=mode, **kwargs)[0, 0]  # [H, W]


def overlay(image: torch.Tensor, heatmap: torch.Tensor, *, alpha: float = 0.6, cmap: str = "inferno",
            mode: str = "bilinear", normalize: str = "minmax", gray: bool = True) -> torch.Tensor:
    """The heat map laid semi-transparently over the image (in grey, so that colour means attention).

        a    = scale(upsample(heatmap, (H, W)))                        in [0, 1]
        grey = 0.299 R + 0.587 G + 0.114 B                             (ITU-R BT.601 luma)
        out  = (1 - alpha) * grey + alpha * cmap(a)                    per pixel

    With the default "inferno" colormap, little attention darkens the image and much attention
    tints it yellow; the image's shapes stay visible underneath. ``gray=False`` keeps the
    image's colours (harder to read on colourful images).

    ``normalize``: "minmax" (a = (A - min) / (max - min): where, relative to the rest of this map,
    the token is attended most; the default, because attention maps are often flat, e.g.
    0.15..0.19) or "max" (a = A / max: zero attention stays at the bottom of the colormap).
    A constant map (e.g. a one-token prompt: every position attends only to ``<start>``) tints the
    whole image evenly, with the colormap's top colour.

    image [1 or 3, H, W] in [-1, 1]; heatmap [h, w] >= 0 -> RGB [H, W, 3] float in [0, 1].
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be one image [3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is an opacity in [0, 1], got {alpha}")
    if normalize not in ("minmax", "max"):
        raise ValueError(f"normalize must be 'minmax' or 'max', got {normalize!r}")
    rgb = to_rgb(image).float() / 255  # [H, W, 3]
    a = upsample_heatmap(heatmap, tuple(image.shape[-2:]), mode)  # [H, W]
    low = float(a.min()) if normalize == "minmax" else 0.0
    span = float(a.max()) - low
    if span > 1e-12 * max(1.0, abs(float(a.max()))):
        a = (a - low) / span
    else:  # constant map: the token is attended to everywhere alike
        a = torch.full_like(a, 1.0 if float(a.max()) > 0 else 0.0)
    color = torch.from_numpy(matplotlib.colormaps[cmap](a.numpy())[..., :3]).float()  # [H, W, 3]
    if gray:
        luma = rgb @ torch.tensor([0.299, 0.587, 0.114])  # [H, W]
        rgb = luma[..., None].expand(-1, -1, 3)  # [H, W, 3]
    return (1 - alpha) * rgb + alpha * color
