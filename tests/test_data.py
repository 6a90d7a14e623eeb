from pathlib import Path

import pytest
import torch
from PIL import Image

from course_lib import data
from course_lib.data import CIFAR10_CLASSES, CIFAR10Split, DataSourceError, StepBatches, TensorSplit, load_cifar10


def write_png(img: torch.Tensor, path: str) -> None:
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def make_image_folder(root: Path, per_class: int = 3, size: int = 32, classes=CIFAR10_CLASSES,
                      splits=("train", "test")) -> dict:
    """Write a tiny CIFAR-10-shaped ImageFolder of PNGs (lossless) and return the pixels written."""
    g = torch.Generator().manual_seed(0)
    written = {}
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
                write_png(img, str(folder / f"{i:04d}.png"))
                written[(split, label, i)] = img
    return written


def test_bundled_sample_is_the_fallback(isolated_data, capsys):
    train = load_cifar10("train")
    line = capsys.readouterr().out
    assert "bundled CIFAR-10 sample" in line and "download=True" in line and "COURSE_CIFAR10_DIR" in line
    assert train.source.startswith("bundled sample")
    assert train.images.shape == (3000, 3, 32, 32) and train.images.dtype == torch.float32
    assert torch.bincount(train.labels, minlength=10).tolist() == [300] * 10
    assert -1.0 <= train.images.min() < -0.9 and 0.9 < train.images.max() <= 1.0
    test = load_cifar10("test", verbose=False)
    assert capsys.readouterr().out == ""
    assert len(test) == 500 and torch.bincount(test.labels).tolist() == [50] * 10
    # real photographs, not constant images: per-image pixel std well above zero
    assert train.images.flatten(1).std(1).min() > 0.01


def test_image_folder_pixels_and_labels_are_exact(tmp_path, isolated_data):
    written = make_image_folder(tmp_path / "cifar")
    ds = load_cifar10("test", root=tmp_path / "cifar")
    assert len(ds) == 30 and ds.source == "image folder cifar"  # no machine's absolute path: it goes into cards
    # files are read class by class, in name order
    for k, (x, y) in enumerate(zip(ds.images, ds.labels)):
        label, i = divmod(k, 3)
        assert y.item() == label
        assert torch.equal(data.to_uint8(x), written[("test", label, i)])


def test_environment_variable_selects_the_folder(tmp_path, isolated_data, monkeypatch):
    make_image_folder(tmp_path / "cifar", per_class=2)
    monkeypatch.setenv("COURSE_CIFAR10_DIR", str(tmp_path / "cifar"))
    assert data.describe_source() == "image folder cifar (COURSE_CIFAR10_DIR)"
    assert len(load_cifar10("train")) == 20


def test_decoded_images_are_cached(tmp_path, isolated_data):
    make_image_folder(tmp_path / "cifar", per_class=2)
    first = load_cifar10("train", root=tmp_path / "cifar")
    caches = list((tmp_path / "data-root" / "cache").glob("cifar10-train-*.pt"))
    assert len(caches) == 1
    second = load_cifar10("train", root=tmp_path / "cifar")
    assert torch.equal(first.images, second.images)
    # a new file changes the key: the cache is not reused for different contents
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "cifar" / "train" / "cat" / "9999.png"))
    assert len(load_cifar10("train", root=tmp_path / "cifar")) == 21
    # a corrupted cache file is rebuilt, not trusted
    for c in (tmp_path / "data-root" / "cache").glob("*.pt"):
        c.write_bytes(b"garbage")
    assert len(load_cifar10("train", root=tmp_path / "cifar")) == 21


def test_missing_folder_names_path_and_fix(tmp_path, isolated_data):
    with pytest.raises(DataSourceError, match=r"does not exist.*COURSE_CIFAR10_DIR") as err:
        load_cifar10(root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_split_and_classes_are_named(tmp_path, isolated_data):
    make_image_folder(tmp_path / "a", splits=("train",))
    with pytest.raises(DataSourceError, match="no 'test' subfolder"):
        load_cifar10("test", root=tmp_path / "a")
    make_image_folder(tmp_path / "b", classes=CIFAR10_CLASSES[:8])
    with pytest.raises(DataSourceError, match=r"lacks the class folders \['ship', 'truck'\]"):
        load_cifar10("train", root=tmp_path / "b")


def test_wrong_images_are_rejected(tmp_path, isolated_data):
    make_image_folder(tmp_path / "big", size=64, per_class=1)
    with pytest.raises(DataSourceError, match="32x32"):
        load_cifar10("train", root=tmp_path / "big")
    make_image_folder(tmp_path / "broken", per_class=1)
    (tmp_path / "broken" / "train" / "dog" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(DataSourceError, match=r"could not decode image .*dog.*0000\.png"):
        load_cifar10("train", root=tmp_path / "broken")
    make_image_folder(tmp_path / "empty", per_class=1)
    (tmp_path / "empty" / "train" / "frog" / "0000.png").unlink()
    with pytest.raises(DataSourceError, match="frog holds no image files"):
        load_cifar10("train", root=tmp_path / "empty")


def test_damaged_torchvision_copy_is_a_clear_error(isolated_data):
    folder = isolated_data / "data-root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"truncated")
    assert data.describe_source().startswith("torchvision CIFAR-10")
    with pytest.raises(DataSourceError, match=r"download=True"):
        load_cifar10("train")


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar10("validation")


def test_limit_keeps_every_class(isolated_data):
    small = load_cifar10("train", limit=200, verbose=False)
    assert len(small) == 200 and torch.bincount(small.labels, minlength=10).min() > 5
    full = load_cifar10("train", verbose=False).sample(200)  # the same images as sample(200) of the whole split
    assert torch.equal(small.images, full.images) and torch.equal(small.labels, full.labels)


def test_flips_are_mirror_images_and_seeded(isolated_data):
    ds = load_cifar10("test", hflip=True, verbose=False)
    index = torch.arange(64)
    x1, _ = ds.batch(index, torch.Generator().manual_seed(3))
    x2, _ = ds.batch(index, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2)
    flipped = [not torch.equal(a, b) for a, b in zip(x1, ds.images[:64])]
    for a, b, f in zip(x1, ds.images[:64], flipped):
        assert torch.equal(a, b.flip(-1) if f else b)
    assert 15 < sum(flipped) < 49  # about half, as a fair coin gives
    assert ds.subset(10).images.data_ptr() == ds.images.data_ptr()  # a view, no copy
    plain = load_cifar10("test", verbose=False)
    assert torch.equal(plain.batch(index)[0], plain.images[:64])


def test_step_batches_are_a_pure_function_of_the_step(isolated_data):
    ds = load_cifar10("test", verbose=False)
    batches = StepBatches(ds, batch_size=50, seed=1)
    assert batches.steps_per_epoch == 10
    seen = torch.cat([batches(s)[1] for s in range(10)])
    assert torch.bincount(seen).tolist() == [50] * 10  # one epoch visits every image once
    again = StepBatches(ds, batch_size=50, seed=1)
    for step in (13, 2, 13, 27):  # out of order, across epochs
        assert torch.equal(again(step)[0], batches(step)[0])
    assert not torch.equal(batches(0)[0], batches(10)[0])  # a new permutation each epoch
    assert not torch.equal(StepBatches(ds, 50, seed=2)(0)[0], batches(0)[0])
    with pytest.raises(ValueError, match="larger than the data set"):
        StepBatches(ds, batch_size=501)


def test_sample_draws_nested_subsets_with_every_class_from_a_class_sorted_split():
    """An image folder comes sorted by class; sample(n) shuffles first (the first 20 here are one class)."""
    labels = torch.arange(10).repeat_interleave(20)  # [200], sorted by class
    ds = CIFAR10Split(torch.zeros(200, 3, 32, 32), labels, source="test", split="train")
    assert ds.subset(20).labels.unique().numel() == 1
    assert ds.sample(40).labels.unique().numel() == 10
    assert torch.equal(ds.sample(40).labels[:15], ds.sample(15).labels)  # a prefix of one fixed order
    assert not torch.equal(ds.sample(40, seed=1).labels, ds.sample(40).labels)


# --------------------------------------------------------------------------- TensorSplit, and StepBatches over any split


def test_tensor_split_of_latents_resumes_exactly_through_step_batches():
    """Chapter 4's cached latents: the batch at step s does not depend on which steps were drawn before."""
    g = torch.Generator().manual_seed(0)
    latents, labels = torch.randn(100, 4, 8, 8, generator=g), torch.randint(10, (100,), generator=g)
    latents[:, 0, 0, 0] = torch.arange(100.0)  # each latent carries its item number
    split = TensorSplit(latents, labels, source="cached latents")
    assert len(split) == 100 and split.source == "cached latents"
    uninterrupted = StepBatches(split, batch_size=16, seed=4)
    drawn = {s: uninterrupted(s) for s in range(15)}  # every step in order, across two epochs (6 steps each)
    for step in (14, 7, 0, 6, 13):  # a resumed run: a fresh StepBatches asked for step s first
        x, y = StepBatches(split, batch_size=16, seed=4)(step)
        assert x.shape == (16, 4, 8, 8) and y.shape == (16,)
        assert torch.equal(x, drawn[step][0]) and torch.equal(y, drawn[step][1])
    items = torch.cat([drawn[s][0][:, 0, 0, 0].long() for s in range(6)])  # [96], the first epoch
    assert len(items.unique()) == 96  # within one epoch no item repeats
    assert torch.equal(torch.cat([drawn[s][1] for s in range(6)]), labels[items])  # each latent with its label
    assert torch.equal(torch.cat([drawn[s][0] for s in range(6)]), latents[items])


def test_step_batches_order_is_pinned():
    """The permutation seeded by (seed, epoch), the random draws by (seed, step): the exact indices and
    flips the shipped checkpoints were trained with (a resumed run relies on them)."""
    class Probe:  # returns the indices and the first draws of the batch's generator
        def __len__(self):
            return 10

        def batch(self, index, generator=None):
            return index, (torch.rand(len(index), generator=generator) < 0.5).long()

    batches = StepBatches(Probe(), batch_size=4, seed=0)
    assert [batches(s)[0].tolist() for s in range(5)] == [[4, 1, 7, 5], [3, 9, 0, 8], [5, 6, 1, 2], [0, 8, 9, 3],
                                                         [8, 7, 1, 5]]
    assert [batches(s)[1].tolist() for s in range(5)] == [[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0],
                                                         [0, 1, 0, 1]]
    assert torch.equal(StepBatches(TensorSplit(torch.arange(10)), 4, seed=0)(3)[0], torch.tensor([0, 8, 9, 3]))


def test_cifar10_split_batches_are_unchanged():
    """CIFAR10Split is a TensorSplit of (images, labels) whose batches flip exactly as before."""
    images = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    split = CIFAR10Split(images, labels, source="test", split="train", hflip=True)
    assert isinstance(split, TensorSplit) and split.tensors[0] is images and split.tensors[1] is labels
    index = torch.tensor([5, 0, 39, 12, 12, 7])
    x, y = split.batch(index, torch.Generator().manual_seed(3))
    flip = torch.rand(len(index), generator=torch.Generator().manual_seed(3)) < 0.5  # one draw per image, in order
    assert torch.equal(x, torch.where(flip[:, None, None, None], images[index].flip(-1), images[index]))
    assert torch.equal(y, labels[index])
    # through StepBatches: step 0 of seed 0 takes items [4, 1, 7, 5] and flips the middle two (pinned above)
    x, y = StepBatches(CIFAR10Split(images[:10], labels[:10], source="test", split="train", hflip=True), 4)(0)
    expected = images[[4, 1, 7, 5]]
    assert torch.equal(x, torch.stack([expected[0], expected[1].flip(-1), expected[2].flip(-1), expected[3]]))
    assert y.tolist() == [4, 1, 7, 5]
    # subset, sample and the setters keep the kind and the settings
    assert isinstance(split.sample(8), CIFAR10Split) and split.sample(8).hflip and split.subset(4).split == "train"
    replaced = images.flip(0)
    split.images = replaced  # what a test does to swap in other pixels
    assert split.images is replaced and split.tensors[0] is replaced and split.labels is labels


def test_tensor_split_sample_subset_and_errors():
    split = TensorSplit(torch.arange(50), torch.arange(50) * 2, source="pairs")
    sampled = split.sample(20, seed=1)
    assert type(sampled) is TensorSplit and sampled.source == "pairs"
    assert torch.equal(sampled.tensors[1], 2 * sampled.tensors[0])  # rows stay aligned
    assert torch.equal(split.sample(5, seed=1).tensors[0], sampled.tensors[0][:5])  # nested prefixes
    assert split.subset(3).tensors[0].tolist() == [0, 1, 2] and split[7] == (7, 14)
    with pytest.raises(ValueError, match=r"same first dimension.*\[100, 99\]"):
        TensorSplit(torch.zeros(100, 4, 8, 8), torch.zeros(99))
    with pytest.raises(ValueError, match="at least one tensor"):
        TensorSplit()
    with pytest.raises(TypeError, match="TensorSplit"):
        StepBatches([torch.zeros(3)] * 10, batch_size=2)  # a list has a length but no .batch()
