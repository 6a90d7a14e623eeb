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

One module per explorer family: ``base`` (:class:`FigureExplorer`, :class:`ClassExplorer` and the shared
helpers), ``schedule``, ``guidance``, ``attention``, ``trajectory`` and ``joint_attention``; and ``views``, which
precomputes an explorer's pictures over its controls for a page without a kernel (:func:`save_views`, run by the
course site's builder). Everything is importable from ``course_lib.widgets``. The math they draw lives with its owner: a process's velocity field
(``Process.velocity_field``), attention's four quadrants (``course_lib.capture.quadrant_mass``).
"""

from .attention import AttentionExplorer, attention_explorer
from .base import ClassExplorer, FigureExplorer, ViewControl, class_explorer, shown_explorers
from .guidance import GuidanceExplorer, guidance_explorer, pipeline_guidance_explorer
from .joint_attention import JointAttentionExplorer, joint_attention_explorer
from .schedule import ScheduleExplorer, schedule_explorer
from .trajectory import TrajectoryExplorer, trajectory_explorer
from .views import explorer_views, save_views

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
    "JointAttentionExplorer",
    "joint_attention_explorer",
    "ViewControl",
    "shown_explorers",
    "explorer_views",
    "save_views",
]
