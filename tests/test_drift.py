"""The drift monitor against direct computations: the sliding window, the KS statistic, the exact
binomial tail, no alarm on exchangeable traffic and a quick alarm on shifted traffic."""
import math

import numpy as np
import pytest

from service.drift import DriftMonitor


def traffic(rng: np.random.Generator, n: int, shift: float = 0.0, alpha: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log p(x) ~ N(shift, 1); p-values uniform, rejected below alpha (what a calibrated gate gives)."""
    log_px = rng.normal(shift, 1.0, n)
    p_value = rng.uniform(size=n) if shift == 0 else np.clip(rng.uniform(size=n) * math.exp(-4 * abs(shift)), 0, 1)
    return log_px, p_value, p_value >= alpha


def test_nothing_is_declared_until_the_window_is_full():
    monitor = DriftMonitor(np.zeros(50), alpha=0.01, window=20, threshold=1e-4)
    monitor.add(np.full(19, -100.0), np.zeros(19), np.zeros(19, dtype=bool))
    report = monitor.report()
    assert (report.instances, report.instances_seen, report.is_drift, report.p_val, report.tests) == (19, 19, False, None, {})
    assert report.mean_shift_nats == -100.0 and report.rejection_rate == 1.0
    monitor.add(np.array([-100.0]), np.zeros(1), np.zeros(1, dtype=bool))
    assert monitor.report().is_drift and monitor.report().as_dict()["is_drift"] == 1


def test_the_window_keeps_the_latest_instances_and_the_statistics_are_exact():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=300)
    monitor = DriftMonitor(reference, alpha=0.05, window=100, threshold=1e-4)
    log_px, p_value = rng.normal(0.3, 1, 250), rng.uniform(size=250)
    accepted = p_value >= 0.05
    monitor.add(log_px[:30], p_value[:30], accepted[:30])
    monitor.add(log_px[30:], p_value[30:], accepted[30:])  # one batch longer than the window
    report = monitor.report()
    window, window_p, window_rejected = log_px[-100:], p_value[-100:], ~accepted[-100:]
    assert report.instances == 100 and report.instances_seen == 250
    assert report.mean_shift_nats == pytest.approx(window.mean() - reference.mean())
    grid = np.concatenate([window, reference])
    ks = np.max(np.abs((window[:, None] <= grid).mean(0) - (reference[:, None] <= grid).mean(0)))
    assert report.tests["log_px"].distance == pytest.approx(ks)
    uniform_ks = max(np.max(np.arange(1, 101) / 100 - np.sort(window_p)), np.max(np.sort(window_p) - np.arange(100) / 100))
    assert report.tests["p_value"].distance == pytest.approx(uniform_ks)
    k = int(window_rejected.sum())
    tail = sum(math.comb(100, i) * 0.05**i * 0.95 ** (100 - i) for i in range(k, 101))
    assert report.rejection_rate == k / 100 and report.tests["rejection_rate"].p_val == pytest.approx(tail, rel=1e-9)
    assert report.p_val == pytest.approx(min(1.0, 3 * min(t.p_val for t in report.tests.values())))


def test_inputs_outside_the_support_count_as_the_lowest_log_px():
    monitor = DriftMonitor(np.linspace(-10, -5, 100), alpha=0.01, window=50, threshold=1e-4)
    monitor.add(np.full(50, -np.inf), np.zeros(50), np.zeros(50, dtype=bool))
    report = monitor.report()
    assert report.tests["log_px"].distance == 1.0 and report.mean_shift_nats is None and report.is_drift


def test_no_false_alarm_on_exchangeable_traffic_and_a_quick_alarm_on_a_shift():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(rng.normal(size=2000), alpha=0.01, window=1000, threshold=1e-4)
    alarms = 0
    for _ in range(200):  # 20,000 instances in requests of 100, checked after each
        monitor.add(*traffic(rng, 100))
        alarms += monitor.report().is_drift
    assert alarms == 0
    for requests in range(1, 21):
        monitor.add(*traffic(rng, 100, shift=-0.5))
        if monitor.report().is_drift:
            break
    assert monitor.report().is_drift and requests <= 5


def test_the_window_must_hold_something():
    with pytest.raises(ValueError, match="at least 1"):
        DriftMonitor(np.zeros(3), 0.01, 0, 1e-4)
