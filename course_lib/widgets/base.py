"""The base of every explorer: :class:`FigureExplorer` (controls above a matplotlib figure shown as PNG), and
chapter 0's :class:`ClassExplorer`, plus the small helpers the explorer families share.

Shared helpers: :func:`wrap_text` (a title broken into lines) and ``course_lib.viz.to_rgb`` (an image for
``imshow``).
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from typing import Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ..viz import image_grid

__all__ = ["FigureExplorer", "ClassExplorer", "class_explorer", "wrap_text"]


class FigureExplorer(widgets.VBox):
    """Controls above a figure that is redrawn when they change.

    Subclasses build ``self.figure`` (a ``matplotlib.figure.Figure``, not managed by pyplot, so
    the notebook does not show it a second time), implement :meth:`update`, and call
    :meth:`watch` on the controls that should trigger a redraw.

    Attributes:
        figure: the matplotlib figure, updated in place.
        image:  the ``ipywidgets.Image`` showing it (PNG bytes in ``image.value``).
        state:  what the last ``update()`` drew (a dict; each explorer documents its keys).
    """

    def __init__(self, controls: list[widgets.Widget], figure: Figure, dpi: int = 100):
        super().__init__()
        self.figure = figure
        self.dpi = dpi
        self.state: dict = {}
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.children = [widgets.HBox(controls), self.image]
        self.add_class("course-explorer")  # CSS classes, for a page's style and the browser tests
        self.add_class(f"course-{type(self).__name__}")

    def watch(self, *controls: widgets.Widget) -> None:
        """Redraw whenever one of ``controls`` changes its value."""
        for control in controls:
            control.observe(lambda _change: self.redraw(), names="value")

    def update(self) -> None:  # pragma: no cover - abstract
        """Change the figure's artists to match the controls and fill ``self.state``."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The widget, and beside it a static picture of what it shows now.

        A notebook saved without widget state (GitHub's viewer, nbconvert HTML, a PDF, a kernel without
        the widget frontend) cannot draw the widget; it falls back to the ``image/png`` of the current
        figure and a ``text/plain`` that names the explorer and its settings, instead of a bare
        ``VBox(...)`` placeholder. JupyterLab with the widget manager still draws the live widget."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if self.image.value:
            bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        bundle["text/plain"] = self.describe()
        return bundle

    def describe(self) -> str:
        """One line: the explorer's class and each control's setting, e.g. ``ScheduleExplorer (t = 500, ...)``."""
        def controls(box):
            for child in box.children:
                yield from controls(child) if isinstance(child, widgets.Box) else [child]

        settings = [f"{control.description or type(control).__name__} = {getattr(control, 'label', None) or control.value}"
                    for control in controls(self.children[0]) if isinstance(control, widgets.ValueWidget)]
        return f"{type(self).__name__} ({', '.join(settings)}): a static picture of its figure; run the notebook " \
               "to move the controls"

    def redraw(self) -> None:
        """``update()``, then render the figure into ``self.image``."""
        self.update()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=self.dpi)
        self.image.value = buffer.getvalue()


class ClassExplorer(FigureExplorer):
    """A menu of class names above a grid of the first images of the chosen class (the welcome chapter's
    check that widgets respond: changing the menu redraws the grid).

    Controls: ``menu`` (a ``Dropdown`` of the class names). ``state`` after each redraw:
    ``{"class": name, "images": [n, C, H, W] tensor}``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                 value: str | None = None, per_class: int = 16, nrow: int = 8, dpi: int = 100):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be a tensor [N, C, H, W] in [-1, 1] with one label per image, got "
                             f"{tuple(getattr(images, 'shape', ()))} images and {len(labels)} labels")
        value = class_names[0] if value is None else value
        if value not in class_names:
            raise ValueError(f"value {value!r} is not one of the classes {list(class_names)}")
        self.images, self.labels, self.class_names = images.detach().cpu(), torch.as_tensor(labels), list(class_names)
        self.per_class, self.nrow = per_class, nrow
        self.menu = widgets.Dropdown(options=self.class_names, value=value, description="class")
        figure = Figure(figsize=(nrow * 0.9, math.ceil(per_class / nrow) * 0.9 + 0.4), layout="constrained")
        self._ax = figure.subplots()
        self._ax.set_axis_off()
        super().__init__([self.menu], figure, dpi)
        self.watch(self.menu)
        self.redraw()

    def update(self) -> None:
        name = self.menu.value
        chosen = self.images[self.labels == self.class_names.index(name)][: self.per_class]  # [n, C, H, W]
        self._ax.clear()
        self._ax.set_axis_off()
        if len(chosen):
            self._ax.imshow(image_grid(chosen, nrow=self.nrow).numpy(), interpolation="nearest")
            self._ax.set_title(f"{name}: the first {len(chosen)} images", fontsize=10)
        else:
            self._ax.text(0.5, 0.5, f"no images of {name!r} in this data", ha="center", va="center")
        self.state = {"class": name, "images": chosen}


def class_explorer(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                   value: str | None = None, per_class: int = 16) -> ClassExplorer:
    """A menu of ``class_names`` above the first ``per_class`` of ``images`` [N, C, H, W] whose ``labels`` [N]
    is that class; see :class:`ClassExplorer`."""
    return ClassExplorer(images, labels, class_names, value=value, per_class=per_class)


def wrap_text(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (for a figure title); ``'""'`` for empty text."""
    return "\n".join(textwrap.wrap(text, width)) or '""'
