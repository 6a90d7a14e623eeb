"""Data-parallel training across processes: ``torchrun`` and PyTorch's ``DistributedDataParallel``.

    torchrun --nproc-per-node 2 -m course_lib.train rf-small --minutes 60

``torchrun`` starts one process per GPU (or per share of a CPU) and tells each its ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_from_env` joins them into one process group (NCCL on
CUDA, gloo on CPU) and picks each rank's device. Data parallelism (Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training") then keeps one replica of the model
per rank and, in every step,

    rank r computes g_r = grad L(theta; its shard of the batch),    every rank applies mean_r g_r,

so the replicas stay equal and the update is that of the whole (global) batch: the mean of the
per-rank mean losses is the mean over the global batch when the shards have equal size.
``DistributedDataParallel`` averages the gradients during the backward pass, bucket by bucket.

:func:`shard` gives rank r its rows ``[r B/W, (r+1) B/W)`` of the step's global batch of B items, so the
data of each step are exactly those one process would train on with batch B. The random draws inside
the loss and the model (timesteps, noise, captions, dropout) come from each rank's own stream, seeded
by (seed, step, rank) (:func:`rank_seed`; rank 0's is the single-process seed): a multi-process run
follows another, equally valid random path than one process does, and repeats itself exactly when it
is resumed. BatchNorm layers (the classifier) normalise with their rank's shard, as DDP does without
``SyncBatchNorm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from . import config

__all__ = ["DistInfo", "SINGLE", "init_from_env", "shard", "rank_seed", "mean_over_ranks", "any_rank", "close"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run: its rank, how many ranks there are, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo", "nccl"; None when there is one process and no group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, saves checkpoints and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()  # one process, no process group: what every run without torchrun is


def init_from_env(device_name: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and pick this rank's device: ``cuda:LOCAL_RANK``
    with NCCL when CUDA is there (and not overridden by ``device_name``), else the CPU with gloo.
    Without torchrun (no ``WORLD_SIZE``, or 1) nothing is joined: ``(SINGLE, the usual device)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE, config.get_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = config.get_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank} has LOCAL_RANK {local_rank} but this node has "
                               f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend), device


def close(info: DistInfo) -> None:
    """Leave the process group (at the end of a run that joined one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Any, info: DistInfo) -> Any:
    """This rank's rows of a global batch: every tensor [B, ...] of a (nested) tuple or list becomes
    [B / W, ...], rows ``[r B/W, (r + 1) B/W)``; anything else is passed through. B must divide by W."""
    if not info.distributed:
        return batch
    if torch.is_tensor(batch):
        size, rem = divmod(len(batch), info.world_size)
        if rem:
            raise ValueError(f"the global batch of {len(batch)} items does not split into {info.world_size} equal "
                             f"shards: choose a batch size divisible by the number of processes")
        return batch[info.rank * size:(info.rank + 1) * size]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b, info) for b in batch)
    return batch


def rank_seed(step_seed: int, info: DistInfo) -> int:
    """The RNG seed of this rank at a step: the single-process seed on rank 0, another fixed mix on the others."""
    return step_seed if info.rank == 0 else (step_seed + 104_729 * info.rank) % (2**63 - 1)


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar over the ranks (the global batch's loss, from equal shards); a copy, no gradient."""
    value = value.detach().float().clone()
    if info.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def any_rank(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """For each flag: True on every rank when it is true on at least one (e.g. rank 0's clock says the time
    is up, or a rank was asked to stop), so that all ranks leave the loop at the same step."""
    if not info.distributed:
        return list(flags)
    t = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]
