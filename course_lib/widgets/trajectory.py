"""Chapter 5's trajectory explorer: sampling paths of several methods, solvers and step counts on one axis."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import ipywidgets as widgets
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..flow import flow_sample, path_chord_ratio, straightness
from ..metrics import wasserstein2
from ..viz import to_rgb
from .base import FigureExplorer, ViewControl

__all__ = ["TrajectoryExplorer", "trajectory_explorer"]


class TrajectoryExplorer(FigureExplorer):
    """Sampling trajectories from noise (t = 1) to data (t = 0), curved or straight, for several methods at once.

    ``velocities``: {name: v(y, t)} on the rectified-flow axis (``process.velocity_field(model)``), e.g. the DDPM
    probability-flow ODE, a 1-rectified flow and its reflow. For the chosen method, sampler (Euler / Heun),
    number of steps and noise seed, ``num_points`` paths are integrated from the same noise
    (``course_lib.flow.flow_sample``) and drawn coloured by t with their chords (dashed); the scrubbed time
    shows where the points are and the velocity field there (arrows). Readouts: straightness (Liu et al.
    2022, normalised), path/chord ratio and W2 of the end points to ``data`` (``course_lib.metrics``); the
    right panel draws W2 against the number of steps for every method, with the current setting marked.

    Everything is cached per (method, sampler, steps, seed): after the first visit a control redraws without
    integrating again, and moving the time slider integrates nothing; ``precompute=True`` integrates every
    setting up front (seconds for 2-D toys), so that no control waits. ``image_fn(method, sampler, steps, seed)
    -> (image [3, H, W], path [S + 1, 2])``, optional, adds the decoded image sample for the same setting and
    its trajectory projected to 2-D (e.g. on the first two principal components of trajectory points); it
    returns None for a method without an image model, and the panel says so.

    ``state`` after each redraw: method, sampler, steps, seed, t, straightness, path_chord, w2, positions
    [num_points, 2] at time t, samples [num_points, 2] (and image when ``image_fn`` is given).
    """

    def __init__(self, velocities: Mapping[str, Callable], data: torch.Tensor, *, num_points: int = 200,
                 steps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), seeds: Sequence[int] = (0, 1, 2),
                 image_fn: Callable | None = None, lines: int = 60, limit: float = 4.0, precompute: bool = False,
                 dpi: int = 90):
        if not velocities:
            raise ValueError("give at least one method: {name: v(y, t)}, e.g. process.velocity_field(model)")
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
        self.sampler = widgets.ToggleButtons(options=["euler", "heun"], description="sampler",
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
        controls = [widgets.VBox([widgets.HBox([self.method, self.sampler]),
                                  widgets.HBox([self.steps, self.time, self.seed]), self.readout])]
        super().__init__(controls, figure, dpi)
        if precompute:  # every setting now, so that no control has to integrate later
            for key in [(m, sampler, s, seed) for m in self.velocities for sampler in self.sampler.options
                        for s in steps for seed in self.seed.options]:
                self.paths(*key)
        self.watch(self.method, self.sampler, self.steps, self.time, self.seed)
        self.redraw()

    # ---- cached computations

    def paths(self, method: str, sampler: str, steps: int, seed: int) -> dict:
        """The integrated paths and their measures for one setting (cached)."""
        key = (method, sampler, int(steps), int(seed))
        if key not in self._paths:
            noise = torch.randn(self.num_points, 2, generator=torch.Generator().manual_seed(int(seed)))
            with torch.no_grad():
                out = flow_sample(self.velocities[method], x_T=noise, num_steps=int(steps), sampler=sampler,
                                  return_trajectory=True)
            self._paths[key] = {"trajectory": out.trajectory.float(), "times": out.times,
                                "straightness": float(straightness(out.trajectory, out.times)),
                                "path_chord": float(path_chord_ratio(out.trajectory)),
                                "w2": wasserstein2(out.sample.float(), self.data)}
        return self._paths[key]

    def quality_curve(self, method: str, sampler: str, seed: int) -> tuple[list[int], list[float]]:
        """W2 to the data against the number of steps for one method (every step count of the slider)."""
        steps = list(self.steps.options)
        return steps, [self.paths(method, sampler, s, seed)["w2"] for s in steps]

    # ---- a page without a kernel

    def view_controls(self) -> list[ViewControl]:
        """On a page without a kernel: every method and sampler, four step counts (evenly spaced over the slider,
        with the one shown first), five times t and the seed shown first."""
        return [ViewControl("method", self.method), ViewControl("sampler", self.sampler),
                ViewControl("steps", self.steps, limit=4), ViewControl("t", self.time, limit=5),
                ViewControl("seed", self.seed, limit=1)]

    def view_readouts(self) -> list[widgets.Label]:
        """The straightness, path/chord and W2 line under the controls."""
        return [self.readout]

    # ---- drawing

    def update(self) -> None:
        method, sampler, steps, seed, t = (self.method.value, self.sampler.value, int(self.steps.value),
                                          int(self.seed.value), float(self.time.value))
        run = self.paths(method, sampler, steps, seed)
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
        ax.set_title(f"{method}: {sampler}, {steps} step{'s' if steps > 1 else ''}\ncolour: t (yellow noise, purple "
                     "data)\nred: motion at t · dotted: chords", fontsize=8)
        ax_q.clear()
        for name in self.velocities:
            s, w2 = self.quality_curve(name, sampler, seed)
            ax_q.plot(s, w2, "o-", ms=3, label=name, lw=2.2 if name == method else 1.2)
        ax_q.plot([steps], [run["w2"]], "o", ms=11, mfc="none", mec="black", label="this setting")
        ax_q.set(xscale="log", yscale="log", xlabel=f"steps ({sampler})", ylabel="W2 to the data",
                 title="sample quality against steps", xticks=list(self.steps.options))
        ax_q.set_xticklabels([str(s) for s in self.steps.options])
        ax_q.xaxis.set_minor_formatter(NullFormatter())  # only the step counts are labelled
        ax_q.legend(fontsize=7)
        self.state = {"method": method, "sampler": sampler, "steps": steps, "seed": seed, "t": t,
                      "straightness": run["straightness"], "path_chord": run["path_chord"], "w2": run["w2"],
                      "positions": positions, "samples": traj[-1]}
        if self.image_fn is not None:
            key = (method, sampler, steps, seed)
            if key not in self._images:
                self._images[key] = self.image_fn(method, sampler, steps, seed)
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
                ax_i.imshow(to_rgb(image).numpy(), interpolation="nearest")
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
