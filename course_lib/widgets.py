"""Interactive explorers for the notebooks: ipywidgets controls above a matplotlib figure.

Every explorer is a :class:`FigureExplorer`: a ``VBox`` with a row of controls and one image
(an ``ipywidgets.Image`` holding the figure as PNG). Moving a control calls ``update()``, which
changes the figure's artists and records what it drew in ``.state``; the figure is then
re-rendered into the image. Because the picture lives in a widget trait (not in an ``Output``
area), the explorers work the same in JupyterLab, Voila and a plain Python process, where a
test can set ``slider.value`` and check ``.state`` and ``.image.value`` at once.

Chapter 0: :func:`class_explorer` (a menu of classes above their images: does the widget frontend work?).
Chapter 1: :func:`schedule_explorer` (the noise-schedule explorer).
Chapter 3: :func:`guidance_explorer` (a slider over the classifier-free guidance scale, same noise;
:func:`pipeline_guidance_explorer` builds it for a ``Pipeline``, pixel or latent)
and :func:`attention_explorer` (where in the image each text token is attended to), drawn with the
pure tensor functions ``course_lib.viz.token_heatmap``, ``upsample_heatmap`` and ``overlay``.
Chapter 5: :func:`trajectory_explorer` (sampling paths of several methods, solvers and step counts).
Chapter 6: :func:`joint_attention_explorer` (the four quadrants of an MM-DiT's joint attention).
Both chapter-3 explorers take plain callables (a sampler for one scale, a run for one prompt), not a
particular model class, so any text-conditional model can be explored.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
import time
from typing import Callable, Mapping, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from .capture import AttentionRecord
from .schedules import NoiseSchedule
from .text import PAD, START
from .viz import _rgb, image_grid, overlay, token_heatmap

__all__ = [
    "FigureExplorer",
    "ClassExplorer",
    "class_explorer",
    "ScheduleExplorer",
    "schedule_explorer",
    "GuidanceExplorer",
    "guidance_explorer",
    "pipeline_guidance_explorer",
    "AttentionExplorer",
    "attention_explorer",
    "TrajectoryExplorer",
    "trajectory_explorer",
    "toy_velocity",
    "QUADRANTS",
    "quadrant_mass",
    "JointAttentionExplorer",
    "joint_attention_explorer",
]


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


class ScheduleExplorer(FigureExplorer):
    """The noise-schedule explorer: a slider over t shows x_t for each schedule, alpha_bar_t and SNR.

    For each schedule, the same images and the *same* noise eps (drawn once) give

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,     SNR_t = alpha_bar_t / (1 - alpha_bar_t)

    so that moving t changes only the noise level. Left: one row of x_t per schedule. Right:
    alpha_bar_t and SNR_t (log scale) of every schedule over all t, with the current t marked.

    Controls: ``slider`` (t, 0-indexed as in ``schedules``) and ``play`` (steps through t).
    ``state`` after each redraw: ``{"t": int, "x_t": {name: [N, C, H, W] tensor},
    "alpha_bar": {name: float}, "snr": {name: float}}``.
    """

    def __init__(self, images: torch.Tensor, schedules: Mapping[str, NoiseSchedule], *,
                 t: int | None = None, seed: int = 0, dpi: int = 100):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, 1 or 3, H, W] in [-1, 1], got {shape}")
        if not schedules:
            raise ValueError("give at least one schedule, e.g. {'linear': NoiseSchedule.linear()}")
        lengths = {name: s.T for name, s in schedules.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the schedules must have the same number of steps T to share a slider, got {lengths}")
        self.schedules = dict(schedules)
        self.x0 = images.detach().cpu().float()  # [N, C, H, W]
        self.eps = torch.randn(self.x0.shape, generator=torch.Generator().manual_seed(seed))  # [N, C, H, W]
        T = next(iter(lengths.values()))
        t = T // 4 if t is None else int(t)
        if not 0 <= t < T:
            raise ValueError(f"t must lie in 0..{T - 1}, got {t}")

        self.slider = widgets.IntSlider(value=t, min=0, max=T - 1, description="t", continuous_update=False,
                                        layout=widgets.Layout(width="480px"))
        self.play = widgets.Play(value=t, min=0, max=T - 1, step=max(1, T // 50), interval=250,
                                 description="play t")
        widgets.link((self.play, "value"), (self.slider, "value"))
        figure = self._build_figure(T)
        super().__init__([self.play, self.slider], figure, dpi)
        self.watch(self.slider)
        self.redraw()

    def _build_figure(self, T: int) -> Figure:
        n = len(self.schedules)
        fig = Figure(figsize=(11, max(3.6, 1.9 * n + 0.4)), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[1.15, 1])
        image_axes = left.subplots(n, 1, squeeze=False)[:, 0]
        ax_ab, ax_snr = right.subplots(2, 1, sharex=True)
        steps = torch.arange(T)
        self._images, self._markers_ab, self._markers_snr = {}, {}, {}
        blank = image_grid(self.x0, nrow=len(self.x0)).numpy()
        for ax, (name, schedule) in zip(image_axes, self.schedules.items()):
            self._images[name] = ax.imshow(blank, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(name, fontsize=11)
            (line,) = ax_ab.plot(steps, schedule.alpha_bar, label=name)
            ax_snr.plot(steps, schedule.snr, color=line.get_color(), label=name)
            (self._markers_ab[name],) = ax_ab.plot([], [], "o", color=line.get_color())
            (self._markers_snr[name],) = ax_snr.plot([], [], "o", color=line.get_color())
        self._image_axes = dict(zip(self.schedules, image_axes))
        self._vlines = [ax.axvline(0, color="0.3", lw=1, ls="--") for ax in (ax_ab, ax_snr)]
        ax_ab.set_ylabel(r"$\bar\alpha_t$")
        ax_ab.set_ylim(-0.03, 1.03)
        ax_ab.legend(loc="upper right", fontsize=9)
        ax_ab.grid(alpha=0.3)
        ax_snr.set_yscale("log")
        ax_snr.set_ylabel(r"SNR$_t = \bar\alpha_t / (1 - \bar\alpha_t)$")
        ax_snr.set_xlabel("timestep t")
        ax_snr.set_xlim(-0.015 * T, 1.015 * T)  # room for the markers at the ends
        ax_snr.grid(alpha=0.3, which="major")
        left.suptitle(r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (the same $\epsilon$ for every t)",
                      fontsize=11)
        return fig

    def update(self) -> None:
        t = int(self.slider.value)
        t_batch = torch.full((len(self.x0),), t, dtype=torch.long)  # [N]
        state = {"t": t, "x_t": {}, "alpha_bar": {}, "snr": {}}
        for name, schedule in self.schedules.items():
            x_t = schedule.q_sample(self.x0, t_batch, self.eps)  # [N, C, H, W]
            alpha_bar, snr = float(schedule.alpha_bar[t]), float(schedule.snr[t])
            state["x_t"][name], state["alpha_bar"][name], state["snr"][name] = x_t, alpha_bar, snr
            self._images[name].set_data(image_grid(x_t, nrow=len(x_t)).numpy())
            self._image_axes[name].set_title(
                rf"{name}, t = {t}:   $\bar\alpha_t$ = {_number(alpha_bar)},   SNR = {_number(snr)}", fontsize=10)
            self._markers_ab[name].set_data([t], [alpha_bar])
            self._markers_snr[name].set_data([t], [snr])
        for line in self._vlines:
            line.set_xdata([t, t])
        self.state = state


def _number(value: float) -> str:
    """Three significant digits, in scientific notation only for very small or large values."""
    return f"{value:.3f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def schedule_explorer(images: torch.Tensor, schedules: Mapping[str, NoiseSchedule], *,
                      t: int | None = None, seed: int = 0) -> ScheduleExplorer:
    """The noise-schedule explorer for ``images`` [N, C, H, W] in [-1, 1] (4-6 images read best).

    ``schedules``: e.g. ``{"linear": NoiseSchedule.linear(), "cosine": NoiseSchedule.cosine()}``,
    all with the same T. ``t``: where the slider starts (default T // 4); ``seed``: the noise.
    Display the result in a notebook; see :class:`ScheduleExplorer` for its controls and ``state``.
    """
    return ScheduleExplorer(images, schedules, t=t, seed=seed)


# --------------------------------------------------------------------------- chapter 3: shared helpers


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or '""'


# --------------------------------------------------------------------------- chapter 3: guidance slider


class GuidanceExplorer(FigureExplorer):
    """A slider over the guidance scale w: the same prompts from the same starting noise at each w.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6; ``course_lib.guidance``) extrapolates away
    from the unconditional prediction,

        eps_guided = eps_uncond + w (eps_cond - eps_uncond),

    so w = 0 samples the unconditional model, w = 1 the conditional one, and larger w follows the
    caption more closely (more saturated, less varied images, and artefacts when w is too large).
    ``sample_fn(w)`` does the sampling; keeping its prompts and x_T fixed means the slider changes w only.

    Sampling takes seconds on a CPU, so each scale is sampled the first time it is shown and then
    kept in ``cache`` ({w: images}; pass ``cache=`` to start with scales sampled elsewhere);
    ``precompute=True`` samples every scale up front.

    Controls: ``slider`` (SelectionSlider over the scales); ``status`` (a Label: "sampling w = 3 ..."
    while a scale is being sampled, then how long it took, or that the images came from the cache).
    ``state`` after each redraw: ``{"scale": float, "images": [B, C, H, W] tensor (CPU)}``.
    """

    def __init__(self, sample_fn: Callable[[float], torch.Tensor], scales: Sequence[float], *,
                 titles: Sequence[str] | None = None, scale: float | None = None, precompute: bool = False,
                 cache: Mapping[float, torch.Tensor] | None = None, dpi: int = 100):
        if not callable(sample_fn):
            raise TypeError("sample_fn must be a function scale -> images [B, 3, H, W], "
                            f"got {type(sample_fn).__name__}")
        if isinstance(scales, (int, float)):
            raise TypeError(f"scales must be a list of guidance scales, e.g. [0, 1, 3, 7], got the number {scales}")
        self.scales = [float(s) for s in scales]
        if not self.scales:
            raise ValueError("give at least one guidance scale, e.g. scales=[0, 1, 2, 3, 5, 7, 10]")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct, got {self.scales}")
        start = self.scales[0] if scale is None else float(scale)
        if start not in self.scales:
            raise ValueError(f"scale={scale} is not one of the scales {self.scales}")
        self.sample_fn = sample_fn
        self.cache: dict[float, torch.Tensor] = {float(w): images.detach().cpu().float()
                                                 for w, images in (cache or {}).items()}
        self.status = widgets.Label()
        self.slider = widgets.SelectionSlider(options=[(f"{s:g}", s) for s in self.scales], value=start,
                                              description="scale w", continuous_update=False,
                                              layout=widgets.Layout(width="420px"))
        first = self.sample(start)  # [B, C, H, W]
        self.titles = None if titles is None else [str(t) for t in titles]
        if self.titles is not None and len(self.titles) != len(first):
            raise ValueError(f"{len(self.titles)} titles for {len(first)} images; give one title per image "
                             "(e.g. the prompts) or titles=None")
        figure = self._build_figure(first)
        super().__init__([self.slider, self.status], figure, dpi)
        if precompute:
            for s in self.scales:
                self.sample(s)
            self.status.value = f"all {len(self.scales)} scales sampled"
        self.watch(self.slider)
        self.redraw()

    def sample(self, scale: float) -> torch.Tensor:
        """The images at guidance scale ``scale`` [B, C, H, W] (CPU, float), sampled once, then cached."""
        scale = float(scale)
        if scale in self.cache:
            self.status.value = f"w = {scale:g}: from the cache ({len(self.cache)}/{len(self.scales)} scales sampled)"
            return self.cache[scale]
        # say so before sampling (seconds on a CPU): a Label's new value reaches the browser at once,
        # while the kernel is still busy with sample_fn
        self.status.value = f"sampling w = {scale:g} ..."
        start = time.perf_counter()
        try:
            images = self.sample_fn(scale)
        except BaseException:
            self.status.value = f"w = {scale:g}: sampling failed"
            raise
        seconds = time.perf_counter() - start
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"sample_fn({scale:g}) must return images [B, 3, H, W] in [-1, 1], got {got}")
        images = images.detach().cpu().float()
        shapes = {tuple(x.shape) for x in self.cache.values()}
        if shapes and tuple(images.shape) not in shapes:
            raise ValueError(f"sample_fn({scale:g}) returned images of shape {tuple(images.shape)}, but earlier "
                             f"scales gave {shapes.pop()}; sample the same prompts at every scale")
        self.cache[scale] = images
        self.status.value = f"w = {scale:g}: sampled in {seconds:.1f} s"
        return images

    def _build_figure(self, images: torch.Tensor) -> Figure:
        B = len(images)
        width = max(5.0, 1.5 * B + 0.4)
        cell = min((width - 0.4) / B, 2.4)  # the side of one image, in inches
        self._wrap_at = max(12, int(13 * cell))  # characters per title line at fontsize 8
        title_lines = 0 if self.titles is None else max(len(_wrap(t, self._wrap_at).split("\n")) for t in self.titles)
        fig = Figure(figsize=(width, cell + 0.35 + 0.15 * title_lines), layout="constrained")
        axes = fig.subplots(1, B, squeeze=False)[0]
        self._images = []
        for b, ax in enumerate(axes):
            self._images.append(ax.imshow(_rgb(images[b]).numpy(), interpolation="nearest"))
            ax.set_xticks([])
            ax.set_yticks([])
            if self.titles is not None:
                ax.set_title(_wrap(self.titles[b], self._wrap_at), fontsize=8)
        return fig

    def update(self) -> None:
        scale = float(self.slider.value)
        images = self.sample(scale)  # [B, C, H, W]
        for artist, image in zip(self._images, images):
            artist.set_data(_rgb(image).numpy())
        name = {0.0: "  (unconditional)", 1.0: "  (conditional, no guidance)"}.get(scale, "")
        self.figure.suptitle(rf"guidance scale $w$ = {scale:g}{name}:   "
                             r"$\hat\epsilon = \epsilon_\mathrm{uncond} + w\,(\epsilon_\mathrm{cond} - "
                             r"\epsilon_\mathrm{uncond})$", fontsize=10)
        self.state = {"scale": scale, "images": images}


def guidance_explorer(sample_fn: Callable[[float], torch.Tensor], scales: Sequence[float], *,
                      titles: Sequence[str] | None = None, scale: float | None = None,
                      precompute: bool = False) -> GuidanceExplorer:
    """The guidance-scale slider of chapter 3.

    ``sample_fn(w) -> images [B, 3, H, W]`` in [-1, 1]: the same prompts from the same x_T at scale w,
    e.g. ``lambda w: pipeline.generate(prompts, scale=w, num_steps=20, x_T=x_T)``. ``scales``: e.g.
    ``[0, 1, 2, 3, 5, 7, 10]``; ``titles``: one per image (the prompts); ``scale``: where the slider
    starts (default the first scale); ``precompute``: sample every scale now instead of on first use.
    See :class:`GuidanceExplorer` for the controls and ``state``.
    """
    return GuidanceExplorer(sample_fn, scales, titles=titles, scale=scale, precompute=precompute)


def pipeline_guidance_explorer(pipeline, prompts: Sequence[str], x_T: torch.Tensor, *, num_steps: int,
                               scales: Sequence[float] = (0, 1, 2, 3, 5, 7, 10), scale: float | None = 3.0,
                               sampled: Mapping[float, torch.Tensor] | None = None) -> GuidanceExplorer:
    """The guidance slider over a ``course_lib.generation.Pipeline``: at each scale w,
    ``pipeline.generate(prompts, scale=w, num_steps=num_steps, x_T=x_T)`` (the same noise every time).

    ``x_T`` [len(prompts), *sample_shape]: pixels for chapter 3, latents for chapter 4 (the pipeline
    decodes them). ``sampled``: {w: images} already drawn from the same prompts, noise and steps, e.g.
    a grid shown above; the first len(prompts) images of each are put in the cache, so those scales
    are not sampled again. The titles are the prompts.
    """
    prompts = list(prompts)
    if len(x_T) != len(prompts):
        raise ValueError(f"x_T holds {len(x_T)} starting points for {len(prompts)} prompts; give one per prompt, "
                         "e.g. x_T[:len(prompts)]")

    def sample_fn(w: float) -> torch.Tensor:
        return pipeline.generate(prompts, scale=w, num_steps=num_steps, x_T=x_T).cpu()

    cache = {}
    for w, images in (sampled or {}).items():
        if len(images) < len(prompts):
            raise ValueError(f"sampled[{w:g}] has {len(images)} images for {len(prompts)} prompts; pass the "
                             "images drawn from these prompts and this noise")
        cache[float(w)] = images[:len(prompts)]
    return GuidanceExplorer(sample_fn, scales, titles=prompts, scale=scale, cache=cache)


# --------------------------------------------------------------------------- chapter 3: attention-map explorer


def _short_layer_names(layers: Sequence[str]) -> dict[str, str]:
    """"up.1.1.blocks.0.attn2" -> "up.1.1" (".blocks.0" kept when the transformer has several blocks)."""
    short = {}
    for name in layers:
        base = name.rsplit(".", 1)[0] if name.endswith((".attn1", ".attn2")) else name
        stem, _, block = base.rpartition(".blocks.")
        several = stem and any(other.startswith(f"{stem}.blocks.") and not other.startswith(f"{stem}.blocks.{block}.")
                               for other in layers)
        short[name] = base if (several or not stem) else stem
    return short


class AttentionExplorer(FigureExplorer):
    """Where does the image look for each word? Cross-attention maps of a text-to-image model.

    For a prompt, ``run_fn`` generates one image while ``capture_attention`` records every
    cross-attention layer. For the chosen layer, head, timestep and text token j the explorer shows

        A_j[y, x] = P[(y, x), j],    P = softmax(Q(image) K(text)^T / sqrt(d))     (:func:`token_heatmap`)

    Left: the generated image. Middle: A_j upsampled **bilinearly** to the image size (``mode``) and
    laid semi-transparently over the image in grey (:func:`overlay`; scaled to the map's own min..max
    by default, ``normalize``). Right: the raw map at the layer's own resolution, with a colorbar of the probabilities.
    Head "mean" averages the heads; t "all" averages every sampling step.

    Controls: ``prompt`` (Dropdown), ``layer`` (Dropdown of the cross-attention layers, labelled with
    their resolution, e.g. "up.3.1 (16x16)"), ``head`` (Dropdown: "mean", 0, 1, ...), ``timestep``
    (SelectionSlider: "all", then the sampler's timesteps in sampling order), ``token`` (Dropdown
    of the prompt's tokens; value = the token's index among the keys). Each prompt is run once and
    kept in ``cache``. Changing the prompt refreshes the token list and keeps the token index when
    the new prompt has that many tokens (else the last token), and keeps layer and timestep if possible.
    ``layer`` and ``t`` choose where the controls start (default: the finest layer's last, all steps).

    ``state`` after each redraw: ``{"prompt": str, "layer": str, "head": "mean" | int, "t": "all" | number,
    "token": int, "token_text": str, "map": [h, w] tensor}``.
    """

    def __init__(self, run_fn: Callable, prompts: Sequence[str], *,
                 token_labels: Callable[[str], Sequence[str]] | None = None, prompt: str | None = None,
                 layer: str | None = None, t: float | int | str | None = None,
                 alpha: float = 0.6, mode: str = "bilinear", normalize: str = "minmax", dpi: int = 100):
        if not callable(run_fn):
            raise TypeError(f"run_fn must be a function prompt -> (image, record, tokens), got {type(run_fn).__name__}")
        if isinstance(prompts, str):
            raise TypeError(f"prompts must be a list of strings, got one string {prompts!r}; wrap it: [{prompts!r}]")
        self.prompts = list(prompts)
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {self.prompts!r}")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"prompts must be distinct (they key the cache), got {self.prompts}")
        start = self.prompts[0] if prompt is None else prompt
        if start not in self.prompts:
            raise ValueError(f"prompt={prompt!r} is not one of the prompts {self.prompts}")
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        if normalize not in ("minmax", "max"):
            raise ValueError(f"normalize must be 'minmax' or 'max', got {normalize!r}")
        self.run_fn, self.token_labels, self.alpha, self.mode = run_fn, token_labels, float(alpha), mode
        self.normalize = normalize
        self.cache: dict[str, dict] = {}
        self._holding = 1  # no redraws while the controls are being filled in

        wide = widgets.Layout(width="330px")
        self.prompt = widgets.Dropdown(options=self.prompts, value=start, description="prompt", layout=wide)
        self.layer = widgets.Dropdown(options=[("-", "")], description="layer", layout=wide)
        self.head = widgets.Dropdown(options=[("mean", "mean")], description="head",
                                     layout=widgets.Layout(width="160px"))
        self.timestep = widgets.SelectionSlider(options=[("all", "all")], description="t", continuous_update=False,
                                                layout=widgets.Layout(width="420px"))
        self.token = widgets.Dropdown(options=[("-", -1)], description="token", layout=widgets.Layout(width="240px"))
        run = self.run(start)
        if layer is not None and layer not in run["layers"]:
            raise ValueError(f"layer={layer!r} is not a cross-attention layer of the record; the layers are "
                             f"{list(run['layers'])}")
        if t is not None and t != "all" and t not in run["timesteps"]:
            raise ValueError(f"t={t!r} is not a sampling timestep of the record; the timesteps are {run['timesteps']} "
                             "(or 'all')")
        self._sync_controls(run, layer=layer, t=t)  # where the controls start (else: the finest layer, all steps)
        controls = widgets.VBox([widgets.HBox([self.prompt, self.layer, self.head]),
                                 widgets.HBox([self.timestep, self.token])])
        super().__init__([controls], self._build_figure(), dpi)
        self.prompt.observe(self._on_prompt, names="value")
        self.layer.observe(self._on_layer, names="value")
        self.watch(self.head, self.timestep, self.token)
        self._holding = 0
        self.redraw()

    # ----------------------------------------------------------------- running a prompt

    def run(self, prompt: str) -> dict:
        """``run_fn(prompt)``, checked and cached.

        Returns {"image": [C, H, W], "record", "tokens", "layers": {name: {"label", "short", "size",
        "heads"}}, "timesteps"}; ``layers`` holds the cross-attention layers only.
        """
        if prompt in self.cache:
            return self.cache[prompt]
        result = self.run_fn(prompt)
        if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
            raise TypeError(f"run_fn({prompt!r}) must return (image [3, H, W], record, tokens), got "
                            f"{type(result).__name__}")
        if len(result) == 2 and self.token_labels is None:
            raise TypeError(f"run_fn({prompt!r}) returned (image, record) without the tokens: return "
                            "(image, record, tokens) or pass token_labels=<prompt -> list of tokens>")
        image, record = result[0], result[1]
        tokens = list(self.token_labels(prompt) if self.token_labels is not None else result[2])
        if isinstance(image, torch.Tensor) and image.ndim == 4 and len(image) == 1:
            image = image[0]
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"run_fn({prompt!r}) must return one image [3, H, W] in [-1, 1] first, got {got}")
        if not isinstance(record, AttentionRecord):
            raise TypeError(f"run_fn({prompt!r}) must return the AttentionRecord of capture_attention(...) second, "
                            f"got {type(record).__name__}")
        if not tokens or not all(isinstance(tok, str) for tok in tokens):
            raise ValueError(f"the tokens of {prompt!r} must be a non-empty list of strings in key order "
                             f"(e.g. ['<start>', 'a', 'cat']), got {tokens!r}")
        cross = [name for name in record.layers if any(c.layer == name and c.kind == "cross" for c in record.calls)]
        if not cross:
            raise ValueError(f"the record of {prompt!r} holds no cross-attention: wrap the sampling in "
                             "capture_attention(model, kinds=('cross',)) and sample a text-conditional model")
        short = _short_layer_names(cross)
        layers = {}
        for name in cross:
            b, heads, n_query, n_key = record.select(name)[0].probs.shape
            side = math.isqrt(n_query)
            if side * side != n_query:
                raise ValueError(f"layer {name!r} attends over {n_query} image tokens, not a square feature map; "
                                 "the explorer shows square maps only")
            if len(tokens) > n_key:
                raise ValueError(f"{len(tokens)} tokens for {prompt!r} but layer {name!r} attends over {n_key} keys; "
                                 "give the readable tokens of the prompt without padding, in key order")
            layers[name] = {"label": f"{short[name]} ({side}x{side})", "short": short[name], "size": (side, side),
                            "heads": heads}
        timesteps = [t for t in dict.fromkeys(record.timesteps) if t is not None]
        run = {"image": image.detach().cpu().float(), "record": record, "tokens": tokens, "layers": layers,
               "timesteps": timesteps}
        self.cache[prompt] = run
        return run

    # ----------------------------------------------------------------- keeping the controls consistent

    def redraw(self) -> None:
        if not self._holding:
            super().redraw()

    def _sync_controls(self, run: dict, layer: str | None = None, t: float | int | str | None = None) -> None:
        """Fill layer, timestep and token with the options of ``run``: ``layer`` and ``t`` if given, else the
        current choices if ``run`` has them, else the defaults."""
        layers = run["layers"]
        layer = self.layer.value if layer is None else layer
        if layer not in layers:  # default: the last layer at the finest resolution (the decoder's most detailed)
            finest = max(info["size"] for info in layers.values())
            layer = [name for name, info in layers.items() if info["size"] == finest][-1]
        self.layer.options = [(info["label"], name) for name, info in layers.items()]
        self.layer.value = layer
        self._sync_heads(run)
        t = self.timestep.value if t is None else t
        self.timestep.options = [("all", "all")] + [(f"{s:g}", s) for s in run["timesteps"]]
        self.timestep.value = t if t in run["timesteps"] else "all"
        j = self.token.value
        tokens = run["tokens"]
        self.token.options = [(f"{i}: {tok}", i) for i, tok in enumerate(tokens)]
        self.token.value = j if 0 <= j < len(tokens) else len(tokens) - 1  # -1 at the start: the last token

    def _sync_heads(self, run: dict) -> None:
        heads = run["layers"][self.layer.value]["heads"]
        head = self.head.value
        self.head.options = [("mean", "mean")] + [(str(h), h) for h in range(heads)]
        self.head.value = head if head == "mean" or head < heads else "mean"

    def _on_prompt(self, _change) -> None:
        self._holding += 1
        try:
            self._sync_controls(self.run(self.prompt.value))
        finally:
            self._holding -= 1
        self.redraw()

    def _on_layer(self, _change) -> None:
        if self._holding:
            return
        self._holding += 1
        try:
            self._sync_heads(self.run(self.prompt.value))
        finally:
            self._holding -= 1
        self.redraw()

    # ----------------------------------------------------------------- drawing

    def _build_figure(self) -> Figure:
        fig = Figure(figsize=(11, 4.3), layout="constrained")
        self._ax_image, self._ax_overlay, self._ax_map = fig.subplots(1, 3)
        blank = torch.zeros(2, 2)
        self._image_artist = self._ax_image.imshow(blank.numpy(), interpolation="nearest")
        self._overlay_artist = self._ax_overlay.imshow(blank.numpy(), interpolation="nearest")
        self._map_artist = self._ax_map.imshow(blank.numpy(), cmap="inferno", interpolation="nearest")
        self._colorbar = fig.colorbar(self._map_artist, ax=self._ax_map, shrink=0.85, label="attention probability")
        for ax in (self._ax_image, self._ax_overlay):
            ax.set_xticks([])
            ax.set_yticks([])
        return fig

    def update(self) -> None:
        prompt, layer, head, t, j = (self.prompt.value, self.layer.value, self.head.value, self.timestep.value,
                                     int(self.token.value))
        run = self.run(prompt)
        info, token = run["layers"][layer], run["tokens"][j]
        heat = token_heatmap(run["record"], layer, j, t=None if t == "all" else t, head=head)  # [h, w]
        image = run["image"]  # [C, H, W]
        h, w = heat.shape
        H, W = image.shape[-2:]
        self._image_artist.set_data(_rgb(image).numpy())
        self._image_artist.set_extent((-0.5, W - 0.5, H - 0.5, -0.5))
        self._overlay_artist.set_data(overlay(image, heat, alpha=self.alpha, mode=self.mode,
                                              normalize=self.normalize).numpy())
        self._overlay_artist.set_extent((-0.5, W - 0.5, H - 0.5, -0.5))
        self._map_artist.set_data(heat.numpy())
        self._map_artist.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
        self._map_artist.set_clim(float(heat.min()), max(float(heat.max()), float(heat.min()) + 1e-6))
        self._colorbar.update_normal(self._map_artist)
        tick = max(1, w // 4)
        self._ax_map.set_xticks(range(0, w, tick))
        self._ax_map.set_yticks(range(0, h, tick))
        head_text = "mean of heads" if head == "mean" else f"head {head}"
        t_text = "mean of all steps" if t == "all" else f"t = {t:g}"
        self._ax_image.set_title(f"generated image ({H}x{W})\n{_wrap(repr(prompt), 40)}", fontsize=10)
        self._ax_overlay.set_title(f"token {j} {token!r} over the image\n{h}x{w} map, {self.mode} upsampling, "
                                   f"{'min-max' if self.normalize == 'minmax' else 'max'} scaled", fontsize=10)
        self._ax_map.set_title(f"raw map {h}x{w}, peak {float(heat.max()):.2f}\n{head_text}, {t_text}", fontsize=10)
        self.figure.suptitle(f"cross-attention to {token!r}:  layer {info['short']} ({h}x{w}),  {head_text},  {t_text}",
                             fontsize=11)
        self.state = {"prompt": prompt, "layer": layer, "head": head, "t": t, "token": j, "token_text": token,
                      "map": heat}


def attention_explorer(run_fn: Callable, prompts: Sequence[str], *,
                       token_labels: Callable[[str], Sequence[str]] | None = None,
                       prompt: str | None = None, layer: str | None = None, t: float | int | str | None = None,
                       mode: str = "bilinear", normalize: str = "minmax") -> AttentionExplorer:
    """The attention-map explorer of chapter 3.

    ``run_fn(prompt) -> (image [3, H, W] in [-1, 1], record, tokens)``: generate one image for the
    prompt inside ``capture_attention(model)`` and return the record and the prompt's readable
    tokens in key order, padding excluded (e.g. ``["<start>", "a", "photo", "of", "a", "cat"]``).
    ``token_labels(prompt) -> tokens``, if given, names the tokens instead (then ``run_fn`` may
    return just ``(image, record)``). ``prompts``: the prompt menu; ``prompt``: the first one shown;
    ``layer`` and ``t``: the layer and sampling timestep shown first (default: the last layer at the
    finest resolution, and "all" steps; e.g. the least uniform ones of
    :meth:`~course_lib.capture.AttentionRecord.kl_from_uniform_table`);
    ``mode``: how the map is upsampled for the overlay ("bilinear" or "nearest"); ``normalize``: how
    the overlay scales the map ("minmax" or "max", see :func:`overlay`).
    See :class:`AttentionExplorer` for the figure, the controls and ``state``.
    """
    return AttentionExplorer(run_fn, prompts, token_labels=token_labels, prompt=prompt, layer=layer, t=t,
                             mode=mode, normalize=normalize)


# --------------------------------------------------------------------------- chapter 5: trajectory explorer


def toy_velocity(model: Callable, process) -> Callable:
    """Any 2-D toy model as a velocity field v(y, t) on the rectified-flow axis (t in [0, 1], data at 0):
    a rectified flow's own velocity (its network given ``process.model_time(t)``), or a DDPM epsilon model's
    probability-flow ODE (``course_lib.flow.ddpm_flow_velocity``)."""
    from .flow import ddpm_flow_velocity
    from .processes import DDPMProcess, RectifiedFlowProcess

    if isinstance(process, RectifiedFlowProcess):
        return lambda y, t: model(y, process.model_time(torch.as_tensor(t, dtype=torch.float32).reshape(-1)
                                                        .expand(len(y))))
    if isinstance(process, DDPMProcess):
        if process.parameterization != "eps":
            raise ValueError("toy_velocity takes a DDPM epsilon model (parameterization 'eps')")
        return ddpm_flow_velocity(model, process.noise_schedule)
    raise TypeError(f"no velocity for a {type(process).__name__}")


class TrajectoryExplorer(FigureExplorer):
    """Sampling trajectories from noise (t = 1) to data (t = 0), curved or straight, for several methods at once.

    ``velocities``: {name: v(y, t)} on the rectified-flow axis (see :func:`toy_velocity`), e.g. the DDPM
    probability-flow ODE, a 1-rectified flow and its reflow. For the chosen method, solver (Euler / Heun),
    number of steps and noise seed, ``num_points`` paths are integrated from the same noise
    (``course_lib.flow.flow_sample``) and drawn coloured by t with their chords (dashed); the scrubbed time
    shows where the points are and the velocity field there (arrows). Readouts: straightness (Liu et al.
    2022, normalised), path/chord ratio and W2 of the end points to ``data`` (``course_lib.metrics``); the
    right panel draws W2 against the number of steps for every method, with the current setting marked.

    Everything is cached per (method, solver, steps, seed): after the first visit a control redraws without
    integrating again, and moving the time slider integrates nothing; ``precompute=True`` integrates every
    setting up front (seconds for 2-D toys), so that no control waits. ``image_fn(method, solver, steps, seed)
    -> (image [3, H, W], path [S + 1, 2])``, optional, adds the decoded image sample for the same setting and
    its trajectory projected to 2-D (e.g. on the first two principal components of trajectory points); it
    returns None for a method without an image model, and the panel says so.

    ``state`` after each redraw: method, solver, steps, seed, t, straightness, path_chord, w2, positions
    [num_points, 2] at time t, samples [num_points, 2] (and image when ``image_fn`` is given).
    """

    def __init__(self, velocities: Mapping[str, Callable], data: torch.Tensor, *, num_points: int = 200,
                 steps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), seeds: Sequence[int] = (0, 1, 2),
                 image_fn: Callable | None = None, lines: int = 60, limit: float = 4.0, precompute: bool = False,
                 dpi: int = 90):
        if not velocities:
            raise ValueError("give at least one method: {name: v(y, t)}, e.g. from toy_velocity(model, process)")
        if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[1] != 2:
            raise ValueError(f"data must be 2-D points [M, 2] (the reference for W2), got "
                             f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
        steps = sorted({int(s) for s in steps})
        if not steps or steps[0] < 1:
            raise ValueError(f"steps must be positive integers, got {steps}")
        self.velocities = dict(velocities)
        self.data, self.num_points, self.lines, self.limit = data.float(), num_points, lines, limit
        self.image_fn = image_fn
        self._paths: dict = {}
        self._images: dict = {}
        self.method = widgets.Dropdown(options=list(self.velocities), description="method",
                                       layout=widgets.Layout(width="230px"))
        self.solver = widgets.ToggleButtons(options=["euler", "heun"], description="solver",
                                            style={"button_width": "60px"})
        self.steps = widgets.SelectionSlider(options=steps, value=steps[min(2, len(steps) - 1)], description="steps",
                                             continuous_update=False, layout=widgets.Layout(width="300px"))
        self.time = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="t",
                                        continuous_update=False, layout=widgets.Layout(width="260px"))
        self.seed = widgets.Dropdown(options=[int(s) for s in seeds], description="seed",
                                     layout=widgets.Layout(width="140px"))
        self.readout = widgets.Label()
        columns = 4 if image_fn is not None else 2
        figure = Figure(figsize=(4.3 * columns if columns == 2 else 3.4 * columns, 4.0), layout="constrained")
        self._axes = figure.subplots(1, columns, squeeze=True)
        controls = [widgets.VBox([widgets.HBox([self.method, self.solver]),
                                  widgets.HBox([self.steps, self.time, self.seed]), self.readout])]
        super().__init__(controls, figure, dpi)
        if precompute:  # every setting now, so that no control has to integrate later
            for key in [(m, solver, s, seed) for m in self.velocities for solver in self.solver.options
                        for s in steps for seed in self.seed.options]:
                self.paths(*key)
        self.watch(self.method, self.solver, self.steps, self.time, self.seed)
        self.redraw()

    # ---- cached computations

    def paths(self, method: str, solver: str, steps: int, seed: int) -> dict:
        """The integrated paths and their measures for one setting (cached)."""
        from .flow import flow_sample, path_chord_ratio, straightness
        from .metrics import wasserstein2

        key = (method, solver, int(steps), int(seed))
        if key not in self._paths:
            noise = torch.randn(self.num_points, 2, generator=torch.Generator().manual_seed(int(seed)))
            with torch.no_grad():
                out = flow_sample(self.velocities[method], x_T=noise, num_steps=int(steps), solver=solver,
                                  return_trajectory=True)
            self._paths[key] = {"trajectory": out.trajectory.float(), "times": out.times,
                                "straightness": float(straightness(out.trajectory, out.times)),
                                "path_chord": float(path_chord_ratio(out.trajectory)),
                                "w2": wasserstein2(out.sample.float(), self.data)}
        return self._paths[key]

    def quality_curve(self, method: str, solver: str, seed: int) -> tuple[list[int], list[float]]:
        """W2 to the data against the number of steps for one method (every step count of the slider)."""
        steps = list(self.steps.options)
        return steps, [self.paths(method, solver, s, seed)["w2"] for s in steps]

    # ---- drawing

    def update(self) -> None:
        from matplotlib.collections import LineCollection

        method, solver, steps, seed, t = (self.method.value, self.solver.value, int(self.steps.value),
                                          int(self.seed.value), float(self.time.value))
        run = self.paths(method, solver, steps, seed)
        traj, times = run["trajectory"], run["times"].float()  # [N + 1, B, 2], [N + 1] from 1 to 0
        # the points at time t: linear interpolation between the grid states around t
        i = int(torch.searchsorted(-times, torch.tensor(-t)).clamp(1, len(times) - 1))
        w = float((times[i - 1] - t) / (times[i - 1] - times[i]))
        positions = (1 - w) * traj[i - 1] + w * traj[i]  # [B, 2]
        ax, ax_q = self._axes[0], self._axes[1]
        ax.clear()
        L = self.limit
        ax.scatter(self.data[:, 0], self.data[:, 1], s=3, color="0.8", label="data", zorder=0)
        n = min(self.lines, traj.shape[1])
        segments = torch.stack([traj[:-1, :n], traj[1:, :n]], dim=2).permute(1, 0, 2, 3).reshape(-1, 2, 2)
        colours = times[:-1].repeat(n)  # each segment coloured by the time it starts at
        lc = LineCollection(segments.numpy(), cmap="viridis", linewidths=0.9, zorder=2)
        lc.set_array(colours.numpy())
        lc.set_clim(0, 1)
        ax.add_collection(lc)
        for b in range(n):  # chords: noise -> sample, straight
            ax.plot([traj[0, b, 0], traj[-1, b, 0]], [traj[0, b, 1], traj[-1, b, 1]], ls=":", lw=0.6, color="0.45",
                    zorder=1)
        grid = torch.linspace(-L, L, 15)
        gx, gy = torch.meshgrid(grid, grid, indexing="xy")
        points = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # [225, 2]
        with torch.no_grad():
            v = self.velocities[method](points, torch.tensor(max(t, 1e-3)))  # [225, 2]
        ax.quiver(points[:, 0], points[:, 1], -v[:, 0], -v[:, 1], color="tab:red", alpha=0.5, width=0.003,
                  zorder=3)  # drawn as -v: the direction of motion from noise towards data
        ax.scatter(positions[:, 0], positions[:, 1], s=6, color="black", zorder=4, label=f"points at t = {t:.2f}")
        ax.set(xlim=(-L, L), ylim=(-L, L), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{method}: {solver}, {steps} step{'s' if steps > 1 else ''}\ncolour: t (yellow noise, purple "
                     "data)\nred: motion at t · dotted: chords", fontsize=8)
        ax_q.clear()
        for name in self.velocities:
            s, w2 = self.quality_curve(name, solver, seed)
            ax_q.plot(s, w2, "o-", ms=3, label=name, lw=2.2 if name == method else 1.2)
        ax_q.plot([steps], [run["w2"]], "o", ms=11, mfc="none", mec="black", label="this setting")
        ax_q.set(xscale="log", yscale="log", xlabel=f"steps ({solver})", ylabel="W2 to the data",
                 title="sample quality against steps", xticks=list(self.steps.options))
        ax_q.set_xticklabels([str(s) for s in self.steps.options])
        ax_q.xaxis.set_minor_formatter(NullFormatter())  # only the step counts are labelled
        ax_q.legend(fontsize=7)
        self.state = {"method": method, "solver": solver, "steps": steps, "seed": seed, "t": t,
                      "straightness": run["straightness"], "path_chord": run["path_chord"], "w2": run["w2"],
                      "positions": positions, "samples": traj[-1]}
        if self.image_fn is not None:
            key = (method, solver, steps, seed)
            if key not in self._images:
                self._images[key] = self.image_fn(method, solver, steps, seed)
            ax_i, ax_p = self._axes[2], self._axes[3]
            ax_i.clear()
            ax_p.clear()
            if self._images[key] is None:  # no image model for this method
                ax_i.text(0.5, 0.5, f"no image model\nfor {method}", ha="center", va="center", fontsize=9,
                          transform=ax_i.transAxes)
                ax_i.set(xticks=[], yticks=[])
                ax_p.set_axis_off()
                self.state["image"] = None
            else:
                image, path = self._images[key]
                ax_p.set_axis_on()
                ax_i.imshow(_rgb(image).numpy(), interpolation="nearest")
                ax_i.set(xticks=[], yticks=[], title="the image sample (decoded)")
                path = torch.as_tensor(path, dtype=torch.float32)
                ax_p.plot(path[:, 0], path[:, 1], "-o", ms=2, lw=1)
                ax_p.plot([path[0, 0], path[-1, 0]], [path[0, 1], path[-1, 1]], ":", color="0.45")
                ax_p.set(title="its latent trajectory, projected", xticks=[], yticks=[])
                ax_p.set_aspect("equal", adjustable="datalim")  # equal axes: a straight path looks straight
                self.state["image"] = image
        self.readout.value = (f"straightness {run['straightness']:.4f} (0 = straight)  ·  path/chord "
                              f"{run['path_chord']:.3f}  ·  W2 to the data {run['w2']:.3f}")


def trajectory_explorer(velocities: Mapping[str, Callable], data: torch.Tensor, **options) -> TrajectoryExplorer:
    """Chapter 5's trajectory explorer; see :class:`TrajectoryExplorer` for the options and ``state``."""
    return TrajectoryExplorer(velocities, data, **options)


# --------------------------------------------------------------------------- chapter 6: joint-attention explorer


QUADRANTS = ("text→text", "text→image", "image→text", "image→image")


def quadrant_mass(probs: torch.Tensor, num_text: int) -> dict[str, float]:
    """How an MM-DiT's joint attention splits between the two streams.

    ``probs`` [..., n, n] over the sequence [text (num_text real tokens), image] (padding already removed),
    rows summing to 1. For queries of one kind, the mean over those queries of the attention they give to
    keys of each kind: ``text→image`` is the share of a text token's attention that goes to image patches
    (text→text + text→image = 1, image→text + image→image = 1).
    """
    p = probs.reshape(-1, *probs.shape[-2:]).double().mean(0)  # [n, n]
    if not 0 < num_text < p.shape[-1]:
        raise ValueError(f"num_text={num_text} must leave both text and image tokens in a sequence of {p.shape[-1]}")
    text, image = slice(0, num_text), slice(num_text, None)
    return {"text→text": float(p[text, text].sum(-1).mean()), "text→image": float(p[text, image].sum(-1).mean()),
            "image→text": float(p[image, text].sum(-1).mean()), "image→image": float(p[image, image].sum(-1).mean())}


_MARKER_TOKENS = (PAD, START, "[CLS]", "[SEP]", "[PAD]")  # sequence markers (small encoder, MiniLM), not words


def _block_label(name: str) -> str:
    """"double_blocks.1.attn" -> "double 1"; "single_blocks.0.attn" -> "single 0"."""
    kind, _, rest = name.partition("_blocks.")
    return f"{kind} {rest.split('.')[0]}" if rest else name


class JointAttentionExplorer(FigureExplorer):
    """What the text and image tokens of an MM-DiT read in its joint attention (Esser et al. 2024, Sec. 4).

    Every block attends over one sequence [text tokens, image patches]; its matrix P = softmax(Q K^T / sqrt(d))
    has four quadrants: text→text, text→image (a text token reading the image: something a UNet's
    cross-attention cannot do), image→text (the cross-attention of chapter 3) and image→image (self-attention).

    ``run_fn(prompt) -> (image [3, H, W] in [-1, 1], record, tokens)`` samples one image for the prompt inside
    ``capture_attention(model.mmdit, kinds="self", max_batch=1)`` (the conditional half of a guided batch) and
    returns the record and the prompt's readable text tokens in key order (padding excluded; the text comes
    first in the sequence, its padding after it, then the ``grid`` = (h, w) image patches row by row).

    Panels: the attention matrix of the real tokens split into its quadrants, with the chosen patch's row and
    the chosen token's column marked; the image→text attention of the chosen token (column j over the patches)
    laid over the sample; the chosen patch's attention over the text tokens (bars) and over the image (its
    image→image map, the patch outlined); the mass in each quadrant across the blocks (at the chosen step) and
    across the sampling steps (in the chosen block).

    Controls: ``prompt``, ``block`` (double- and single-stream blocks by name), ``head`` ("mean", 0, 1, ...),
    ``step`` (the sampling timesteps of the model, "all" = their mean), ``token`` (a text token) and ``patch``
    (row, column). Each prompt runs once and is cached; every other control only redraws (well under a second).
    ``state``: prompt, block, head, step, token, token_text, patch, matrix (the drawn [n, n] matrix),
    token_map [h, w], patch_text [tokens], patch_map [h, w], quadrants (of the drawn matrix),
    depth {quadrant: [per block]}, time {quadrant: [per step]}.
    """

    def __init__(self, run_fn: Callable, prompts: Sequence[str], grid: tuple[int, int] = (8, 8), *,
                 alpha: float = 0.6, dpi: int = 85):
        if not callable(run_fn):
            raise TypeError(f"run_fn must be a function prompt -> (image, record, tokens), got {type(run_fn).__name__}")
        if isinstance(prompts, str):
            raise TypeError(f"prompts must be a list of strings, got one string {prompts!r}; wrap it: [{prompts!r}]")
        self.prompts = list(prompts)
        if not self.prompts or len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"prompts must be a non-empty list of distinct strings, got {self.prompts!r}")
        self.run_fn, self.grid, self.alpha = run_fn, tuple(grid), float(alpha)
        self.cache: dict[str, dict] = {}
        self._holding = 1
        self.prompt = widgets.Dropdown(options=self.prompts, description="prompt", layout=widgets.Layout(width="300px"))
        self.block = widgets.Dropdown(options=[("-", "")], description="block", layout=widgets.Layout(width="200px"))
        self.head = widgets.Dropdown(options=[("mean", "mean")], description="head",
                                     layout=widgets.Layout(width="150px"))
        self.step = widgets.SelectionSlider(options=[("all", "all")], description="step", continuous_update=False,
                                            layout=widgets.Layout(width="360px"))
        self.token = widgets.Dropdown(options=[("-", 0)], description="token", layout=widgets.Layout(width="200px"))
        h, w = self.grid
        self.patch = widgets.Dropdown(options=[(f"({r}, {c})", r * w + c) for r in range(h) for c in range(w)],
                                      value=(h // 2) * w + w // 2, description="patch",
                                      layout=widgets.Layout(width="170px"))
        self._sync(self.run(self.prompts[0]))
        controls = widgets.VBox([widgets.HBox([self.prompt, self.block, self.head]),
                                 widgets.HBox([self.step, self.token, self.patch])])
        figure = Figure(figsize=(12, 7), layout="constrained")
        axes = figure.subplots(2, 3)
        (self._ax_matrix, self._ax_token, self._ax_bars), (self._ax_patch, self._ax_depth, self._ax_time) = axes
        super().__init__([controls], figure, dpi)
        self.prompt.observe(self._on_prompt, names="value")
        self.watch(self.block, self.head, self.step, self.token, self.patch)
        self._holding = 0
        self.redraw()

    def run(self, prompt: str) -> dict:
        """``run_fn(prompt)``, checked and cached: {"image", "record", "tokens", "blocks", "steps", "text_length"}."""
        if prompt in self.cache:
            return self.cache[prompt]
        image, record, tokens = self.run_fn(prompt)
        if image.ndim == 4:
            image = image[0]
        if not isinstance(record, AttentionRecord) or not record.layers:
            raise ValueError(f"run_fn({prompt!r}) must return the AttentionRecord of capture_attention(model.mmdit, "
                             "kinds='self') second, with at least one block recorded")
        n = record.select(record.layers[0])[0].probs.shape[-1]
        text_length = n - self.grid[0] * self.grid[1]
        if not 0 < len(tokens) <= text_length:
            raise ValueError(f"{len(tokens)} tokens for {prompt!r}, but the blocks attend over {n} keys, of which "
                             f"{self.grid[0]}x{self.grid[1]} are image patches: check grid= and the tokens")
        steps = [t for t in dict.fromkeys(record.timesteps) if t is not None]
        run = {"image": image.detach().cpu().float(), "record": record, "tokens": list(tokens),
               "blocks": list(record.layers), "steps": steps, "text_length": text_length}
        self.cache[prompt] = run
        return run

    def matrix(self, run: dict, block: str, head, step) -> torch.Tensor:
        """The attention matrix [n, n] over [real text tokens, image patches] (padding rows and columns dropped)."""
        p = run["record"].probs(block, t=None if step == "all" else step, head=head)[0]  # [L + N, L + N]
        keep = list(range(len(run["tokens"]))) + list(range(run["text_length"], p.shape[-1]))
        return p[keep][:, keep]

    def redraw(self) -> None:
        if not self._holding:
            super().redraw()

    def _sync(self, run: dict) -> None:
        block, head, step, token = self.block.value, self.head.value, self.step.value, self.token.value
        self.block.options = [(_block_label(b), b) for b in run["blocks"]]
        self.block.value = block if block in run["blocks"] else run["blocks"][-1]
        heads = run["record"].select(self.block.value)[0].probs.shape[1]
        self.head.options = [("mean", "mean")] + [(str(i), i) for i in range(heads)]
        self.head.value = head if head == "mean" or head < heads else "mean"
        self.step.options = [("all", "all")] + [(f"{s:g}", s) for s in run["steps"]]
        self.step.value = step if step in run["steps"] else "all"
        tokens = run["tokens"]
        self.token.options = [(f"{i}: {tok}", i) for i, tok in enumerate(tokens)]
        words = [i for i, tok in enumerate(tokens) if tok not in _MARKER_TOKENS]
        self.token.value = token if 0 < token < len(tokens) else (words or [len(tokens) - 1])[-1]  # the last word

    def _on_prompt(self, _change) -> None:
        self._holding += 1
        try:
            self._sync(self.run(self.prompt.value))
        finally:
            self._holding -= 1
        self.redraw()

    def update(self) -> None:
        run = self.run(self.prompt.value)
        block, head, step, j, patch = self.block.value, self.head.value, self.step.value, self.token.value, \
            self.patch.value
        tokens, (h, w) = run["tokens"], self.grid
        T = len(tokens)
        P = self.matrix(run, block, head, step)  # [T + N, T + N]
        token_map = P[T:, j].reshape(h, w)  # image -> text: how much each patch reads token j
        patch_text, patch_map = P[T + patch, :T], P[T + patch, T:].reshape(h, w)
        depth = {q: [] for q in QUADRANTS}
        for b in run["blocks"]:
            for q, v in quadrant_mass(self.matrix(run, b, head, step), T).items():
                depth[q].append(v)
        time_ = {q: [] for q in QUADRANTS}
        for s in run["steps"]:
            for q, v in quadrant_mass(self.matrix(run, block, head, s), T).items():
                time_[q].append(v)
        label = _block_label(block)
        head_text = "mean of heads" if head == "mean" else f"head {head}"
        step_text = "mean of all steps" if step == "all" else f"model time {step:g}"
        row, col = divmod(patch, w)

        ax = self._ax_matrix
        ax.clear()
        ax.imshow(P.numpy() ** 0.5, cmap="magma", interpolation="nearest")
        for pos in (T - 0.5,):
            ax.axhline(pos, color="w", lw=1)
            ax.axvline(pos, color="w", lw=1)
        ax.axhline(T + patch, color="cyan", lw=0.8, alpha=0.8)
        ax.axvline(j, color="lime", lw=0.8, alpha=0.8)
        n = P.shape[0]
        for (x, y, text) in [(T / 2, T / 2, "t→t"), ((T + n) / 2, T / 2, "t→i"), (T / 2, (T + n) / 2, "i→t"),
                             ((T + n) / 2, (T + n) / 2, "i→i")]:
            ax.text(x, y, text, color="w", ha="center", va="center", fontsize=8, alpha=0.8)
        ax.set(title=f"P (√ for contrast), {T} text + {h * w} image tokens\ncyan: patch ({row}, {col})'s row, "
                     f"lime: token {j}'s column", xlabel="key", ylabel="query")
        ax.title.set_fontsize(9)

        ax = self._ax_token
        ax.clear()
        ax.imshow(overlay(run["image"], token_map, alpha=self.alpha).numpy())
        ax.set(xticks=[], yticks=[], title=f"image→text: which patches read {tokens[j]!r}\n(max {float(token_map.max()):.2f}, "
                                          f"mean {float(token_map.mean()):.3f})")
        ax.title.set_fontsize(9)

        ax = self._ax_bars
        ax.clear()
        ax.bar(range(T), patch_text.numpy(), color="C0")
        ax.set_xticks(range(T))
        ax.set_xticklabels(tokens, rotation=60, fontsize=7, ha="right")
        ax.set(ylabel="attention", title=f"patch ({row}, {col}) → text: {float(patch_text.sum()):.0%} of its "
                                         "attention")
        ax.title.set_fontsize(9)

        ax = self._ax_patch
        ax.clear()
        ax.imshow(patch_map.numpy(), cmap="inferno", interpolation="nearest")
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="cyan", lw=1.5))
        ax.set(xticks=[], yticks=[], title=f"patch ({row}, {col}) → image (image→image row)")
        ax.title.set_fontsize(9)

        for ax, values, xs, xlabel, mark in [
                (self._ax_depth, depth, [_block_label(b) for b in run["blocks"]], "block", run["blocks"].index(block)),
                (self._ax_time, time_, [f"{s:g}" for s in run["steps"]], "model time (sampling order)",
                 None if step == "all" else run["steps"].index(step))]:
            ax.clear()
            for q, style in zip(QUADRANTS, ["C0--", "C0-", "C1-", "C1--"]):
                ax.plot(range(len(xs)), values[q], style, marker="o", ms=3, label=q)
            if mark is not None:
                ax.axvline(mark, color="grey", lw=4, alpha=0.3)
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels(xs, rotation=45, fontsize=7, ha="right")
            ax.set(ylim=(-0.02, 1.02), xlabel=xlabel, ylabel="share of a query's attention")
            ax.legend(fontsize=7, loc="center right")
        self._ax_depth.set_title(f"quadrant mass across depth ({step_text})", fontsize=9)
        self._ax_time.set_title(f"quadrant mass across time ({label})", fontsize=9)
        self.figure.suptitle(f"{self.prompt.value!r}: {label}, {head_text}, {step_text}", fontsize=11)
        self.state = {"prompt": self.prompt.value, "block": block, "head": head, "step": step, "token": j,
                      "token_text": tokens[j], "patch": (row, col), "matrix": P, "token_map": token_map,
                      "patch_text": patch_text, "patch_map": patch_map, "quadrants": quadrant_mass(P, T),
                      "depth": depth, "time": time_}


def joint_attention_explorer(pipeline, prompts: Sequence[str], *, num_steps: int = 8, scale: float = 3.0,
                             seed: int = 0) -> JointAttentionExplorer:
    """Chapter 6's joint-attention explorer for a ``Pipeline`` around a :class:`~course_lib.text2image.TextToImageMMDiT`:
    each prompt is sampled once (``num_steps`` Euler steps, guidance ``scale``, the same noise for every prompt)
    while the conditional half of every batch is recorded. See :class:`JointAttentionExplorer`."""
    from .capture import capture_attention

    model = pipeline.denoiser
    if getattr(model, "backbone_name", None) != "mmdit":
        raise TypeError(f"the joint-attention explorer needs an MM-DiT (a TextToImageMMDiT checkpoint such as "
                        f"mmdit-small), got {type(model).__name__}")
    mmdit = model.mmdit
    side = mmdit.config.image_size // mmdit.config.patch_size
    noise = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(seed))

    def run_fn(prompt: str):
        with capture_attention(mmdit, kinds="self", max_batch=1) as record:  # the first (conditional) image
            image = pipeline.generate([prompt], scale=scale, num_steps=num_steps, x_T=noise.to(model.device))
        return image[0].cpu(), record, model.prompt_tokens(prompt)

    return JointAttentionExplorer(run_fn, prompts, grid=(side, side))
