"""Figures shared by the chapters: image grids with labels."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from .data import to_uint8


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> one uint8 image [H', W', 3] for ``plt.imshow``."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
    grid = make_grid(to_uint8(images.detach().cpu().float()), nrow=nrow, padding=padding, pad_value=255)
    return grid.permute(1, 2, 0)  # [3, H', W'] -> [H', W', 3]


def show_images(images: torch.Tensor, nrow: int = 8, *, title: str | None = None,
                row_labels: list[str] | None = None, ax=None, scale: float = 0.9):
    """Show a grid of images in [-1, 1]; ``row_labels`` name the rows (e.g. classes). Returns the axes."""
    import matplotlib.pyplot as plt

    padding = 2
    grid = image_grid(images, nrow, padding)
    rows = -(-len(images) // nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * nrow + (1.2 if row_labels else 0), scale * rows + 0.4))
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        cell = images.shape[-2] + padding
        ax.set_yticks([padding + cell * r + images.shape[-2] / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(row_labels)
        ax.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax
