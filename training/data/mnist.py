"""MNIST (and NotMNIST for out-of-distribution tests) from IDX files in a data folder; nothing is
downloaded. ``data.data_dir`` is the folder holding ``mnist/`` (and ``notmnist/``), or ``mnist/``
itself. 28x28 uint8 images, 256 levels; MNIST's own 10,000-image test split is the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.data.builtin import DIGIT_CLASSES
from training.data.files import read_idx
from training.data.registry import DataError, Dataset, register_dataset

NOTMNIST_CLASSES = list("ABCDEFGHIJ")


def find_folder(data_dir: Path | None, name: str, required_file: str) -> Path:
    """``data_dir/name`` or ``data_dir`` itself, whichever holds ``required_file``."""
    if data_dir is None:
        raise DataError(f"the {name} data set needs --data-dir (a folder with {name}/{required_file})")
    for folder in (Path(data_dir) / name, Path(data_dir)):
        if (folder / required_file).is_file():
            return folder
    raise DataError(f"{required_file} not found in {data_dir} or {Path(data_dir) / name}")


def read_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32)
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {prefix} images but {len(labels)} labels")
    return images, labels


@register_dataset("mnist")
def mnist(config: DataConfig, seed: int = 0) -> Dataset:
    folder = find_folder(config.data_dir, "mnist", "train-images-idx3-ubyte.gz")
    x, y = read_pair(folder, "train")
    return Dataset(
        x=x, y=y, task="classification", levels=256, classes=DIGIT_CLASSES, test=read_pair(folder, "t10k"),
        description="MNIST: 60,000 training and 10,000 test images, 28x28, values 0-255",
    )


def notmnist_test(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """NotMNIST's 10,000 test letters A-J, with labels 0-9 (A = 0)."""
    return read_pair(find_folder(data_dir, "notmnist", "t10k-images-idx3-ubyte.gz"), "t10k")
