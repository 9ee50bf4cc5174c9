"""What the app holds while it runs: settings, the runtime once loaded, metrics, readiness, and the
single inference thread that keeps model math off the event loop."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from starlette.requests import Request

from service.batching import DynamicBatcher
from service.drift import DriftMonitor
from service.inputs import InputError
from service.metrics import ServiceMetrics
from service.runtime import ModelRuntime
from service.settings import ServiceSettings


@dataclass
class ServiceState:
    settings: ServiceSettings
    runtime: ModelRuntime | None = None
    metrics: ServiceMetrics | None = None
    ready: bool = False
    load_error: str | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference"))
    batcher: DynamicBatcher | None = None
    drift: DriftMonitor | None = None
    draining: bool = False  # after SIGTERM: readiness is 503, requests are still served

    def attach(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        gate, settings = runtime.gate, self.settings
        self.drift = DriftMonitor(gate.calibration["log_px"], gate.alpha, settings.drift_window, settings.drift_threshold)
        self.metrics = ServiceMetrics(runtime.name, runtime.version, runtime.manifest.gate, self.drift)
        self.metrics.info.labels(
            **self.metrics.labels,
            task=runtime.task,
            gate_method=runtime.manifest.gate.method,
            backend=runtime.backend.name,
            device=str(runtime.device),
        ).set(1)

    def mark_ready(self) -> None:
        """Loaded and warmed up: ready for the health route and the ``diglm_ready`` gauge."""
        self.ready = True
        self.metrics.ready.labels(**self.metrics.labels).set(1)

    def begin_drain(self) -> None:
        """Readiness (route and gauge) turns 503 / 0 so load balancers stop sending; predictions go on."""
        self.draining = True
        if self.metrics is not None:
            self.metrics.ready.labels(**self.metrics.labels).set(0)

    @property
    def accepting(self) -> bool:
        """What readiness reports: loaded, warmed up and not draining."""
        return self.ready and not self.draining

    def require_model(self, name: str) -> ModelRuntime:
        """The runtime if ``name`` is the served model and it is ready; else a 404 or 503."""
        if self.runtime is None or not self.ready:
            raise InputError("model is not ready yet" + (f": {self.load_error}" if self.load_error else ""), status=503)
        if name != self.runtime.name:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise InputError(f"model {shown!r} not found; this server serves {self.runtime.name!r}", status=404)
        return self.runtime

    def start_batching(self) -> None:
        """With batching on, route predictions through a dynamic batcher (call inside the event loop)."""
        settings = self.settings
        if settings.batching:
            self.batcher = DynamicBatcher(
                self.runtime.predict, self.executor, settings.max_batch_size, settings.max_delay_ms / 1000,
                settings.max_queue, self.observe, max_wait_s=settings.request_timeout_s,
            )
            self.batcher.start()

    async def predict(self, runtime: ModelRuntime, x: np.ndarray, request: Request | None = None) -> dict[str, np.ndarray]:
        """Run the model in the inference thread (through the batcher when batching is on) and
        record the metrics. Past ``request_timeout_s`` a 504 ``InputError``; a client that
        disconnects (``request`` given) a 499. Either way its queued work is dropped."""
        work = asyncio.ensure_future(self._predict(runtime, x))
        watched = {work}
        if request is not None:
            watched.add(asyncio.ensure_future(_disconnected(request)))
        done, _ = await asyncio.wait(watched, timeout=self.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in watched - done:
            task.cancel()
        if work in done:
            return work.result()
        if done:
            raise InputError("the client closed the connection before the answer", status=499)
        raise InputError(f"no answer within the request timeout of {self.settings.request_timeout_s:g} s; retry later", status=504)

    async def _predict(self, runtime: ModelRuntime, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.batcher is not None:
            return await self.batcher.submit(x)
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self.executor, runtime.predict, x)
        self.observe(result, time.perf_counter() - started, [0.0])
        return result

    def observe(self, result: dict[str, np.ndarray], seconds: float, queue_seconds: list[float]) -> None:
        """After one forward pass: the metrics, and the drift monitor's window."""
        self.metrics.observe_predictions(result, seconds, queue_seconds)
        self.drift.add(result["log_px"], result["p_value"], result["accepted"])


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the ASGI server reports ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
