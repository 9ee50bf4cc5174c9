"""Drift of the served inputs: a sliding window of the last ``window`` instances' log p(x) (nats) and
combined gate p-values, compared with the gate's calibration split (inputs the model never trained
on, exchangeable with in-distribution traffic):

- ``log_px``: two-sample Kolmogorov-Smirnov test of the window's log p(x) against the calibration
  split's (non-finite log p(x), outside the support, counts as the lowest value);
- ``p_value``: one-sample KS test of the window's combined conformal p-values against Uniform(0, 1),
  their distribution on exchangeable inputs;
- ``rejection_rate``: the window's rejections against the gate's alpha, an exact one-sided binomial
  test (more rejections than alpha predicts).

The drift p-value is the Bonferroni combination of the three (the smallest times three, at most 1);
drift is declared when it is below ``threshold``. Field names follow Alibi Detect's drift detectors
(``is_drift``, ``distance``, ``p_val``, ``threshold``). Nothing is declared until the window is full.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy import stats

TESTS = ("log_px", "p_value", "rejection_rate")


@dataclass(frozen=True)
class DriftTest:
    distance: float  # KS statistic, or the window's rejection rate minus alpha
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


def _finite_floor(values: np.ndarray) -> np.ndarray:
    """Non-finite log p(x) (outside the support) as the lowest float, so KS counts it as extreme."""
    return np.where(np.isfinite(values), values, np.finfo(np.float64).min)


class DriftMonitor:
    """Thread-safe: ``add`` runs in the inference thread, ``report`` in request handlers and scrapes."""

    def __init__(self, calibration_log_px: np.ndarray, alpha: float, window: int, threshold: float):
        if window < 1:
            raise ValueError(f"drift window must be at least 1, got {window}")
        self.reference = np.sort(_finite_floor(np.asarray(calibration_log_px, dtype=np.float64)))
        finite = calibration_log_px[np.isfinite(calibration_log_px)]
        self.reference_mean = float(finite.mean())
        self.alpha, self.window, self.threshold = alpha, window, threshold
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

    def report(self) -> DriftReport:
        log_px, p_value, rejected, seen = self._window()
        count = len(log_px)
        finite = log_px[np.isfinite(log_px)]
        mean_shift = float(finite.mean() - self.reference_mean) if len(finite) else None
        rate = float(rejected.mean()) if count else None
        if count < self.window:
            return DriftReport(self.window, count, seen, False, None, self.threshold, mean_shift, rate, self.alpha, {})
        ks_log_px = stats.ks_2samp(_finite_floor(log_px), self.reference)
        ks_p_value = stats.ks_1samp(p_value, stats.uniform.cdf)
        rejections = int(rejected.sum())
        tests = {
            "log_px": DriftTest(float(ks_log_px.statistic), float(ks_log_px.pvalue)),
            "p_value": DriftTest(float(ks_p_value.statistic), float(ks_p_value.pvalue)),
            "rejection_rate": DriftTest(rate - self.alpha, float(stats.binom.sf(rejections - 1, count, self.alpha))),
        }
        combined = min(1.0, len(tests) * min(test.p_val for test in tests.values()))
        return DriftReport(self.window, count, seen, combined < self.threshold, combined, self.threshold, mean_shift, rate, self.alpha, tests)
