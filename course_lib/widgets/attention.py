"""Chapter 3's attention-map explorer: where in the generated image each text token is attended to."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ..capture import AttentionRecord
from ..viz import overlay, to_rgb, token_heatmap
from .base import FigureExplorer, ViewControl, wrap_text

__all__ = ["AttentionExplorer", "attention_explorer"]


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

    #: every prompt and token, three layers, two values of t: up to 240 pictures (about 10 MB) on a page
    view_budget = 240

    def view_controls(self) -> list[ViewControl]:
        """On a page without a kernel: every prompt and token, three layers (the first, the last and the one shown
        first, in between), the mean of the heads, and "all" steps with the step shown first: the words and the
        resolutions are what the maps are about; single heads and the other steps are for the notebook."""
        return [ViewControl("prompt", self.prompt), ViewControl("layer", self.layer, limit=3),
                ViewControl("head", self.head, limit=1), ViewControl("t", self.timestep, limit=2),
                ViewControl("token", self.token)]

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
        self._image_artist.set_data(to_rgb(image).numpy())
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
        self._ax_image.set_title(f"generated image ({H}x{W})\n{wrap_text(repr(prompt), 40)}", fontsize=10)
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

