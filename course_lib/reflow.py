"""Reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast", Sec. 2.2): straighten a rectified flow by
training a new one on the pairs the old one makes.

A 1-rectified flow is trained on *independent* pairs (x_0 from the data, x_1 from the source): their
straight lines cross, so the learned velocity field, an average over crossing lines, bends. Its ODE,
however, defines a *deterministic* coupling: every x_1 goes to one x_0 = ODE(x_1), and those paths do
not cross. Training on the pairs (ODE(x_1), x_1) gives a (k+1)-rectified flow, whose paths are
straighter (Liu et al., Theorem 3.6: the transport cost does not increase, and straightness improves),
so fewer steps suffice:

    pairs:  x_1 ~ source,  x_0 = Solve_{1 -> 0}(v_k; x_1)           (:func:`reflow_pairs`, stored as a TensorSplit)
    train:  x_t = (1 - t) x_0 + t x_1,  loss = || v_{k+1}(x_t, t) - (x_1 - x_0) ||^2   (:func:`reflow_loss`)

Same objective as before, only the coupling changed: ``RectifiedFlowProcess.loss(model, x_0, noise=x_1)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .data import TensorSplit
from .processes import RectifiedFlowProcess

__all__ = ["reflow_pairs", "reflow_loss"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def reflow_pairs(model: ModelFn, process: RectifiedFlowProcess, source: torch.Tensor, *, num_steps: int = 100,
                 solver: str = "heun", batch_size: int = 1024, source_name: str = "source") -> TensorSplit:
    """The coupling of a trained flow: x_0 = ODE(x_1) for each x_1 in ``source`` [N, ...].

    Returns ``TensorSplit(x_0, x_1)`` (samples first, then the noise they came from), ready for
    :func:`reflow_loss`. Solve accurately (many steps, Heun): the new flow learns these pairs exactly,
    solver errors included.
    """
    if not isinstance(process, RectifiedFlowProcess):
        raise TypeError(f"reflow needs a rectified flow's velocity model, got a {type(process).__name__}")
    samples = [process.sample(model, x_T=chunk, sampler=solver, num_steps=num_steps).cpu()
               for chunk in source.split(batch_size)]
    return TensorSplit(torch.cat(samples), source.cpu(),
                       source=f"reflow pairs: {solver} {num_steps} steps of the previous flow from {len(source)} "
                              f"{source_name} points")


def reflow_loss(model: ModelFn, process: RectifiedFlowProcess, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The rectified-flow loss on given pairs (x_0, x_1) instead of independent ones: a scalar."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must be pairs of the same shape")
    return process.loss(model, x0, noise=x1)
