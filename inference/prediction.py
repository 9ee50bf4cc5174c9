"""What the model answers for a batch of N instances (``ModelRuntime.predict``): one typed record of
per-instance arrays, every array's leading axis the instance. It splits into per-request parts and
concatenates back (dynamic batching), and flattens to named columns (``columns``: the names of the
v2 output tensors and of the offline score table)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ClassOutputs:
    """A categorical head: ``label`` ``(N,)`` int64 (the head's argmax), ``probabilities`` ``(N, K)``
    (eq. 10: the label prior where the gate rejects), ``model_probabilities`` ``(N, K)`` (the head's)."""

    label: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray


@dataclass(frozen=True)
class RegressionOutputs:
    """A Gaussian head, ``(N,)`` each: ``mean`` and ``variance`` (the training targets' moments where
    the gate rejects), ``model_mean`` and ``model_variance`` (the head's)."""

    mean: np.ndarray
    variance: np.ndarray
    model_mean: np.ndarray
    model_variance: np.ndarray


@dataclass(frozen=True)
class Prediction:
    """Per-instance arrays ``(N,)`` unless said: ``head`` (the task's outputs); ``log_px`` float64 nats
    (-inf outside the support); ``bits_per_dim``; the gate's ``accepted`` (bool), combined ``p_value``,
    ``rejected_by`` (object: None, a score name or ``support``), ``instance_score`` (the outlier
    convention of ``models.gate.GateDecision``); ``scores`` and ``p_values`` by gate score name, in
    the gate's order."""

    head: ClassOutputs | RegressionOutputs
    log_px: np.ndarray
    bits_per_dim: np.ndarray
    accepted: np.ndarray
    p_value: np.ndarray
    rejected_by: np.ndarray
    instance_score: np.ndarray
    scores: dict[str, np.ndarray]
    p_values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.log_px)

    def columns(self) -> dict[str, np.ndarray]:
        """Every field as one named array: ``log_px``, ``bits_per_dim``, ``accepted``, ``p_value``,
        ``rejected_by``, ``instance_score``, ``score_<name>`` and ``p_value_<name>`` per gate score,
        then the head's fields."""
        named = {
            "log_px": self.log_px, "bits_per_dim": self.bits_per_dim, "accepted": self.accepted, "p_value": self.p_value,
            "rejected_by": self.rejected_by, "instance_score": self.instance_score,
        }
        named.update({f"score_{name}": values for name, values in self.scores.items()})
        named.update({f"p_value_{name}": values for name, values in self.p_values.items()})
        named.update({field.name: getattr(self.head, field.name) for field in fields(self.head)})
        return named

    def split(self, sizes: list[int]) -> list["Prediction"]:
        """Consecutive parts of ``sizes`` instances each (which sum to ``len(self)``)."""
        stops = np.cumsum(sizes).tolist()
        return [_map_arrays(self, lambda array, part=slice(stop - size, stop): array[part]) for size, stop in zip(sizes, stops)]

    @classmethod
    def concatenate(cls, parts: list["Prediction"]) -> "Prediction":
        """The parts' instances in order, as one prediction."""
        return _zip_arrays(parts, np.concatenate)


def _map_arrays(record, function: Callable):
    """``record`` with ``function`` applied to each of its arrays (in nested records and dicts too)."""
    if isinstance(record, dict):
        return {key: _map_arrays(value, function) for key, value in record.items()}
    if hasattr(record, "__dataclass_fields__"):
        return replace(record, **{field.name: _map_arrays(getattr(record, field.name), function) for field in fields(record)})
    return function(record)


def _zip_arrays(records: list, function: Callable):
    """One record whose every array is ``function`` of the list of the records' arrays at that place."""
    first = records[0]
    if isinstance(first, dict):
        return {key: _zip_arrays([record[key] for record in records], function) for key in first}
    if hasattr(first, "__dataclass_fields__"):
        return replace(first, **{field.name: _zip_arrays([getattr(record, field.name) for record in records], function) for field in fields(first)})
    return function(records)
