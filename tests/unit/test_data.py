"""Tests of IDX reading and writing and of loading splits from the torchvision layout."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from shared.data import DataError, load_split, raw_dir, read_idx, write_idx


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def random_labels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=count, dtype=np.uint8)


def gzip_file(source: Path, target: Path) -> Path:
    target.write_bytes(gzip.compress(source.read_bytes()))
    return target


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    """Write one split as the two IDX files torchvision's MNIST layout uses."""
    images_path = directory / f"{split}-images-idx3-ubyte"
    labels_path = directory / f"{split}-labels-idx1-ubyte"
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    if gz:
        for path in (images_path, labels_path):
            gzip_file(path, path.with_name(path.name + ".gz"))
            path.unlink()


# write_idx and read_idx


def test_idx_round_trip_images(tmp_path):
    images = random_images(5)
    path = tmp_path / "images-idx3-ubyte"

    write_idx(path, images)

    assert np.array_equal(read_idx(path), images)


def test_idx_round_trip_labels(tmp_path):
    labels = random_labels(17)
    path = tmp_path / "labels-idx1-ubyte"

    write_idx(path, labels)
    loaded = read_idx(path)

    assert loaded.shape == (17,)
    assert loaded.dtype == np.uint8
    assert np.array_equal(loaded, labels)


def test_idx_header_is_standard(tmp_path):
    # IDX: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then
    # each dimension as a big-endian 32-bit integer, then the data in C order.
    images = random_images(3)
    path = tmp_path / "images-idx3-ubyte"

    write_idx(path, images)
    data = path.read_bytes()

    assert data[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", data[4:16]) == (3, 28, 28)
    assert data[16:] == images.tobytes()


def test_idx_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "labels-idx1-ubyte"

    write_idx(path, random_labels(3))

    assert path.is_file()


def test_idx_reads_gzipped_file(tmp_path):
    images = random_images(4, seed=1)
    plain = tmp_path / "images-idx3-ubyte"
    write_idx(plain, images)

    gzipped = gzip_file(plain, tmp_path / "images-idx3-ubyte.gz")

    assert np.array_equal(read_idx(gzipped), images)


def test_idx_round_trip_gzipped(tmp_path):
    images = random_images(4, seed=2)
    path = tmp_path / "images-idx3-ubyte.gz"

    write_idx(path, images)

    assert np.array_equal(read_idx(path), images)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"\x00\x01\x08\x01", id="nonzero-magic"),
        pytest.param(b"\x00\x00\x0d\x01", id="float-type"),
        pytest.param(b"\x00\x00\x0b\x01", id="int16-type"),
        pytest.param(b"\x1f\x8b\x08\x00", id="gzip-bytes-without-gz-suffix"),
    ],
)
def test_idx_bad_header_is_rejected(tmp_path, header):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(header + struct.pack(">I", 2) + b"\x01\x02")

    with pytest.raises(DataError) as caught:
        read_idx(path)

    assert str(path) in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x08"])
def test_idx_too_short_is_rejected(tmp_path, data):
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(data)

    with pytest.raises(DataError):
        read_idx(path)


def test_idx_truncated_dimensions_rejected(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 10))

    with pytest.raises(DataError):
        read_idx(path)


@pytest.mark.parametrize("extra", [-1, 1, -784])
def test_idx_size_mismatch_is_rejected(tmp_path, extra):
    images = random_images(2)
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, images)
    data = path.read_bytes()
    path.write_bytes(data[:extra] if extra < 0 else data + b"\x00" * extra)

    with pytest.raises(DataError) as caught:
        read_idx(path)

    assert str(2 * 28 * 28) in str(caught.value)


# load_split


@pytest.fixture()
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write a 6-image training split and a 3-image held-out split under <tmp>/MNIST/raw/."""
    directory = tmp_path / "MNIST" / "raw"
    splits = {
        "train": (random_images(6, seed=10), random_labels(6, seed=10)),
        "t10k": (random_images(3, seed=11), random_labels(3, seed=11)),
    }
    for name, (images, labels) in splits.items():
        write_split(directory, name, images, labels)
    return tmp_path, splits


def test_raw_dir_uses_torchvision_layout(tmp_path):
    assert raw_dir(tmp_path, "mnist") == tmp_path / "MNIST" / "raw"
    assert raw_dir(tmp_path, "fashion-mnist") == tmp_path / "FashionMNIST" / "raw"


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_load_split_reads_both_splits(tiny_mnist, split):
    data_dir, splits = tiny_mnist

    loaded = load_split(data_dir, "mnist", split)

    assert np.array_equal(loaded.images, splits[split][0])
    assert np.array_equal(loaded.labels, splits[split][1])


def test_load_split_accepts_str_path(tiny_mnist):
    data_dir, splits = tiny_mnist

    loaded = load_split(str(data_dir), "mnist", "train")

    assert loaded.images.shape == (6, 28, 28)


def test_load_split_reads_gzipped_files(tmp_path):
    images, labels = random_images(5, seed=3), random_labels(5, seed=3)
    write_split(tmp_path / "FashionMNIST" / "raw", "t10k", images, labels, gz=True)

    loaded = load_split(tmp_path, "fashion-mnist", "t10k")

    assert np.array_equal(loaded.images, images)
    assert np.array_equal(loaded.labels, labels)


def test_load_split_missing_files(tmp_path):
    with pytest.raises(DataError) as caught:
        load_split(tmp_path, "mnist", "train")

    assert "onml data prepare" in str(caught.value)


def test_load_split_missing_labels(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", random_images(2))

    with pytest.raises(DataError) as caught:
        load_split(tmp_path, "mnist", "train")

    assert "train-labels-idx1-ubyte" in str(caught.value)
    assert "onml data prepare" in str(caught.value)


def test_load_split_count_mismatch(tmp_path):
    write_split(tmp_path / "MNIST" / "raw", "train", random_images(4), random_labels(3))

    with pytest.raises(DataError):
        load_split(tmp_path, "mnist", "train")


def test_load_split_wrong_image_side(tmp_path):
    images = np.zeros((2, 32, 32), dtype=np.uint8)
    write_split(tmp_path / "MNIST" / "raw", "train", images, random_labels(2))

    with pytest.raises(DataError):
        load_split(tmp_path, "mnist", "train")


def test_load_split_unknown_split(tiny_mnist):
    data_dir, _ = tiny_mnist

    with pytest.raises(ValueError):
        load_split(data_dir, "mnist", "validation")


def test_load_split_unknown_dataset(tiny_mnist):
    data_dir, _ = tiny_mnist

    with pytest.raises(DataError) as caught:
        load_split(data_dir, "cifar10", "train")

    assert "cifar10" in str(caught.value)
