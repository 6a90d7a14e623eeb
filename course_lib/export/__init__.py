"""The bridge to diffusers: the course's models as the library the field uses, and published models as the course's.

The course's blocks are written to compute what their diffusers twins compute; what differs is the names (the
course keeps the papers' and the reference code's: LDM's ``encoder.down[i].block[j]``, BFL's ``img_attn.qkv``),
a few tensor shapes (diffusers' attention projections are ``nn.Linear`` where LDM's are 1x1 convolutions, and the
course fuses q, k and v), and which layout details are options. Each map here turns a course model into a
diffusers ``(config, state_dict)`` and back, bit for bit, and refuses, naming every difference, a model whose
layout the other side cannot compute: it never writes a model that loads and computes something else.

    course                                   diffusers                            map
    unet.UNet (chapters 1-2)                 UNet2DModel                          course_lib.export.unet
    unet.UNet with context_dim (3-5)         UNet2DConditionModel                 course_lib.export.unet
    mmdit.MMDiT (chapter 6)                  FluxTransformer2DModel               course_lib.export.mmdit
    autoencoder.AutoencoderKL (chapter 4)    AutoencoderKL                        course_lib.export.autoencoder
    processes.DDPMProcess                    DDPMScheduler, DDIMScheduler         course_lib.export.schedulers
    processes.RectifiedFlowProcess           FlowMatchEulerDiscreteScheduler      course_lib.export.schedulers
    a checkpoint with its card               a folder (from_pretrained)           course_lib.export.folders

The shipped checkpoints: every UNet (``ddpm-small``, ``ch2-*``, ``cond-small*``, ``ldm-small``, ``rf-small*``,
``rf2-small``) and ``mmdit-small`` export, since each layout option of the course's UNet (GroupNorm eps, downsampling
padding, the sinusoid's frequency shift, AdaGN) has a diffusers twin; ``vae-small`` does not (GroupNorm eps 1e-5 and
symmetric padding, which diffusers' ``AutoencoderKL`` cannot express), so the latent models' folders come without
``vae/`` and their latents decode with the course's ``vae-small``; the classifier has no diffusers counterpart.

The command line (``__main__.py``)::

    python -m course_lib.export data/checkpoints/ddpm-small.safetensors ddpm-small-diffusers/   # export
    python -m course_lib.export --import ddpm-small-diffusers/ ddpm-small-again.safetensors    # import

and in Python, a model and its twin in memory: ``theirs = to_diffusers(model)``, ``ours = from_diffusers(theirs)``.
Exporting and importing folders needs no diffusers; building a diffusers object does (the ``bridge`` extra:
``pip install -e '.[bridge]'``). ``tests/test_export.py`` proves each map by round trip: the same outputs in both
libraries, the same samples from the same noise with diffusers' schedulers, and the same weights after export and
import.

A published model to study in chapter 1 (it needs a network, and nothing here downloads): Ho et al.'s CIFAR-10
DDPM, converted to diffusers as ``google/ddpm-cifar10-32``, a 35.7M-parameter ``UNet2DModel`` in DDPM's TensorFlow
layout (GroupNorm eps 1e-6, stride-2 convolutions padded at the right and bottom, the sinusoid's frequency shift 1:
it imports as ``UNetConfig.paper(norm_eps=1e-6, downsample_padding="right_bottom", freq_shift=1, dropout=0.0)``)
whose scheduler samples with sigma_t^2 = beta_t (``fixed_large``; the card's ``imported_from.sampler_hints``).
Source of these settings: the published configs on huggingface.co (the UNet2DModel config of snapshot ff056c9 of
google/ddpm-cifar10-32, as saved into repositories derived from it; the repository's own scheduler_config.json).
Its parts may sit in subfolders or at the top of the folder: the importer reads both. The tests build a folder in
exactly that configuration, at a sixteenth of the width, and import it (``tests/test_export.py``)::

    from huggingface_hub import snapshot_download           # Python, once: the folder lands in the HF cache
    folder = snapshot_download("google/ddpm-cifar10-32")

    python -m course_lib.export --import FOLDER data/checkpoints/ddpm-cifar10-32.safetensors   # shell

    pipe = Pipeline.from_checkpoint("data/checkpoints/ddpm-cifar10-32.safetensors")           # Python again
    images = pipe.generate(num_images=16, num_steps=50)                      # DDIM, 50 steps
    images = pipe.generate(num_images=16, sampler="ddpm", variance="beta")   # Ho et al.'s: 1000 steps, minutes

Chapter 1's explorers, the classifier score and ``python -m course_lib.evaluation ... --num-samples 2000`` then work
on it. Its published FID is 3.17 (Ho et al. 2020, Table 1: 50,000 samples); the course's FID command measures
FID-2k, which is biased upwards at 2,000 samples, so the two numbers do not compare: compare it with the course's
models at the same N.
"""

from .autoencoder import autoencoder_from_diffusers, autoencoder_to_diffusers
from .folders import export_checkpoint, from_diffusers, import_folder, load_folder, to_diffusers
from .maps import LayoutError
from .mmdit import flux_inputs, flux_output, mmdit_from_diffusers, mmdit_to_diffusers
from .schedulers import (ddim_scheduler_config, ddpm_scheduler_config, flow_scheduler_config, process_from_scheduler,
                         scheduler_for)
from .unet import unet_from_diffusers, unet_to_diffusers

__all__ = ["LayoutError", "autoencoder_to_diffusers", "autoencoder_from_diffusers", "unet_to_diffusers",
           "unet_from_diffusers", "mmdit_to_diffusers", "mmdit_from_diffusers", "flux_inputs", "flux_output",
           "ddpm_scheduler_config", "ddim_scheduler_config", "flow_scheduler_config", "scheduler_for",
           "process_from_scheduler", "to_diffusers", "from_diffusers", "export_checkpoint", "load_folder",
           "import_folder"]
