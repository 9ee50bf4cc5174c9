"""The data-set registry and the seeded split.

A ``Dataset`` holds inputs ``x`` ``(N, *input_shape)`` float32 in data units (pixel levels for images,
raw values for tables) and targets ``y`` ``(N,)`` (int64 class indices or float32 values).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from sklearn.model_selection import train_test_split

from training.config import DataConfig


class DataError(ValueError):
    """A data set cannot be loaded (unknown name, missing file, bad option)."""


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    task: Literal["classification", "regression"]
    levels: int | None = None  # values per dimension of discrete data (None: continuous)
    classes: list[str] | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None  # a test split of its own, if the data set has one
    validation: tuple[np.ndarray, np.ndarray] | None = None  # a validation split of its own (needs ``test`` too)
    description: str = ""

    @property
    def input_shape(self) -> list[int]:
        return list(self.x.shape[1:])


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    labeled: np.ndarray = field(default=None)  # bool (N,); all True unless semi-supervised

    def __post_init__(self):
        if self.labeled is None:
            self.labeled = np.ones(len(self.x), dtype=bool)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Splits:
    train: Split
    validation: Split  # early stopping and the validation tau (model selection)
    test: Split
    calibration: Split | None = None  # the gate's conformal calibration: never trained on or selected with


Loader = Callable[[DataConfig, int], Dataset]  # (config, seed) -> data set
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorator(loader: Loader) -> Loader:
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(config: DataConfig, seed: int = 0) -> Dataset:
    """The data set ``config.name``; ``seed`` fixes data that loaders draw at random (synthetic sets)."""
    if config.name not in DATASETS:
        raise DataError(f"unknown data set {config.name!r}; known: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[config.name](config, seed)
    if config.limit is not None and config.limit < len(dataset.x):
        stratify = dataset.y if dataset.task == "classification" else None
        keep, _ = train_test_split(np.arange(len(dataset.x)), train_size=config.limit, random_state=0, stratify=stratify)
        dataset.x, dataset.y = dataset.x[np.sort(keep)], dataset.y[np.sort(keep)]
    return dataset


def split_dataset(dataset: Dataset, config: DataConfig, seed: int) -> Splits:
    """Stratified (for classification) train / validation / calibration / test split fixed by
    ``seed``. Validation and calibration are fractions of the rows outside the test split; the
    calibration rows are drawn first, from the rows the model never trains on. With
    ``labels_per_class`` only that many training examples per class keep their label. The rows of
    ``add_to_train`` join the training split last."""
    classification = dataset.task == "classification"
    indices = np.arange(len(dataset.x))
    if dataset.test is None:
        indices, test_indices = train_test_split(
            indices, test_size=config.test_fraction, random_state=seed, stratify=dataset.y if classification else None
        )
        test = Split(dataset.x[test_indices], dataset.y[test_indices])
    else:
        test = Split(*dataset.test)
    calibration = None
    if config.calibration_fraction > 0:
        indices, calibration_indices = train_test_split(
            indices, test_size=config.calibration_fraction, random_state=seed, stratify=dataset.y[indices] if classification else None
        )
        calibration = Split(dataset.x[calibration_indices], dataset.y[calibration_indices])
    if dataset.validation is None:
        share = config.validation_fraction / (1.0 - config.calibration_fraction)
        train_indices, validation_indices = train_test_split(
            indices, test_size=share, random_state=seed, stratify=dataset.y[indices] if classification else None
        )
        validation = Split(dataset.x[validation_indices], dataset.y[validation_indices])
    else:
        train_indices, validation = indices, Split(*dataset.validation)
    train = Split(dataset.x[train_indices], dataset.y[train_indices])
    if config.labels_per_class is not None:
        if not classification:
            raise DataError("labels_per_class applies to classification data only")
        rng = np.random.default_rng(seed)
        train.labeled = np.zeros(len(train), dtype=bool)
        for label in np.unique(train.y):
            members = rng.permutation(np.flatnonzero(train.y == label))
            train.labeled[members[: config.labels_per_class]] = True
        if config.unlabeled == "drop":
            train = Split(train.x[train.labeled], train.y[train.labeled])
    if config.add_to_train:
        x, y = added_rows(config.add_to_train, dataset)
        train = Split(np.concatenate([train.x, x]), np.concatenate([train.y, y]), np.r_[train.labeled, np.ones(len(x), dtype=bool)])
    return Splits(train, validation, test, calibration)


def added_rows(paths: list[Path], dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of ``paths`` (``.npz`` with arrays ``x`` and ``y``), checked against
    ``dataset`` (input shape; a classification label among its classes) and in its dtypes."""
    xs, ys = [], []
    classes = len(dataset.classes) if dataset.classes else int(dataset.y.max()) + 1
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as archive:
                x, y = (archive[key] if key in archive.files else None for key in ("x", "y"))
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read {path}: {error}") from None
        if x is None or y is None:
            raise DataError(f"{path}: rows to add need arrays x and y (python -m training decisions --labels writes them)")
        if x.shape[1:] != dataset.x.shape[1:] or len(x) != len(y):
            raise DataError(f"{path} holds {len(x)} inputs of shape {x.shape[1:]} and {len(y)} labels; the data set's inputs have shape {dataset.x.shape[1:]}")
        if dataset.task == "classification" and not (np.issubdtype(y.dtype, np.integer) and ((y >= 0) & (y < classes)).all()):
            raise DataError(f"{path}: labels must be class indices 0 to {classes - 1}")
        xs.append(x.astype(dataset.x.dtype))
        ys.append(y.astype(dataset.y.dtype))
    return np.concatenate(xs), np.concatenate(ys)
