"""One loaded model version being served: its runtime, its own dynamic batcher, metrics and drift
monitor, and a count of the requests using it, so that it is released only once they are done."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Awaitable, Callable

import torch

from inference.errors import ClientGone, DeadlineExceeded, NotReady, Overloaded
from inference.inputs import InferenceInput
from inference.prediction import Prediction
from inference.runtime import ModelRuntime
from service.batching import DynamicBatcher
from service.drift import CalibrationReference, DriftMonitor
from service.encoding import output_table
from service.metrics import ModelMetrics
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

DISCONNECT_WATCH_AFTER_S = 0.05  # a request still waiting this long starts watching for its client's disconnect
# The model repository extension's states (Triton): what the index reports for each version.
LOADING, READY, UNLOADING, UNAVAILABLE = "LOADING", "READY", "UNLOADING", "UNAVAILABLE"


def settle_heap() -> None:
    """Collect the garbage, then freeze what is left (``gc.freeze``), after a model version is
    loaded or released: the models' and libraries' objects, some 265,000 for the benchmark model, are
    then left out of the collections that serving's own garbage sets off. A full collection over them
    held the GIL for about 80 ms, stalling every request then in the service (p99). Unfrozen first,
    so that what a released version leaves behind is collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class RuntimeFailure(Exception):
    """The model runtime raised on a batch (one line: the error's type and message)."""


class ServedVersion:
    def __init__(self, runtime: ModelRuntime, settings: ServiceSettings, executor: Executor, digest: str | None = None):
        """``executor``: the inference thread every version shares (one forward pass at a time).
        ``digest``: the manifest digest it was loaded from (tells a rewritten folder apart)."""
        self.runtime, self.settings, self.executor = runtime, settings, executor
        self.name, self.version = runtime.name, runtime.version
        self.digest = digest or runtime.manifest.digest
        classes = len(runtime.manifest.classes) if runtime.task == "classification" else None
        self.outputs = output_table(runtime.task, classes, runtime.gate_scores)  # the v2 output tensors
        self.drift = DriftMonitor(CalibrationReference.of_gate(runtime.gate), settings.drift_window, settings.drift_threshold)
        self.metrics = ModelMetrics(self.name, self.version, runtime.manifest.gate, self.drift)
        self.metrics.info.labels(
            **self.metrics.labels, task=runtime.task, gate_method=runtime.manifest.gate.method, backend=runtime.backend.name, device=str(runtime.device)
        ).set(1)
        self.batcher: DynamicBatcher | None = None
        self.state = LOADING
        self.failure: str | None = None  # why its runtime failed while serving (it answers no more)
        self.on_failure: Callable[[ServedVersion], None] | None = None  # told once, on the event loop (the loader)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def warm_up(self) -> float:
        """One batch of mid-range inputs in the inference thread; its seconds."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.runtime.warm_up, self.settings.warmup_batch)

    def start(self) -> None:
        """Warmed up: start the batcher (inside the event loop) and report ready."""
        settings = self.settings
        if settings.batching:
            self.batcher = DynamicBatcher(
                self.infer, self.executor, settings.max_batch_size, settings.max_delay_ms / 1000, settings.max_queue,
                max_wait_s=settings.admission_limit_s,
            )
            self.batcher.start()
        self.state = READY
        self.metrics.ready.labels(**self.metrics.labels).set(1)

    def stop_accepting(self) -> None:
        """Readiness gauge to 0 (a drain before shutdown, or before release)."""
        self.metrics.ready.labels(**self.metrics.labels).set(0)

    async def release(self, drain_timeout_s: float) -> None:
        """No longer routed to: wait (up to ``drain_timeout_s``) for the requests using it, stop its
        batcher and free the model (and the CUDA cache)."""
        self.state = UNLOADING
        self.stop_accepting()
        try:
            if self.in_flight:
                await asyncio.wait_for(self.idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s version %s: %d requests still running after %.0f s; releasing it anyway", self.name, self.version, self.in_flight, drain_timeout_s)
        if self.batcher is not None:
            await self.batcher.stop()
        self.state = UNAVAILABLE
        device = self.runtime.device
        self.runtime = None
        settle_heap()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("released %s version %s", self.name, self.version)

    @contextmanager
    def use(self):
        """Count a request as using this version until it has its answer."""
        self.in_flight += 1
        self.idle.clear()
        try:
            yield self
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def admit(self, waited_s: float) -> None:
        """``Overloaded`` now, before the request is read, when it cannot be answered in time: it has
        waited ``waited_s`` already (the event loop's lag, ``service.loop_lag``) and the batcher's
        queue would add the rest (``DynamicBatcher.admit``)."""
        if self.failure is not None:
            raise self.failed()
        if self.batcher is not None:
            self.batcher.admit(0, waited_s)
        elif waited_s > self.settings.admission_limit_s:
            raise Overloaded(f"the service is {waited_s:.1f} s behind, over the {self.settings.admission_limit_s:g} s limit; retry shortly")

    async def predict(self, inputs: InferenceInput, client_gone: Callable[[], Awaitable[None]] | None = None, waited_s: float = 0.0) -> Prediction:
        """Run the model in the inference thread (through the batcher when batching is on) and
        record the metrics. Past ``request_timeout_s`` (counted from ``waited_s`` ago, when the
        request most likely arrived) ``DeadlineExceeded``; a client that leaves (``client_gone``
        returns) ``ClientGone``, noticed from ``DISCONNECT_WATCH_AFTER_S`` on (most answers come
        sooner, and watching costs a task per request). Either way its queued work is dropped."""
        timeout = self.settings.request_timeout_s - waited_s
        if self.batcher is not None:
            work = self.batcher.submit(inputs, waited_s)
        else:
            work = asyncio.get_running_loop().run_in_executor(self.executor, self.infer, inputs, [0.0])
        watched = {work}
        try:
            done = await _first_done(watched, min(timeout, DISCONNECT_WATCH_AFTER_S))
            if not done and timeout > DISCONNECT_WATCH_AFTER_S:
                if client_gone is not None:
                    watched.add(asyncio.ensure_future(client_gone()))
                done = await _first_done(watched, timeout - DISCONNECT_WATCH_AFTER_S)
        finally:
            for future in watched:
                if not future.done():
                    future.cancel()
        if work in done:
            try:
                return work.result()
            except RuntimeFailure as error:
                self.fail(str(error))
                raise self.failed() from None
        if done:
            raise ClientGone("the client closed the connection before the answer")
        raise DeadlineExceeded(f"no answer within the request timeout of {self.settings.request_timeout_s:g} s; retry later")

    def failed(self) -> NotReady:
        return NotReady(f"version {self.version} of {self.name!r} failed and no longer serves: {self.failure}")

    def fail(self, reason: str) -> None:
        """Its runtime failed: it answers no more (``admit`` refuses), and ``on_failure`` is told
        once so that the loader stops routing to it."""
        if self.failure is None:
            self.failure = reason
            if self.on_failure is not None:
                self.on_failure(self)

    def infer(self, inputs: InferenceInput, queue_seconds: list[float]) -> Prediction:
        """One forward pass and what is observed of it, the one place both happen: in the inference
        thread (``executor``), never on the event loop. The metrics (``ModelMetrics``; a batch's
        ``queue_seconds`` per request) and the drift monitor's window take whole arrays."""
        started = time.perf_counter()
        try:
            prediction = self.runtime.predict(inputs)
        except Exception as error:  # the runtime's own failure (inputs are checked before): ONNX Runtime, torch, memory
            log.exception("%s version %s failed on a batch of %d", self.name, self.version, len(inputs))
            raise RuntimeFailure(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}") from error
        self.metrics.observe_predictions(prediction, time.perf_counter() - started, queue_seconds)
        self.drift.add(prediction.log_px, prediction.p_value, prediction.accepted)
        return prediction


async def _first_done(futures: set[asyncio.Future], timeout: float) -> set[asyncio.Future]:
    """Those of ``futures`` that are done, after waiting until one is or ``timeout`` seconds have
    passed (``asyncio.wait`` with FIRST_COMPLETED, without its per-call task and set bookkeeping)."""
    if not any(future.done() for future in futures):
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_=None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = loop.call_later(timeout, wake)
        for future in futures:
            future.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            for future in futures:
                future.remove_done_callback(wake)
    return {future for future in futures if future.done()}
