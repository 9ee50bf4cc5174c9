"""What the model answers for a batch of N instances (``ModelRuntime.predict``): one typed record of
per-instance arrays, every array's leading axis the instance. It splits into per-request parts and
concatenates back (dynamic batching), and flattens to named columns (``columns``: the names of the
v2 output tensors and of the offline score table)."""
from __future__ import annotations

from dataclasses import dataclass

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


_INSTANCE_FIELDS = ("log_px", "bits_per_dim", "accepted", "p_value", "rejected_by", "instance_score")  # Prediction's, in order


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
        named = {name: getattr(self, name) for name in _INSTANCE_FIELDS}
        named.update({f"score_{name}": values for name, values in self.scores.items()})
        named.update({f"p_value_{name}": values for name, values in self.p_values.items()})
        named.update(vars(self.head))
        return named

    def split(self, sizes: list[int]) -> list["Prediction"]:
        """Consecutive parts of ``sizes`` instances each (which sum to ``len(self)``); views, no copies."""
        stops = np.cumsum(sizes).tolist()
        return [self._rows(slice(stop - size, stop)) for size, stop in zip(sizes, stops)]

    def _rows(self, rows: slice) -> "Prediction":
        head = self.head
        return Prediction(
            type(head)(*(values[rows] for values in vars(head).values())),
            *(getattr(self, name)[rows] for name in _INSTANCE_FIELDS),
            {name: values[rows] for name, values in self.scores.items()},
            {name: values[rows] for name, values in self.p_values.items()},
        )

    @classmethod
    def concatenate(cls, parts: list["Prediction"]) -> "Prediction":
        """The parts' instances in order, as one prediction."""
        first = parts[0]
        heads = [vars(part.head).values() for part in parts]
        return cls(
            type(first.head)(*(np.concatenate(column) for column in zip(*heads))),
            *(np.concatenate([getattr(part, name) for part in parts]) for name in _INSTANCE_FIELDS),
            {name: np.concatenate([part.scores[name] for part in parts]) for name in first.scores},
            {name: np.concatenate([part.p_values[name] for part in parts]) for name in first.p_values},
        )
