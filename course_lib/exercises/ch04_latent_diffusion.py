"""Chapter 4's exercises (latent diffusion): the posterior of the KL autoencoder, and the latent data path.

:func:`check_gaussian_kl` checks the reparameterisation z = mean + exp(logvar / 2) eps and the KL of a
diagonal Gaussian to N(0, I) against ``autoencoder.DiagonalGaussianDistribution``, gradients included.
:func:`check_latent_path` checks the chapter's own idea: a training latent (z - shift) * s_z sampled from cached
moments, and a generated latent decoded with 1 / s_z, the shift added back and no clamp. Each with its cases,
named mistakes and hints.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..autoencoder import DiagonalGaussianDistribution
from .harness import Case, close, exercise, run_cases, verdict

__all__ = ["check_gaussian_kl", "check_latent_path", "ProbeDecoder"]


# --------------------------------------------------------------------------- chapter 4: the posterior of the KL autoencoder


def _gaussian_hint(err: Exception) -> str:
    text = str(err)
    if "only one element tensors" in text or "must be real number, not Tensor" in text:
        return (" Hint: `math.exp` and `math.sqrt` take a single number; on tensors use `torch.exp(x)` "
                "(or `x.exp()`) and `torch.sqrt(x)`.")
    if "must match the size of tensor" in text or "broadcast" in text:
        return (" Hint: mean, logvar and eps all have the latent's shape [B, C, h, w]; they combine number by "
                "number, no reshaping needed. The KL is then summed over dims (1, 2, 3).")
    return ""


def _gaussian_moments(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int, str]]:
    """(mean, logvar, eps seed, description): posteriors like a trained encoder's, and the prior itself."""
    g = torch.Generator().manual_seed(seed + 9)
    out = []
    for B, C, h, w in [(3, 4, 8, 8), (2, 4, 4, 4), (4, 3, 2, 5)]:
        mean = 1.5 * torch.randn(B, C, h, w, generator=g)
        logvar = torch.empty(B, C, h, w).uniform_(-7.0, 1.5, generator=g)  # std from 0.03 to 2.1
        out.append((mean, logvar, seed * 101 + B * 7 + C, f"latents [{B}, {C}, {h}, {w}], logvar in [-7, 1.5]"))
    out.append((torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4), seed * 101 + 1,
                "the prior itself: mean 0, logvar 0 (KL = 0)"))
    return out


def _reparameterize_cases(seed: int) -> list[Case]:
    cases = []
    for mean, logvar, eps_seed, description in _gaussian_moments(seed):
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))  # the library's posterior
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(eps_seed))
        expected = posterior.sample(torch.Generator().manual_seed(eps_seed))  # the same eps: mean + std * eps
        std, var = torch.exp(0.5 * logvar), torch.exp(logvar)
        mistakes = {
            "eps must be scaled by the standard deviation exp(logvar / 2) = sqrt(var); you used the variance "
            "exp(logvar)": mean + var * eps,
            "logvar is the log of the variance: the standard deviation is exp(0.5 * logvar), not logvar itself":
                mean + logvar * eps,
            "exp(-0.5 * logvar) is 1 / std: the sign of the exponent is wrong": mean + torch.exp(-0.5 * logvar) * eps,
            "you returned the mean (the posterior's mode()); a sample adds the noise: z = mean + std * eps": mean,
            "the mean is missing: z = mean + std * eps, not std * eps": std * eps,
            "mean and std are swapped: z = mean + std * eps, not std + mean * eps": std + mean * eps,
            "mean and logvar are swapped: the mean is shifted by exp(logvar / 2) * eps":
                logvar + torch.exp(0.5 * mean) * eps,
            "only std multiplies eps: z = mean + std * eps, not (mean + std) * eps": (mean + std) * eps,
            "add the noise: the library (and LDM) write z = mean + std * eps; with the eps you are given, "
            "mean - std * eps is a different sample": mean - std * eps,
        }
        cases.append(Case((mean, logvar, eps), expected, description, mistakes))
    return cases[:-1]  # the prior's case tells nothing about z that the others do not


def _gaussian_kl_cases(seed: int) -> list[Case]:
    cases = []
    for mean, logvar, _eps_seed, description in _gaussian_moments(seed):
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()  # [B]
        std, var = torch.exp(0.5 * logvar), torch.exp(logvar)

        def total(terms):  # [B, C, h, w] -> [B]
            return terms.sum(dim=(1, 2, 3))

        mistakes = {
            "the factor 1/2 is missing: KL = 1/2 sum(mean^2 + var - 1 - logvar)":
                total(mean ** 2 + var - 1 - logvar),
            "the KL of independent Gaussians is the *sum* of their KLs over every latent number (C, h, w), not "
            "their mean": 0.5 * (mean ** 2 + var - 1 - logvar).mean(dim=(1, 2, 3)),
            "the log-variance is subtracted: 1/2 sum(mean^2 + var - 1 - logvar)":
                0.5 * total(mean ** 2 + var - 1 + logvar),
            "the -1 is missing (without it the prior N(0, I) itself would have KL = C h w / 2, not 0)":
                0.5 * total(mean ** 2 + var - logvar),
            "the mean^2 term is missing: a posterior far from 0 must cost KL": 0.5 * total(var - 1 - logvar),
            "the mean must be squared: mean^2, not mean": 0.5 * total(mean + var - 1 - logvar),
            "the formula needs the variance var = exp(logvar), not the standard deviation exp(logvar / 2)":
                0.5 * total(mean ** 2 + std - 1 - logvar),
            "logvar is log(sigma^2), not log(sigma): var = exp(logvar) and log var = logvar":
                0.5 * total(mean ** 2 + torch.exp(2 * logvar) - 1 - 2 * logvar),
            "that is KL(N(0, I) || q), the other direction; the autoencoder's term is KL(q(z|x) || N(0, I)) = "
            "1/2 sum(mean^2 + var - 1 - logvar)": 0.5 * total(logvar + (1 + mean ** 2) / var - 1),
        }
        cases.append(Case((mean, logvar), expected, description, mistakes))
    return cases


@exercise(
    "reparameterize: the standard deviation is exp(logvar / 2); z = mean + std * eps, with torch "
    "operations so that gradients reach mean and logvar.",
    "For one number, KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), with sigma^2 "
    "= exp(logvar). The numbers of a latent are independent, so their KLs add: sum over dims (1, 2, 3) "
    "for one value per image.",
)
def check_gaussian_kl(reparameterize: Callable, gaussian_kl: Callable, seed: int = 0) -> bool:
    """Check the two halves of the KL autoencoder's posterior q(z|x) = N(mean, diag(exp(logvar))) against
    ``autoencoder.DiagonalGaussianDistribution`` (Kingma & Welling 2014, Sec. 2.4 and App. B):

        reparameterize(mean, logvar, eps) -> z = mean + exp(logvar / 2) * eps            [B, C, h, w]
        gaussian_kl(mean, logvar) -> 1/2 sum over (C, h, w) of (mean^2 + exp(logvar) - 1 - logvar)   [B]

    mean, logvar, eps: [B, C, h, w] (eps ~ N(0, I) is given: use it, do not draw new noise). The check then
    asks for what the trick is for: z must stay a differentiable function of mean and logvar (the encoder is
    trained through the sample), with dz/dmean = 1 and dz/dlogvar = std * eps / 2, and so must the KL.
    Prints ``Correct!`` or what is wrong; returns True if both are right.
    """
    if not (callable(reparameterize) and callable(gaussian_kl)):
        return verdict(False, "check_gaussian_kl takes two functions, reparameterize(mean, logvar, eps) and "
                               f"gaussian_kl(mean, logvar); got {type(reparameterize).__name__} and "
                               f"{type(gaussian_kl).__name__}.")
    if not run_cases("your reparameterize", reparameterize, _reparameterize_cases(seed), "", hint_for=_gaussian_hint,
                shape_hint="z has the shape of mean, logvar and eps: [B, C, h, w]."):
        return False
    if not run_cases("your gaussian_kl", gaussian_kl, _gaussian_kl_cases(seed), "", hint_for=_gaussian_hint,
                shape_hint="The KL is one number per image, [B]: sum over the latent's dims (1, 2, 3) and keep "
                           "the batch dim (e.g. `.sum(dim=(1, 2, 3))`)."):
        return False
    case = _reparameterize_cases(seed + 100)[0]
    mean, logvar = (a.clone().requires_grad_(True) for a in case.args[:2])
    eps = case.args[2]
    try:
        z = reparameterize(mean, logvar, eps)
        kl = gaussian_kl(mean, logvar)
    except Exception as err:  # noqa: BLE001 - e.g. .numpy() on a tensor that requires grad
        return verdict(False, f"your functions give the right numbers, but fail on inputs that require gradients "
                               f"({type(err).__name__}: {err}). Stay with torch operations on the tensors, so that "
                               "gradients can flow to mean and logvar.")
    if not (isinstance(z, torch.Tensor) and z.requires_grad):
        return verdict(False, "your reparameterize gives the right numbers, but z carries no gradient back to mean "
                               "and logvar (was something detached, rebuilt with torch.tensor, or computed under "
                               "torch.no_grad?). The trick exists so that the encoder learns through the sample.")
    grad_mean, grad_logvar = torch.autograd.grad(z.sum(), (mean, logvar), allow_unused=True)
    want_logvar = 0.5 * torch.exp(0.5 * case.args[1]) * eps
    if grad_mean is None or not close(grad_mean, torch.ones_like(grad_mean)):
        return verdict(False, "your reparameterize gives the right numbers, but dz/dmean is not 1: part of the "
                               "path from the mean to z was detached.")
    if grad_logvar is None or not close(grad_logvar, want_logvar):
        return verdict(False, "your reparameterize gives the right numbers, but dz/dlogvar is not std * eps / 2: "
                               "the path from logvar to z was detached, so the encoder could not learn its variances.")
    if not (isinstance(kl, torch.Tensor) and kl.requires_grad):
        return verdict(False, "your gaussian_kl gives the right numbers, but carries no gradient back to mean and "
                               "logvar: the KL term could not pull the encoder's posteriors towards N(0, I).")
    return verdict(True, "z = mean + exp(logvar / 2) * eps and KL = 1/2 sum(mean^2 + var - 1 - logvar) match "
                          "DiagonalGaussianDistribution.sample() and .kl() on 3 posteriors and the prior, and "
                          "gradients flow through both to mean and logvar.")


# --------------------------------------------------------------------------- chapter 4: the latent data path


class ProbeDecoder(torch.nn.Module):
    """A fixed stand-in decoder for :func:`check_latent_path`: latents [B, C, h, w] -> images [B, 3, 4h, 4w]
    through a fixed 1x1 mixing of the channels and nearest upsampling. Its images reach well beyond [-1, 1]
    (as a real decoder's may, for latents a sampler makes), so a clamp shows."""

    def __init__(self, channels: int):
        super().__init__()
        g = torch.Generator().manual_seed(404)
        self.register_buffer("mix", 1.5 * torch.randn(3, channels, generator=g))  # [3, C]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = torch.einsum("oc,bchw->bohw", self.mix, z)  # [B, 3, h, w]
        return torch.nn.functional.interpolate(images, scale_factor=4, mode="nearest")  # [B, 3, 4h, 4w]


def _latent_moments(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, float, float, str]]:
    """(moments [B, 2C, h, w], eps [B, C, h, w], scale, shift, description), like cached posteriors."""
    g = torch.Generator().manual_seed(seed + 44)
    out = []
    for B, C, scale, shift in [(3, 4, 0.81, 0.0), (2, 4, 0.7, 0.85), (4, 16, 1.53, -0.3)]:
        mean = 0.9 + 1.2 * torch.randn(B, C, 8, 8, generator=g)  # a channel offset, as vae-small's latents have
        logvar = torch.empty(B, C, 8, 8).uniform_(-4.0, -1.0, generator=g)  # std 0.14 to 0.6: visible noise
        eps = torch.randn(B, C, 8, 8, generator=g)
        out.append((torch.cat([mean, logvar], dim=1), eps, scale, shift,
                    f"moments of [{B}, {C}, 8, 8] latents, scale {scale:g}, shift {shift:g}"))
    return out


def _to_latent_cases(seed: int) -> list[Case]:
    cases = []
    for moments, eps, s, shift, description in _latent_moments(seed):
        mean, logvar = moments.chunk(2, dim=1)  # [B, C, h, w] each
        std = torch.exp(0.5 * logvar)
        z = mean + std * eps
        mistakes = {
            "you used the posterior mean: the diffusion model trains on samples z = mean + std * eps (LDM draws "
            "one per batch), so that it sees the posterior's spread": (mean - shift) * s,
            "the moments hold the log-variance: std = exp(logvar / 2), not exp(logvar)":
                (mean + torch.exp(logvar) * eps - shift) * s,
            "shift and scale in the wrong order: subtract the shift from z first, then scale, (z - shift) * s "
            "(SD3 and Flux); z * s - shift shifts by the wrong amount": z * s - shift,
            "the shift is missing: (z - shift) * s, as SD3 and Flux (LDM's shift is 0)": z * s,
            "the scale is missing: (z - shift) * s, so that the data has about unit variance": z - shift,
            "you divided by the scale: the data is (z - shift) * s; 1 / s is for decoding": (z - shift) / s,
            "the moments are [mean, logvar] along the channels: the first half is the mean":
                (logvar + torch.exp(0.5 * mean) * eps - shift) * s,
        }
        cases.append(Case((moments, eps, s, shift), (z - shift) * s, description, mistakes))
    return cases


def _decode_cases(seed: int) -> list[Case]:
    cases = []
    g = torch.Generator().manual_seed(seed + 45)
    for moments, _eps, s, shift, _description in _latent_moments(seed):
        B, C = moments.shape[0], moments.shape[1] // 2
        decoder = ProbeDecoder(C)
        z_gen = 1.3 * torch.randn(B, C, 8, 8, generator=g)  # what a sampler returns: unbounded
        with torch.no_grad():
            expected = decoder(z_gen / s + shift)
            mistakes = {
                "the 1/s is missing: undo the scaling before decoding, decoder(z / s + shift)": decoder(z_gen + shift),
                "shift and scale in the wrong order: undo them in reverse, first / s, then + shift":
                    decoder((z_gen + shift) / s),
                "you multiplied by the scale: decoding divides, decoder(z / s + shift)": decoder(z_gen * s + shift),
                "the shift is not added back: decoder(z / s + shift)": decoder(z_gen / s),
                "you clamped the latent to [-1, 1]: latents are not bounded like pixels (that is why the latent "
                "samplers do not clip x0_hat); clamp only the final images, for display":
                    decoder((z_gen / s + shift).clamp(-1, 1)),
                "you clamped the generated latent before unscaling it: latents are not bounded to [-1, 1]":
                    decoder(z_gen.clamp(-1, 1) / s + shift),
                "you clamped the decoded images: return the decoder's output as it is (the pipeline clamps for "
                "display; a metric or a second stage wants the raw images)": decoder(z_gen / s + shift).clamp(-1, 1),
            }
        description = f"generated latents [{B}, {C}, 8, 8], scale {s:g}, shift {shift:g}"
        cases.append(Case((z_gen, decoder, s, shift), expected, description, mistakes))
    return cases


@exercise(
    "to_latent: split the moments along the channels (``moments.chunk(2, dim=1)``: mean, then logvar), draw "
    "z = mean + exp(logvar / 2) * eps with the eps you are given, then shift and scale it.",
    "The order matters: the data is (z - shift) * s; decoding undoes it in reverse, decoder(z / s + shift).",
    "No clamp anywhere: a latent is not bounded to [-1, 1] like a pixel, and the decoder's output is returned "
    "as it is (the pipeline clamps the final images for display).",
)
def check_latent_path(to_latent: Callable, decode_latent: Callable, seed: int = 0) -> bool:
    """Check the data path of latent diffusion, both ways (Rombach et al. 2022, Sec. 3 and App. D.1; SD3's shift,
    Esser et al. 2024):

        to_latent(moments, eps, s, shift) -> (z - shift) * s,   z = mean + exp(logvar / 2) * eps     [B, C, h, w]
        decode_latent(z_gen, decoder, s, shift) -> decoder(z_gen / s + shift)                        [B, 3, H, W]

    ``moments`` [B, 2C, h, w] are a cached encoding (``LatentSplit``: the mean, then the log-variance, along
    the channels), ``eps`` ~ N(0, I) is given (use it: do not draw new noise), ``s`` the autoencoder's scaling
    factor s_z and ``shift`` its shift (0 for LDM's and vae-small's latents). ``decoder`` maps unscaled latents to
    images. Compared with ``course_lib.latents.LatentSplit.latents`` and ``AutoencoderKL.decode_latents``.
    Prints ``Correct!`` or which likely mistake it found; returns True if both are right.
    """
    if not (callable(to_latent) and callable(decode_latent)):
        return verdict(False, "check_latent_path takes two functions, to_latent(moments, eps, s, shift) and "
                               f"decode_latent(z_gen, decoder, s, shift); got {type(to_latent).__name__} and "
                               f"{type(decode_latent).__name__}.")
    if not run_cases("your to_latent", to_latent, _to_latent_cases(seed), "", hint_for=_gaussian_hint,
                     shape_hint="A latent has C channels, half the moments' 2C: [B, C, h, w]."):
        return False
    if not run_cases("your decode_latent", decode_latent, _decode_cases(seed), "",
                     shape_hint="decode_latent returns the decoder's images [B, 3, H, W]."):
        return False
    return verdict(True, "(z - shift) * s with z = mean + exp(logvar / 2) * eps, and decoder(z / s + shift) "
                          "without a clamp: the path between a cached encoding, the diffusion model and an image, "
                          "as LatentSplit.latents and AutoencoderKL.decode_latents take it.")
