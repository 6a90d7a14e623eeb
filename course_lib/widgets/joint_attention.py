"""Chapter 6's joint-attention explorer: the four quadrants of an MM-DiT's attention over [text, image]."""

from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..capture import QUADRANTS, AttentionRecord, capture_attention, quadrant_mass
from ..text import PAD, START
from ..viz import overlay
from .base import FigureExplorer, ViewControl

__all__ = ["JointAttentionExplorer", "joint_attention_explorer"]


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

    def view_controls(self) -> list[ViewControl]:
        """On a page without a kernel: every prompt and token, three blocks (the first, the last and the one shown
        first, in between), and the mean of the heads, all steps and the centre patch, as the explorer starts."""
        return [ViewControl("prompt", self.prompt), ViewControl("block", self.block, limit=3),
                ViewControl("head", self.head, limit=1), ViewControl("step", self.step, limit=1),
                ViewControl("token", self.token), ViewControl("patch", self.patch, limit=1)]

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


def joint_attention_explorer(pipeline, prompts: Sequence[str], *, num_steps: int = 8, guidance: float = 3.0,
                             seed: int = 0) -> JointAttentionExplorer:
    """Chapter 6's joint-attention explorer for a ``Pipeline`` around a text-to-image model whose denoiser is an
    MM-DiT (:class:`~course_lib.text2image.TextToImageModel` with ``config.kind == "mmdit"``): each prompt is
    sampled once (``num_steps`` Euler steps, guidance weight ``guidance``, the same noise for every prompt) while
    the conditional half of every batch is recorded. See :class:`JointAttentionExplorer`."""
    model = pipeline.denoiser
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind != "mmdit":
        raise TypeError(f"the joint-attention explorer needs an MM-DiT (a checkpoint such as mmdit-small), got a "
                        f"{type(model).__name__}" + (f" whose denoiser is a {kind}" if kind else ""))
    mmdit = model.mmdit
    side = mmdit.config.image_size // mmdit.config.patch_size
    noise = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(seed))

    def run_fn(prompt: str):
        with capture_attention(mmdit, kinds="self", max_batch=1) as record:  # the first (conditional) image
            image = pipeline.generate([prompt], guidance=guidance, num_steps=num_steps, x_T=noise.to(model.device))
        return image[0].cpu(), record, model.prompt_tokens(prompt)

    return JointAttentionExplorer(run_fn, prompts, grid=(side, side))
