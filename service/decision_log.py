"""The decision log: one record per served instance, written where operators and the evaluation loop
can read it, without serving ever waiting for it.

``dispatch`` hands each answered request to ``DecisionLog.served`` on the event loop. That draws which
instances are kept (every rejected one and ``DIGLM_DECISION_LOG_SAMPLE`` of the accepted ones) and
which carry their input, and appends the request to a bounded queue: nothing more. A builder thread
turns the queued requests into records (``records``), once for all sinks and a batch at a time, and
hands them to each sink's writer thread, which has a bounded queue of its own; so a slow or failing
sink slows neither serving nor the other sinks. A full queue drops records, a failed write the
batch's, and a sink that failed is left alone for a while (its records dropped untried); all are
counted in ``diglm_decision_log_dropped_total{sink,reason}`` (``queue_full``, ``sink_error``,
``backoff``), the records written in ``diglm_decision_log_records_total{sink}``. ``close`` writes
what is queued (SIGTERM). The last rejected instances are also kept in memory
(``RecentRejections``), log or no log.

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
from itertools import groupby, repeat
from operator import attrgetter
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from inference.logged_inputs import as_logged, digests, encoded
from inference.prediction import ClassOutputs, Prediction

log = logging.getLogger(__name__)

InputPolicy = Literal["never", "rejected", "sampled"]
WRITE_BATCH = 256  # requests whose records are built together; a writer gathers this many records or all queued for one write
POLL_S = 0.05  # the builder or a writer with nothing queued looks again this much later
ERROR_LOG_INTERVAL_S = 60.0  # a failing sink is logged at most this often
BACKOFF_S = (1.0, 30.0)  # a sink whose write failed is tried again this much later: first, and at most
DROP_REASONS = ("queue_full", "sink_error", "backoff")


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


def records(requests: list[AnsweredRequest]) -> list[dict]:
    """The kept instances of ``requests`` as decision records, in order (the module's docstring
    lists the fields). Consecutive requests of one model version (so of one head, gate scores and
    input shape) are built together, a column at a time."""
    return [record for _, run in groupby(requests, key=attrgetter("model", "version")) for record in _built_together(list(run))]


def _built_together(requests: list[AnsweredRequest]) -> list[dict]:
    """Records of requests of one model version: each field is joined across the requests, the kept rows
    taken and turned into Python values once."""
    sizes = [len(request.prediction) for request in requests]
    keep = _joined_mask([request.keep for request in requests], sizes, fill=True)

    def kept(parts: list[np.ndarray]) -> np.ndarray:
        joined = _joined(parts)
        return joined if keep is None else joined[keep]

    predictions = [request.prediction for request in requests]
    owner = np.repeat(np.arange(len(requests)), sizes)
    instance = kept([np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)]).tolist()
    owner = kept([owner]).tolist()
    stamps = np.datetime_as_string((np.array([request.time for request in requests]) * 1e3).astype("datetime64[ms]"), unit="ms").tolist()
    per_request = [
        (request.request_id, f"{stamp}Z", request.model, request.version, request.protocol, request.latency_s * 1e3) for request, stamp in zip(requests, stamps)
    ]
    accepted, p_value, reason, log_px = (kept([getattr(each, name) for each in predictions]).tolist() for name in ("accepted", "p_value", "rejected_by", "log_px"))
    scores = {
        name: (kept([prediction.scores[name] for prediction in predictions]).tolist(), kept([prediction.p_values[name] for prediction in predictions]).tolist())
        for name in predictions[0].scores
    }
    heads = [prediction.head for prediction in predictions]
    if isinstance(heads[0], ClassOutputs):
        outputs = {"label": kept([head.label for head in heads]).tolist(), "probability": kept([head.model_probabilities for head in heads]).max(axis=1).tolist()}
    else:
        outputs = {"mean": kept([head.model_mean for head in heads]).tolist(), "variance": kept([head.model_variance for head in heads]).tolist()}
    x = as_logged(kept([request.x for request in requests]))
    sha256s = digests(x)
    with_input = _joined_mask([request.with_input for request in requests], sizes, fill=False)
    with_input = None if with_input is None else kept([with_input]).tolist()
    out = []
    for i, row in enumerate(instance):
        request_id, stamp, model, version, protocol, latency_ms = per_request[owner[i]]
        record = {
            "request_id": request_id, "instance": row, "time": stamp, "model": model, "version": version,
            "protocol": protocol, "decision": "accept" if accepted[i] else "reject", "p_value": p_value[i], "reason": reason[i],
            "scores": {name: {"value": values[i], "p_value": p_values[i]} for name, (values, p_values) in scores.items()},
            "log_px": log_px[i], **{name: values[i] for name, values in outputs.items()},
            "latency_ms": latency_ms, "input_sha256": sha256s[i],
        }
        if with_input is not None and with_input[i]:
            record["input"] = encoded(x[i])
        out.append(record)
    return out


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _joined_mask(masks: list[np.ndarray | None], sizes: list[int], fill: bool) -> np.ndarray | None:
    """Per-request masks joined, ``fill`` for a request without one; None when none has one."""
    if all(mask is None for mask in masks):
        return None
    return _joined([np.full(n, fill) if mask is None else mask for mask, n in zip(masks, sizes)])


class Sink(Protocol):
    """Where records go: ``write`` takes a batch of records, each as JSON (bytes, non-finite numbers
    as null), and raises on failure (``PartialWrite`` when only the first ones were delivered);
    ``close`` releases the sink."""

    name: str

    def write(self, records: list[bytes]) -> None: ...

    def close(self) -> None: ...


class PartialWrite(Exception):
    """A write that delivered only its first ``written`` records before ``cause``."""

    def __init__(self, written: int, cause: Exception):
        super().__init__(str(cause))
        self.written = written


class JsonLinesSink:
    """JSON Lines in ``folder``: ``decisions.jsonl`` is written; past ``max_bytes`` it is renamed
    ``decisions-<UTC time>.jsonl`` and a new one begun, and only the newest ``keep`` renamed files
    are kept. One record a line, flushed a batch at a time; a write cut short (a full disk) can
    leave one partial line, which readers skip."""

    name = "jsonl"
    ACTIVE = "decisions.jsonl"

    def __init__(self, folder: Path, max_bytes: int, keep: int):
        self.folder, self.max_bytes, self.keep = folder, max_bytes, keep
        folder.mkdir(parents=True, exist_ok=True)
        self.file = (folder / self.ACTIVE).open("ab")

    def write(self, records: list[bytes]) -> None:
        data = b"\n".join(records) + b"\n"
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

    def write(self, records: list[bytes]) -> None:
        from cloudevents.conversion import to_structured
        from cloudevents.http import CloudEvent

        for written, line in enumerate(records):
            record = orjson.loads(line)
            attributes = {
                "type": self.TYPE, "source": f"/v2/models/{record['model']}/versions/{record['version']}", "id": f"{record['request_id']}/{record['instance']}",
                "time": record["time"], "inferenceservicename": record["model"],
            }
            headers, body = to_structured(CloudEvent(attributes, record))
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
                found.extend(records([replace(request, keep=only, with_input=only)]))
                if len(found) == limit:
                    break
        return found


def drain(pending: deque, closing: threading.Event, take: Callable[[], list], handle: Callable[[list], None]) -> None:
    """A thread's loop over a queue that serving only appends to (no lock, no wake-up): ``handle``
    what ``take`` takes from ``pending``, looking again ``POLL_S`` later when it is empty, until
    ``closing`` is set and everything queued before it is handled."""
    while True:
        closed = closing.is_set()  # read first: whatever was queued before close is handled
        taken = take()
        if taken:
            handle(taken)
        elif closed:
            return
        else:
            closing.wait(POLL_S)


class SinkWriter:
    """One sink's bounded queue of built records (at most ``capacity``, as JSON: bytes, which the
    garbage collector does not walk, as it would the dicts of a full queue) and the thread that
    writes them. A sink whose write fails is left alone for a while (``BACKOFF_S``, doubling while it keeps
    failing): the records that reach it meanwhile are dropped and counted without a try."""

    def __init__(self, sink: Sink, capacity: int, written: Counter, dropped: Counter):
        self.sink, self.capacity = sink, capacity
        self.pending: deque[list[bytes]] = deque()
        self.queued = self.taken = 0  # records put and records taken: each counted by one thread only
        self.written = written.labels(sink=sink.name)
        self.dropped = {reason: dropped.labels(sink=sink.name, reason=reason) for reason in DROP_REASONS}
        self.retry_at, self.backoff_s = 0.0, BACKOFF_S[0]
        self.closing = threading.Event()
        self.last_error_logged = -ERROR_LOG_INTERVAL_S
        self.thread = threading.Thread(target=self._run, name=f"decision-log-{sink.name}", daemon=True)
        self.thread.start()

    def put(self, batch: list[bytes]) -> None:
        """Queue what of ``batch`` fits; count the rest dropped."""
        room = self.capacity - (self.queued - self.taken)
        if room < len(batch):
            self.dropped["queue_full"].inc(len(batch) - max(room, 0))
            batch = batch[: max(room, 0)]
        if batch:
            self.queued += len(batch)
            self.pending.append(batch)

    def drop(self, count: int) -> None:
        """Count ``count`` records dropped before they reached this sink's queue (a full log queue)."""
        self.dropped["queue_full"].inc(count)

    def _run(self) -> None:
        drain(self.pending, self.closing, self._records, self._write)
        self.sink.close()

    def _records(self) -> list[bytes]:
        """Queued batches, joined until they hold ``WRITE_BATCH`` records or none is left."""
        batch: list[bytes] = []
        while self.pending and len(batch) < WRITE_BATCH:
            batch += self.pending.popleft()
        self.taken += len(batch)
        return batch

    def _write(self, batch: list[bytes]) -> None:
        if time.monotonic() < self.retry_at:
            self.dropped["backoff"].inc(len(batch))
            return
        try:
            self.sink.write(batch)
        except Exception as error:  # noqa: BLE001 - a sink's failure must never reach serving
            written = error.written if isinstance(error, PartialWrite) else 0
            self.written.inc(written)
            self.dropped["sink_error"].inc(len(batch) - written)
            self.retry_at = time.monotonic() + self.backoff_s
            if time.monotonic() - self.last_error_logged >= ERROR_LOG_INTERVAL_S:
                self.last_error_logged = time.monotonic()
                log.warning("decision log sink %s failed, next try in %.1f s; records are dropped and counted meanwhile: %s", self.sink.name, self.backoff_s, error)
            self.backoff_s = min(2 * self.backoff_s, BACKOFF_S[1])
        else:
            self.written.inc(len(batch))
            self.backoff_s = BACKOFF_S[0]

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
    the accepted ones logged). Answered requests wait in one bounded queue (``capacity`` requests)
    for the builder thread, which builds their records once, a batch at a time, for every sink's
    writer (``capacity`` records each). Beside them ``recent`` (``RecentRejections``, None for none)
    keeps every rejected instance, whatever the sinks' settings."""

    def __init__(
        self, sinks: list[Sink], registry: CollectorRegistry, capacity: int = 10_000, sample: float = 1.0, rejected_sample: float = 1.0,
        inputs: InputPolicy = "never", input_sample: float = 0.0, seed: int | None = None, recent: RecentRejections | None = None,
    ):
        written = Counter("diglm_decision_log_records", "Decision records written, by sink", ["sink"], registry=registry)
        dropped = Counter(
            "diglm_decision_log_dropped", f"Decision records dropped, by sink and reason ({', '.join(DROP_REASONS)})", ["sink", "reason"], registry=registry,
        )
        self.writers = [SinkWriter(sink, capacity, written, dropped) for sink in sinks]
        self.recent, self.capacity = recent, capacity
        self.sample, self.rejected_sample, self.inputs, self.input_sample = sample, rejected_sample, inputs, input_sample
        self.rng = np.random.default_rng(seed)
        self.pending: deque[AnsweredRequest] = deque()
        self.closing = threading.Event()
        self.builder = threading.Thread(target=self._build, name="decision-log", daemon=True)
        if self.writers:
            self.builder.start()

    def served(self, request_id: str, model: str, version: str, protocol: str, latency_s: float, x: np.ndarray, prediction: Prediction) -> None:
        """Queue one answered request for the sinks; never blocks."""
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
        if len(self.pending) >= self.capacity:
            for writer in self.writers:
                writer.drop(kept)
            return
        if self.inputs == "never":
            with_input = None
        else:
            with_input = ~accepted if self.inputs == "rejected" else ~accepted | self._drawn(len(accepted), self.input_sample)
        self.pending.append(AnsweredRequest(request_id, time.time(), model, version, protocol, latency_s, x, prediction, keep, with_input))

    def _drawn(self, n: int, share: float) -> np.ndarray:
        """``(n,)`` bool, each True with probability ``share`` (all at 1, without drawing)."""
        if share >= 1.0:
            return np.ones(n, dtype=bool)
        return self.rng.random(n) < share

    def _build(self) -> None:
        """The builder thread: hands the records of each batch of queued requests to every writer."""
        drain(self.pending, self.closing, self._requests, self._hand_over)

    def _requests(self) -> list[AnsweredRequest]:
        """Up to ``WRITE_BATCH`` queued requests, oldest first."""
        return [self.pending.popleft() for _ in range(min(len(self.pending), WRITE_BATCH))]

    def _hand_over(self, requests: list[AnsweredRequest]) -> None:
        batch = [orjson.dumps(record) for record in records(requests)]
        for writer in self.writers:
            writer.put(batch)

    def close(self, timeout: float) -> None:
        """Write every queued record and stop the builder and the writers, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self.closing.set()
        if self.writers:
            self.builder.join(timeout)
        for writer in self.writers:
            writer.close(max(deadline - time.monotonic(), 0.0))
