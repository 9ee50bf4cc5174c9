"""Conformal p-values (Bates et al. 2023, "Testing for outliers with conformal p-values") and their
combination, on numpy arrays.

A score s(x) is compared with the same score on n calibration inputs that the model never trained
on or was selected with. Its p-value is (1 + #{calibration scores at least as extreme}) / (n + 1),
with "extreme" meaning low (``lower`` tail), high (``upper``) or either (``both``: twice the smaller
one-sided p-value, capped at 1). On exchangeable in-distribution data P(p <= a) <= a for every a.

Combining m scores (``fisher`` or ``min``) takes two held-out splits. A reference split (the
validation split) fixes, per score, a monotone "surprise" -log p_ref(s): its empirical tail below
its 10% / above its 90% quantile and, past that, an exponential tail with the mean excess of the
reference (peaks over threshold), so that inputs beyond every reference value keep growing more
surprising instead of tying at 1 / (n + 1). The statistic T is the sum of the surprises (Fisher's
-2 sum log p, halved), their maximum (``min``: the smallest p), the maximum of weighted surprises
(``weighted``: weights chosen on the reference split against synthetic outliers, ``fit_weights``) or
the maximum plus a weighted sum of the surprises (``max_sum``, weights chosen likewise,
``fit_sum_weights``; a learned score's surprise may join the sum alone: ``models.score_classifier``);
its conformal p-value against the calibration inputs' T is exactly valid whatever the dependence
between the scores, since neither the surprise functions nor the weights depend on the calibration
split. ``bonferroni`` needs no reference: m times the smallest per-score
conformal p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.rowwise import row_products

Tail = Literal["lower", "upper", "both"]
Combine = Literal["fisher", "min", "weighted", "max_sum", "bonferroni"]
TAIL_QUANTILE = 0.1  # the exponential tail starts beyond the reference's 10% / 90% quantile
WEIGHT_FLOOR = 0.25  # the smallest weight fit_weights gives a score, so that none is ever ignored
LEARNED_COMBINATIONS = ("weighted", "max_sum")  # their weights are fitted against synthetic outliers
SUM_WEIGHT_MIN = 0.05  # the smallest nonzero weight fit_sum_weights tries
SUM_SLACK = 0.01  # fit_sum_weights: the most share of any outlier set that the weights may lose against min
SUM_MIN_GAIN = 0.005  # fit_sum_weights: a weight moves only for at least this much more of the worst set


def _as_extreme(scores: np.ndarray, tail: Tail) -> np.ndarray:
    """float64 scores; non-finite ones (an input outside the model's support) rank as the most
    extreme value of the tail."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isfinite(scores.sum()):  # one reduction instead of an elementwise test
        return scores
    extreme = np.inf if tail == "upper" else -np.inf
    return np.where(np.isfinite(scores), scores, extreme)


def p_values(sorted_calibration: np.ndarray, scores: np.ndarray, tail: Tail) -> np.ndarray:
    """Conformal p-values ``(N,)`` of ``scores`` against ``sorted_calibration`` (ascending, finite)."""
    n = len(sorted_calibration)
    scores = _as_extreme(scores, tail)
    if tail == "lower":
        return (1 + sorted_calibration.searchsorted(scores, side="right")) / (n + 1)
    upper = (1 + n - sorted_calibration.searchsorted(scores, side="left")) / (n + 1)
    if tail == "upper":
        return upper
    lower = (1 + sorted_calibration.searchsorted(scores, side="right")) / (n + 1)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


@dataclass(frozen=True)
class UpperTail:
    """The upper-tail surprise function of one reference sample (ascending, finite), precomputed:
    the empirical tail up to the sample's 90% quantile, an exponential tail with the mean excess of
    the reference beyond it."""

    reference: np.ndarray
    threshold: float
    scale: float
    base: float  # surprise at the threshold

    @classmethod
    def fit(cls, sorted_reference: np.ndarray) -> "UpperTail":
        n = len(sorted_reference)
        threshold = float(sorted_reference[min(n - 1, int(math.ceil((1 - TAIL_QUANTILE) * n)))])
        excess = sorted_reference[sorted_reference > threshold] - threshold
        scale = float(excess.mean()) if excess.size else max(float(np.std(sorted_reference)), 1e-12)
        at_threshold = (1 + n - np.searchsorted(sorted_reference, threshold, side="left")) / (n + 1)
        return cls(sorted_reference, threshold, scale, -math.log(at_threshold))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Surprise of finite or infinite ``scores`` (never NaN: ``_as_extreme`` maps it)."""
        n = len(self.reference)
        empirical = np.log((n + 1) / (1 + n - self.reference.searchsorted(scores, side="left")))
        return np.where(scores > self.threshold, self.base + (scores - self.threshold) / self.scale, empirical)


@dataclass(frozen=True)
class Surprise:
    """-log p_ref ``(N,)`` in nats: how far into ``tail`` each score lies against a reference sample;
    unbounded past the reference's range, inf for non-finite scores."""

    tail: Tail
    upper: UpperTail | None
    lower: UpperTail | None  # the upper tail of the negated reference

    @classmethod
    def fit(cls, sorted_reference: np.ndarray, tail: Tail) -> "Surprise":
        upper = UpperTail.fit(sorted_reference) if tail in ("upper", "both") else None
        lower = UpperTail.fit(-sorted_reference[::-1]) if tail in ("lower", "both") else None
        return cls(tail, upper, lower)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = _as_extreme(scores, self.tail)
        if self.tail == "upper":
            return self.upper(scores)
        if self.tail == "lower":
            return self.lower(-scores)
        return np.maximum(0.0, np.maximum(self.lower(-scores), self.upper(scores)) - math.log(2))


def surprise(sorted_reference: np.ndarray, scores: np.ndarray, tail: Tail) -> np.ndarray:
    """``Surprise`` fitted and applied at once (for one-off use; a gate keeps the fitted ones)."""
    return Surprise.fit(sorted_reference, tail)(scores)


def combined_statistic(surprises: np.ndarray, combine: Combine, weights: np.ndarray | None = None, sum_only: int = 0) -> np.ndarray:
    """T ``(N,)`` from per-score surprises ``(N, m)`` (and ``weights`` ``(m,)`` for ``weighted`` and
    ``max_sum``); higher T = more outlying, nondecreasing in every surprise. ``max_sum`` only: the
    last ``sum_only`` columns (a learned score's surprise) enter the weighted sum but not the maximum."""
    if sum_only:
        if combine != "max_sum":
            raise ValueError(f"only max_sum takes surprises that enter the sum alone, not {combine!r}")
        return surprises[:, :-sum_only].max(axis=1) + row_products(surprises, weights)
    if combine == "fisher":
        return surprises.sum(axis=1)
    if combine == "min":
        return surprises.max(axis=1)
    if combine == "weighted":
        return (surprises * weights).max(axis=1)
    if combine == "max_sum":
        return surprises.max(axis=1) + row_products(surprises, weights)
    raise ValueError(f"combine {combine!r} has no calibrated statistic")


def _shares_rejected(
    reference: np.ndarray | list[np.ndarray], outliers: list[np.ndarray], alpha: float, combine: Combine, weights: np.ndarray, sum_only: int = 0
) -> np.ndarray:
    """Per outlier set, the share whose T exceeds the reference's 1 - alpha quantile of T ``(sets,)``;
    ``reference`` is one matrix for every set or a list of one per set."""
    if isinstance(reference, list):
        return np.concatenate([_shares_rejected(r, [outlier], alpha, combine, weights, sum_only) for r, outlier in zip(reference, outliers)])
    threshold = np.quantile(combined_statistic(reference, combine, weights, sum_only), 1 - alpha)
    return np.array([np.mean(combined_statistic(outlier, combine, weights, sum_only) > threshold) for outlier in outliers])


def _coordinate_ascent(objective, start: np.ndarray, grid: np.ndarray, rounds: int, min_gain: float = 0.0) -> np.ndarray:
    """Each weight in turn set to the grid value that most raises ``objective(weights)``; a weight
    moves only on a gain above ``min_gain``, so without one the start is returned."""
    weights, best = start, objective(start)
    for _ in range(rounds):
        for score in range(len(weights)):
            for value in grid:
                trial = weights.copy()
                trial[score] = value
                trial_value = objective(trial)
                if trial_value > best + min_gain:
                    weights, best = trial, trial_value
    return weights


def fit_weights(reference: np.ndarray, outliers: list[np.ndarray], alpha: float, floor: float = WEIGHT_FLOOR, rounds: int = 2, steps: int = 12) -> np.ndarray:
    """Weights ``(m,)`` in [floor, 1] for ``weighted``: the surprises of the reference split
    ``(N, m)`` against those of synthetic outlier sets ``(n_i, m)``. Coordinate ascent over a
    log-spaced grid of each weight, maximising the mean share of the outlier sets whose weighted
    maximum exceeds the reference's 1 - alpha quantile of it; scaled so the largest weight is 1. A
    weight moves only where that raises the power, so with no gain every weight stays 1 (``min``)."""
    grid = np.exp(np.linspace(np.log(floor), 0.0, steps))
    weights = _coordinate_ascent(
        lambda w: float(np.mean(_shares_rejected(reference, outliers, alpha, "weighted", w))), np.ones(reference.shape[1]), grid, rounds
    )
    return weights / weights.max()


def fit_sum_weights(
    reference: np.ndarray | list[np.ndarray], outliers: list[np.ndarray], alpha: float, rounds: int = 3, steps: int = 10, slack: float = SUM_SLACK,
    min_gain: float = SUM_MIN_GAIN, sum_only: int = 0,
) -> np.ndarray:
    """Weights ``(m,)`` in {0} and [SUM_WEIGHT_MIN, 1] for ``max_sum`` (T = the largest surprise +
    surprises @ weights), from the reference split's surprises ``(N, m)`` and synthetic outlier
    sets' ``(n_i, m)``: coordinate ascent from all zeros (``min``) over a log-spaced grid,
    maximising the smallest share of an outlier set rejected at the reference's 1 - alpha quantile
    of T (maximin), among the weights under which no set loses more than ``slack`` of the share
    ``min`` rejects. The maximum keeps every score able to reject alone; the last ``sum_only``
    columns enter only the sum (``combined_statistic``), so at weight 0 they change nothing.
    ``reference`` may be a list, one per outlier set, where a set's columns are its own (a learned
    score fitted without that set, whose surprise differs on the reference too)."""
    grid = np.r_[0.0, np.exp(np.linspace(np.log(SUM_WEIGHT_MIN), 0.0, steps))]
    start = np.zeros(outliers[0].shape[1])
    floor = _shares_rejected(reference, outliers, alpha, "max_sum", start, sum_only) - slack

    def worst_share(weights: np.ndarray) -> float:
        shares = _shares_rejected(reference, outliers, alpha, "max_sum", weights, sum_only)
        return float(shares.min()) if np.all(shares >= floor) else -np.inf

    return _coordinate_ascent(worst_share, start, grid, rounds, min_gain)


def combined_p_values(
    per_score: np.ndarray, surprises: np.ndarray | None, combine: Combine, sorted_calibration_statistic: np.ndarray | None,
    weights: np.ndarray | None = None, sum_only: int = 0,
) -> np.ndarray:
    """One p-value ``(N,)``: Bonferroni over the per-score conformal p-values ``(N, m)`` (m times the
    smallest, capped at 1), or the conformal p-value of T(surprises ``(N, m)``) against the
    calibration inputs' sorted T."""
    if combine == "bonferroni":
        return np.minimum(1.0, per_score.shape[1] * per_score.min(axis=1))
    statistic = combined_statistic(surprises, combine, weights, sum_only)
    n = len(sorted_calibration_statistic)
    return (1 + n - np.searchsorted(sorted_calibration_statistic, statistic, side="left")) / (n + 1)


def batch_typicality_p_value(sorted_calibration_log_px: np.ndarray, batch_log_px: np.ndarray, draws: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of a batch's mean log p(x) (Nalisnick et al. 2019b, typicality test): how
    often the mean of ``len(batch)`` calibration values drawn with replacement lies at least as far
    from the calibration mean. A non-finite value in the batch gives p = 1 / (draws + 1)."""
    if not np.isfinite(batch_log_px).all():
        return 1.0 / (draws + 1)
    center = float(sorted_calibration_log_px.mean())
    rng = np.random.default_rng(seed)
    means = sorted_calibration_log_px[rng.integers(0, len(sorted_calibration_log_px), size=(draws, len(batch_log_px)))].mean(axis=1)
    distance = abs(float(batch_log_px.mean()) - center)
    return float((1 + np.count_nonzero(np.abs(means - center) >= distance)) / (draws + 1))
