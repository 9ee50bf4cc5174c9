"""Dynamic batching: concurrent requests' instances are gathered into one forward pass and the
results scattered back to each request in order.

One loop runs batches back to back in the inference thread. While a batch runs, new requests queue;
the next batch takes them all (up to ``max_batch_size`` instances), so batches grow with the load
and a lone request never waits for company. ``max_delay_s`` > 0 additionally holds a batch open that
long, but only while the previous batch held more than one request (there is concurrency to wait
for). More than ``max_queue`` queued instances, or an expected wait (the wait before the queue, the
event loop's lag, plus the instances queued ahead times the measured seconds per instance) longer
than ``max_wait_s`` (``DIGLM_MAX_QUEUE_WAIT_S``), is refused with ``Overloaded`` (the service answers
503 with Retry-After) instead of letting latency grow without bound.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

from inference.errors import Overloaded
from inference.inputs import InferenceInput
from inference.prediction import Prediction


@dataclass
class _Request:
    inputs: InferenceInput
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[InferenceInput, list[float]], Prediction],
        executor: Executor,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        max_wait_s: float | None = None,
    ):
        """``run_batch(instances, queue_seconds_per_request)``: their prediction, run in ``executor``."""
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.pending: deque[_Request] = deque()
        self.queued_instances = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.last_batch_requests = 0
        self.max_wait_s = max_wait_s
        self.seconds_per_instance: float | None = None  # moving average over batches

    def expected_wait(self) -> float:
        """Seconds a new request would wait for the instances queued ahead of it (0 with an empty
        queue, or before any batch was measured: a lone request is always tried)."""
        return self.queued_instances * (self.seconds_per_instance or 0.0)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for request in self.pending:
            request.future.cancel()

    def admit(self, instances: int, waited_s: float = 0.0) -> None:
        """``Overloaded`` when ``instances`` more would pass the queue's limit, or when their wait
        (``waited_s``, spent before they reached the queue, plus the expected wait) is past
        ``max_wait_s``. ``submit`` checks; a caller may check before it reads a request (0 instances)."""
        if self.queued_instances + instances > self.max_queue:
            raise Overloaded(f"{self.queued_instances} instances are queued (limit {self.max_queue}); retry shortly")
        wait = waited_s + self.expected_wait()
        if self.max_wait_s is not None and wait > self.max_wait_s:
            raise Overloaded(f"the expected wait of {wait:.1f} s is over the limit of {self.max_wait_s:g} s; retry shortly")

    def submit(self, inputs: InferenceInput, waited_s: float = 0.0) -> asyncio.Future:
        """Queue n instances: a future of their prediction (cancel it to drop the work while it is
        still queued). ``Overloaded`` at once when ``admit`` refuses them."""
        self.admit(len(inputs), waited_s)
        request = _Request(inputs, asyncio.get_running_loop().create_future())
        self.pending.append(request)
        self.queued_instances += len(inputs)
        self.wakeup.set()
        return request.future

    def _take_batch(self) -> list[_Request]:
        batch = [self.pending.popleft()]
        size = len(batch[0].inputs)
        while self.pending and size + len(self.pending[0].inputs) <= self.max_batch_size:
            request = self.pending.popleft()
            batch.append(request)
            size += len(request.inputs)
        self.queued_instances -= size
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.max_delay_s > 0 and self.last_batch_requests > 1 and self.queued_instances < self.max_batch_size:
                await asyncio.sleep(self.max_delay_s)
            batch = [request for request in self._take_batch() if not request.future.cancelled()]
            self.last_batch_requests = len(batch)
            if not batch:
                continue
            started = time.perf_counter()
            inputs = InferenceInput.concatenate([request.inputs for request in batch])
            try:
                prediction = await loop.run_in_executor(self.executor, self.run_batch, inputs, [started - request.enqueued for request in batch])
            except Exception as error:  # the model failed: every waiting request gets the error
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            seconds = time.perf_counter() - started
            per_instance = seconds / len(inputs)
            self.seconds_per_instance = per_instance if self.seconds_per_instance is None else 0.8 * self.seconds_per_instance + 0.2 * per_instance
            parts = [prediction] if len(batch) == 1 else prediction.split([len(request.inputs) for request in batch])
            for request, part in zip(batch, parts):
                if not request.future.done():
                    request.future.set_result(part)
