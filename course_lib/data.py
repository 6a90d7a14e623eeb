"""Training data: CIFAR-10 as tensors in [-1, 1] from the first source that is there, any tensors as
a :class:`TensorSplit`, and :class:`StepBatches`, batches as a pure function of the training step.

CIFAR-10 comes from the first of these sources that is there:

1. an ImageFolder-layout directory (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) given by
   the ``root`` argument or the ``COURSE_CIFAR10_DIR`` environment variable;
2. torchvision's CIFAR-10 under the data root (``COURSE_DATA_DIR``, default ``data/``),
   downloaded only when asked for (``download=True``);
3. the small sample bundled in ``data/cifar10-sample`` (300 train + 50 test images per class),
   used automatically, with one printed line that says so.

Pixels are mapped from {0..255} to [-1, 1] by x / 127.5 - 1, the convention of DDPM (Ho et al. 2020).
Decoding 50,000 JPEG files takes a while, so decoded images are cached (uint8) under
``<data root>/cache``; the cache is keyed by the list of files, their sizes and times.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from . import config

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class DataSourceError(RuntimeError):
    """A configured data source is missing or malformed; the message names the path and the fix."""


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 {0..255} -> float32 [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def fixed_shuffle(n_items: int, n: int, seed: int = 0) -> torch.Tensor:
    """The first ``n`` of ``n_items`` indices in a fixed random order (seeded by ``seed``), [n]."""
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))[:n]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 {0..255} (clamped), for saving and display."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class TensorSplit(Dataset):
    """Tensors that share their first dimension, indexed together: item i is ``(t[i] for t in tensors)``.

    Anything a training loop draws batches of: CIFAR-10's (images, labels) (:class:`CIFAR10Split`),
    cached autoencoder latents and labels (chapter 4: [N, 4, 8, 8] and [N]), rectified-flow reflow
    pairs (chapter 5: (noise, sample), both [N, C, H, W]). ``source`` says where the tensors came from,
    in words, for a checkpoint card. :class:`StepBatches` turns one into step-indexed batches.
    """

    def __init__(self, *tensors: torch.Tensor, source: str = "tensors"):
        if not tensors:
            raise ValueError("TensorSplit needs at least one tensor, e.g. TensorSplit(latents, labels)")
        for k, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.ndim < 1:
                got = f"a {t.ndim}-d tensor" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"tensor {k} must be a tensor with a first (item) dimension, got {got}")
        lengths = [len(t) for t in tensors]
        if len(set(lengths)) != 1:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise ValueError(f"the tensors must have the same first dimension (one entry per item), got lengths "
                             f"{lengths} (shapes {shapes}); slice them to the same number of items")
        self.tensors: tuple[torch.Tensor, ...] = tuple(tensors)
        self.source = source

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """The items at ``index`` [B]: one [B, ...] tensor per stored tensor. ``generator`` is unused
        here (no augmentation); subclasses that augment draw their randomness from it."""
        return tuple(t[index] for t in self.tensors)

    def _like(self, tensors: tuple[torch.Tensor, ...]) -> "TensorSplit":
        """A split of the same kind and settings holding ``tensors`` (subclasses keep their settings)."""
        return TensorSplit(*tensors, source=self.source)

    def subset(self, n: int) -> "TensorSplit":
        """The first ``n`` items (views, no copy; same settings)."""
        return self._like(tuple(t[:n] for t in self.tensors))

    def sample(self, n: int, seed: int = 0) -> "TensorSplit":
        """``n`` items drawn through a fixed shuffle (:func:`fixed_shuffle`, seeded by ``seed``), so that
        every class appears even when the items come sorted by class. ``sample(m)`` is a prefix of
        ``sample(n)`` for ``m < n``: nested subsets of one order."""
        order = fixed_shuffle(len(self), n, seed)  # [n]
        return self._like(tuple(t[order] for t in self.tensors))

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape[1:])) for t in self.tensors)
        return f"TensorSplit(n={len(self)}, item shapes {shapes}, source={self.source!r})"


class CIFAR10Split(TensorSplit):
    """One split of CIFAR-10 held in memory: a :class:`TensorSplit` of (images, labels).

    ``images``: float32 [N, 3, 32, 32] in [-1, 1]; ``labels``: int64 [N];
    ``classes``: the ten class names; ``source``: where the images came from.
    With ``hflip=True``, ``__getitem__`` and :meth:`batch` flip each image left-right with
    probability 1/2 (the only augmentation DDPM used on CIFAR-10).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, source: str,
                 split: str, hflip: bool = False, classes: tuple[str, ...] = CIFAR10_CLASSES):
        if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"expected images of shape [N, 3, 32, 32], got {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        super().__init__(images, labels, source=source)
        self.split, self.hflip, self.classes = split, hflip, classes

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @images.setter
    def images(self, value: torch.Tensor) -> None:
        self.tensors = (value, self.tensors[1])

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    @labels.setter
    def labels(self, value: torch.Tensor) -> None:
        self.tensors = (self.tensors[0], value)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None):
        """Images and labels at ``index``, randomly flipped if ``hflip`` (using ``generator``)."""
        x, y = self.images[index], self.labels[index]  # [B, 3, 32, 32], [B]
        if self.hflip:
            flip = torch.rand(len(index), generator=generator) < 0.5  # [B]
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    def _like(self, tensors: tuple[torch.Tensor, ...]) -> "CIFAR10Split":
        images, labels = tensors
        return CIFAR10Split(images, labels, source=self.source, split=self.split, hflip=self.hflip,
                            classes=self.classes)

    def __repr__(self) -> str:
        return f"CIFAR10Split({self.split!r}, n={len(self)}, hflip={self.hflip}, source={self.source!r})"


@runtime_checkable
class Batchable(Protocol):
    """What :class:`StepBatches` draws from: a length and ``batch(index, generator)``.

    ``batch(index [B] int64, generator)`` returns the items at ``index`` (any structure, typically a
    tuple of [B, ...] tensors) and draws every random choice it makes (augmentation) from
    ``generator`` only, never from the global RNG: that is what makes a batch a pure function of
    the step. :class:`TensorSplit` and :class:`CIFAR10Split` are Batchable.
    """

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None): ...


class StepBatches:
    """Batches as a pure function of the step: ``batches(step) -> data.batch(index, generator)``.

    ``data`` is any :class:`Batchable` (a length and ``batch(index, generator)``): a CIFAR-10 split,
    a :class:`TensorSplit` of cached latents or reflow pairs. Each epoch is a fresh permutation
    drawn from a generator seeded by (seed, epoch), and the random choices of a batch (e.g. flips)
    come from a generator seeded by (seed, step). Because nothing depends on what was drawn
    before, a training run resumed at step s sees exactly the batches an uninterrupted run would
    have seen.
    """

    def __init__(self, data: Batchable, batch_size: int, seed: int = 0):
        if not isinstance(data, Batchable):
            raise TypeError(f"StepBatches needs data with a length and .batch(index, generator), got "
                            f"{type(data).__name__}; wrap tensors in TensorSplit(x, y, ...)")
        if batch_size > len(data):
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({len(data)} items)")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.steps_per_epoch = len(data) // batch_size  # the last partial batch is dropped
        self._perm_epoch, self._perm = -1, None

    def __call__(self, step: int):
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.data), generator=g), epoch
        index = self._perm[i * self.batch_size:(i + 1) * self.batch_size]  # [batch_size]
        batch_gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * step + 1)
        return self.data.batch(index, batch_gen)


# ----------------------------------------------------------------------------- sources

def _scan_image_folder(root: Path, split: str) -> list[tuple[Path, int]]:
    """List (file, label) pairs of ``root/split/<class>/*``, checking the layout."""
    fix = ("expected the ImageFolder layout <dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg "
           f"with the ten classes {', '.join(CIFAR10_CLASSES)}; point COURSE_CIFAR10_DIR (or root=) "
           "at such a folder, or unset it to use torchvision's copy or the bundled sample")
    if not root.exists():
        raise DataSourceError(f"CIFAR-10 folder {root} does not exist; {fix}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataSourceError(f"CIFAR-10 folder {root} has no '{split}' subfolder; {fix}")
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    missing = [c for c in CIFAR10_CLASSES if c not in present]
    if missing:
        raise DataSourceError(f"{split_dir} lacks the class folders {missing} (found {present}); {fix}")
    files = []
    for label, name in enumerate(CIFAR10_CLASSES):
        class_files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not class_files:
            raise DataSourceError(f"{split_dir / name} holds no image files (.jpg/.png); {fix}")
        files += [(p, label) for p in class_files]
    return files


def _decode_images(files: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    images = torch.empty((len(files), *IMAGE_SHAPE), dtype=torch.uint8)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    for i, (path, _) in enumerate(tqdm(files, desc="decoding images", disable=len(files) < 5000,
                                       mininterval=1.0)):
        try:
            with Image.open(path) as im:
                pixels = np.array(im.convert("RGB"))  # [H, W, 3] uint8
        except (OSError, UnidentifiedImageError) as err:
            raise DataSourceError(f"could not decode image {path}: {err}; delete or replace that file") from err
        if pixels.shape != (32, 32, 3):
            raise DataSourceError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, CIFAR-10 "
                                  "images are 32x32; this folder does not hold CIFAR-10")
        images[i] = torch.from_numpy(pixels).permute(2, 0, 1)  # [3, 32, 32]
    return images, labels


def _load_image_folder(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ImageFolder split, through a uint8 cache keyed by the file list."""
    files = _scan_image_folder(root, split)
    key = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        key.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = config.cache_dir() / f"cifar10-{split}-{key.hexdigest()[:16]}.pt"
    if cache.exists():
        try:
            cached = torch.load(cache, weights_only=True)
            return cached["images"], cached["labels"]
        except Exception:  # a broken cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    images, labels = _decode_images(files)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": images, "labels": labels}, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only data root only costs speed
        pass
    return images, labels


def _torchvision_available(root: Path) -> bool:
    return (root / "cifar-10-batches-py").is_dir()


def _load_torchvision(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root=str(root), train=(split == "train"), download=download)
    except RuntimeError as err:
        raise DataSourceError(f"torchvision's CIFAR-10 under {root} is missing or damaged ({err}); "
                              "call load_cifar10(download=True) to fetch it again, "
                              "or set COURSE_CIFAR10_DIR to an ImageFolder copy") from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 32, 32, 3] -> [N, 3, 32, 32]
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def describe_source(root: str | Path | None = None, download: bool = False) -> str:
    """Which source :func:`load_cifar10` would use, in words (checks nothing is malformed)."""
    folder = Path(root).expanduser().resolve() if root is not None else config.cifar10_dir()
    if folder is not None:
        return _folder_source(folder, root)
    if download or _torchvision_available(config.data_dir()):
        return f"torchvision CIFAR-10 at {config.portable_path(config.data_dir())}"
    return f"bundled sample {config.portable_path(config.sample_dir())}"


def _folder_source(folder: Path, root: str | Path | None) -> str:
    """An image folder in words, without the machine's absolute path (it goes into checkpoint cards)."""
    return f"image folder {config.portable_path(folder)}" + (" (COURSE_CIFAR10_DIR)" if root is None else "")


def source_kind(source: str) -> str:
    """"sample" for the bundled sample, "full" for a complete copy of CIFAR-10."""
    return "full" if source.startswith(("image folder", "torchvision")) else "sample"


def source_tag(source: str) -> str:
    """A file-name tag for a data source: "sample", "torchvision" or "folder-<name>" (the JPEG re-encodings in
    one folder and torchvision's original pixels give different statistics, so they get different files)."""
    if source.startswith("image folder "):
        name = source[len("image folder "):].split(" (")[0]
        return "folder-" + re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return "torchvision" if source.startswith("torchvision") else "sample"


def load_cifar10(split: str = "train", *, root: str | Path | None = None, download: bool = False,
                 hflip: bool = False, limit: int | None = None, verbose: bool = True) -> CIFAR10Split:
    """Load one CIFAR-10 split as tensors in [-1, 1] from the first source available.

    Args:
        split: ``"train"`` (50,000 images in the full set) or ``"test"`` (10,000).
        root: an ImageFolder-layout directory; overrides ``COURSE_CIFAR10_DIR``. A root that is
            given but missing or malformed is an error, not a silent fallback.
        download: let torchvision download the full data set into the data root if it is not there.
        hflip: random horizontal flips when items or batches are drawn.
        limit: keep only the first ``limit`` images (after a fixed shuffle, so all classes appear).
        verbose: print one line when falling back to the bundled sample.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root).expanduser().resolve() if root is not None else config.cifar10_dir()
    if folder is not None:
        images, labels = _load_image_folder(folder, split)
        source = _folder_source(folder, root)
    elif download or _torchvision_available(config.data_dir()):
        images, labels = _load_torchvision(config.data_dir(), split, download)
        source = f"torchvision CIFAR-10 at {config.portable_path(config.data_dir())}"
    else:
        sample = config.sample_dir()
        images, labels = _load_image_folder(sample, split)
        source = f"bundled sample {config.portable_path(sample)}"
        if verbose:
            print(f"Using the bundled CIFAR-10 sample ({len(images)} {split} images, {sample}). "
                  "For the full set: load_cifar10(download=True), or set COURSE_CIFAR10_DIR "
                  "to an ImageFolder copy.")
    if limit is not None:  # pick with CIFAR10Split.sample's shuffle, before converting to float
        order = fixed_shuffle(len(images), limit)
        images, labels = images[order], labels[order]
    return CIFAR10Split(to_unit_range(images), labels, source=source, split=split, hflip=hflip)
