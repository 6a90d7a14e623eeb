"""One generation path for every model of the course: prompts -> guidance -> sampler -> decoder.

    prompts --encode--> tau(y), tau("")                          (text-conditional denoisers only)
            --classifier-free guidance--> model(x, t)            (course_lib.guidance, Ho & Salimans 2022)
            --process.sample--> x_0                              (DDPM/DDIM today; rectified flow in chapter 5)
            --autoencoder.decode_latents--> images in [-1, 1]    (latent models, chapter 4)

A :class:`Pipeline` holds the three parts and nothing else: a ``denoiser`` (any network of the
course), a ``process`` (``course_lib.processes``) and optionally an ``autoencoder`` whose
``decode_latents(z)`` maps the denoiser's space to images (``course_lib.autoencoder.AutoencoderKL``:
undo the latent scaling factor, then decode). The unconditional UNet of chapter 1, the
text-to-image UNet of chapter 3, a latent model and an MM-DiT all generate through it; the
evaluation command and the notebooks too.

What a denoiser provides (the interface, no base class needed):

* ``forward(x, t)`` or, for a text-conditional one, ``forward(x, t, context, context_mask)``;
* ``sample_shape``: (C, H, W) of what it denoises (latents for a latent model);
* ``text_conditional``: True when it reads prompts, and then ``encode(prompts) -> TextContext``.

Usage::

    pipe = Pipeline.from_checkpoint("data/checkpoints/cond-small.safetensors")
    images = pipe.generate(["a photo of a cat"], guidance=3.0, num_steps=50)  # [1, 3, 32, 32]
    pipe = Pipeline.from_checkpoint("data/checkpoints/ddpm-small.safetensors")
    images = pipe.generate(num_images=16, sampler="ddpm")                     # ancestral, all T steps
    with pipe.count_nfe() as nfe:                                               # network evaluations
        pipe.generate(["a photo of a cat"], guidance=3.0, num_steps=25)
    nfe.per_image                                                             # 50.0: two passes a step
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from . import config
from .checkpoint import read_card
from .guidance import BakedGuidance, ClassifierFreeGuidance, EmbeddedGuidance
from .models import model_from_checkpoint
from .processes import Process, process_from_card
from .samplers import SamplerOutput

__all__ = ["Pipeline", "NFECount", "SHARPER_DECODERS"]

#: decoders that replace an autoencoder's own when a latent model generates (chapter 4): an autoencoder whose
#: decoder was fine-tuned with its encoder frozen reads the same latents (its card's ``training.source_sha256``
#: names the original), so every latent model trained on the original keeps its weights and decodes sharper.
#: ``Pipeline.from_checkpoint(..., decoder="original")`` uses the autoencoder a model was trained with instead.
SHARPER_DECODERS: dict[str, str] = {"vae-small.safetensors": "vae-small-ft.safetensors"}


class NFECount:
    """Network function evaluations, counted while a pipeline samples (:meth:`Pipeline.count_nfe`).

    Every row of every batch that enters the denoiser's forward pass is one evaluation for one image, so
    guidance's doubled batch [x; x] counts two per image and step, the w = 1 and w = 0 shortcuts one, and
    Heun's two calls per step two. ``per_image`` = rows / images; the decoder is not a network evaluation of
    the denoiser and is not counted.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.images = 0

    @property
    def per_image(self) -> float:
        """Denoiser forward passes per generated image (0 before anything was generated)."""
        return self.rows / self.images if self.images else 0.0

    def __repr__(self) -> str:
        return f"NFECount({self.per_image:g} per image: {self.rows} rows for {self.images} images)"



class Pipeline:
    """A denoiser, the process it was trained with, and optionally an autoencoder: what ``generate`` needs.

    denoiser:    the network (see the module docstring for its interface)
    process:     a :class:`~course_lib.processes.Process`; its ``samplers`` are what ``generate(sampler=)`` accepts
    autoencoder: None for pixel-space models; else a module whose ``decode_latents(z)`` turns samples into images
    card:        the checkpoint card the pipeline was loaded from (``from_checkpoint``), else None

    ``autoencoder_name`` says which checkpoint the decoder came from (``from_checkpoint``; None otherwise).
    """

    def __init__(self, denoiser: nn.Module, process: Process, autoencoder: nn.Module | None = None,
                 card: dict | None = None):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a course_lib.processes.Process (e.g. DDPMProcess()), got "
                            f"{type(process).__name__}")
        missing = [name for name in ("sample_shape", "text_conditional") if not hasattr(denoiser, name)]
        if missing:
            raise TypeError(f"{type(denoiser).__name__} is not a denoiser of the course: it lacks {missing} (see "
                            "course_lib.generation for the interface; a classifier checkpoint cannot generate)")
        self.denoiser, self.process, self.autoencoder, self.card = denoiser, process, autoencoder, card
        self.autoencoder_name: str | None = None  # the checkpoint the autoencoder came from (from_checkpoint)
        self._counters: list[NFECount] = []

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", weights: str = "model",
                        autoencoder: nn.Module | None = None, decoder: str = "default") -> "Pipeline":
        """The denoiser of a checkpoint with the process its card names (``training.process``) and, for a
        latent model, the autoencoder it names (``training.autoencoder``, looked up in the checkpoint
        directory and checked against the SHA-256 of its weights) unless ``autoencoder`` is given.

        decoder: "default" decodes with the sharper decoder :data:`SHARPER_DECODERS` names for that autoencoder
                 when its file is there (checked to read the same latents), else with the autoencoder itself;
                 "original" always with the autoencoder the model was trained with."""
        if decoder not in ("default", "original"):
            raise ValueError(f"decoder must be 'default' (the sharper decoder where one exists) or 'original', "
                             f"got {decoder!r}; pass autoencoder= for any other")
        denoiser, card = model_from_checkpoint(path, weights=weights, device=device)
        named = card.get("training", {}).get("autoencoder")
        name = None
        if autoencoder is None and named is not None:
            autoencoder, name = _autoencoder_from_card(named, path, device, sharper=decoder == "default")
        pipeline = cls(denoiser, process_from_card(card), autoencoder, card)
        pipeline.autoencoder_name = name
        return pipeline

    @property
    def text_conditional(self) -> bool:
        """True when the denoiser reads prompts (``generate(prompts)``), False for ``generate(num_images=N)``."""
        return bool(self.denoiser.text_conditional)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's floating dtype. Samplers keep x in float32; each call casts x to this dtype
        (a model cast with ``.half()`` for a GPU, or ``.double()``) and its output back."""
        return next(p.dtype for p in self.denoiser.parameters() if p.is_floating_point())

    def __repr__(self) -> str:
        decoder = f", autoencoder={type(self.autoencoder).__name__}" if self.autoencoder is not None else ""
        return f"Pipeline(denoiser={type(self.denoiser).__name__}, process={self.process}{decoder})"

    @contextmanager
    def count_nfe(self) -> Iterator[NFECount]:
        """Count the denoiser's forward passes per image (NFE) of every ``generate`` inside the block.

        A forward pre-hook on the denoiser counts the rows of each batch it evaluates (:class:`NFECount`)."""
        count = NFECount()
        handle = self.denoiser.register_forward_pre_hook(
            lambda module, args, kwargs: setattr(count, "rows", count.rows + len(args[0] if args else kwargs["x"])),
            with_kwargs=True)
        self._counters.append(count)
        try:
            yield count
        finally:
            handle.remove()
            self._counters.remove(count)

    # ---- the steps

    @torch.no_grad()
    def guided(self, prompts: Sequence[str],
               guidance: float = 3.0) -> ClassifierFreeGuidance | EmbeddedGuidance | BakedGuidance:
        """``model(x, t)`` for the sampler: out(tau("")) + w (out(tau(y)) - out(tau(""))) (Ho & Salimans 2022),
        with w = ``guidance``; for a guidance-distilled denoiser (``guidance_embedded``, chapter 7) its one pass
        with w as an input (:class:`~course_lib.guidance.EmbeddedGuidance`); for a MeanFlow student distilled at
        one w (``interval_embedded``) its one conditional pass (:class:`~course_lib.guidance.BakedGuidance`), and
        ``guidance`` must be the w its card names.

        One image per prompt; the empty caption "" is the unconditional context. w = 1 is the
        conditional model alone, w = 0 the unconditional one. (Ho & Salimans write the same
        combination with w' = w - 1; Stable Diffusion's guidance scale is this w.)
        """
        prompts = _prompt_list(prompts, "guided")
        if not self.text_conditional:
            raise ValueError(f"{type(self.denoiser).__name__} is not text-conditional: it reads no prompts; "
                             "call generate(num_images=N) without prompts")
        cond = self.denoiser.encode(prompts)  # [B, L, D]
        if getattr(self.denoiser, "interval_embedded", False):  # MeanFlow distilled at one w: one pass, no CFG
            trained = (self.card or {}).get("training", {}).get("meanflow", {}).get("guidance")
            if trained is not None and float(guidance) != float(trained):
                raise ValueError(f"this MeanFlow student learned its teacher's guided ODE at w = {trained:g}, and its "
                                 f"steps follow that ODE only: generate(..., guidance={trained:g})")
            return BakedGuidance(self.denoiser, cond.tokens, cond.mask)
        if getattr(self.denoiser, "guidance_embedded", False):
            return EmbeddedGuidance(self.denoiser, cond.tokens, cond.mask, guidance)
        uncond = self.denoiser.encode([""])  # [1, L, D], shared by every image
        return ClassifierFreeGuidance(self.denoiser, cond.tokens, cond.mask, uncond.tokens, uncond.mask, guidance)

    def decode(self, z: torch.Tensor, autoencoder: nn.Module | None = None) -> torch.Tensor:
        """Images for samples ``z``: decoded by ``autoencoder`` (default: the pipeline's) and clamped to [-1, 1];
        ``z`` itself for a pixel-space pipeline."""
        autoencoder = autoencoder if autoencoder is not None else self.autoencoder
        if autoencoder is None:
            return z
        return autoencoder.decode_latents(z).clamp(-1.0, 1.0)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | None = None, *, num_images: int | None = None,
                 guidance: float = 1.0, sampler: str | None = None, num_steps: int | None = None,
                 x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 return_trajectory: bool = False, progress: bool = False, decode: bool = True,
                 size: tuple[int, int] | None = None, **sampler_options) -> torch.Tensor | SamplerOutput:
        """Generate images: one per prompt (text-conditional denoisers) or ``num_images`` (unconditional ones).

        guidance:   classifier-free guidance weight w (text-conditional only; 1 = the conditional model)
        sampler:    one of ``process.samplers`` (default: the first, "ddim" for DDPM) and ``num_steps``
        x_T:        the starting noise [B, *sample_shape] (else drawn from ``generator``, or the global RNG)
        return_trajectory: a :class:`~course_lib.samplers.SamplerOutput` instead of the images; its
                    ``trajectory`` stays in the denoiser's space, its ``sample`` is decoded
        decode:     False: return the samples in the denoiser's space (a latent model's latents), undecoded
        size:       (H, W) of the grid to sample in the denoiser's space, instead of the one it was trained on
                    (``sample_shape``): a convolutional UNet and a RoPE transformer accept other sizes (chapter 6
                    measures what comes out); a latent grid decodes to an image 4x its size here
        sampler_options: passed to the process's sampler (DDPM: ``eta``, ``clip_x0``, ``variance``, ``timesteps``);
                    with an autoencoder attached, the process's ``latent_options`` are the defaults
                    (DDPM: ``clip_x0=False``, since latents are not bounded to [-1, 1])

        Returns images [B, C, H, W] on the denoiser's device (in [-1, 1] for a decoder). The denoiser is
        in eval mode while it samples and goes back to its previous mode afterwards.
        """
        if prompts is not None:
            prompts = _prompt_list(prompts, "generate")
            if num_images is not None and num_images != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but num_images={num_images}: one image per prompt")
            batch = len(prompts)
        else:
            if self.text_conditional:
                raise ValueError(f"{type(self.denoiser).__name__} is text-conditional: give prompts, e.g. "
                                 "generate(['a photo of a cat'], guidance=3.0) (the empty prompt '' asks for the "
                                 "unconditional model)")
            if guidance != 1.0:
                raise ValueError(f"guidance={guidance}: classifier-free guidance needs a text-conditional denoiser "
                                 "and prompts")
            if num_images is None:
                num_images = len(x_T) if x_T is not None else None
            if num_images is None or num_images < 1:
                raise ValueError(f"say how many images: generate(num_images=N) with N >= 1 (or give x_T), got {num_images}")
            batch = num_images
        channels, *trained = self.denoiser.sample_shape
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size={size}: give the grid's (height, width), e.g. size=(16, 16)")
        shape = (batch, channels, *(tuple(size) if size is not None else trained))
        if x_T is not None and tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but {batch} image(s) need {shape}; give one "
                             "noise tensor per image")
        if self.autoencoder is not None:
            sampler_options = {**self.process.latent_options, **sampler_options}
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            model = self.guided(prompts, guidance) if prompts is not None else self.denoiser
            if self.dtype != torch.float32:
                model = _in_dtype(model, self.dtype)
            out = self.process.sample(model, shape, x_T=x_T, sampler=sampler, num_steps=num_steps,
                                      generator=generator, return_trajectory=return_trajectory,
                                      progress=progress, device=self.device, **sampler_options)
        finally:
            self.denoiser.train(was_training)
        for count in self._counters:
            count.images += batch
        if not decode:
            return out
        if return_trajectory:
            out.sample = self.decode(out.sample)
            return out
        return self.decode(out)


def _autoencoder_from_card(named: dict, path: str | Path, device: str | torch.device,
                           sharper: bool) -> tuple[nn.Module, str]:
    """(autoencoder, its checkpoint's name): the one a latent model's card names, refused if its hash differs from
    the one trained on; with ``sharper``, its replacement of :data:`SHARPER_DECODERS` where that file exists and
    reads the same latents."""
    replacement = config.checkpoint_dir() / SHARPER_DECODERS.get(named["checkpoint"], named["checkpoint"])
    if sharper and replacement.name != named["checkpoint"] and replacement.is_file():
        ae_path, card = replacement, read_card(replacement)
        if card.get("training", {}).get("source_sha256") != named["sha256"]:
            raise ValueError(f"{replacement} is named as the sharper decoder of {named['checkpoint']}, but its card "
                             "says it was fine-tuned from another autoencoder: restore the file, or pass "
                             "decoder='original'")
    else:
        ae_path = config.checkpoint_dir() / named["checkpoint"]
        if not ae_path.is_file():
            raise FileNotFoundError(f"{path} is a latent model: it needs the autoencoder {ae_path}, which does not "
                                    "exist; put it there (or set COURSE_CHECKPOINT_DIR), or pass autoencoder=")
        card = read_card(ae_path)
        if card.get("sha256") != named["sha256"]:
            raise ValueError(f"{ae_path} is not the autoencoder {path} was trained with (weights' SHA-256 "
                             f"{named['sha256'][:12]}...): its latents mean something else to the denoiser. Restore "
                             "that file, or pass autoencoder= to use another one knowingly")
    shift = card.get("model_config", {}).get("shift_factor", 0.0)
    if shift != named.get("shift_factor", 0.0):
        raise ValueError(f"{ae_path} shifts latents by {shift}, but {path} learnt latents shifted by "
                         f"{named.get('shift_factor', 0.0)}; pass autoencoder= to use another one knowingly")
    return model_from_checkpoint(ae_path, device=device)[0], ae_path.stem


def _in_dtype(model, dtype: torch.dtype):
    """``model(x, t)`` called with x in ``dtype``, returning float32 (the samplers' arithmetic stays float32)."""
    return lambda x, t: model(x.to(dtype), t).float()


def _prompt_list(prompts: Sequence[str], where: str) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError(f"{where} takes a list of prompts, got one string {prompts!r}; wrap it in a list: "
                        f"[{prompts!r}]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{where} needs at least one prompt")
    return prompts
