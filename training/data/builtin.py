"""Built-in data sets: scikit-learn's digits, a tiny subset for tests, image files and tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from training.config import DataConfig
from training.data.files import read_idx, read_images, read_table
from training.data.registry import DataError, Dataset, register_dataset

DIGIT_CLASSES = [str(d) for d in range(10)]


@register_dataset("digits")
def digits(config: DataConfig, seed: int = 0) -> Dataset:
    """1,797 8x8 digit images with values 0-16 (17 levels), as ``load_digits`` gives them."""
    bunch = load_digits()
    return Dataset(
        x=bunch.images.astype(np.float32),
        y=bunch.target.astype(np.int64),
        task="classification",
        levels=17,
        classes=DIGIT_CLASSES,
        description="scikit-learn load_digits: 8x8 images, values 0-16",
    )


@register_dataset("tiny")
def tiny(config: DataConfig, seed: int = 0) -> Dataset:
    """300 digits (30 per class): for tests and smoke runs, trains in seconds."""
    dataset = digits(config, seed)
    order = np.argsort(dataset.y, kind="stable")
    keep = np.sort(np.concatenate([order[dataset.y[order] == label][:30] for label in range(10)]))
    dataset.x, dataset.y = dataset.x[keep], dataset.y[keep]
    dataset.description = "300 scikit-learn digits, 30 per class"
    return dataset


def data_path(config: DataConfig, key: str, required: bool = True) -> Path | None:
    """``config.options[key]`` as a path, relative to ``config.data_dir`` unless absolute; it must exist."""
    name = config.options.get(key)
    if name is None:
        if required:
            raise DataError(f"data set {config.name!r} needs data.options.{key}")
        return None
    path = Path(name)
    if not path.is_absolute():
        if config.data_dir is None:
            raise DataError(f"data set {config.name!r} needs --data-dir (data.data_dir) to find {name}")
        path = config.data_dir / path
    if not path.exists():
        raise DataError(f"{path} not found (data set {config.name!r}; check --data-dir)")
    return path


@register_dataset("images")
def images(config: DataConfig, seed: int = 0) -> Dataset:
    """Labelled images from files: options ``images``, ``labels`` and optionally ``test_images``,
    ``test_labels`` (IDX, gzipped or not, or ``.npz``), ``levels`` (default 256), ``classes``."""
    x = read_images(data_path(config, "images"))
    y = read_idx(data_path(config, "labels")).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    test = None
    if config.options.get("test_images"):
        test = (read_images(data_path(config, "test_images")), read_idx(data_path(config, "test_labels")).astype(np.int64))
    classes = config.options.get("classes") or [str(c) for c in range(int(y.max()) + 1)]
    return Dataset(x=x, y=y, task="classification", levels=int(config.options.get("levels", 256)), classes=classes, test=test)


@register_dataset("table")
def table(config: DataConfig, seed: int = 0) -> Dataset:
    """Rows of a CSV or ``.npz``: options ``path``, ``features`` (column names), ``target`` and
    ``task`` (``regression`` or ``classification``)."""
    features = config.options.get("features")
    target = config.options.get("target")
    if not features or not target:
        raise DataError("data set 'table' needs data.options.features (a list) and data.options.target")
    values = read_table(data_path(config, "path"), [*features, target])
    values = values[np.isfinite(values).all(axis=1)]
    task = config.options.get("task", "regression")
    y = values[:, -1].astype(np.int64 if task == "classification" else np.float32)
    classes = [str(c) for c in range(int(y.max()) + 1)] if task == "classification" else None
    return Dataset(x=values[:, :-1].astype(np.float32), y=y, task=task, classes=classes)
