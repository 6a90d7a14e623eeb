"""One training loop for every chapter: ``fit``.

``fit`` runs AdamW with linear warm-up (and an optional linear cool-down), gradient clipping and
an exponential moving average (EMA) of the weights, for a step budget and/or a time budget, with a
notebook-friendly progress bar. It returns the loss history for plotting. What is trained and on
what is the caller's: a loss function ``loss_fn(model, batch)`` (a recipe builds it from a process,
``course_lib.recipes``) and batches as a pure function of the step. The command line that trains a
recipe is ``python -m course_lib.train`` (``course_lib.train``).

Resuming is exact: every step seeds torch's RNG from (seed, step) and draws its batch from a
pure function of the step (:class:`course_lib.data.StepBatches`), so a run stopped at step s and
resumed from its checkpoint computes the same updates as a run that never stopped.

A *warm start* continues from an inference checkpoint (the committed EMA weights) when the
resumable state is gone, e.g. on a new machine: model and EMA start from those weights, the step
count, loss history and wall time carry on, and the optimizer starts afresh, so the learning rate
warms up again over ``warmup_steps``. The card lists every warm start (``training.warm_starts``).

A loss that becomes NaN or infinite stops training with :class:`NonFiniteLossError`, before the
bad step touches the weights and without overwriting the last good checkpoint.

Under ``torchrun`` (``dist_info`` from :func:`course_lib.distributed.init_from_env`) the same loop is data
parallel: every rank trains a replica wrapped in ``DistributedDataParallel`` on its shard of each step's
global batch, seeds its RNG with (seed, step, rank), and records the global batch's loss; rank 0 alone
writes checkpoints; a rank that fails stops the run (:class:`DistributedRunError`) and the last good
checkpoint stays as it was (see :mod:`course_lib.distributed`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import config
from .attention import attention_logit_stats
from .checkpoint import load_checkpoint, read_card, save_checkpoint, transplant_weights
from .distributed import SINGLE, DistInfo, any_rank, mean_over_ranks, rank_seed, shard

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
Batches = Callable[[int], Any]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the step was applied."""


class DistributedRunError(RuntimeError):
    """A rank of a data-parallel run failed (or lost a peer that failed); the whole run stops."""


class _Replica:
    """The model as a loss function sees it in a data-parallel run: calling it goes through
    ``DistributedDataParallel`` (which averages the gradients in the backward pass); its attributes
    (``config``, ``encode``, ...) are the wrapped module's."""

    def __init__(self, ddp: torch.nn.Module):
        self._ddp = ddp

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._ddp.module, name)


@dataclass
class TrainConfig:
    """Optimisation settings. Give ``max_steps``, ``max_minutes`` or both (whichever ends first)."""

    max_steps: int | None = 1000
    max_minutes: float | None = None
    batch_size: int = 64             # read by the recipe that builds the batches
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0            # linear warm-up of the learning rate (DDPM: 5000)
    cooldown_steps: int = 0          # linear decay of the learning rate to 0 over the last steps before
                                     # max_steps (warmup-stable-decay; see learning_rate)
    grad_clip: float | None = 1.0    # max global gradient norm (DDPM: 1.0)
    ema_decay: float = 0.9999        # DDPM: 0.9999; warmed up as min(decay, (1+n)/(10+n))
    seed: int = 0
    checkpoint_every: int | None = None      # steps between saves (with a checkpoint path)
    checkpoint_minutes: float | None = 10.0  # minutes between saves (with a checkpoint path)
    bf16: bool = False               # bf16 autocast for forward and loss where the hardware has native bf16
                                     # (config.native_bf16: GPUs, AVX-512 BF16 / AMX CPUs); else float32
    channels_last: bool = False      # NHWC memory layout for conv nets (faster with bf16 on CPU)
    progress: bool = True            # show a tqdm progress bar
    monitor_every: int = 0           # steps between attention statistics on a fixed batch (0: none; chapter 6's
                                     # QK-norm experiment: attention_logit_stats, kept on the card)

    def __post_init__(self):
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give max_steps, max_minutes or both: training needs a budget")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.monitor_every < 0:
            raise ValueError(f"monitor_every must be >= 0 (0: no monitoring), got {self.monitor_every}")
        if self.cooldown_steps < 0:
            raise ValueError(f"cooldown_steps must be >= 0, got {self.cooldown_steps}")
        if self.cooldown_steps and self.max_steps is None:
            raise ValueError("cooldown_steps decays the learning rate to 0 at max_steps: give max_steps too")

    @classmethod
    def tiny(cls, **overrides) -> TrainConfig:
        """Seconds of training for the tiny models of tests and fast mode (the ``*-tiny`` recipes).

        300 steps of batch 32 at lr 1e-3 (5x the small models' rate, so that the loss falls visibly within
        300 steps), 20 warm-up steps, and an EMA decay of 0.99: the EMA averages about the last
        1 / (1 - 0.99) = 100 steps, so its weights are already useful after a few hundred. ``overrides``
        replace any field, e.g. ``TrainConfig.tiny(max_steps=50)``.
        """
        preset = dict(max_steps=300, batch_size=32, lr=1e-3, warmup_steps=20, ema_decay=0.99)
        return cls(**{**preset, **overrides})

    @classmethod
    def small(cls, **overrides) -> TrainConfig:
        """The small models trained on one CPU (the ``*-small`` recipes): DDPM's optimiser, a shorter run.

        Ho et al. (2020) train their CIFAR-10 UNet with lr 2e-4, 5000 warm-up steps, an EMA decay of 0.9999
        and batch 128 for 800k steps (the ``ddpm-paper`` recipe). A CPU run is much shorter, and usually
        ended by a time budget (``python -m course_lib.train RECIPE --minutes M``) long before the
        100,000 steps here, so: the same lr 2e-4, batch 64, 1000 warm-up steps, and an EMA decay of
        0.9995, which averages about the last 1 / (1 - 0.9995) = 2000 steps rather than 10,000. A
        resumable state is saved every 10 minutes. ``overrides`` replace any field, e.g.
        ``TrainConfig.small(bf16=True, channels_last=True)``.
        """
        preset = dict(max_steps=100_000, batch_size=64, lr=2e-4, warmup_steps=1000, ema_decay=0.9995,
                      checkpoint_minutes=10)
        return cls(**{**preset, **overrides})


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``losses[i]`` is the loss of step i, resumed steps included."""

    losses: list[float]
    step: int                  # the global step reached (number of updates applied)
    seconds: float             # wall time of this call
    stopped_by: str            # "steps", "time" or "interrupt"
    ema: torch.nn.Module       # the EMA copy of the model (use it for sampling)
    first_step: int = 0        # the step this call started from (> 0 when resumed)
    images_per_second: float = float("nan")


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step: a fixed mix of the run's seed and the step number."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def seed_rng(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators a step on ``device`` draws from: the CPU's, and the
    accelerator's when it is one (every CUDA device, as ``torch.manual_seed`` does). ``torch.manual_seed`` itself
    also queues a seeding call, with a stack trace, for every accelerator PyTorch knows but has not started: 0.7 ms
    a step on a CPU, and a list that grows every step."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(decay: float, n_updates: int) -> float:
    """EMA warm-up: min(decay, (1 + n) / (10 + n)), so early averages do not remember the random init."""
    return min(decay, (1 + n_updates) / (10 + n_updates))


def learning_rate(cfg: TrainConfig, step: int, warmup_from: int = 0) -> float:
    """The learning rate of update ``step``: warm-up, a constant stretch, then an optional cool-down.

        lr(s) = lr * min(1, (s - s_w + 1) / warmup_steps) * min(1, (max_steps - s) / cooldown_steps)

    where s_w is the step the run (or its last warm start) began at. The constant stretch can go on
    for as long as one likes and be cooled down from any checkpoint of it: the "warmup-stable-decay"
    schedule (Zhai et al. 2022; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations", who find a short linear cool-down matches a cosine schedule).
    """
    lr = cfg.lr
    if cfg.warmup_steps:
        lr *= min(1.0, (step - warmup_from + 1) / cfg.warmup_steps)
    if cfg.cooldown_steps:
        lr *= max(0.0, min(1.0, (cfg.max_steps - step) / cfg.cooldown_steps))
    return lr


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first) if torch.is_tensor(first) else 1


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if torch.is_tensor(batch):
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.ndim == 4 else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    return batch


def fit(model: torch.nn.Module, loss_fn: LossFn, batches: Batches, cfg: TrainConfig, *,
        checkpoint_path: str | Path | None = None, resume: bool = True,
        device: torch.device | str | None = None, training_info: dict | None = None,
        init_from: str | Path | None = None, transplant_from: str | Path | None = None,
        dist_info: DistInfo = SINGLE, stop_requested: Callable[[], bool] | None = None) -> TrainResult:
    """Train ``model`` to minimise ``loss_fn(model, batches(step))``.

    Args:
        model: the network; moved to ``device``.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``. It may draw random numbers from
            torch's global RNG (noise, timesteps): the loop seeds it at every step.
        batches: ``batches(step) -> batch``, a pure function of the step (see ``StepBatches``).
        cfg: the budgets and optimiser settings.
        checkpoint_path: a ``.safetensors`` training state; saved every ``checkpoint_every`` steps /
            ``checkpoint_minutes`` minutes and at the end, and resumed from when it exists and
            ``resume`` is true.
        training_info: extra facts for the checkpoint card (recipe name, data source, ...).
        init_from: an inference checkpoint to warm start from when there is no training state to
            resume: its weights become the model and the EMA, its step, loss history and wall time
            carry on (a transplant record too), the optimizer starts fresh and the learning rate warms
            up again.
        transplant_from: a checkpoint of a related model to start a *new* run (step 0) from when there
            is no training state: every tensor whose name and shape match is copied (see
            :func:`~course_lib.checkpoint.transplant_weights`), the rest keeps its initialisation.
            The card records it as ``training.transplant``; later resumes and warm starts carry it on.
        dist_info: this process's place in a data-parallel run (:mod:`course_lib.distributed`); the default
            is one process. Every rank calls ``fit`` with the same arguments; ``cfg.batch_size`` and
            ``batches`` describe the global batch, and each rank trains on its shard of it.
        stop_requested: asked before every step; True stops the run there, on every rank, as an interrupt
            (saved). The command line sets it from SIGINT / SIGTERM, so that a stop never lands mid-step.

    The loop, step by step (each step is a method of ``_Run`` below):

        run = _Run(...)                       model on the device, its EMA copy, AdamW
        run.restore(...)                      resume a training state, warm start, transplant, or fresh
        run.wrap_data_parallel()              under torchrun only
        until run.stop_reason():              step budget, time budget, stop request (all ranks agree)
            run.train_step(loss_fn, batches)  seed, batch, loss, finite?, backward, clip, AdamW, EMA
            run.monitor_if_due(loss_fn, batches)  attention statistics, every monitor_every steps
            run.show_progress(bar)
            run.save_if_due()                 every checkpoint_every steps / checkpoint_minutes minutes
        run.finish(stopped_by)                the final save, model.eval(), the TrainResult
    """
    if init_from is not None and transplant_from is not None:
        raise ValueError("init_from continues a checkpoint of this model and transplant_from starts a new run "
                         "from part of another one: give one of them")
    device = torch.device(device) if device is not None else config.get_device()
    run = _Run(model, cfg, device, checkpoint_path, dist_info, training_info)
    run.restore(resume=resume, init_from=init_from, transplant_from=transplant_from)
    if dist_info.distributed:  # after loading: every rank holds the same weights (DDP checks by broadcasting them)
        run.wrap_data_parallel()
    run.start_clock()
    bar = tqdm(total=cfg.max_steps - run.step if cfg.max_steps is not None else None,
               disable=not (cfg.progress and dist_info.is_main), desc="training", unit="step", mininterval=0.5)
    stopped_by = None
    model.train()
    try:
        while True:
            stopped_by = run.stop_reason(stop_requested)  # "steps", "time", "interrupt" or None (go on)
            if stopped_by:
                break
            run.train_step(loss_fn, batches)
            run.monitor_if_due(loss_fn, batches)
            run.show_progress(bar)
            run.save_if_due()
    except KeyboardInterrupt:
        stopped_by = "interrupt"
        print(f"interrupted at step {run.step}" + run.saving_note(), file=sys.stderr)
    except NonFiniteLossError:
        raise
    except Exception as err:
        if not dist_info.distributed:
            raise
        raise run.rank_failure(err) from err
    finally:
        bar.close()
    return run.finish(stopped_by)


class _Run:
    """The state of one call of :func:`fit`, and the steps of its loop.

    What it holds: the model (and ``replica``, what the loss function calls: the model itself, or its
    ``DistributedDataParallel`` wrapper), the EMA copy, the optimizer, the step reached and the loss
    history (a resumed run's earlier steps included), and what the checkpoint card records about where
    the run came from (wall time before this call, warm starts, transplant, data parallel set-up).
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                 checkpoint_path: str | Path | None, dist_info: DistInfo, training_info: dict | None):
        """Set up: bf16 or float32, the model on ``device`` (channels_last if asked), AdamW, the EMA copy."""
        self.cfg, self.device, self.dist_info, self.training_info = cfg, device, dist_info, training_info
        self.path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.bf16 = cfg.bf16 and config.native_bf16(device)
        if cfg.bf16 and not self.bf16:
            print(f"bf16 autocast off: {device} has no native bf16 (AVX-512 BF16 / AMX), where float32 is faster",
                  file=sys.stderr)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.replica = model, model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.losses: list[float] = []     # losses[i]: the (global batch's) loss of step i
        self.step = 0                     # updates applied so far, resumed ones included
        self.first_step = 0               # the step this call started from
        self.warmup_from = 0              # the step the learning-rate warm-up (re)started at
        self.seconds_before = 0.0         # wall time of the run before this call
        self.warm_starts: list[dict] = []  # earlier warm starts of this run (the last one restarts the warm-up)
        self.transplant: dict | None = None  # where this run's step-0 weights came from, if anywhere
        self.parallel: dict = {}          # the data-parallel set-up, for the card
        self.images = 0                   # images trained on in this call, all ranks together
        self.monitored: list[dict] = []   # every monitor_every steps: {"step", "loss", attention statistics}
        self.t0 = self.last_save_time = 0.0  # perf_counter at the start of training, at the last save
        self.deadline = math.inf          # perf_counter when the time budget ends

    def restore(self, *, resume: bool, init_from: str | Path | None, transplant_from: str | Path | None) -> None:
        """Where the weights start, first match wins: the training state at ``path`` (resume: weights, EMA,
        optimizer moments, step), an inference checkpoint (warm start: ``init_from``), part of a related
        model (``transplant_from``), or the model's own initialisation."""
        path, ckpt = self.path, None
        if path is not None and resume and path.exists():
            ckpt = load_checkpoint(path, self.model, ema=self.ema, optimizer=self.optimizer)
        elif init_from is not None:
            ckpt = load_checkpoint(init_from, self.model)
            self.ema.load_state_dict(self.model.state_dict())
        elif transplant_from is not None:
            self.transplant = t = transplant_weights(transplant_from, self.model)
            self.ema.load_state_dict(self.model.state_dict())
            print(f"no training state: step 0 with {t['copied_tensors']} tensors "
                  f"({t['copied_parameters'] / 1e6:.2f}M parameters) of {transplant_from} "
                  f"(step {t['step']}); {len(t['fresh_tensors'])} tensors "
                  f"({t['fresh_parameters'] / 1e6:.2f}M parameters) start fresh")
        if ckpt is not None:  # a resume or a warm start carries the run's history on, transplant record included
            training = ckpt.card.get("training", {})
            self.step = ckpt.step
            self.transplant = training.get("transplant")
            if "loss_history" in ckpt.train:
                self.losses = ckpt.train["loss_history"].tolist()[:self.step]
            self.seconds_before = float(training.get("wall_seconds_total", 0.0))
            self.warm_starts = list(training.get("warm_starts", []))
            self.monitored = [m for m in training.get("monitor", []) if m["step"] <= self.step]
            if ckpt.path != path:
                self.warm_starts.append({"from": config.portable_path(init_from), "step": self.step,
                                         "weights": ckpt.card.get("exported_weights", "model")})
        self.first_step = self.step
        self.warmup_from = self.warm_starts[-1]["step"] if self.warm_starts else 0

    def wrap_data_parallel(self) -> None:
        """Under torchrun: the loss function calls the model through ``DistributedDataParallel``, which
        averages the gradients over the ranks in the backward pass; the card records every rank's device."""
        from torch.nn.parallel import DistributedDataParallel

        cfg, dist_info, device = self.cfg, self.dist_info, self.device
        ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # channels_last convolutions hand DDP gradients in another memory layout than its buckets: a copy,
        # harmless, and reported once per process at length
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.replica = _Replica(ddp)
        devices = [None] * dist_info.world_size
        torch.distributed.all_gather_object(devices, config.hardware_description(device))
        self.parallel = {"world_size": dist_info.world_size, "backend": dist_info.backend,
                         "batch_per_rank": cfg.batch_size // dist_info.world_size, "devices": devices,
                         "seeds": "rank r seeds its RNG from (seed, step, r): course_lib.distributed.rank_seed"}

    def start_clock(self) -> None:
        """Start the wall clock of the time budget and of the periodic saves."""
        self.t0 = self.last_save_time = time.perf_counter()
        self.deadline = self.t0 + 60 * self.cfg.max_minutes if self.cfg.max_minutes is not None else math.inf

    def stop_reason(self, stop_requested: Callable[[], bool] | None) -> str | None:
        """Why the loop stops before this step: "steps" (the step budget is spent), "time" (the minutes
        budget), "interrupt" (``stop_requested()`` said so), or None to go on. Every rank gets the same
        answer (:func:`~course_lib.distributed.any_rank`), so that all stop at the same step."""
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "steps"
        time_up, stop = any_rank([time.perf_counter() >= self.deadline, bool(stop_requested and stop_requested())],
                                 self.dist_info, self.device)
        if stop:
            print(f"stopped on request at step {self.step}" + self.saving_note(), file=sys.stderr)
            return "interrupt"
        return "time" if time_up else None

    def train_step(self, loss_fn: LossFn, batches: Batches) -> None:
        """One optimisation step: seed the RNG from (seed, step, rank), take the step's batch (this rank's
        shard), set the learning rate, compute the loss, stop if the global loss is not finite, backward,
        clip the gradient norm, AdamW step, EMA update; then record the loss and count the step.

            g = grad L(theta) * min(1, grad_clip / |grad L(theta)|)      (global norm over all parameters)
            theta <- AdamW(theta, g, learning_rate(step))
            theta_ema <- d theta_ema + (1 - d) theta,   d = ema_decay_at(ema_decay, step)
        """
        cfg, step = self.cfg, self.step
        seed_rng(rank_seed(step_seed(cfg.seed, step), self.dist_info), self.device)
        batch = _to_device(shard(batches(step), self.dist_info), self.device, cfg.channels_last)  # [B / world, ...]
        lr = learning_rate(cfg, step, self.warmup_from)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = loss_fn(self.replica, batch)
        global_loss = mean_over_ranks(loss, self.dist_info)  # the loss of the whole batch, on every rank
        if not torch.isfinite(global_loss):
            raise NonFiniteLossError(
                f"loss became {global_loss.item()} at step {step}; training stopped before applying it and "
                f"{_kept(self.path)}. Lower the learning rate (now {lr:g}), check the data for NaNs, "
                "or turn gradient clipping on.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        update_ema(self.ema, self.model, ema_decay_at(cfg.ema_decay, step))
        self.losses.append(global_loss.item())
        self.step += 1
        self.images += _batch_size(batch) * self.dist_info.world_size

    def monitor_if_due(self, loss_fn: LossFn, batches: Batches) -> None:
        """Every ``monitor_every`` steps (rank 0): the model's attention statistics
        (:func:`~course_lib.attention.attention_logit_stats`: largest logit, mean entropy) while it computes the
        loss of step 0's batch, with the noise and times of one fixed seed, so that every probe sees the same
        inputs; the training's own random numbers are left as they were. Kept on the card as ``monitor``."""
        every = self.cfg.monitor_every
        if not every or self.step % every or not self.dist_info.is_main:
            return
        batch = _to_device(batches(0), self.device, self.cfg.channels_last)
        rng = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed)
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                stats = attention_logit_stats(self.model, lambda: loss_fn(self.model, batch))
        finally:
            torch.set_rng_state(rng)
        self.monitored.append({"step": self.step, "loss": round(self.losses[-1], 5),
                               **{k: round(v, 5) for k, v in stats.items()}})

    def show_progress(self, bar: tqdm) -> None:
        """Advance the progress bar; every 10 steps (and at the last) show the loss of the last 50 steps and
        the images per second so far, all ranks together."""
        bar.update(1)
        if bar.n % 10 == 0 or self.step == self.cfg.max_steps:
            elapsed = time.perf_counter() - self.t0
            bar.set_postfix(loss=f"{mean_tail(self.losses, 50):.4f}", img_s=f"{self.images / elapsed:.1f}")

    def save_if_due(self) -> None:
        """Save a training state every ``checkpoint_every`` steps and every ``checkpoint_minutes`` minutes."""
        cfg, now = self.cfg, time.perf_counter()
        if self.path is not None and (
                (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                or (cfg.checkpoint_minutes and now - self.last_save_time >= 60 * cfg.checkpoint_minutes)):
            self.save("periodic")
            self.last_save_time = now

    def save(self, reason: str) -> None:
        """Write the training state (atomically, rank 0 alone): weights, EMA, optimizer, loss history, and a
        card with the settings, wall time, hardware, precision and the run's history."""
        if self.path is None or not self.dist_info.is_main:
            return
        info = {**(self.training_info or {}),
                "train_config": dataclasses.asdict(self.cfg),
                "wall_seconds_total": round(self.seconds_before + (time.perf_counter() - self.t0), 1),
                "hardware": config.hardware_description(self.device),
                "device": str(self.device),
                "precision": "bf16 autocast" if self.bf16 else "float32",
                "saved_because": reason,
                **({"distributed": self.parallel} if self.parallel else {}),
                **({"transplant": self.transplant} if self.transplant else {}),
                **({"warm_starts": self.warm_starts} if self.warm_starts else {}),
                **({"monitor": self.monitored} if self.monitored else {})}
        save_checkpoint(self.path, self.model, step=self.step, ema=self.ema, optimizer=self.optimizer,
                        train_tensors={"loss_history": torch.tensor(self.losses, dtype=torch.float32)},
                        metrics={"loss_last_100": mean_tail(self.losses, 100)}, training=info)

    def saving_note(self) -> str:
        """The end of a stop message: "; saving PATH" where this process saves the state on stopping."""
        return f"; saving {self.path}" if self.path and self.dist_info.is_main else ""

    def finish(self, stopped_by: str) -> TrainResult:
        """After the loop: save the final state (when this call trained, or nothing is on disk yet), put the
        model in eval mode, and report what the run did."""
        seconds = time.perf_counter() - self.t0
        if self.step > self.first_step or (self.path is not None and not self.path.exists()):
            self.save(f"end ({stopped_by})")
        self.model.eval()
        return TrainResult(losses=self.losses, step=self.step, seconds=seconds, stopped_by=stopped_by, ema=self.ema,
                           first_step=self.first_step,
                           images_per_second=self.images / seconds if seconds > 0 else float("nan"))

    def rank_failure(self, err: Exception) -> DistributedRunError:
        """The error that stops every rank of a data-parallel run when one of them fails."""
        d = self.dist_info
        return DistributedRunError(
            f"rank {d.rank} of {d.world_size} stopped at step {self.step}: {type(err).__name__}: {err}. "
            "When another rank failed first, this is its echo (a collective operation lost its peer): look for "
            f"the first rank's error. The run stops on every rank; {_kept(self.path)}, and the same command "
            "resumes from it.")


def _kept(path: Path | None) -> str:
    """What is left on disk after a failed step: the last good checkpoint, unchanged."""
    if path is not None and path.exists():
        return f"the last good checkpoint {path} (step {read_card(path)['step']}) was kept"
    return "no checkpoint was written"


def mean_tail(values: list[float], n: int) -> float:
    """The mean of the last ``n`` values (nan for an empty list): the smoothed loss the cards and logs report."""
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")
