"""Chapter 1's noise-schedule explorer: a slider over t shows x_t, alpha_bar_t and SNR_t of each schedule."""

from __future__ import annotations

from typing import Mapping

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ..schedules import NoiseSchedule
from ..viz import image_grid
from .base import FigureExplorer, ViewControl

__all__ = ["ScheduleExplorer", "schedule_explorer"]


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

    def view_controls(self) -> list[ViewControl]:
        """On a page without a kernel: the t slider at 41 evenly spaced values (and the t shown first), with play."""
        return [ViewControl("t", self.slider, limit=41, play=True)]

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

