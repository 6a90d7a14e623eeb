"""Reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast", Sec. 2.2): straighten a rectified flow by
training a new one on the pairs the old one makes.

A 1-rectified flow is trained on *independent* pairs (x_0 from the data, x_1 from the source): their
straight lines cross, so the learned velocity field, an average over crossing lines, bends. Its ODE,
however, defines a *deterministic* coupling: every x_1 goes to one x_0 = ODE(x_1), and those paths do
not cross. Training on the pairs (ODE(x_1), x_1) gives a (k+1)-rectified flow, whose paths are
straighter (Liu et al., Sec. 3: rectification does not increase any convex transport cost, and repeated
reflow drives the straightness towards 0), so fewer steps suffice:

    pairs:  x_1 ~ source,  x_0 = Solve_{1 -> 0}(v_k; x_1)           (:func:`reflow_pairs`, stored as a TensorSplit)
    train:  x_t = (1 - t) x_0 + t x_1,  loss = || v_{k+1}(x_t, t) - (x_1 - x_0) ||^2   (:func:`reflow_loss`)

Same objective as before, only the coupling changed: ``RectifiedFlowProcess.loss(model, x_0, noise=x_1)``.

For chapter 5's images the pairs live in the latent space of chapter 4 and carry the class label of the
prompt they were made with. A reflow recipe (``course_lib.recipes.ReflowRecipe``) names the teacher and its
:class:`PairSettings`; ``python -m course_lib.reflow RECIPE`` (``__main__.py``) makes the pairs from that
alone with :func:`make_reflow_pairs` (resumable, cached under ``data/cache/reflow/``), and the recipe reads
them back with :func:`load_reflow_pairs`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import config
from ..captions import class_prompt
from ..checkpoint import read_card
from ..data import TensorSplit
from ..generation import Pipeline
from ..processes import RectifiedFlowProcess

__all__ = ["reflow_pairs", "reflow_loss", "PairSettings", "text_reflow_pairs", "make_reflow_pairs",
           "load_reflow_pairs", "reflow_pairs_path"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def reflow_pairs(model: ModelFn, process: RectifiedFlowProcess, source: torch.Tensor, *, num_steps: int = 100,
                 sampler: str = "heun", batch_size: int = 1024, source_name: str = "source") -> TensorSplit:
    """The coupling of a trained flow: x_0 = ODE(x_1) for each x_1 in ``source`` [N, ...].

    Returns ``TensorSplit(x_0, x_1)`` (samples first, then the noise they came from), ready for
    :func:`reflow_loss`. Solve accurately (many steps, Heun): the new flow learns these pairs exactly,
    solver errors included.
    """
    if not isinstance(process, RectifiedFlowProcess):
        raise TypeError(f"reflow needs a rectified flow's velocity model, got a {type(process).__name__}")
    samples = [process.sample(model, x_T=chunk, sampler=sampler, num_steps=num_steps).cpu()
               for chunk in source.split(batch_size)]
    return TensorSplit(torch.cat(samples), source.cpu(),
                       source=f"reflow pairs: {sampler} {num_steps} steps of the previous flow from {len(source)} "
                              f"{source_name} points")


def reflow_loss(model: ModelFn, process: RectifiedFlowProcess, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The rectified-flow loss on given pairs (x_0, x_1) instead of independent ones: a scalar."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must be pairs of the same shape")
    return process.loss(model, x0, noise=x1)


# --------------------------------------------------------------------------- image reflow (chapter 5, latent space)


@torch.no_grad()
def text_reflow_pairs(pipeline, labels: torch.Tensor, noise: torch.Tensor, *, guidance: float = 3.0,
                      num_steps: int = 25, sampler: str = "euler", batch_size: int = 250) -> TensorSplit:
    """Reflow pairs of a text-to-image rectified flow in its own (latent) space: ``TensorSplit(z_0, z_1, labels)``.

    For each label y and starting noise z_1 [N, *sample_shape], z_0 is the flow's guided sample for the class
    prompt "a photo of a <y>" at guidance weight ``guidance`` (the prompt is the one the pairs are made with; the
    (k+1)-flow is then trained with the usual random captions of y). Nothing is decoded: the pairs stay in
    the denoiser's space (scaled latents for chapter 4's autoencoder).
    """
    if not isinstance(pipeline.process, RectifiedFlowProcess):
        raise TypeError(f"reflow needs a rectified flow; this pipeline samples a {type(pipeline.process).__name__}")
    if len(labels) != len(noise):
        raise ValueError(f"{len(labels)} labels for {len(noise)} noise tensors; give one label per pair")
    was_training = pipeline.denoiser.training
    pipeline.denoiser.eval()
    samples = []
    try:
        for y, z1 in zip(labels.split(batch_size), noise.split(batch_size)):
            model = pipeline.guided([class_prompt(int(c)) for c in y], guidance)
            samples.append(pipeline.process.sample(model, x_T=z1.to(pipeline.device), sampler=sampler,
                                                   num_steps=num_steps).float().cpu())
    finally:
        pipeline.denoiser.train(was_training)
    return TensorSplit(torch.cat(samples), noise.float().cpu(), labels.long().cpu(),
                       source=f"reflow pairs: {sampler} {num_steps} steps at guidance {guidance:g}")


@dataclass(frozen=True)
class PairSettings:
    """How a teacher flow makes its reflow pairs: how many, and how it samples each one (the one place these
    defaults are written; a :class:`~course_lib.recipes.ReflowRecipe` holds one).

    num_pairs: (sample, noise) pairs, balanced over the ten class prompts (pair i shows class i mod 10)
    guidance:  classifier-free guidance weight w of the teacher's samples
    steps, sampler: the teacher's ODE solver ("euler" or "heun") and its steps
    seed:      pair i's noise is drawn from (seed, i) alone, so any chunk can be made (or remade) on its own
    """

    num_pairs: int = 50_000
    guidance: float = 3.0
    steps: int = 25
    sampler: str = "euler"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_pairs < 1 or self.steps < 1:
            raise ValueError(f"num_pairs and steps must be at least 1, got {self.num_pairs} and {self.steps}")
        if self.sampler not in RectifiedFlowProcess.samplers:
            raise ValueError(f"sampler must be one of {RectifiedFlowProcess.samplers}, got {self.sampler!r}")

    def describe(self) -> str:
        return (f"{self.num_pairs:,} reflow pairs ({self.sampler} {self.steps} steps at guidance {self.guidance:g}, "
                f"noise seed {self.seed})")


def reflow_pairs_path(teacher_sha256: str, settings: PairSettings) -> Path:
    """``data/cache/reflow/<teacher hash prefix>-n<N>-w<guidance>-<sampler><steps>-seed<seed>.safetensors``."""
    s = settings
    name = f"{teacher_sha256[:12]}-n{s.num_pairs}-w{s.guidance:g}-{s.sampler}{s.steps}-seed{s.seed}"
    return config.cache_dir() / "reflow" / f"{name}.safetensors"


def make_reflow_pairs(checkpoint: str | Path, settings: PairSettings, *, chunk: int = 500,
                      device: str | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True) -> Path | None:
    """Generate the reflow pairs ``settings`` describe of a trained rectified flow (balanced over the ten classes)
    into one safetensors file with a card; returns its path (already there: returned at once).

    Hours of work on a CPU, so it is resumable: every ``chunk`` pairs are saved atomically in a folder beside
    the file (``<name>.parts/``), a restart skips the chunks that exist, and the chunks are joined at the end.
    The noise of pair i depends only on (settings.seed, i), so the chunks of an interrupted run match a fresh one's.
    ``shard=(i, k)`` makes only every k-th chunk from the i-th, so k processes (one thread each) share the work;
    the chunks are joined by whichever call finds them all, else ``None`` is returned.
    """
    index, shards = shard
    if not 0 <= index < shards:
        raise ValueError(f"shard {index}/{shards} does not exist: use 0/{shards} to {shards - 1}/{shards}")
    card = read_card(checkpoint)
    path = reflow_pairs_path(card["sha256"], settings)
    num_pairs, seed = settings.num_pairs, settings.seed
    if path.is_file():
        return path
    parts = path.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline.from_checkpoint(checkpoint, device=device or config.get_device())
    shape = tuple(pipeline.denoiser.sample_shape)
    starts = list(range(0, num_pairs, chunk))

    def part_path(start: int) -> Path:
        return parts / f"{start:08d}.safetensors"

    for start in tqdm(starts[index::shards], desc=f"reflow pairs ({chunk} per chunk)", disable=not progress):
        part = part_path(start)
        if part.is_file():
            continue
        n = min(chunk, num_pairs - start)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                             for i in range(start, start + n)])  # [n, *shape]: pair i's noise from (seed, i)
        labels = torch.arange(start, start + n) % 10
        began = time.perf_counter()
        pairs = text_reflow_pairs(pipeline, labels, noise, guidance=settings.guidance, num_steps=settings.steps,
                                  sampler=settings.sampler)
        x0, x1, y = pairs.tensors
        tmp = part.with_name(part.name + ".tmp")
        save_file({"x0": x0.contiguous(), "x1": x1.contiguous(), "labels": y.contiguous()}, str(tmp),
                  metadata={"seconds": f"{time.perf_counter() - began:.2f}"})
        os.replace(tmp, part)
    if not all(part_path(start).is_file() for start in starts):
        return None  # other shards still at work
    tensors: dict[str, list[torch.Tensor]] = {"x0": [], "x1": [], "labels": []}
    seconds = 0.0
    for start in starts:
        with safe_open(str(part_path(start)), framework="pt") as f:
            seconds += float(f.metadata()["seconds"])
            for k in tensors:
                tensors[k].append(f.get_tensor(k))
    info = {"teacher": config.portable_path(checkpoint), "teacher_sha256": card["sha256"],
            "teacher_step": card.get("step"), "pairs": num_pairs, "guidance": settings.guidance,
            "steps": settings.steps, "solver": settings.sampler, "seed": seed,  # the shipped cards' key
            "prompts": "course_lib.captions.class_prompt(label), labels i % 10",
            "generation_seconds": round(seconds, 1), "hardware": config.hardware_description(pipeline.device),
            "what": f"{num_pairs} reflow pairs (z_0 = flow sample, z_1 = its noise) of "
                    f"{config.portable_path(checkpoint)}: {settings.sampler} {settings.steps} steps at guidance "
                    f"{settings.guidance:g}"}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({k: torch.cat(v).contiguous() for k, v in tensors.items()}, str(tmp), metadata={"card": json.dumps(info)})
    os.replace(tmp, path)
    shutil.rmtree(parts, ignore_errors=True)
    return path


def load_reflow_pairs(path: str | Path) -> TensorSplit:
    """The pairs of :func:`make_reflow_pairs`: ``TensorSplit(x0, x1, labels)`` with the file's card as ``.card``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reflow pairs at {path}: they are made by the reflow command from a reflow "
                                "recipe's name (hours on a CPU; resumable)")
    with safe_open(str(path), framework="pt") as f:
        card = json.loads(f.metadata()["card"])
        split = TensorSplit(f.get_tensor("x0"), f.get_tensor("x1"), f.get_tensor("labels"), source=card["what"])
    split.card = card
    return split
