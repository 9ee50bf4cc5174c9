"""The decision log: one record per served instance, written where operators and the evaluation loop
can read it, without serving ever waiting for it.

``dispatch`` hands each answered request to ``DecisionLog.served`` on the event loop. That draws which
instances are kept (every rejected one and ``DIGLM_DECISION_LOG_SAMPLE`` of the accepted ones) and
which carry their input, and puts the request on each sink's bounded queue: nothing more. Each sink
has its own writer thread that builds the records (``records``) and writes them, so a slow or failing
sink slows neither serving nor the other sinks. A full queue drops the request's records, a failed
write the batch's; both are counted in ``diglm_decision_log_dropped_total{sink,reason}``, the records
written in ``diglm_decision_log_records_total{sink}``. ``close`` writes what is queued (SIGTERM).
The last rejected instances are also kept in memory (``RecentRejections``), log or no log.

A record, as JSON: ``request_id``, ``instance`` (its index in the request), ``time`` (UTC, ISO 8601),
``model``, ``version``, ``protocol`` (v1, v2, grpc), ``decision`` (accept or reject), ``p_value``
(combined), ``reason`` (the gate score with the strongest evidence, ``support``, or null),
``scores`` ({name: {value, p_value}} for every gate score), ``log_px`` (nats), the head's ``label``
and top ``probability`` (a regression head: ``mean`` and ``variance``), ``latency_ms`` (the
request's time in the service until its prediction), ``input_sha256`` (of the instance as the model
saw it: float32, little-endian, C order), and where configured ``input`` ({dtype, shape, base64} of
those bytes; ``inference.logged_inputs``). Non-finite numbers are written as null.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from inference.logged_inputs import as_logged, digest, encoded
from inference.prediction import ClassOutputs, Prediction

log = logging.getLogger(__name__)

InputPolicy = Literal["never", "rejected", "sampled"]
WRITE_BATCH = 256  # most requests a writer takes from its queue for one write
POLL_S = 0.05  # a writer with nothing queued looks again this much later
ERROR_LOG_INTERVAL_S = 60.0  # a failing sink is logged at most this often


@dataclass(slots=True)
class AnsweredRequest:
    """One answered request as it waits in a sink's queue: ``x`` ``(N, *input_shape)`` float32 (what
    the model saw), its ``prediction``, and per instance ``keep`` (logged; None: all) and
    ``with_input`` (the record carries the input; None: none), both ``(N,)`` bool."""

    request_id: str
    time: float  # unix seconds, when the prediction was made
    model: str
    version: str
    protocol: str
    latency_s: float
    x: np.ndarray
    prediction: Prediction
    keep: np.ndarray | None
    with_input: np.ndarray | None


def records(request: AnsweredRequest) -> list[dict]:
    """The request's kept instances as decision records (the module's docstring lists the fields)."""
    prediction = request.prediction
    rows = slice(None) if request.keep is None else np.flatnonzero(request.keep)
    stamp = datetime.fromtimestamp(request.time, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    x = as_logged(request.x[rows])
    accepted, p_value, reason, log_px = (getattr(prediction, name)[rows].tolist() for name in ("accepted", "p_value", "rejected_by", "log_px"))
    scores = {name: (values[rows].tolist(), prediction.p_values[name][rows].tolist()) for name, values in prediction.scores.items()}
    head = prediction.head
    if isinstance(head, ClassOutputs):
        outputs = {"label": head.label[rows].tolist(), "probability": head.model_probabilities[rows].max(axis=1).tolist()}
    else:
        outputs = {"mean": head.model_mean[rows].tolist(), "variance": head.model_variance[rows].tolist()}
    latency_ms = request.latency_s * 1e3
    with_input = request.with_input
    out = []
    for i, row in enumerate(range(len(prediction)) if request.keep is None else rows.tolist()):
        record = {
            "request_id": request.request_id, "instance": row, "time": stamp, "model": request.model, "version": request.version,
            "protocol": request.protocol, "decision": "accept" if accepted[i] else "reject", "p_value": p_value[i], "reason": reason[i],
            "scores": {name: {"value": values[i], "p_value": p_values[i]} for name, (values, p_values) in scores.items()},
            "log_px": log_px[i], **{name: values[i] for name, values in outputs.items()},
            "latency_ms": latency_ms, "input_sha256": digest(x[i]),
        }
        if with_input is not None and with_input[row]:
            record["input"] = encoded(x[i])
        out.append(record)
    return out


class Sink(Protocol):
    """Where records go: ``write`` takes a batch of records and raises on failure (``PartialWrite``
    when only the first ones were delivered); ``close`` releases the sink."""

    name: str

    def write(self, records: list[dict]) -> None: ...

    def close(self) -> None: ...


class PartialWrite(Exception):
    """A write that delivered only its first ``written`` records before ``cause``."""

    def __init__(self, written: int, cause: Exception):
        super().__init__(str(cause))
        self.written = written


class JsonLinesSink:
    """JSON Lines in ``folder``: ``decisions.jsonl`` is written; past ``max_bytes`` it is renamed
    ``decisions-<UTC time>.jsonl`` and a new one begun, and only the newest ``keep`` renamed files
    are kept. Records are JSON (non-finite numbers as null), flushed a batch at a time; a write cut
    short (a full disk) can leave one partial line, which readers skip."""

    name = "jsonl"
    ACTIVE = "decisions.jsonl"

    def __init__(self, folder: Path, max_bytes: int, keep: int):
        self.folder, self.max_bytes, self.keep = folder, max_bytes, keep
        folder.mkdir(parents=True, exist_ok=True)
        self.file = (folder / self.ACTIVE).open("ab")

    def write(self, records: list[dict]) -> None:
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        if self.file.tell() and self.file.tell() + len(data) > self.max_bytes:
            self._rotate()
        self.file.write(data)
        self.file.flush()

    def _rotate(self) -> None:
        self.file.close()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        (self.folder / self.ACTIVE).rename(self.folder / f"decisions-{stamp}.jsonl")
        for old in sorted(self.folder.glob("decisions-*.jsonl"))[: -self.keep]:
            old.unlink()
        self.file = (self.folder / self.ACTIVE).open("ab")

    def close(self) -> None:
        self.file.close()


class CloudEventsSink:
    """Each record as a CloudEvent in structured mode (``application/cloudevents+json``), POSTed to
    ``url`` (a Knative broker, a Kafka bridge): type ``io.diglm.decision``, source
    ``/v2/models/{model}/versions/{version}``, id ``{request_id}/{instance}``, the record's time,
    and KServe's logger extension ``inferenceservicename`` (the model). One keep-alive connection;
    a POST that fails, times out (``timeout_s``) or answers other than 2xx ends the write there."""

    name = "cloudevents"
    TYPE = "io.diglm.decision"

    def __init__(self, url: str, timeout_s: float):
        import httpx

        self.url = url
        self.client = httpx.Client(timeout=timeout_s)

    def write(self, records: list[dict]) -> None:
        from cloudevents.conversion import to_structured
        from cloudevents.http import CloudEvent

        for written, record in enumerate(records):
            attributes = {
                "type": self.TYPE, "source": f"/v2/models/{record['model']}/versions/{record['version']}", "id": f"{record['request_id']}/{record['instance']}",
                "time": record["time"], "inferenceservicename": record["model"],
            }
            headers, body = to_structured(CloudEvent(attributes, orjson.loads(orjson.dumps(record))))  # non-finite numbers as null, as in the file
            try:
                self.client.post(self.url, content=body, headers=headers).raise_for_status()
            except Exception as error:  # noqa: BLE001 - httpx's errors and the status
                raise PartialWrite(written, error) from error

    def close(self) -> None:
        self.client.close()


class RecentRejections:
    """The last ``capacity`` rejected instances, for ``GET /v2/models/{name}/rejections`` (a
    console's list): kept as references to their answered requests, one append on the event loop
    each; their records, inputs included, are built only when asked for."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.instances: deque[tuple[AnsweredRequest, int]] = deque(maxlen=capacity)

    def add(self, request: AnsweredRequest) -> None:
        """Keep ``request``'s rejected instances (``keep``)."""
        self.instances.extend(zip(repeat(request), np.flatnonzero(request.keep).tolist()))

    def latest(self, model: str, version: str | None, limit: int) -> list[dict]:
        """The records of ``model``'s newest ``limit`` rejected instances (of ``version`` only, when
        given), newest first, each with its input."""
        found = []
        for request, row in reversed(self.instances):
            if request.model == model and version in (None, request.version):
                only = np.arange(len(request.prediction)) == row
                found.extend(records(replace(request, keep=only, with_input=only)))
                if len(found) == limit:
                    break
        return found


class SinkWriter:
    """One sink's bounded queue of answered requests and the thread that writes their records. The
    queue is a deque the thread polls (``POLL_S``): putting a request costs serving one append, no
    lock and no wake-up."""

    def __init__(self, sink: Sink, capacity: int, written: Counter, dropped: Counter):
        self.sink, self.capacity = sink, capacity
        self.pending: deque[AnsweredRequest] = deque()
        self.written = written.labels(sink=sink.name)
        self.dropped = {reason: dropped.labels(sink=sink.name, reason=reason) for reason in ("queue_full", "sink_error")}
        self.closing = threading.Event()
        self.last_error_logged = -ERROR_LOG_INTERVAL_S
        self.thread = threading.Thread(target=self._run, name=f"decision-log-{sink.name}", daemon=True)
        self.thread.start()

    def put(self, request: AnsweredRequest, kept: int) -> None:
        """Queue ``request`` (``kept``: its records), or count them dropped when the queue is full."""
        if len(self.pending) >= self.capacity:
            self.dropped["queue_full"].inc(kept)
        else:
            self.pending.append(request)

    def _run(self) -> None:
        while True:
            closing = self.closing.is_set()  # read first: whatever was queued before close is written
            taken = []
            while self.pending and len(taken) < WRITE_BATCH:
                taken.append(self.pending.popleft())
            if taken:
                self._write([record for request in taken for record in records(request)])
            elif closing:
                break
            else:
                self.closing.wait(POLL_S)
        self.sink.close()

    def _write(self, batch: list[dict]) -> None:
        try:
            self.sink.write(batch)
        except Exception as error:  # noqa: BLE001 - a sink's failure must never reach serving
            written = error.written if isinstance(error, PartialWrite) else 0
            self.written.inc(written)
            self.dropped["sink_error"].inc(len(batch) - written)
            if time.monotonic() - self.last_error_logged >= ERROR_LOG_INTERVAL_S:
                self.last_error_logged = time.monotonic()
                log.warning("decision log sink %s failed, its records are dropped and counted: %s", self.sink.name, error)
        else:
            self.written.inc(len(batch))

    def close(self, timeout: float) -> None:
        """Write what is queued and stop, waiting at most ``timeout`` seconds."""
        self.closing.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("decision log sink %s: records still queued after %.1f s are lost", self.sink.name, timeout)


class DecisionLog:
    """The sinks configured (none: the log is off), and which instances they get: every rejected one
    and ``sample`` of the accepted ones (``rejected_sample`` of the rejected), their input under
    ``inputs`` (``never``; ``rejected``: the rejected ones'; ``sampled``: also ``input_sample`` of
    the accepted ones logged). Beside them ``recent`` (``RecentRejections``, None for none) keeps
    every rejected instance, whatever the sinks' settings."""

    def __init__(
        self, sinks: list[Sink], registry: CollectorRegistry, capacity: int = 10_000, sample: float = 1.0, rejected_sample: float = 1.0,
        inputs: InputPolicy = "never", input_sample: float = 0.0, seed: int | None = None, recent: RecentRejections | None = None,
    ):
        written = Counter("diglm_decision_log_records", "Decision records written, by sink", ["sink"], registry=registry)
        dropped = Counter("diglm_decision_log_dropped", "Decision records dropped, by sink and reason (queue_full, sink_error)", ["sink", "reason"], registry=registry)
        self.writers = [SinkWriter(sink, capacity, written, dropped) for sink in sinks]
        self.recent = recent
        self.sample, self.rejected_sample, self.inputs, self.input_sample = sample, rejected_sample, inputs, input_sample
        self.rng = np.random.default_rng(seed)

    def served(self, request_id: str, model: str, version: str, protocol: str, latency_s: float, x: np.ndarray, prediction: Prediction) -> None:
        """Queue one answered request for every sink; never blocks."""
        accepted = prediction.accepted
        if self.recent is not None and not accepted.all():
            self.recent.add(AnsweredRequest(request_id, time.time(), model, version, protocol, latency_s, x, prediction, ~accepted, ~accepted))
        if not self.writers:
            return
        if self.sample == self.rejected_sample == 1.0:
            keep, kept = None, len(accepted)
        else:
            keep = np.where(accepted, self._drawn(len(accepted), self.sample), self._drawn(len(accepted), self.rejected_sample))
            kept = int(np.count_nonzero(keep))
            if not kept:
                return
        if self.inputs == "never":
            with_input = None
        else:
            with_input = ~accepted if self.inputs == "rejected" else ~accepted | self._drawn(len(accepted), self.input_sample)
        request = AnsweredRequest(request_id, time.time(), model, version, protocol, latency_s, x, prediction, keep, with_input)
        for writer in self.writers:
            writer.put(request, kept)

    def _drawn(self, n: int, share: float) -> np.ndarray:
        """``(n,)`` bool, each True with probability ``share`` (all at 1, without drawing)."""
        if share >= 1.0:
            return np.ones(n, dtype=bool)
        return self.rng.random(n) < share

    def close(self, timeout: float) -> None:
        """Write every queued record and stop the writers (at most ``timeout`` seconds each)."""
        for writer in self.writers:
            writer.close(timeout)
