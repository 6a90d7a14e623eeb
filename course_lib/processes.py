"""Generative processes: how data is corrupted at time t, what the network learns, and how to sample.

Every model of the course is trained and sampled through one interface, :class:`Process`:

    t     = process.sample_time(B)                 # the training distribution of times
    x_t   = process.corrupt(x_0, t, noise)         # the forward process, noise ~ N(0, I)
    y     = process.target(x_0, noise, t)          # what the network regresses on
    loss  = mean || model(x_t, process.model_time(t)) - y ||^2   # process.loss(model, x_0), in this order
    x_0   = process.sample(model, shape, ...)      # from noise to data with one of process.samplers

Chapters 1-4 use :class:`DDPMProcess`: integer timesteps t = 0..T-1 of a discrete noise schedule
(``course_lib.schedules``), data at t = 0 and noise at t = T-1, x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps, an eps / x0 / v target (``course_lib.parameterization``), and the DDPM
or DDIM sampler (``course_lib.samplers``). Chapter 5 adds :class:`RectifiedFlowProcess`: continuous
t in [0, 1] with data at 0 and noise at 1, a velocity target, Euler / Heun samplers (``course_lib.flow``).

Trajectories of every process carry *continuous* times in [0, 1] (``SamplerOutput.times``, noise at
1, data at 0), so that a DDIM trajectory and a flow trajectory can be drawn on the same axis. For
DDPM the state x_t after integer step t (the paper's step t + 1) sits at time (t + 1) / T.

A process is a small frozen dataclass; ``to_dict()`` is what a checkpoint card stores (under
``training.process``) and :func:`process_from_dict` / :func:`process_from_card` rebuild it. A new
process is one class decorated with :func:`register_process`: recipes, cards, the evaluation
command and :class:`~course_lib.generation.Pipeline` then work with it unchanged.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F

from .flow import average_velocity_sample, ddpm_flow_velocity, flow_sample
from .parameterization import check_parameterization, target_for
from .samplers import SamplerOutput, ddim_sample, ddpm_sample
from .schedules import SCHEDULES, NoiseSchedule, gather, make_schedule

__all__ = ["Process", "DDPMProcess", "RectifiedFlowProcess", "MeanFlowProcess", "PROCESSES", "register_process", "process_from_dict",
           "process_from_card", "NoProcessError"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoProcessError(ValueError):
    """A checkpoint card names no generative process (e.g. the classifier's), or an unknown one."""


class Process(ABC):
    """What a generative process is. Subclasses are frozen dataclasses whose fields say everything
    needed to rebuild them (``to_dict`` / :func:`process_from_dict`), decorated with :func:`register_process`.

    name:     the key in :data:`PROCESSES` and in checkpoint cards
    samplers: the sampler names ``sample(..., sampler=)`` accepts; the first is the default
    latent_options: sampler options for data that is not bounded to [-1, 1], i.e. an autoencoder's
              latents (``Pipeline.generate`` uses them when a decoder is attached; the caller's win)
    """

    name: ClassVar[str]
    samplers: ClassVar[tuple[str, ...]]
    latent_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    # ---- training

    @abstractmethod
    def sample_time(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Times for a training batch, drawn from torch's global RNG: [B]."""

    @abstractmethod
    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t: the data ``x0`` [B, ...] corrupted to time ``t`` [B] with ``noise`` (like x0)."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's regression target at (x0, noise, t), like x0."""

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network's time embedding is given for the process's time ``t`` (DDPM: t itself)."""
        return t

    def loss(self, model: ModelFn, x0: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """The process's training loss, mean || model(x_t, t) - target ||^2 (a scalar float32 tensor).

        ``t`` and ``noise`` default to fresh draws from torch's **global** RNG, t first, then the noise,
        so that a training loop that seeds the RNG at every step (``course_lib.trainer.fit``) repeats a
        step exactly. Conditioning (text) is bound into ``model`` by the caller:
        ``process.loss(lambda x, t: unet(x, t, context), x0)``.
        """
        if t is None:
            t = self.sample_time(x0.shape[0], x0.device)  # [B]
        if noise is None:
            noise = torch.randn_like(x0)  # [B, C, H, W]
        x_t = self.corrupt(x0, t, noise)
        target = self.target(x0, noise, t)
        prediction = model(x_t, self.model_time(t))
        if prediction.shape != target.shape:
            raise ValueError(f"model output has shape {tuple(prediction.shape)}, expected {tuple(target.shape)} "
                             "(the shape of the data)")
        return F.mse_loss(prediction.float(), target.float())

    # ---- sampling

    @abstractmethod
    def sample(self, model: ModelFn, shape: Sequence[int] | None = None, *, x_T: torch.Tensor | None = None,
               sampler: str | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = False,
               device: torch.device | str | None = None, **options) -> torch.Tensor | SamplerOutput:
        """Turn noise (``x_T``, or drawn for ``shape`` from ``generator``) into data with ``model(x, t)``.

        Returns the samples, or with ``return_trajectory`` a :class:`~course_lib.samplers.SamplerOutput`
        whose ``times`` are continuous in [0, 1] (noise at 1, data at 0).
        """

    def velocity_field(self, model: ModelFn) -> ModelFn:
        """The model as the velocity of a probability-flow ODE on the flow's time axis, ``v(x, t)``:

            dx/dt = v(x, t),    t in [0, 1], data at t = 0, noise at t = 1,

        so that ``course_lib.flow.flow_sample(process.velocity_field(model), x_T=noise, ...)`` integrates any
        process's model from noise to data, and the paths of different processes can be compared on one axis.
        ``t`` is a number, a 0-d tensor or one time per point [B]; the field returns a tensor like ``x``.
        Each process says how its network's output becomes this velocity; one without an ODE raises
        ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no probability-flow velocity field")

    def check_sampler(self, sampler: str | None) -> str:
        """``sampler`` if this process has it (None: the default, ``samplers[0]``); else a clear error."""
        if sampler is None:
            return self.samplers[0]
        if sampler not in self.samplers:
            raise ValueError(f"{type(self).__name__} samples with {' or '.join(map(repr, self.samplers))}, "
                             f"not {sampler!r}")
        return sampler

    # ---- description

    def to_dict(self) -> dict:
        """What a checkpoint card stores: ``{"name": ..., <fields>}``; :func:`process_from_dict` inverts it."""
        return {"name": self.name, **dataclasses.asdict(self)}


#: the processes a checkpoint card can name, by ``Process.name``
PROCESSES: dict[str, type[Process]] = {}


def register_process(cls: type[Process]) -> type[Process]:
    """Class decorator: make ``cls`` known to :func:`process_from_dict` (and so to cards and recipes)."""
    if not (isinstance(cls, type) and issubclass(cls, Process) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_process takes a dataclass subclass of Process, got {cls!r}")
    if getattr(cls, "name", None) in PROCESSES and PROCESSES[cls.name] is not cls:
        raise ValueError(f"a process named {cls.name!r} is already registered ({PROCESSES[cls.name].__name__})")
    PROCESSES[cls.name] = cls
    return cls


def process_from_dict(d: dict) -> Process:
    """Rebuild a process from ``Process.to_dict()`` (what a card stores)."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in PROCESSES:
        raise NoProcessError(f"unknown process {name!r}; this course version knows {sorted(PROCESSES)} "
                             "(update course_lib, or check the card)")
    known = {f.name for f in dataclasses.fields(PROCESSES[name])}
    unknown = set(d) - known
    if unknown:
        raise NoProcessError(f"process {name!r} has no settings {sorted(unknown)}; known: {sorted(known)}")
    return PROCESSES[name](**d)


def process_from_card(card: dict) -> Process:
    """The process a checkpoint was trained with, from its card.

    Cards store it as ``training.process``; cards written before processes existed (the chapter 1-3
    checkpoints) store a DDPM setup as ``training.diffusion`` = {schedule, T, parameterization}.
    """
    training = card.get("training", {})
    if "process" in training:
        return process_from_dict(training["process"])
    if "diffusion" in training:
        return DDPMProcess(**training["diffusion"])
    raise NoProcessError(f"this checkpoint ({card.get('model_class', 'unknown model')}, recipe "
                         f"{training.get('recipe', 'unknown')!r}) names no generative process on its card: it is "
                         "not a denoiser (a classifier?); give a checkpoint of a generative model")


# --------------------------------------------------------------------------- DDPM / DDIM


@register_process
@dataclass(frozen=True)
class DDPMProcess(Process):
    """The discrete diffusion of Ho et al. (2020): integer t = 0..T-1, data at 0, noise at T-1.

        t ~ Uniform{0, ..., T-1},  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        target = eps ("eps", Ho et al. 2020), x_0 ("x0") or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
                 ("v", Salimans & Ho 2022)

    ``loss`` is Ho et al.'s L_simple (Algorithm 1); it draws exactly what
    :func:`~course_lib.parameterization.diffusion_loss` draws, in the same order, and gives the same
    number. Samplers: "ddim" (Song et al. 2021; ``num_steps`` default 50, ``eta`` default 0) and
    "ddpm" (ancestral, Ho et al. Algorithm 2, all T steps). ``options`` go to the sampler
    (``eta``, ``clip_x0``, ``variance``, ``timesteps``).

    schedule:         "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal 2021)
    T:                the number of steps
    parameterization: "eps", "x0" or "v"
    """

    name: ClassVar[str] = "ddpm"
    samplers: ClassVar[tuple[str, ...]] = ("ddim", "ddpm")
    # The samplers clip x0_hat to [-1, 1] by default, which is right for pixels only: scaled latents have
    # unit std, so about a third of their values lie outside [-1, 1]. LDM's samplers do not clip latents
    # (LatentDiffusion.p_sample: clip_denoised=False; diffusers' SD schedulers: clip_sample=False).
    latent_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"clip_x0": False})

    schedule: str = "linear"
    T: int = 1000
    parameterization: str = "eps"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}")
        check_parameterization(self.parameterization)

    @cached_property
    def noise_schedule(self) -> NoiseSchedule:
        """alpha_bar, betas, SNR, ... of every step (``course_lib.schedules.NoiseSchedule``)."""
        return make_schedule(self.schedule, self.T)

    def time(self, t: torch.Tensor | int) -> torch.Tensor:
        """Continuous time in (0, 1] of integer step t: (t + 1) / T (the paper's step t + 1 over T)."""
        return (torch.as_tensor(t, dtype=torch.float64) + 1) / self.T

    def sample_time(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.randint(0, self.T, (batch,), device=device)  # [B]

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.noise_schedule.q_sample(x0, t, noise)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = gather(self.noise_schedule.alpha_bar, t.to(x0.device), x0.ndim)  # [B, 1, 1, 1]
        return target_for(self.parameterization, x0, noise, alpha_bar)

    def sample(self, model: ModelFn, shape: Sequence[int] | None = None, *, x_T: torch.Tensor | None = None,
               sampler: str | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = False,
               device: torch.device | str | None = None, **options) -> torch.Tensor | SamplerOutput:
        sampler = self.check_sampler(sampler)
        common = dict(parameterization=self.parameterization, x_T=x_T, generator=generator,
                      return_trajectory=return_trajectory, progress=progress, device=device, **options)
        shape = None if x_T is not None else shape
        if sampler == "ddim":
            return ddim_sample(model, self.noise_schedule, shape, num_steps=50 if num_steps is None else num_steps,
                               **common)
        if num_steps not in (None, self.T):
            raise ValueError(f"sampler='ddpm' runs all T={self.T} steps; leave num_steps=None, or use "
                             f"sampler='ddim' (eta=1 is stochastic like DDPM) for {num_steps} steps")
        return ddpm_sample(model, self.noise_schedule, shape, **common)

    def velocity_field(self, model: ModelFn) -> ModelFn:
        """An epsilon model's probability-flow ODE on the flow axis (``course_lib.flow.ddpm_flow_velocity``).

        At flow time s the DDPM state x = (alpha + sigma) y has sigma / alpha = s / (1 - s), i.e.
        alpha_bar = 1 / (1 + (s / (1 - s))^2) (the step t with that alpha_bar interpolated in the schedule), and

            v(y, s) = eps_hat - x0_hat,    eps_hat = model(x, t),    x0_hat = (x - sigma eps_hat) / alpha:

        Euler's method on it takes DDIM's (eta = 0) steps. Only for ``parameterization="eps"``.
        """
        if self.parameterization != "eps":
            raise ValueError(f"the velocity field takes a DDPM epsilon model (parameterization 'eps'), this process "
                             f"predicts {self.parameterization!r}")
        return ddpm_flow_velocity(model, self.noise_schedule)


# --------------------------------------------------------------------------- rectified flow


@register_process
@dataclass(frozen=True)
class RectifiedFlowProcess(Process):
    """Rectified flow (Liu, Gong & Liu 2022) with SD3's conventions (Esser et al. 2024): continuous
    t in [0, 1], **data at t = 0, noise at t = 1**, straight paths and a velocity target,

        x_t = (1 - t) x_0 + t eps,     target v = eps - x_0,     loss = mean || v_theta(x_t, t) - v ||^2.

    t is drawn ``"uniform"`` on [0, 1] (Liu et al.) or ``"logit_normal"``: t = sigmoid(n), n ~ N(logit_mean,
    logit_std^2), which puts more training at middle times (SD3's default, m = 0, s = 1; Esser et al. Sec. 3.1).
    The network's time embedding is given ``time_scale * t`` (1000: the range of the course's DDPM
    timesteps, and what diffusers' SD3 scheduler passes). Samplers: "euler" and "heun" (``course_lib.flow``),
    ``num_steps`` default 50; options: ``times`` (a custom grid from 1 to 0).
    """

    name: ClassVar[str] = "rectified_flow"
    samplers: ClassVar[tuple[str, ...]] = ("euler", "heun")

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {self.time_sampling!r}")
        if self.logit_std <= 0 or self.time_scale <= 0:
            raise ValueError(f"logit_std and time_scale must be positive, got {self.logit_std}, {self.time_scale}")

    def time(self, t: torch.Tensor | float) -> torch.Tensor:
        """Continuous time in [0, 1]: the process's own."""
        return torch.as_tensor(t, dtype=torch.float64)

    def sample_time(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        if self.time_sampling == "logit_normal":
            return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, device=device))  # [B]
        return torch.rand(batch, device=device)  # [B]

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))  # [B, 1, 1, 1]
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_scale * t

    def velocity_field(self, model: ModelFn) -> ModelFn:
        """The velocity model itself, on the process's own axis: v(x, t) = model(x, time_scale * t), with t
        (a number or [B]) broadcast to one time per point. The ODE dx/dt = v moves x_t = (1 - t) x_0 + t eps
        along its line (v = eps - x_0 for a perfect model)."""
        def velocity(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(len(x))  # [B]
            return model(x, self.model_time(t))

        return velocity

    def sample(self, model: ModelFn, shape: Sequence[int] | None = None, *, x_T: torch.Tensor | None = None,
               sampler: str | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = False,
               device: torch.device | str | None = None, **options) -> torch.Tensor | SamplerOutput:
        sampler = self.check_sampler(sampler)
        return flow_sample(model, None if x_T is not None else shape, x_T=x_T, sampler=sampler,
                           num_steps=50 if num_steps is None else num_steps, time_scale=self.time_scale,
                           generator=generator, return_trajectory=return_trajectory, progress=progress,
                           device=device, **options)


@register_process
@dataclass(frozen=True)
class MeanFlowProcess(RectifiedFlowProcess):
    """Rectified flow's path, sampled by MeanFlow's average velocity (Geng et al. 2025; chapter 7,
    ``course_lib.meanflow``): the network reads the interval's length t - r besides t and predicts

        u(z_t, r, t) = 1 / (t - r) integral_r^t v(z_s, s) ds,     z_r = z_t - (t - r) u(z_t, r, t),

    so one step, z_0 = z_1 - u(z_1, 0, 1), stands for the whole ODE. Training (``meanflow_loss`` or, from a teacher,
    ``meanflow_distillation_loss``) draws t as :class:`RectifiedFlowProcess` does. Sampler: "meanflow"
    (``course_lib.flow.average_velocity_sample``), ``num_steps`` default 1; the network is called as
    ``model(z, time_scale * t, interval=time_scale * (t - r))``.
    """

    name: ClassVar[str] = "meanflow"
    samplers: ClassVar[tuple[str, ...]] = ("meanflow",)

    def sample(self, model: ModelFn, shape: Sequence[int] | None = None, *, x_T: torch.Tensor | None = None,
               sampler: str | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = False,
               device: torch.device | str | None = None, **options) -> torch.Tensor | SamplerOutput:
        self.check_sampler(sampler)
        if options:
            raise ValueError(f"MeanFlow's sampler takes no options, got {sorted(options)}")
        return average_velocity_sample(model, None if x_T is not None else shape, x_T=x_T,
                                       num_steps=1 if num_steps is None else num_steps, time_scale=self.time_scale,
                                       generator=generator, return_trajectory=return_trajectory, progress=progress,
                                       device=device)
