"""What a test may assert when one input is answered twice under different conditions.

Within one backend on the CPU, the same input gets the same answer bit for bit whatever its batch,
thread count or process (docs/gate.md, "Same input, same answer"): ``assert_same_answers``.

Between torch and ONNX Runtime, or against the model called outside a backend (other kernels), the
float32 arithmetic rounds differently: up to the export's parity bound, 1e-3 nats in log p(x). The
rest follows from it, and ``assert_answers_agree`` asserts exactly that:
- scores and log p(x) agree within the tolerance (``EXACT_SCORES`` exactly); the head's
  probabilities within its own;
- a conformal p-value is a rank: it moves only by the calibration scores that lie within the
  tolerance of the input's score, one rank each (two for a two-sided p-value, twice the smaller
  one-sided one), so it is equal unless the score sits on a calibration score;
- the combined p-value likewise, by the calibration inputs' combined statistics T that lie in the
  range T takes while each score moves within its tolerance. That range includes a step of the
  empirical surprise where a score sits on a reference (validation) score, so such an input (a row
  of the validation split) may move by several ranks;
- a decision flips only where alpha lies within that movement of the combined p-value (for a tau
  gate: log p(x) within the tolerance of tau); the gated probabilities follow the decision; the
  reason (the score with the largest surprise) changes only where another score's surprise can
  reach it;
- the head's label flips only where its two largest probabilities are within the tolerance.
Inputs that are rows of the calibration or validation split sit exactly on such scores, so tests
that compare across backends take ``held_out_digits``: digits in no split of the ``tiny`` data set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.conformal import combined_statistic
from models.gate import Gate, score_matrix


@dataclass(frozen=True)
class Tolerance:
    """|a - b| <= atol + rtol * |b| for scores and log p(x) (nats); ``probability`` (absolute) for
    the head's probabilities."""

    rtol: float
    atol: float
    probability: float

    def band(self, values: np.ndarray, name: str = "log_px") -> np.ndarray:
        """Per value of score ``name``: how far rounding may move it (0 for a non-finite value)."""
        if name in EXACT_SCORES:
            return np.zeros_like(values)
        if name in PROBABILITY_SCORES:
            return np.full_like(values, self.probability)
        return np.where(np.isfinite(values), self.atol + self.rtol * np.abs(values), 0.0)

    def assert_close(self, actual: np.ndarray, expected: np.ndarray, name: str) -> None:
        """Score ``name`` (or log p(x)) of two answers within the band."""
        difference = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64))
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.asarray(actual)[~finite], np.asarray(expected)[~finite], err_msg=name)
        bad = np.flatnonzero(finite & ~(difference <= self.band(np.asarray(expected, dtype=np.float64), name)))
        assert bad.size == 0, f"{name}: rows {bad.tolist()} differ by {difference[bad].tolist()} (beyond rounding)"


ROUNDING = Tolerance(rtol=1e-5, atol=1e-4, probability=1e-6)  # torch's kernels for other batch sizes (outside a backend)
BACKENDS = Tolerance(rtol=1e-5, atol=1e-3, probability=1e-5)  # torch against ONNX Runtime (the export's parity check)
# Scores of the pixels alone, the same under every condition: complexity is a sum of integer
# differences (exact in float32) over a constant. Integer-valued, they tie often with calibration scores.
EXACT_SCORES = ("complexity",)
PROBABILITY_SCORES = ("max_probability",)  # the head's, within ``Tolerance.probability``


def held_out_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``count`` of scikit-learn's 1,797 digits ``(count, 8, 8)`` (values 0-16) and their
    labels ``(count,)``: outside the ``tiny`` data set (its first 30 digits of each class), so in
    none of its splits."""
    from training.config import DataConfig
    from training.data import load_dataset

    tiny = load_dataset(DataConfig(name="tiny"))
    digits = load_dataset(DataConfig(name="digits"))
    x, y = digits.x[-count:], digits.y[-count:]
    assert not (x.reshape(count, 1, -1) == tiny.x.reshape(1, len(tiny.x), -1)).all(axis=2).any(), "a held-out digit is in tiny"
    return x, y


def _crossed(sorted_points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per row ``(N,)``: how many points a value anywhere in [low, high] may rank on either side of,
    the points in that range; none where the range is empty (a value rounding cannot move: a tie
    stays a tie) or not finite (such a value ranks as the most extreme whatever the rounding)."""
    count = np.searchsorted(sorted_points, high, side="right") - np.searchsorted(sorted_points, low, side="left")
    return np.where(np.isfinite(low) & np.isfinite(high) & (high > low), count, 0)


def near_ties(probabilities: np.ndarray, margin: float) -> np.ndarray:
    """Per row of ``(N, K)`` probabilities: whether the two largest are within ``margin`` (the only
    rows where rounding may change the argmax)."""
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] <= margin


@dataclass
class Movement:
    """Per input ``(N,)``, how far rounding within a ``Tolerance`` may move each rank-based answer:
    ``calibration[name]``, the calibration scores within the tolerance of the input's score (ranks of
    its p-value); ``statistic``, the calibration inputs' T within the range the input's T takes
    (ranks of the combined p-value; -1 where unbounded: a Bonferroni gate's score on a calibration
    score); ``surprises``, that range per column of T ``(N, m + sum_only, 2)``."""

    calibration: dict[str, np.ndarray]
    statistic: np.ndarray
    surprises: np.ndarray | None

    @classmethod
    def of(cls, answer: dict[str, np.ndarray], gate: Gate, tolerance: Tolerance) -> "Movement":
        scores = {name: np.asarray(answer[f"score_{name}"], dtype=np.float64) for name in gate.tails}
        band = {name: tolerance.band(values, name) for name, values in scores.items()}
        low = {name: values - band[name] for name, values in scores.items()}
        high = {name: values + band[name] for name, values in scores.items()}
        calibration = {name: _crossed(gate.calibration[name], low[name], high[name]) for name in scores}
        if gate.statistic is None:  # Bonferroni: m times the smallest per-score p-value
            return cls(calibration, np.where(np.any(list(calibration.values()), axis=0), -1, 0), None)
        # each surprise is monotone or (two-sided) quasi-convex in its score: its range is its endpoints'
        at_low, at_high = gate.surprises(low), gate.surprises(high)
        surprises = np.stack([np.minimum(at_low, at_high), np.maximum(at_low, at_high)], axis=2)
        if gate.classifier is not None:  # not monotone: the log-odds' bounds over the box of scores
            bounds = gate.classifier.bounds(score_matrix(low, gate.tails), score_matrix(high, gate.tails))
            surprises = np.concatenate([surprises, np.stack([gate.classifier_surprise(b) for b in bounds], axis=1)[:, None]], axis=1)
        t_low, t_high = (combined_statistic(surprises[..., side], gate.combine, gate.weights, gate.sum_only) for side in (0, 1))
        return cls(calibration, _crossed(gate.statistic, t_low, t_high), surprises)

    @property
    def anything(self) -> np.ndarray:
        """Rows where some rank-based answer may move."""
        return (np.sum(list(self.calibration.values()), axis=0) != 0) | (self.statistic != 0)


def assert_ranks_agree(expected: np.ndarray, actual: np.ndarray, calibration_size: int, allowed: np.ndarray, what: str) -> None:
    """p-values ``(N,)`` of ``calibration_size`` calibration inputs at most ``allowed`` ranks apart
    (-1: any number)."""
    ranks = calibration_size + 1
    moved = np.abs(np.rint(np.asarray(expected, dtype=np.float64) * ranks) - np.rint(np.asarray(actual, dtype=np.float64) * ranks))
    bad = np.flatnonzero((moved > allowed) & (allowed >= 0))
    assert bad.size == 0, f"{what}: rows {bad.tolist()} moved {moved[bad].tolist()} ranks, rounding allows {allowed[bad].tolist()}"


def assert_answers_agree(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], gate: Gate, tolerance: Tolerance = ROUNDING) -> None:
    """Two answers for the same inputs, as ``Prediction.columns`` names them (``log_px``,
    ``score_<name>``, ``p_value_<name>``, ``p_value``, ``accepted``, ``rejected_by``; with a
    categorical head ``label``, ``model_probabilities``, ``probabilities``), agree as far as
    rounding within ``tolerance`` lets them."""
    tolerance.assert_close(actual["log_px"], expected["log_px"], "log_px")
    for name in gate.tails:
        tolerance.assert_close(actual[f"score_{name}"], expected[f"score_{name}"], name)
    movement = Movement.of(expected, gate, tolerance)
    n = len(next(iter(gate.calibration.values())))
    for name, tail in gate.tails.items():
        per_rank = 2 if tail == "both" else 1
        assert_ranks_agree(expected[f"p_value_{name}"], actual[f"p_value_{name}"], n, per_rank * movement.calibration[name], f"p_value_{name}")
    assert_ranks_agree(expected["p_value"], actual["p_value"], n, movement.statistic, "p_value")

    p_value = np.asarray(expected["p_value"], dtype=np.float64)
    if gate.method == "conformal":
        near_alpha = (movement.statistic < 0) | (np.abs(p_value - gate.alpha) <= movement.statistic / (n + 1) + 1e-12)
    else:
        log_px = np.asarray(expected["log_px"], dtype=np.float64)
        near_alpha = np.abs(log_px - gate.tau) <= tolerance.band(log_px)
    flipped = np.asarray(expected["accepted"]) != np.asarray(actual["accepted"])
    assert not (flipped & ~near_alpha).any(), f"decisions differ away from alpha: rows {np.flatnonzero(flipped & ~near_alpha).tolist()}"
    contested = flipped.copy()
    if gate.method == "conformal" and movement.surprises is not None:
        top = movement.surprises[..., 0].max(axis=1)  # the largest surprise is at least this
        contested |= (movement.surprises[..., 1] >= top[:, None]).sum(axis=1) > 1
    elif gate.method == "conformal":  # Bonferroni: the reason is the smallest per-score p-value
        contested |= movement.statistic != 0
    reasons = np.asarray(expected["rejected_by"], dtype=object)[~contested], np.asarray(actual["rejected_by"], dtype=object)[~contested]
    assert list(reasons[1]) == list(reasons[0]), "rejected_by"

    if "label" in expected:
        model = np.asarray(expected["model_probabilities"])
        np.testing.assert_allclose(actual["model_probabilities"], model, atol=tolerance.probability, err_msg="model_probabilities")
        tied = near_ties(model, 2 * tolerance.probability)
        relabelled = np.asarray(expected["label"]) != np.asarray(actual["label"])
        assert not (relabelled & ~tied).any(), f"labels differ where the head is not tied: rows {np.flatnonzero(relabelled & ~tied).tolist()}"
        same = ~flipped
        np.testing.assert_allclose(np.asarray(actual["probabilities"])[same], np.asarray(expected["probabilities"])[same], atol=tolerance.probability, err_msg="probabilities")


def assert_same_answers(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], what: str = "") -> None:
    """Every answer column of ``actual`` (``Prediction.columns``' names; at least log p(x), the
    p-value and the decision) equal to ``expected``'s, value for value: one backend's promise across
    batch sizes, thread counts and processes."""
    assert {"log_px", "p_value", "accepted"} <= set(actual) <= set(expected), what
    for name, values in actual.items():
        np.testing.assert_array_equal(values, expected[name], err_msg=f"{name} {what}")


def v1_answer(predictions: list[dict], gate: Gate) -> dict[str, np.ndarray]:
    """v1 predictions in ``Prediction.columns``' names."""
    def column(key):
        return np.array([prediction[key] for prediction in predictions])

    answer = {key: column(key) for key in ("log_px", "p_value", "accepted", "label", "model_probabilities", "probabilities")}
    answer["rejected_by"] = np.array([prediction["rejected_by"] for prediction in predictions], dtype=object)
    for name in gate.tails:
        answer[f"score_{name}"] = np.array([prediction["scores"][name] for prediction in predictions])
        answer[f"p_value_{name}"] = np.array([prediction["p_values"][name] for prediction in predictions])
    return answer
