from pathlib import Path

import pytest
import torch
from PIL import Image

from course_lib import data
from course_lib.data import CIFAR10_CLASSES, CIFAR10Split, DataSourceError, StepBatches, load_cifar10


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
    assert len(ds) == 30 and ds.source == f"image folder {tmp_path / 'cifar'}"
    # files are read class by class, in name order
    for k, (x, y) in enumerate(zip(ds.images, ds.labels)):
        label, i = divmod(k, 3)
        assert y.item() == label
        assert torch.equal(data.to_uint8(x), written[("test", label, i)])


def test_environment_variable_selects_the_folder(tmp_path, isolated_data, monkeypatch):
    make_image_folder(tmp_path / "cifar", per_class=2)
    monkeypatch.setenv("COURSE_CIFAR10_DIR", str(tmp_path / "cifar"))
    assert data.describe_source() == f"image folder {tmp_path / 'cifar'}"
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
