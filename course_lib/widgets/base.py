"""The base of every explorer: :class:`FigureExplorer` (controls above a matplotlib figure shown as PNG), and
chapter 0's :class:`ClassExplorer`, plus the small helpers the explorer families share.

Shared helpers: :func:`wrap_text` (a title broken into lines) and ``course_lib.viz.to_rgb`` (an image for
``imshow``).

For a page without a kernel (the course site), an explorer also says which of its controls a reader may move there
and how many values of each to precompute (:meth:`FigureExplorer.view_controls`, a list of :class:`ViewControl`),
which text readouts go with its picture (:meth:`~FigureExplorer.view_readouts`), and lets its controls be set without
a redraw (:meth:`~FigureExplorer.paused`); :func:`shown_explorers` lists the explorers a kernel has displayed.
``course_lib.widgets.views`` uses these to precompute the pictures.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import textwrap
import weakref
from typing import Iterator, NamedTuple, Sequence

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..viz import image_grid

__all__ = ["FigureExplorer", "ClassExplorer", "class_explorer", "wrap_text", "ViewControl", "shown_explorers"]


class ViewControl(NamedTuple):
    """A control that a page without a kernel offers, and how many of its values it precomputes.

    name:   what the page calls it (the control's description);
    widget: the ipywidgets control (a slider, a menu, toggle buttons);
    limit:  at most this many of its values, evenly spaced over its options, the value it was shown with among
            them (None: every value);
    play:   the page adds a play button that steps through the values (as ``widgets.Play`` does in a kernel).
    """

    name: str
    widget: widgets.ValueWidget
    limit: int | None = None
    play: bool = False


# the explorers this process has displayed, by widget id, in the order they were first shown; weak, so that a
# closed explorer is not kept alive here (ipywidgets itself keeps every open widget)
_SHOWN: "weakref.WeakValueDictionary[str, FigureExplorer]" = weakref.WeakValueDictionary()


def shown_explorers() -> list["FigureExplorer"]:
    """The explorers displayed so far in this kernel (a notebook's cells), in the order they were first shown."""
    return list(_SHOWN.values())


class FigureExplorer(widgets.VBox):
    """Controls above a figure that is redrawn when they change.

    Subclasses build ``self.figure`` (a ``matplotlib.figure.Figure``, not managed by pyplot, so
    the notebook does not show it a second time), implement :meth:`update`, and call
    :meth:`watch` on the controls that should trigger a redraw.

    Attributes:
        figure: the matplotlib figure, updated in place.
        image:  the ``ipywidgets.Image`` showing it (PNG bytes in ``image.value``).
        state:  what the last ``update()`` drew (a dict; each explorer documents its keys).
        shown_values: {control name: value} of the :meth:`view_controls` when the explorer was first displayed
                (None before): where a page's precomputed views start.
    """

    #: at most this many precomputed pictures on a page without a kernel (course_lib.widgets.views lowers the
    #: largest limits of :meth:`view_controls` until their product fits)
    view_budget: int = 200
    shown_values: dict | None = None
    _paused = 0  # > 0 inside paused(): controls change without a redraw

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

    def view_controls(self) -> list[ViewControl]:
        """The controls a page without a kernel offers, in the order their values are gone through (a control
        whose options depend on another, as a prompt's tokens do, comes after it). By default every control
        with a value (sliders, menus, buttons; not a ``Play``, which drives a slider, nor a text readout), all
        of its values; an explorer with many settings limits them."""
        return [ViewControl(control.description or type(control).__name__, control)
                for control in _controls(self.children[0])
                if isinstance(control, widgets.ValueWidget) and not isinstance(control, (widgets.Play, widgets.Label))]

    def view_readouts(self) -> list[widgets.Label]:
        """The text readouts whose values go with each precomputed picture (none by default)."""
        return []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside ``with explorer.paused():`` the controls can be set without a redraw (their own callbacks,
        such as a new prompt's token list, still run); call :meth:`redraw` or :meth:`update` afterwards."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The widget, and beside it a static picture of what it shows now.

        A notebook saved without widget state (GitHub's viewer, nbconvert HTML, a PDF, a kernel without
        the widget frontend) cannot draw the widget; it falls back to the ``image/png`` of the current
        figure and a ``text/plain`` that names the explorer and its settings, instead of a bare
        ``VBox(...)`` placeholder. JupyterLab with the widget manager still draws the live widget. The explorer
        is noted as shown (:func:`shown_explorers`), with its controls' values then (``shown_values``)."""
        if self.shown_values is None:
            self.shown_values = {control.name: control.widget.value for control in self.view_controls()}
        _SHOWN.setdefault(self.model_id, self)
        bundle = super()._repr_mimebundle_(**kwargs)
        if self.image.value:
            bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        bundle["text/plain"] = self.describe()
        return bundle

    def describe(self) -> str:
        """One line: the explorer's class and each control's setting, e.g. ``ScheduleExplorer (t = 500, ...)``."""
        settings = [f"{control.description or type(control).__name__} = {getattr(control, 'label', None) or control.value}"
                    for control in _controls(self.children[0]) if isinstance(control, widgets.ValueWidget)]
        return f"{type(self).__name__} ({', '.join(settings)}): a static picture of its figure; run the notebook " \
               "to move the controls"

    def picture(self) -> Image.Image:
        """The figure as it is now, rendered by matplotlib's Agg at the explorer's dpi (an RGBA image).

        One drawing pass (the constrained layout runs inside it), where ``figure.savefig`` makes two (a layout pass,
        then the drawing): the same pixels, in about three quarters of the time, which a learner moving a slider
        waits for."""
        canvas = self.figure.canvas if isinstance(self.figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(self.figure)
        dpi, self.figure.dpi = self.figure.dpi, self.dpi
        try:
            canvas.draw()
            return Image.frombuffer("RGBA", canvas.get_width_height(physical=True), canvas.buffer_rgba()).copy()
        finally:
            self.figure.dpi = dpi

    def redraw(self) -> None:
        """``update()``, then render the figure into ``self.image`` as PNG (nothing inside :meth:`paused`)."""
        if self._paused:
            return
        self.update()
        buffer = io.BytesIO()
        self.picture().save(buffer, format="png", compress_level=1)  # fast to write; the bytes stay on this machine
        self.image.value = buffer.getvalue()


def _controls(box: widgets.Box) -> Iterator[widgets.Widget]:
    """The widgets inside ``box`` and its nested boxes, in the order they are shown."""
    for child in box.children:
        yield from _controls(child) if isinstance(child, widgets.Box) else [child]


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
