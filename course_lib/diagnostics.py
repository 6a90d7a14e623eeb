"""Looking inside a trained denoiser, and chapter 2's paired experiment (additive vs AdaGN ResBlocks).

* ``held_out_loss``: the simple loss E ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14) on fixed
  images with fixed (t, noise) draws, so that two models (or one model at two steps) are compared on
  exactly the same problems: a paired comparison, far less noisy than two training-loss curves.
* ``copy_shared_weights``: start two model variants from the same weights wherever they agree.
* ``timestep_sensitivity``: for every residual block, the fraction of its activation variance that
  is due to the timestep. Each image x_0 is noised at every probed timestep t_k with the *same*
  noise eps, x_{t_k} = sqrt(abar_{t_k}) x_0 + sqrt(1 - abar_{t_k}) eps (Ho et al. 2020, eq. 4), and the
  network is told that t_k: every pass is an input the network was trained on, and only the timestep
  (the noise level of the input and the time embedding together) changes from pass to pass. At each
  block we record A_k, the activations that enter the block's second convolution (after the norm,
  the conditioning and the SiLU), and compute, per channel c,

      S_c = Var_k( A_k[b, c, i, j] ) averaged over (b, i, j)  /  Var_{k, b, i, j}( A_k[b, c, i, j] )

  (the "between-timestep" share of the variance, eta^2 of an analysis of variance), then average
  S_c over channels. S = 0: the block's features do not change with t; S = 1: they depend on t only.
* The paired experiment: ``paired_unets`` (two UNets equal but for the ResBlock, same initial
  weights), ``paired_train_config`` (chapter 2's settings), ``train_pair`` (same batches, timesteps
  and noise for both), ``save_pair_run`` / ``load_pair_run`` (the shipped runs: EMA weights and loss
  history in one checkpoint per model). ``tools/train_chapter2_pair.py`` is the command line.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import config
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import StepBatches
from .parameterization import diffusion_loss
from .processes import DDPMProcess
from .schedules import NoiseSchedule
from .trainer import TrainConfig, TrainResult, fit
from .unet import EmbedBlock, UNet, UNetConfig

__all__ = ["held_out_loss", "timestep_sensitivity", "copy_shared_weights", "PAIR_KINDS", "PAIR_FILES",
           "paired_unets", "paired_train_config", "train_pair", "save_pair_run", "load_pair_run", "shipped_pair"]


def copy_shared_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter and buffer of ``source`` into ``target`` where name and shape agree.

    For controlled experiments: two models that differ in one component (an additive ``ResBlock``
    vs an ``AdaGNResBlock``, whose ``emb_proj`` is twice as wide) then start from the same weights
    everywhere else. Returns the names of ``target``'s tensors that were *not* copied.
    """
    src = source.state_dict()
    shared = {name: w for name, w in target.state_dict().items() if name in src and src[name].shape == w.shape}
    target.load_state_dict({name: src[name] for name in shared}, strict=False)
    return [name for name in target.state_dict() if name not in shared]


@torch.no_grad()
def held_out_loss(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, draws: int = 1,
                  seed: int = 1234, batch_size: int = 128, parameterization: str = "eps") -> float:
    """Mean diffusion loss over ``draws`` fixed (t, noise) pairs per image; the same pairs for every model.

    The draws come from a generator seeded with ``seed``, so calling this on two models with the same
    images, draws and seed evaluates both on identical noisy inputs.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(draws):
        t = torch.randint(0, schedule.T, (len(images),), generator=g)  # [N]
        noise = torch.randn(images.shape, generator=g)  # [N, C, H, W]
        for i in range(0, len(images), batch_size):
            part = slice(i, i + batch_size)
            n = len(images[part])
            loss = diffusion_loss(model, schedule, images[part], parameterization, t=t[part], noise=noise[part])
            total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count


@torch.no_grad()
def timestep_sensitivity(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor,
                         timesteps: list[int] | torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Per residual block (by module name, in forward order): the share of activation variance due to t.

    x0 [B, C, H, W] clean images. For each t in ``timesteps`` (at least two) the model sees
    x_t = q_sample(x0, t, eps) and is told t: the same eps (drawn from a generator seeded with
    ``seed``) at every t, so the passes differ in the timestep alone, and each is on the training
    distribution. See the module docs for the statistic. Blocks are found as the ``EmbedBlock``
    modules of ``model`` that have a ``conv2`` (``ResBlock`` and ``AdaGNResBlock``); the recorded
    activations are the input of ``conv2``.
    """
    timesteps = [int(t) for t in timesteps]
    if len(timesteps) < 2:
        raise ValueError(f"need at least two timesteps to measure a variance over t, got {timesteps}")
    if not all(0 <= t < schedule.T for t in timesteps):
        raise ValueError(f"timesteps must lie in 0..{schedule.T - 1} (the schedule's range), got {timesteps}")
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, EmbedBlock) and hasattr(m, "conv2")}
    if not blocks:
        raise ValueError("found no residual blocks (EmbedBlock with conv2) in this model; "
                         "timestep_sensitivity expects a course_lib.unet.UNet")
    device = next(model.parameters()).device
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))  # [B, C, H, W], the same at every t
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    hooks = [m.conv2.register_forward_pre_hook(lambda _m, args, name=name: acts[name].append(args[0].float().cpu()))
             for name, m in blocks.items()]
    was_training = model.training
    model.eval()
    try:
        for t in timesteps:
            t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)  # [B]
            x_t = schedule.q_sample(x0.float().cpu(), t_batch, eps)  # q(x_t | x_0) at the t the model is told
            model(x_t.to(device), t_batch.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    result = {}
    for name, per_t in acts.items():
        a = torch.stack(per_t)  # [K, B, C, H, W]
        between = a.var(dim=0, unbiased=False).mean(dim=(0, 2, 3))  # [C]: variance over t, averaged over b, i, j
        total = a.transpose(0, 2).reshape(a.shape[2], -1).var(dim=1, unbiased=False)  # [C]: over (k, b, i, j)
        share = between / total.clamp_min(1e-12)
        result[name] = float(share[total > 1e-12].mean()) if (total > 1e-12).any() else 0.0
    return result


# --------------------------------------------------------------------------- chapter 2's paired experiment

#: the two ResBlocks chapter 2 compares, in the order they are built and trained
PAIR_KINDS = ("additive", "adagn")

#: where the shipped runs live, by kind, inside ``config.checkpoint_dir()``
PAIR_FILES = {kind: f"ch2-{kind}.safetensors" for kind in PAIR_KINDS}


def paired_unets(model_config: Callable[..., UNetConfig] = UNetConfig.tiny, seed: int = 0
                 ) -> tuple[dict[str, UNet], list[str]]:
    """Two UNets that differ only in ``UNetConfig.resblock``, with the same initial weights.

    torch's global RNG is seeded with ``seed`` and the additive model is built first; the AdaGN model
    then copies every tensor it shares with it (:func:`copy_shared_weights`), so only its ``emb_proj``
    (2C outputs instead of C) starts differently. Returns ``({"additive": ..., "adagn": ...}, names of
    the AdaGN tensors that were not copied)``. Dropout is off, as in chapter 2.
    """
    torch.manual_seed(seed)
    models = {kind: UNet(model_config(resblock=kind, dropout=0.0)) for kind in PAIR_KINDS}
    different = copy_shared_weights(models["additive"], models["adagn"])
    return models, different


def paired_train_config(fast: bool = False, device: torch.device | str = "cpu", **overrides) -> TrainConfig:
    """Chapter 2's training settings: 1,500 steps of 32 images, lr 1e-3 (warm-up 50), EMA 0.995, seed 0.

    ``fast``: the 40-step run of ``COURSE_FAST=1`` (batch 16, warm-up 10, EMA 0.9). bf16 autocast and
    channels-last only where ``device`` computes bf16 natively (``config.native_bf16``).
    """
    bf16 = torch.device(device).type == "cpu" and config.native_bf16(device)
    settings = dict(max_steps=40 if fast else 1500, batch_size=16 if fast else 32, lr=1e-3,
                    warmup_steps=10 if fast else 50, ema_decay=0.9 if fast else 0.995, seed=0,
                    bf16=bf16, channels_last=bf16, checkpoint_minutes=None)
    return TrainConfig(**{**settings, **overrides})


def train_pair(models: dict[str, nn.Module], data, schedule: NoiseSchedule, cfg: TrainConfig,
               device: torch.device | str = "cpu", report: Callable[[str, TrainResult], None] | None = None
               ) -> dict[str, TrainResult]:
    """Train each model of ``models`` with :func:`course_lib.trainer.fit` on the same problems.

    ``StepBatches(data, cfg.batch_size, cfg.seed)`` makes batch i a function of (seed, i) only, and
    ``fit`` seeds torch's RNG from (seed, step) before the loss draws t and eps: both models see the
    same images, timesteps and noise at every step, so their per-step losses pair up. ``report(kind,
    result)`` is called after each run (the notebook prints a line). The loss is the simple loss of
    Ho et al. (2020), eq. 14, through ``parameterization.diffusion_loss``.
    """
    def loss_fn(model, batch):
        images, _labels = batch
        return diffusion_loss(model, schedule, images)

    runs = {}
    for kind, model in models.items():
        runs[kind] = fit(model, loss_fn, StepBatches(data, cfg.batch_size, cfg.seed), cfg, device=device)
        if report is not None:
            report(kind, runs[kind])
    return runs


def save_pair_run(path: str | Path, kind: str, result: TrainResult, cfg: TrainConfig, *,
                  data_source: str = "", data_images: int = 0, device: torch.device | str = "cpu",
                  command: str = "") -> Path:
    """Save one run of the pair as an inference checkpoint: its EMA weights (float32) as ``model.*``
    and its per-step training losses as ``train.loss_history``; the card says how it was trained."""
    ema = result.ema.to("cpu").float()
    losses = torch.tensor(result.losses, dtype=torch.float32)  # fit's losses are float32 values: stored exactly
    tail = losses[-100:]
    training = {"experiment": "chapter 2: additive vs AdaGN ResBlock, paired (diagnostics.train_pair)",
                "kind": kind, "pair": sorted(PAIR_FILES.values()),
                "shared_init": "diagnostics.paired_unets: seed 0, additive built first, AdaGN copies every "
                               "tensor it shares (all but emb_proj)",
                "process": DDPMProcess().to_dict(),
                "train_config": dataclasses.asdict(cfg), "data_source": data_source, "data_images": data_images,
                "wall_seconds_total": round(result.seconds, 1),
                "images_per_second": round(result.images_per_second, 2),
                "hardware": config.hardware_description(torch.device(device)), "device": str(device),
                "command": command}
    return save_checkpoint(path, ema, step=result.step, train_tensors={"loss_history": losses},
                           metrics={"loss_last_100": float(tail.mean())}, training=training, kind="inference")


def load_pair_run(path: str | Path, expect: TrainConfig | None = None) -> TrainResult:
    """A saved run of the pair as a ``TrainResult`` (``ema``: the UNet with the saved weights, on the CPU;
    ``losses``: the per-step history; ``seconds``: the training wall time; ``stopped_by``: "loaded").

    ``expect``: the settings the run should have been trained with (``paired_train_config()``); a
    warning names every difference in steps, batch size, learning rate, warm-up, EMA or seed.
    """
    ckpt = load_checkpoint(path)
    card = ckpt.card
    if card.get("model_class") != "UNet" or "loss_history" not in ckpt.train:
        raise CheckpointError(f"{path} is not a run of chapter 2's pair (a UNet with a loss history); "
                              "write one with tools/train_chapter2_pair.py")
    if expect is not None:
        saved = card.get("training", {}).get("train_config", {})
        keys = ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed")
        diffs = [f"{k} {saved.get(k)!r} (expected {getattr(expect, k)!r})"
                 for k in keys if saved.get(k) != getattr(expect, k)]
        if diffs:
            warnings.warn(f"{Path(path).name} was trained with " + ", ".join(diffs) + "; retrain the pair with "
                          "`python tools/train_chapter2_pair.py` for chapter 2's settings", stacklevel=2)
    model = UNet(UNetConfig.from_dict(card["model_config"]))
    load_checkpoint(path, model)
    training = card.get("training", {})
    return TrainResult(losses=ckpt.train["loss_history"].tolist(), step=ckpt.step,
                       seconds=float(training.get("wall_seconds_total", float("nan"))), stopped_by="loaded",
                       ema=model.eval(), images_per_second=float(training.get("images_per_second", float("nan"))))


def shipped_pair(folder: str | Path | None = None) -> dict[str, Path] | None:
    """The paths of the shipped pair in ``folder`` (default ``config.checkpoint_dir()``), or None if one is missing."""
    folder = Path(folder) if folder is not None else config.checkpoint_dir()
    paths = {kind: folder / name for kind, name in PAIR_FILES.items()}
    return paths if all(p.exists() for p in paths.values()) else None
