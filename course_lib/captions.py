"""Captions for CIFAR-10, made from its labels: data, not text encoding (that is ``course_lib.text``).

CIFAR-10 has labels, not captions, so a caption is made from the label: a template ("a blurry
photo of the {}") filled with one of the class's synonyms ("car", "automobile", "sedan"), with
the article fixed ("an automobile"). Which template and which synonym are drawn with torch's RNG
(:func:`random_captions`), so a training loop that seeds every step gets the same captions on a
rerun; the shipped text-to-image checkpoints were trained on exactly these draws.

For sampling and evaluation there are fixed prompts: :func:`class_prompt` ("a photo of a cat") and
:func:`unseen_prompt` ("a photo of a kitten", a word no caption contains, see :data:`UNSEEN_NAMES`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import CIFAR10_CLASSES

__all__ = [
    "SYNONYMS",
    "TEMPLATES",
    "caption",
    "random_captions",
    "class_prompt",
    "UNSEEN_NAMES",
    "unseen_prompt",
]

#: names for each class, in the order of ``CIFAR10_CLASSES``; the first one is the canonical name
#: used by :func:`class_prompt`. Only words that fit every image of the class (CIFAR-10's "frog"
#: class holds toads too, its "ship" class boats of all sizes).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "airplane": ("airplane", "plane", "aeroplane", "jet"),
    "automobile": ("car", "automobile", "sedan"),
    "bird": ("bird",),
    "cat": ("cat", "house cat"),
    "deer": ("deer",),
    "dog": ("dog",),
    "frog": ("frog", "toad"),
    "horse": ("horse",),
    "ship": ("ship", "boat", "vessel"),
    "truck": ("truck", "lorry"),
}
assert tuple(SYNONYMS) == CIFAR10_CLASSES

#: caption templates; "{}" is replaced by a synonym. Write "a" before "{}": :func:`caption` turns it
#: into "an" where the next word starts with a vowel. The first template is the canonical prompt.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a blurry photo of the {}",
    "a small {}",
    "an image of a {}",
    "a close-up photo of a {}",
    "a low-resolution photo of a {}",
    "a picture of the {}",
    "a cropped photo of a {}",
    "a bright photo of a {}",
    "a dark photo of the {}",
    "a {} in the picture",
    "a pixelated photo of the {}",
)


def _fix_articles(text: str) -> str:
    """"a" -> "an" before a word starting with a vowel letter, and back ("an car" -> "a car").

    The vowel-letter rule is right for every word of the captions (it would be wrong for "an
    hour" or "a unicorn", which do not occur here).
    """
    words = text.split(" ")
    for i, (word, nxt) in enumerate(zip(words, words[1:])):
        if word in ("a", "an"):
            words[i] = "an" if nxt[:1].lower() in ("a", "e", "i", "o", "u") else "a"
    return " ".join(words)


def _class_index(label: int | str) -> int:
    if isinstance(label, str):
        if label not in CIFAR10_CLASSES:
            raise ValueError(f"unknown class name {label!r}; choose from {CIFAR10_CLASSES}")
        return CIFAR10_CLASSES.index(label)
    label = int(label)
    if not 0 <= label < len(CIFAR10_CLASSES):
        raise ValueError(f"label must be a CIFAR-10 class index in 0..{len(CIFAR10_CLASSES) - 1}, got {label}")
    return label


def caption(label: int | str, template: int | str, synonym: int) -> str:
    """The caption of class ``label`` (index or name) from ``template`` and the ``synonym``-th name.

    ``template`` is an index into :data:`TEMPLATES` or a string with one "{}". Pure: the same
    arguments give the same caption. Example: ``caption(1, 3, 1) == "an image of an automobile"``.
    """
    names = SYNONYMS[CIFAR10_CLASSES[_class_index(label)]]
    if isinstance(template, str):
        if template.count("{}") != 1:
            raise ValueError(f"a template needs exactly one '{{}}' where the class name goes, got {template!r}")
        text = template
    else:
        if not 0 <= int(template) < len(TEMPLATES):
            raise ValueError(f"template index must be in 0..{len(TEMPLATES) - 1}, got {template}")
        text = TEMPLATES[int(template)]
    if not 0 <= int(synonym) < len(names):
        raise ValueError(f"class {CIFAR10_CLASSES[_class_index(label)]!r} has {len(names)} names {names}; "
                         f"synonym index {synonym} is out of range")
    return _fix_articles(text.format(names[int(synonym)]))


def random_captions(labels: torch.Tensor | Sequence[int], generator: torch.Generator | None = None) -> list[str]:
    """One caption per label, with template and synonym drawn uniformly by torch's RNG.

    labels [B] class indices. ``generator`` None uses the global RNG (so ``torch.manual_seed``
    before the call, as a training loop seeded per step does, fixes the captions).
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                            torch.bool):
        raise TypeError(f"labels must be a 1-D integer tensor [B] of class indices, got dtype {labels.dtype} "
                        f"and shape {tuple(labels.shape)}; pass the dataset's labels, e.g. split.labels[index]")
    labels = labels.long().cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"labels must be in 0..{len(CIFAR10_CLASSES) - 1}, got values from "
                         f"{int(labels.min())} to {int(labels.max())}")
    counts = torch.tensor([len(SYNONYMS[c]) for c in CIFAR10_CLASSES])[labels]  # [B]
    templates = torch.randint(len(TEMPLATES), (len(labels),), generator=generator)  # [B]
    synonyms = (torch.rand(len(labels), generator=generator) * counts).long().clamp_max(counts - 1)  # [B]
    return [caption(int(y), int(t), int(s)) for y, t, s in zip(labels, templates, synonyms)]


def class_prompt(label: int | str) -> str:
    """The canonical prompt of a class for sampling: template 0 with the class's first name,
    e.g. ``class_prompt(3) == "a photo of a cat"``, ``class_prompt("automobile") == "a photo of a car"``."""
    return caption(label, 0, 0)


#: one everyday word per class that no caption contains, so the small encoder reads it as <unk>:
#: the test of what a pretrained text encoder brings. Chosen as common kinds of each class (before
#: any image was generated); all-MiniLM-L6-v2 places "a photo of a <word>" nearest to its own class's
#: prompt among the ten (cosine similarity of the mean-pooled vectors, notebook 03 section 7).
UNSEEN_NAMES: dict[str, str] = {
    "airplane": "airliner", "automobile": "limousine", "bird": "sparrow", "cat": "kitten", "deer": "elk",
    "dog": "puppy", "frog": "amphibian", "horse": "stallion", "ship": "sailboat", "truck": "pickup",
}
assert tuple(UNSEEN_NAMES) == CIFAR10_CLASSES


def unseen_prompt(label: int | str) -> str:
    """:func:`class_prompt` with the class's word from :data:`UNSEEN_NAMES`, never seen in training:
    ``unseen_prompt(3) == "a photo of a kitten"``, ``unseen_prompt(0) == "a photo of an airliner"``."""
    return _fix_articles(TEMPLATES[0].format(UNSEEN_NAMES[CIFAR10_CLASSES[_class_index(label)]]))
