"""Conditioning a network on the noise level: the pieces the UNet (chapters 1-2) and a DiT (chapter 6) share.

A denoiser must know how noisy its input is. Both architectures of the course tell it the same way:
embed the timestep t as a vector, then let that vector steer every block.

* ``timestep_embedding(t, dim)``: the sinusoidal embedding of Transformer positions (Vaswani et al.
  2017, Sec. 3.5), used for timesteps since DDPM (Ho et al. 2020, App. B):

      freq_i = max_period^(-i / half),  i = 0 .. half-1,  half = dim // 2
      emb(t) = [sin(s t freq_0), ..., sin(s t freq_{half-1}), cos(s t freq_0), ..., cos(s t freq_{half-1})]

  with s = ``time_scale``. Discrete DDPM steps t = 0 .. 999 use s = 1. Flow-matching models take a
  continuous t in [0, 1] and multiply it by 1000 first, so that the frequencies see the same range
  as a 1000-step model: Flux's ``timestep_embedding(t, dim, max_period=10000, time_factor=1000.0)``
  (black-forest-labs/flux, ``src/flux/modules/layers.py``) and SD3, whose sampler passes the
  timestep ``sigma * 1000`` to its MMDiT (Stability-AI/sd3.5, ``sd3_impls.py``). Here that is
  ``time_scale=1000.0``. (Flux puts the cosines first; the order is a convention that the Linear
  layer after the embedding absorbs.)

* ``TimeEmbedding``: the sinusoid followed by a 2-layer MLP, dim -> 4 dim -> SiLU -> 4 dim (DDPM App. B;
  DiT's ``TimestepEmbedder`` and Flux's ``MLPEmbedder`` are the same MLP). Its output ``emb`` is what
  every block receives.

* ``modulate(h, shift, scale) = h * (1 + scale) + shift``: how a block lets ``emb`` steer it after a
  normalisation. A Linear layer maps SiLU(emb) to a scale and a shift per channel, and

      chapter 2, AdaGN (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Sec. 3):
          h = GroupNorm(h) * (1 + scale) + shift               feature maps: scale, shift [B, C, 1, 1]
      chapter 6, adaLN (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Sec. 3.2):
          h = LayerNorm(h) * (1 + scale) + shift               tokens: scale, shift [B, 1, D]

  The same step on a different axis: the DiT block is the AdaGN ResBlock's idea moved to tokens.
  "1 + scale" makes a zero output of the Linear layer mean "leave the normalised features alone".

* ``zero_module(module)``: set every parameter to zero. A block whose last layer starts at zero starts
  as the identity (DDPM's ``init_scale=0`` on the last conv of each ResBlock; the UNet's
  ``proj_out`` and ``conv_out``), so a deep stack trains from a well-behaved start. DiT's
  **adaLN-Zero** is the same idea: its modulation Linear also outputs a gate per channel,

      x = x + gate * Attention(modulate(LayerNorm(x), shift, scale))

  and that Linear is zero-initialised (``zero_module(nn.Linear(D, 6 D))``), so gate = 0 and every
  DiT block starts as the identity. ``zero_module`` is all the zero-initialisation a DiT needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["timestep_embedding", "TimeEmbedding", "modulate", "zero_module"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       time_scale: float = 1.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, Sec. 3.5; DDPM App. B):

        freq_i = max_period^(-i / (half - freq_shift)),  i = 0 .. half-1,  half = dim // 2
        emb(t) = [sin(s t freq_0), ..., sin(s t freq_{half-1}), cos(s t freq_0), ..., cos(s t freq_{half-1})]

    with s = ``time_scale``: 1 for DDPM's integer steps 0..T-1, 1000 for a continuous t in [0, 1]
    (Flux's ``time_factor=1000.0``, SD3's ``sigma * 1000``), so that t = 0.5 embeds as step 500.

    t: [B] -> [B, dim] float32 (an odd ``dim`` gets a zero last column). ``freq_shift``: the DDPM code
    divides by ``half - 1`` (``freq_shift=1``, diffusers' ``downscale_freq_shift``; so do the converted DDPM
    checkpoints), the course's models by ``half`` (0): the same idea, another exact frequency spacing.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - freq_shift))
    args = (t.float() * time_scale)[:, None] * freqs[None, :]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by a 2-layer MLP: dim -> 4 dim -> SiLU -> 4 dim (DDPM App. B).

        emb = fc2(SiLU(fc1(timestep_embedding(t, dim, time_scale=time_scale))))

    t [B] -> [B, emb_dim] (emb_dim = 4 dim unless given). ``time_scale`` as in :func:`timestep_embedding`
    (1000.0 for a continuous t in [0, 1]); it is a constant, not a parameter.
    """

    def __init__(self, dim: int, emb_dim: int | None = None, time_scale: float = 1.0, freq_shift: float = 0.0):
        super().__init__()
        self.dim = dim
        self.time_scale = time_scale
        self.freq_shift = freq_shift
        emb_dim = emb_dim or 4 * dim
        self.fc1 = nn.Linear(dim, emb_dim)
        self.fc2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = timestep_embedding(t, self.dim, time_scale=self.time_scale, freq_shift=self.freq_shift)  # [B, dim]
        h = self.fc1(h.to(self.fc1.weight.dtype))  # [B, 4 dim]; the model's dtype (a .half() or .double() model)
        return self.fc2(F.silu(h))  # [B, 4 dim]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, time_scale={self.time_scale}, freq_shift={self.freq_shift}"


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift conditioning: ``h * (1 + scale) + shift`` (AdaGN, Dhariwal & Nichol 2021; adaLN, DiT).

    h is the normalised activation; shift and scale come from the conditioning (a Linear layer on
    SiLU(emb)) and must broadcast against h: the caller shapes them, [B, C, 1, 1] for feature maps
    h [B, C, H, W] (one scale and shift per channel), [B, 1, D] for tokens h [B, L, D] (the same for
    every token). Zero shift and scale leave h unchanged. Returns a tensor of h's shape.
    """
    return h * (1 + scale) + shift


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (DDPM's ``init_scale=0``; DiT's adaLN-Zero).

    A residual block whose last layer is zero starts as the identity: ``x + zero_module(layer)(h) = x``.
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
