"""Prometheus metrics in base units (seconds, nats), one registry per app (no process globals): the
app's request metrics (observed on the event loop), and per loaded model version its own labelled
set (``ModelMetrics``, observed a batch at a time in the inference thread)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from inference.prediction import Prediction
from models.manifest import GateSection
from service.drift import TESTS, DriftMonitor

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def log_px_buckets(gate: GateSection) -> list[float]:
    """Histogram edges (nats) around tau: tau minus 1000..1 nats below, both calibrations' taus and
    the training and validation quantiles above, so the histogram resolves the decision region."""
    tau = gate.tau
    edges = {tau - offset for offset in (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1)}
    edges |= {tau, gate.min_train.tau, gate.validation.tau}
    for statistics in gate.statistics.values():
        edges |= {statistics.min, statistics.max, *statistics.quantiles.values()}
    return sorted(round(edge, 3) for edge in edges if np.isfinite(edge))


class BatchHistogram:
    """A Prometheus histogram with fixed labels, observed a whole array at a time: one
    ``searchsorted`` and ``bincount`` per batch instead of a Python call per value (prometheus_client
    observes one value per call). Thread-safe: observed in the inference thread, collected at scrapes."""

    def __init__(self, name: str, documentation: str, labels: dict[str, str], buckets):
        self.name, self.documentation, self.labels = name, documentation, labels
        self.edges = np.asarray(sorted(buckets), dtype=np.float64)  # upper bounds (le), +Inf implied
        self.counts = np.zeros(len(self.edges) + 1, dtype=np.int64)  # per bucket, not cumulative
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        """Count each value in the first bucket whose bound it does not exceed (Prometheus' le)."""
        values = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=len(self.counts))
        with self._lock:
            self.counts += counts
            self.total += float(values.sum())

    def collect(self):
        """Buckets, count and sum, as prometheus_client's Histogram writes them: no sum where a bound
        is negative, as log p(x)'s are (OpenMetrics), but the count always."""
        with self._lock:
            cumulative, total = np.cumsum(self.counts).tolist(), self.total
        family = Metric(self.name, self.documentation, "histogram")
        bounds = [floatToGoString(edge) for edge in self.edges] + ["+Inf"]
        for bound, count in zip(bounds, cumulative):
            family.add_sample(f"{self.name}_bucket", {**self.labels, "le": bound}, count)
        family.add_sample(f"{self.name}_count", self.labels, cumulative[-1])
        if self.edges[0] >= 0:
            family.add_sample(f"{self.name}_sum", self.labels, total)
        yield family


@dataclass
class InferenceStatistics:
    """Totals for the Open Inference Protocol statistics extension (Triton's model_stats): instances,
    successful requests, batches (executions), and nanoseconds of queueing and model compute; and
    the gate's rejections by reason (the console's rates)."""

    instances: int = 0
    requests: int = 0
    executions: int = 0
    compute_ns: int = 0
    queue_ns: int = 0
    last_inference_ms: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, instances: int, requests: int, seconds: float, queue_seconds: float) -> None:
        self.instances += instances
        self.requests += requests
        self.executions += 1
        self.compute_ns += int(seconds * 1e9)
        self.queue_ns += int(queue_seconds * 1e9)
        self.last_inference_ms = int(time.time() * 1000)


class DriftCollector:
    """``diglm_drift_*`` gauges, computed from the drift monitor's window at each scrape."""

    def __init__(self, monitor: DriftMonitor, labels: dict[str, str]):
        self.monitor, self.labels = monitor, labels

    def collect(self):
        report = self.monitor.report()
        names, values = list(self.labels), list(self.labels.values())

        def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"diglm_drift_{name}", documentation, labels=names)
            family.add_metric(values, float("nan") if value is None else value)
            return family

        yield gauge("is_drift", "1 when the window's combined drift p-value is below the threshold", float(report.is_drift))
        yield gauge("p_value", "Combined drift p-value of the window (NaN until the window is full)", report.p_val)
        yield gauge("threshold", "Drift p-value threshold", report.threshold)
        yield gauge("window_instances", "Served instances in the drift window", report.instances)
        yield gauge("mean_shift_nats", "Mean finite log p(x) of the window minus the calibration split's (nats)", report.mean_shift_nats)
        yield gauge("rejection_rate", "Share of the window the gate rejected", report.rejection_rate)
        per_test = GaugeMetricFamily(
            "diglm_drift_test_p_value", "Per-test drift p-value against the calibration split (log_px and p_value: two-sample KS, rejection_rate: beta-binomial or Fisher exact)", labels=[*names, "test"]
        )
        for test in TESTS:
            found = report.tests.get(test)
            per_test.add_metric([*values, test], found.p_val if found else float("nan"))
        yield per_test


class ModelMetrics:
    """The metrics of one served model version, labelled with its name and version. Its metric
    objects belong to no registry: ``ServiceMetrics`` exposes every loaded version's, so a version's
    series go when it is unloaded and each keeps its own log p(x) buckets around its own tau.
    ``observe_predictions`` runs in the inference thread; scrapes read them on the event loop."""

    def __init__(self, model_name: str, model_version: str, gate: GateSection, drift: DriftMonitor):
        self.labels = {"model": model_name, "version": model_version}
        names = ["model", "version"]
        self.inference_seconds = Histogram("diglm_inference_duration_seconds", "Model forward time per batch", names, buckets=LATENCY_BUCKETS, registry=None)
        self.instances = Counter("diglm_instances", "Instances predicted", names, registry=None)
        self.rejected = Counter("diglm_instances_rejected", "Instances the gate rejected, by reason (the score with the smallest p-value, log_px for a tau gate, or support)", ["reason", *names], registry=None)
        self.log_px = BatchHistogram("diglm_log_px_nats", "log p(x) of served instances (nats; non-finite ones are not observed)", self.labels, log_px_buckets(gate))
        self.batch_size = Histogram("diglm_batch_size", "Instances per model forward pass", names, buckets=BATCH_BUCKETS, registry=None)
        self.queue_seconds = BatchHistogram("diglm_queue_duration_seconds", "Time a request waited for its batch to start", self.labels, LATENCY_BUCKETS)
        self.statistics = InferenceStatistics()
        self.info = Gauge("diglm_model_info", "A loaded model version (value 1)", [*names, "task", "gate_method", "backend", "device"], registry=None)
        self.ready = Gauge("diglm_ready", "1 while the model version is loaded, warmed up and serving", names, registry=None)
        self.gate_alpha = Gauge("diglm_gate_alpha", "The gate's calibrated false-rejection rate (alpha)", names, registry=None)
        self.gate_alpha.labels(**self.labels).set(gate.alpha)
        self.gate_tau = Gauge("diglm_gate_tau_nats", "The gate's tau on log p(x) (nats; the validation tau for the conformal gate)", names, registry=None)
        self.gate_tau.labels(**self.labels).set(gate.tau)
        # this version's series of the per-batch metrics, looked up once
        self._inference_seconds, self._batch_size = self.inference_seconds.labels(**self.labels), self.batch_size.labels(**self.labels)
        self._instances = self.instances.labels(**self.labels)
        self.collectors = [
            self.inference_seconds, self.instances, self.rejected, self.log_px, self.batch_size, self.queue_seconds,
            self.info, self.ready, self.gate_alpha, self.gate_tau, DriftCollector(drift, self.labels),
        ]

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()

    def observe_predictions(self, prediction: Prediction, seconds: float, queue_seconds: list[float]) -> None:
        """After one forward pass, in the inference thread: its time, size, the gate's decisions,
        log p(x), and how long each of its requests waited in the queue."""
        log_px, accepted = prediction.log_px, prediction.accepted
        self.statistics.add(len(log_px), len(queue_seconds), seconds, sum(queue_seconds))
        self._inference_seconds.observe(seconds)
        self.queue_seconds.observe(queue_seconds)
        self._batch_size.observe(len(log_px))
        self._instances.inc(len(log_px))
        if not accepted.all():
            reasons, counts = np.unique(prediction.rejected_by[~accepted].astype(str), return_counts=True)
            for reason, count in zip(reasons, counts):
                self.rejected.labels(reason=reason, **self.labels).inc(int(count))
                self.statistics.rejected[reason] = self.statistics.rejected.get(reason, 0) + int(count)
        self.log_px.observe(log_px[np.isfinite(log_px)])


class LoadedVersionsCollector:
    """Every loaded version's ``ModelMetrics``, merged into one family per metric name."""

    def __init__(self, versions: Callable[[], Iterable[ModelMetrics]]):
        self.versions = versions

    def collect(self):
        families: dict[str, Metric] = {}
        for metrics in self.versions():
            for family in metrics.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


class ServiceMetrics:
    """The app's registry: request counts and latency by protocol and route (labelled with the model
    and version that answered; empty for routes that name no model), requests in flight, and every
    loaded version's ``ModelMetrics``."""

    def observe(self, protocol: str, endpoint: str, status: int, model: str, version: str, seconds: float) -> None:
        """One finished request (``model``, ``version``: the version that answered, or empty)."""
        self.requests.labels(protocol=protocol, endpoint=endpoint, status=str(status), model=model, version=version).inc()
        self.request_seconds.labels(protocol=protocol, endpoint=endpoint, model=model, version=version).observe(seconds)

    def __init__(self, loaded_versions: Callable[[], Iterable[ModelMetrics]]):
        self.registry = CollectorRegistry()
        names = ["model", "version"]
        self.requests = Counter(
            "diglm_requests", "Requests by protocol (rest, grpc), endpoint (route, or gRPC method) and HTTP status (gRPC calls: that of the same outcome over REST)",
            ["protocol", "endpoint", "status", *names], registry=self.registry,
        )
        self.request_seconds = Histogram("diglm_request_duration_seconds", "Request latency", ["protocol", "endpoint", *names], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("diglm_requests_in_flight", "Requests being handled", registry=self.registry)
        self.registry.register(LoadedVersionsCollector(loaded_versions))
