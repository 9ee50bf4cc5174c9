"""Drift of the served inputs: a sliding window of the last ``window`` instances' log p(x) (nats),
combined gate p-values and decisions, compared with the gate's calibration split (inputs the model
never trained on, exchangeable with in-distribution traffic).

Every test is two-sample: under no drift the window and the calibration split are draws from one
distribution, and the split's own randomness is part of each test's null. (Given one split, the
gate's p-values are not uniform and its rejection rate is not alpha; a test that assumes they are
alarms forever on a deployment whose split happened to be off: issue 34, docs/operations.md.)

- ``log_px``: two-sample Kolmogorov-Smirnov test of the window's log p(x) against the calibration
  split's (non-finite log p(x), outside the support, counts as the lowest value);
- ``p_value``: two-sample KS test of the window's combined statistic T against the calibration
  split's. A served conformal p-value is (1 + c) / (n + 1), with c the number of the n calibration
  statistics at least as large as the instance's T, so the window's positions among the calibration
  statistics, and with them the exact KS statistic, follow from its p-values; gates with a
  calibrated statistic only (not ``bonferroni``);
- ``rejection_rate``: the window's rejections, more than no drift predicts. Conformal gates: the
  K cells of p-values below alpha hold a probability mass that is Beta(K, n + 1 - K) over draws of
  the split (the n + 1 cells between sorted continuous calibration statistics are Dirichlet(1, ...,
  1); Bates et al. 2023), so the count is beta-binomial. Tau gates (fixed tau): one-sided Fisher
  exact test of the window's count below tau against the calibration split's.

The drift p-value is the Bonferroni combination of the tests (the smallest times their number, at
most 1), so the false-alarm rate per full window is at most ``threshold``; drift is declared when
it is below ``threshold``. Field names follow Alibi Detect's drift detectors (``is_drift``,
``distance``, ``p_val``, ``threshold``). Nothing is declared until the window is full.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from models.gate import Gate

TESTS = ("log_px", "p_value", "rejection_rate")


@dataclass(frozen=True)
class DriftTest:
    distance: float  # KS statistic, or the window's rejection rate minus the rate expected without drift
    p_val: float


@dataclass(frozen=True)
class DriftReport:
    window_size: int
    instances: int  # in the window now (at most window_size)
    instances_seen: int  # since the service started
    is_drift: bool
    p_val: float | None  # Bonferroni over ``tests``; None until the window is full
    threshold: float
    mean_shift_nats: float | None  # mean finite log p(x): window minus calibration
    rejection_rate: float | None
    alpha: float
    tests: dict[str, DriftTest]

    def as_dict(self) -> dict:
        return {**self.__dict__, "is_drift": int(self.is_drift), "tests": {name: test.__dict__ for name, test in self.tests.items()}}


@dataclass(frozen=True)
class CalibrationReference:
    """What a window is compared with: the calibration split's log p(x) ``(n_log_px,)`` (nats), the
    number of calibration statistics behind the served p-values (None: the gate has no calibrated
    statistic), the gate's alpha and, for a tau gate, its tau (rejected iff log p(x) < tau; None:
    a conformal gate, rejected iff p < alpha)."""

    log_px: np.ndarray
    statistic_size: int | None
    alpha: float
    tau: float | None = None

    @classmethod
    def of_gate(cls, gate: Gate) -> CalibrationReference:
        size = None if gate.statistic is None else len(gate.statistic)
        return cls(gate.calibration["log_px"], size, gate.alpha, None if gate.method == "conformal" else gate.tau)

    def rejection_cells(self) -> int:
        """K: how many of the n + 1 conformal p-values (1 + c) / (n + 1) are below alpha (the gate's
        own arithmetic)."""
        n = self.statistic_size
        return int(np.count_nonzero((1 + np.arange(n + 1)) / (n + 1) < self.alpha))


def finite_floor(values: np.ndarray) -> np.ndarray:
    """Non-finite log p(x) (outside the support) as the lowest float, so KS counts it as extreme."""
    return np.where(np.isfinite(values), values, np.finfo(np.float64).min)


def statistic_positions(p_value: np.ndarray, n: int) -> np.ndarray:
    """Each instance's place among n sorted calibration statistics ``(N,)``, from its conformal
    p-value (1 + c) / (n + 1): n - c, the number of them below its T (n for p = 0, outside the
    support). The calibration statistics themselves sit at 0.5, 1.5, ..., n - 0.5."""
    at_least_as_large = np.rint(np.asarray(p_value, dtype=np.float64) * (n + 1)) - 1
    return np.clip(n - at_least_as_large, 0, n)


class DriftMonitor:
    """Thread-safe: ``add`` runs in the inference thread, ``report`` in request handlers and scrapes."""

    def __init__(self, reference: CalibrationReference, window: int, threshold: float):
        if window < 1:
            raise ValueError(f"drift window must be at least 1, got {window}")
        log_px = np.asarray(reference.log_px, dtype=np.float64)
        self.reference = reference
        self.reference_log_px = np.sort(finite_floor(log_px))
        self.reference_mean = float(log_px[np.isfinite(log_px)].mean())
        n = reference.statistic_size
        self.statistic_grid = None if n is None else np.arange(n) + 0.5  # the calibration statistics' own positions
        # the calibration side of the rejection test: its log p(x) below tau (tau gate), or K p-value cells below alpha
        if reference.tau is not None:
            self.reference_rejections = int(np.count_nonzero(self.reference_log_px < reference.tau))
        else:
            self.reference_rejections = None if n is None else reference.rejection_cells()
        self.window, self.threshold = window, threshold
        self._log_px = np.zeros(window)
        self._p_value = np.zeros(window)
        self._rejected = np.zeros(window, dtype=bool)
        self._seen = 0
        self._lock = threading.Lock()

    def add(self, log_px: np.ndarray, p_value: np.ndarray, accepted: np.ndarray) -> None:
        """Append served instances (``(N,)`` each), the oldest leaving the window."""
        kept = min(len(log_px), self.window)  # a batch longer than the window keeps its last instances
        with self._lock:
            index = (self._seen + np.arange(kept)) % self.window
            for values, buffer in ((log_px, self._log_px), (p_value, self._p_value), (~np.asarray(accepted), self._rejected)):
                buffer[index] = np.asarray(values)[len(values) - kept :]
            self._seen += len(log_px)

    def _window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        with self._lock:
            count = min(self._seen, self.window)
            return self._log_px[:count].copy(), self._p_value[:count].copy(), self._rejected[:count].copy(), self._seen

    def _rejection_test(self, rejections: int, count: int) -> DriftTest | None:
        """More rejections in the window than no drift predicts, the calibration split's randomness
        included; None for a conformal gate without a calibrated statistic."""
        rate = rejections / count
        if self.reference.tau is not None:
            below, size = self.reference_rejections, len(self.reference_log_px)
            table = [[rejections, count - rejections], [below, size - below]]
            return DriftTest(rate - below / size, float(stats.fisher_exact(table, alternative="greater").pvalue))
        if self.reference_rejections is None:
            return None
        cells, n = self.reference_rejections, self.reference.statistic_size
        if cells == 0:  # alpha below 1 / (n + 1): only inputs outside the support are rejected
            return DriftTest(rate, 1.0 if rejections == 0 else 0.0)
        return DriftTest(rate - cells / (n + 1), float(stats.betabinom.sf(rejections - 1, count, cells, n + 1 - cells)))

    def report(self) -> DriftReport:
        log_px, p_value, rejected, seen = self._window()
        count = len(log_px)
        finite = log_px[np.isfinite(log_px)]
        mean_shift = float(finite.mean() - self.reference_mean) if len(finite) else None
        rate = float(rejected.mean()) if count else None
        alpha = self.reference.alpha
        if count < self.window:
            return DriftReport(self.window, count, seen, False, None, self.threshold, mean_shift, rate, alpha, {})
        ks_log_px = stats.ks_2samp(finite_floor(log_px), self.reference_log_px)
        tests = {"log_px": DriftTest(float(ks_log_px.statistic), float(ks_log_px.pvalue))}
        if self.statistic_grid is not None:
            ks_statistic = stats.ks_2samp(statistic_positions(p_value, len(self.statistic_grid)), self.statistic_grid)
            tests["p_value"] = DriftTest(float(ks_statistic.statistic), float(ks_statistic.pvalue))
        rejection = self._rejection_test(int(rejected.sum()), count)
        if rejection is not None:
            tests["rejection_rate"] = rejection
        combined = min(1.0, len(tests) * min(test.p_val for test in tests.values()))
        return DriftReport(self.window, count, seen, combined < self.threshold, combined, self.threshold, mean_shift, rate, alpha, tests)
