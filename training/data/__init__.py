"""Data sets by name. Each data set is one module that registers a loader with ``register_dataset``;
``load_dataset`` looks it up and ``split_dataset`` makes the seeded train / validation / test split."""
from training.data import builtin, flights, mnist, toy  # noqa: F401,E402  (each registers its data sets)
from training.data.registry import DATASETS, DataError, Dataset, Split, Splits, load_dataset, register_dataset, split_dataset

__all__ = ["DATASETS", "DataError", "Dataset", "Split", "Splits", "load_dataset", "register_dataset", "split_dataset"]
