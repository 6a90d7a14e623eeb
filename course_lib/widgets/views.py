"""The explorers on a page without a kernel: each explorer's pictures over a grid of its controls' values, drawn
once in the kernel and saved for the course site (``tools/build_site.py``), whose pages switch between them.

Why precomputed frames, and not an explorer rewritten as an anywidget ES module fed with arrays: a frame is the
explorer's own matplotlib figure, drawn by the same ``update()`` a learner's kernel runs, so the page shows exactly
what the notebook shows, with one drawing code to read and test. An anywidget module would need every figure
(titles, colorbars, quiver fields, the quadrant curves) rewritten in JavaScript and kept equal to the Python one,
the anywidget package and a widget manager in the page, and its data would be as large as the frames for the
attention records. The price of frames is the grid: a page offers only precomputed values. Each explorer chooses
them (:meth:`~course_lib.widgets.base.FigureExplorer.view_controls`: every prompt, a few heads and timesteps, ...)
and a budget of pictures per explorer keeps a chapter's page small (``view_budget``); the page says which values
were left out.

:func:`explorer_views` goes through the grid depth first, in the order of the explorer's view controls: it sets
each control inside ``explorer.paused()`` (so that a control whose options depend on another, such as a prompt's
tokens, is refreshed by the explorer's own callbacks), calls ``update()`` at each leaf and renders the figure as
``redraw()`` does (``explorer.picture()``), into a WebP picture (lossy, quality 80 by default: a third of the PNG's
size for these figures). Identical pictures are stored once. At the end the controls go back to where they were
when the explorer was first shown, and it redraws. :func:`save_views` does this for every explorer a kernel has
displayed (``shown_explorers()``); the site builder runs it in each chapter's kernel after the last cell.

What is written, for an explorer whose widget id is ``ID``: ``ID/<digest>.webp`` (the pictures) and ``ID.json``::

    {"explorer": "ScheduleExplorer", "model_id": ID,
     "controls": [{"name": "t", "kind": "slider" | "menu" | "toggle", "play": bool}, ...],
     "readouts": ["..."],                      # names of the text readouts that go with each picture
     "option_sets": [{"labels": [...], "keys": [...], "total": N}, ...],   # the precomputed options of a control
     "frames": [{"values": [key, ...], "options": [option set per control], "picture": "<digest>.webp",
                 "texts": [readout, ...]}, ...],
     "start": i,                               # the frame shown first: the controls as the notebook showed them
     "size": [width, height], "pictures": n, "bytes": b, "seconds": s}

A key is a control value as JSON text (``"250"``, ``"\\"mean\\""``); ``total`` is how many options the control
had in the kernel, so a page can say "41 of 1000 values".
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets

from ..checkpoint import atomic_write
from .base import FigureExplorer, ViewControl, shown_explorers

__all__ = ["view_options", "pick_values", "fit_limits", "explorer_views", "save_views"]


def view_options(control: widgets.ValueWidget) -> list[tuple[str, object]]:
    """(label, value) of every value a control can take: a menu's or selection slider's options (labelled as
    ipywidgets labels them), an integer slider's range, a float slider's steps (labelled with its readout format)."""
    if hasattr(control, "options"):  # Dropdown, SelectionSlider, ToggleButtons, ...
        options = tuple(control.options)
        if all(isinstance(o, (list, tuple)) and len(o) == 2 for o in options):  # ipywidgets' own rule
            return [(str(label), value) for label, value in options]
        return [(str(o), o) for o in options]
    if isinstance(control, widgets.IntSlider):
        return [(str(v), v) for v in range(control.min, control.max + 1, control.step)]
    if isinstance(control, widgets.FloatSlider):
        n = int(round((control.max - control.min) / control.step)) + 1
        values = [round(control.min + i * control.step, 10) for i in range(n)]
        return [(format(v, control.readout_format), v) for v in values]
    raise TypeError(f"a page cannot offer a {type(control).__name__} ({control.description!r}): give view_controls() "
                    "sliders, menus or toggle buttons")


def pick_values(options: Sequence[tuple[str, object]], limit: int | None, keep=None) -> list[tuple[str, object]]:
    """``limit`` of ``options``, evenly spaced from the first to the last, in their order, the one nearest to the
    option whose value is ``keep`` (where the explorer started) replaced by it (not the first or the last, when
    there are three or more: a slider keeps its ends); all of them when ``limit`` is None or not smaller than
    their number."""
    n = len(options)
    if limit is None or limit >= n:
        return list(options)
    limit = max(1, limit)
    chosen = [0] if limit == 1 else [round(i * (n - 1) / (limit - 1)) for i in range(limit)]
    kept = [i for i, (_, value) in enumerate(options) if _key(value) == _key(keep)]
    if kept and kept[0] not in chosen:
        nearest = min(range(1, limit - 1) if limit >= 3 else range(limit), key=lambda j: abs(chosen[j] - kept[0]))
        chosen[nearest] = kept[0]
    return [options[i] for i in sorted(set(chosen))]


def fit_limits(counts: Sequence[int], budget: int) -> list[int]:
    """Lower the largest of ``counts`` (values per control) one at a time until their product is at most
    ``budget`` (never below 1): the grid of pictures an explorer can afford."""
    counts = list(counts)
    while math.prod(counts) > budget and max(counts) > 1:
        largest = max(range(len(counts)), key=lambda i: (counts[i], i))  # ties: the later (finer) control
        counts[largest] -= 1
    return counts


def _key(value) -> str:
    """A control value as the page knows it: JSON text."""
    return json.dumps(value, default=str)


def _kind(control: widgets.ValueWidget) -> str:
    if isinstance(control, (widgets.IntSlider, widgets.FloatSlider, widgets.SelectionSlider)):
        return "slider"
    if isinstance(control, widgets.ToggleButtons):
        return "toggle"
    return "menu"


def explorer_views(explorer: FigureExplorer, folder: Path | str, *, max_values: int | None = None,
                   budget: int | None = None, quality: int = 80) -> dict:
    """Draw ``explorer`` at every point of its grid of view-control values and save the pictures (WebP,
    ``quality``) in ``folder``; return the description the page reads (the module's docstring).

    ``budget``: at most this many pictures (default ``explorer.view_budget``); ``max_values``: at most this many
    values of any control (a quick build, e.g. a test's). The controls go back to their values when first shown.
    """
    begin = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    controls: list[ViewControl] = explorer.view_controls()
    readouts = explorer.view_readouts()
    start = dict(explorer.shown_values or {c.name: c.widget.value for c in controls})
    counts = [len(view_options(c.widget)) for c in controls]
    limits = [min(n, c.limit or n, max_values or n) for c, n in zip(controls, counts)]
    limits = fit_limits(limits, budget or explorer.view_budget)

    option_sets: list[dict] = []
    set_ids: dict[str, int] = {}
    frames: list[dict] = []
    seen: set[tuple] = set()
    pictures: dict[str, int] = {}  # file name -> bytes
    picked = [0] * len(controls)
    size = None

    def option_set(chosen, total) -> int:
        entry = {"labels": [label for label, _ in chosen], "keys": [_key(v) for _, v in chosen], "total": total}
        text = json.dumps(entry)
        if text not in set_ids:
            set_ids[text] = len(option_sets)
            option_sets.append(entry)
        return set_ids[text]

    def visit(depth: int) -> None:
        nonlocal size
        if depth == len(controls):
            values = tuple(_key(c.widget.value) for c in controls)
            if values in seen:
                return
            seen.add(values)
            explorer.update()
            image = explorer.picture().convert("RGB")  # what redraw() shows, without its transparency
            size = list(image.size)
            buffer = io.BytesIO()
            image.save(buffer, format="WEBP", quality=quality, method=4)
            data = buffer.getvalue()
            name = hashlib.sha1(data).hexdigest()[:16] + ".webp"
            if name not in pictures:
                (folder / name).write_bytes(data)
                pictures[name] = len(data)
            frames.append({"values": list(values), "options": list(picked), "picture": name,
                           "texts": [str(r.value) for r in readouts]})
            return
        control = controls[depth]
        options = view_options(control.widget)
        chosen = pick_values(options, limits[depth], keep=start.get(control.name))
        picked[depth] = option_set(chosen, len(options))
        for _, value in chosen:
            with explorer.paused():
                control.widget.value = value
            if _key(control.widget.value) != _key(value):
                raise RuntimeError(f"{type(explorer).__name__}: setting {control.name!r} to {value!r} left it at "
                                   f"{control.widget.value!r}")
            visit(depth + 1)

    try:
        visit(0)
    finally:  # back to where the notebook showed it
        with explorer.paused():
            for control in controls:
                if control.name in start and any(_key(v) == _key(start[control.name])
                                                 for _, v in view_options(control.widget)):
                    control.widget.value = start[control.name]
        explorer.redraw()
    index = {tuple(f["values"]): i for i, f in enumerate(frames)}
    first = index.get(tuple(_key(c.widget.value) for c in controls), 0)
    return {"explorer": type(explorer).__name__, "model_id": explorer.model_id,
            "controls": [{"name": c.name, "kind": _kind(c.widget), "play": bool(c.play)} for c in controls],
            "readouts": [r.description or "readout" for r in readouts], "option_sets": option_sets,
            "frames": frames, "start": first, "size": size, "pictures": len(pictures),
            "bytes": sum(pictures.values()), "seconds": round(time.perf_counter() - begin, 1)}


def save_views(folder: Path | str, *, max_values: int | None = None, quality: int = 80) -> list[dict]:
    """:func:`explorer_views` for every explorer this kernel has displayed: ``folder/<id>/`` and ``folder/<id>.json``
    each. Returns one summary per explorer (explorer, model_id, frames, pictures, bytes, seconds)."""
    folder = Path(folder)
    summaries = []
    for explorer in shown_explorers():
        views = explorer_views(explorer, folder / explorer.model_id, max_values=max_values, quality=quality)
        atomic_write(folder / f"{explorer.model_id}.json", json.dumps(views).encode("utf-8"))
        summaries.append({"explorer": views["explorer"], "model_id": views["model_id"], "frames": len(views["frames"]),
                          "pictures": views["pictures"], "bytes": views["bytes"], "seconds": views["seconds"]})
    return summaries
