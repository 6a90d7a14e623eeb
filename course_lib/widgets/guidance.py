"""Chapter 3's (and 4's) guidance slider: the same prompts from the same noise at each guidance scale w."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ..viz import to_rgb
from .base import FigureExplorer, wrap_text

__all__ = ["GuidanceExplorer", "guidance_explorer", "pipeline_guidance_explorer"]


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
    ``state`` after each redraw: ``{"guidance": float, "images": [B, C, H, W] tensor (CPU)}``.
    """

    def __init__(self, sample_fn: Callable[[float], torch.Tensor], guidances: Sequence[float], *,
                 titles: Sequence[str] | None = None, guidance: float | None = None, precompute: bool = False,
                 cache: Mapping[float, torch.Tensor] | None = None, dpi: int = 100):
        if not callable(sample_fn):
            raise TypeError("sample_fn must be a function w -> images [B, 3, H, W], "
                            f"got {type(sample_fn).__name__}")
        if isinstance(guidances, (int, float)):
            raise TypeError(f"guidances must be a list of guidance weights, e.g. [0, 1, 3, 7], got the number "
                            f"{guidances}")
        self.guidances = [float(w) for w in guidances]
        if not self.guidances:
            raise ValueError("give at least one guidance weight, e.g. guidances=[0, 1, 2, 3, 5, 7, 10]")
        if len(set(self.guidances)) != len(self.guidances):
            raise ValueError(f"guidances must be distinct, got {self.guidances}")
        start = self.guidances[0] if guidance is None else float(guidance)
        if start not in self.guidances:
            raise ValueError(f"guidance={guidance} is not one of the guidances {self.guidances}")
        self.sample_fn = sample_fn
        self.cache: dict[float, torch.Tensor] = {float(w): images.detach().cpu().float()
                                                 for w, images in (cache or {}).items()}
        self.status = widgets.Label()
        self.slider = widgets.SelectionSlider(options=[(f"{s:g}", s) for s in self.guidances], value=start,
                                              description="guidance w", continuous_update=False,
                                              layout=widgets.Layout(width="420px"))
        first = self.sample(start)  # [B, C, H, W]
        self.titles = None if titles is None else [str(t) for t in titles]
        if self.titles is not None and len(self.titles) != len(first):
            raise ValueError(f"{len(self.titles)} titles for {len(first)} images; give one title per image "
                             "(e.g. the prompts) or titles=None")
        figure = self._build_figure(first)
        super().__init__([self.slider, self.status], figure, dpi)
        if precompute:
            for s in self.guidances:
                self.sample(s)
            self.status.value = f"all {len(self.guidances)} scales sampled"
        self.watch(self.slider)
        self.redraw()

    def sample(self, w: float) -> torch.Tensor:
        """The images at guidance weight ``w`` [B, C, H, W] (CPU, float), sampled once, then cached."""
        w = float(w)
        if w in self.cache:
            self.status.value = f"w = {w:g}: from the cache ({len(self.cache)}/{len(self.guidances)} scales sampled)"
            return self.cache[w]
        # say so before sampling (seconds on a CPU): a Label's new value reaches the browser at once,
        # while the kernel is still busy with sample_fn
        self.status.value = f"sampling w = {w:g} ..."
        start = time.perf_counter()
        try:
            images = self.sample_fn(w)
        except BaseException:
            self.status.value = f"w = {w:g}: sampling failed"
            raise
        seconds = time.perf_counter() - start
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"sample_fn({w:g}) must return images [B, 3, H, W] in [-1, 1], got {got}")
        images = images.detach().cpu().float()
        shapes = {tuple(x.shape) for x in self.cache.values()}
        if shapes and tuple(images.shape) not in shapes:
            raise ValueError(f"sample_fn({w:g}) returned images of shape {tuple(images.shape)}, but earlier "
                             f"scales gave {shapes.pop()}; sample the same prompts at every w")
        self.cache[w] = images
        self.status.value = f"w = {w:g}: sampled in {seconds:.1f} s"
        return images

    def _build_figure(self, images: torch.Tensor) -> Figure:
        B = len(images)
        width = max(5.0, 1.5 * B + 0.4)
        cell = min((width - 0.4) / B, 2.4)  # the side of one image, in inches
        self._wrap_at = max(12, int(13 * cell))  # characters per title line at fontsize 8
        title_lines = 0 if self.titles is None else max(len(wrap_text(t, self._wrap_at).split("\n")) for t in self.titles)
        fig = Figure(figsize=(width, cell + 0.35 + 0.15 * title_lines), layout="constrained")
        axes = fig.subplots(1, B, squeeze=False)[0]
        self._images = []
        for b, ax in enumerate(axes):
            self._images.append(ax.imshow(to_rgb(images[b]).numpy(), interpolation="nearest"))
            ax.set_xticks([])
            ax.set_yticks([])
            if self.titles is not None:
                ax.set_title(wrap_text(self.titles[b], self._wrap_at), fontsize=8)
        return fig

    def update(self) -> None:
        w = float(self.slider.value)
        images = self.sample(w)  # [B, C, H, W]
        for artist, image in zip(self._images, images):
            artist.set_data(to_rgb(image).numpy())
        name = {0.0: "  (unconditional)", 1.0: "  (conditional, no guidance)"}.get(w, "")
        self.figure.suptitle(rf"guidance weight $w$ = {w:g}{name}:   "
                             r"$\hat\epsilon = \epsilon_\mathrm{uncond} + w\,(\epsilon_\mathrm{cond} - "
                             r"\epsilon_\mathrm{uncond})$", fontsize=10)
        self.state = {"guidance": w, "images": images}


def guidance_explorer(sample_fn: Callable[[float], torch.Tensor], guidances: Sequence[float], *,
                      titles: Sequence[str] | None = None, guidance: float | None = None,
                      precompute: bool = False) -> GuidanceExplorer:
    """The guidance-scale slider of chapter 3.

    ``sample_fn(w) -> images [B, 3, H, W]`` in [-1, 1]: the same prompts from the same x_T at scale w,
    e.g. ``lambda w: pipeline.generate(prompts, guidance=w, num_steps=20, x_T=x_T)``. ``guidances``: e.g.
    ``[0, 1, 2, 3, 5, 7, 10]``; ``titles``: one per image (the prompts); ``guidance``: where the slider
    starts (default the first w); ``precompute``: sample every w now instead of on first use.
    See :class:`GuidanceExplorer` for the controls and ``state``.
    """
    return GuidanceExplorer(sample_fn, guidances, titles=titles, guidance=guidance, precompute=precompute)


def pipeline_guidance_explorer(pipeline, prompts: Sequence[str], x_T: torch.Tensor, *, num_steps: int,
                               guidances: Sequence[float] = (0, 1, 2, 3, 5, 7, 10), guidance: float | None = 3.0,
                               sampled: Mapping[float, torch.Tensor] | None = None) -> GuidanceExplorer:
    """The guidance slider over a ``course_lib.generation.Pipeline``: at each scale w,
    ``pipeline.generate(prompts, guidance=w, num_steps=num_steps, x_T=x_T)`` (the same noise every time).

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
        return pipeline.generate(prompts, guidance=w, num_steps=num_steps, x_T=x_T).cpu()

    cache = {}
    for w, images in (sampled or {}).items():
        if len(images) < len(prompts):
            raise ValueError(f"sampled[{w:g}] has {len(images)} images for {len(prompts)} prompts; pass the "
                             "images drawn from these prompts and this noise")
        cache[float(w)] = images[:len(prompts)]
    return GuidanceExplorer(sample_fn, guidances, titles=prompts, guidance=guidance, cache=cache)

