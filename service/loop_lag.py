"""How late the event loop runs, the wait that no queue counts: under open-loop overload, requests
sit in the sockets and the loop's ready queue before any handler sees them, as long as one turn of
the loop takes. A probe sleeps ``PROBE_S`` again and again; how much later than asked it wakes is
the lag (seconds); it counts when two probes in a row see it (the smaller of the last two), as one
stall (a garbage collection, a model load) delays that moment's requests once but is no overload.
Admission (``service.batching.DynamicBatcher.admit``) adds it to the queue's
expected wait, so a loop that falls behind sheds requests before they are read and decoded, and a
request's deadline counts from when it most likely arrived (docs/operations.md, "Open-loop
overload")."""
from __future__ import annotations

import asyncio

PROBE_S = 0.01


class LoopLag:
    def __init__(self):
        self.seconds = 0.0  # the smaller lag of the last two probes
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._probe())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _probe(self) -> None:
        loop, last = asyncio.get_running_loop(), 0.0
        while True:
            asked = loop.time()
            await asyncio.sleep(PROBE_S)
            lag = max(0.0, loop.time() - asked - PROBE_S)
            self.seconds, last = min(lag, last), lag
