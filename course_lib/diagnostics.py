"""Looking inside a trained denoiser: held-out loss and how strongly the timestep steers its features.

* ``held_out_loss``: the simple loss E ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14) on fixed
  images with fixed (t, noise) draws, so that two models (or one model at two steps) are compared on
  exactly the same problems: a paired comparison, far less noisy than two training-loss curves.
* ``copy_shared_weights``: start two model variants from the same weights wherever they agree.
* ``timestep_sensitivity``: for every residual block, the fraction of its activation variance that
  is due to the timestep alone. The network is fed the *same* x with K different timesteps t_k; only
  the time embedding differs between the K passes. At each block we record A_k, the activations
  that enter the block's second convolution (after the norm, the conditioning and the SiLU), and
  compute, per channel c,

      S_c = Var_k( A_k[b, c, i, j] ) averaged over (b, i, j)  /  Var_{k, b, i, j}( A_k[b, c, i, j] )

  (the "between-timestep" share of the variance, eta^2 of an analysis of variance), then average
  S_c over channels. S = 0: the block ignores t; S = 1: its features depend on t only. Comparing a
  DDPM ResBlock (additive bias before GroupNorm) with an AdaGNResBlock (scale and shift after it,
  Nichol & Dhariwal 2021) shows how much of the time signal each design lets through.
"""

from __future__ import annotations

import torch
from torch import nn

from .parameterization import diffusion_loss
from .schedules import NoiseSchedule
from .unet import EmbedBlock

__all__ = ["held_out_loss", "timestep_sensitivity", "copy_shared_weights"]


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
def timestep_sensitivity(model: nn.Module, x: torch.Tensor, timesteps: list[int] | torch.Tensor
                         ) -> dict[str, float]:
    """Per residual block (by module name, in forward order): the share of activation variance due to t.

    x [B, C, H, W] is fed once per timestep in ``timesteps`` (at least two); see the module docs for
    the statistic. Blocks are found as the ``EmbedBlock`` modules of ``model`` that have a ``conv2``
    (``ResBlock`` and ``AdaGNResBlock``); the recorded activations are the input of ``conv2``.
    """
    timesteps = [int(t) for t in timesteps]
    if len(timesteps) < 2:
        raise ValueError(f"need at least two timesteps to measure a variance over t, got {timesteps}")
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, EmbedBlock) and hasattr(m, "conv2")}
    if not blocks:
        raise ValueError("found no residual blocks (EmbedBlock with conv2) in this model; "
                         "timestep_sensitivity expects a course_lib.unet.UNet")
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    hooks = [m.conv2.register_forward_pre_hook(lambda _m, args, name=name: acts[name].append(args[0].float().cpu()))
             for name, m in blocks.items()]
    was_training = model.training
    model.eval()
    try:
        for t in timesteps:
            model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
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
