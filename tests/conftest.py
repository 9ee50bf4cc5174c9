"""Shared test set-up: a fixed torch seed per test, and the bounded waits every test uses (a service
that never gets ready fails its test within the timeout instead of hanging the suite; pytest-timeout,
set in pyproject.toml, is the backstop)."""
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0  # a tiny model loads and warms up in about a second
# Tests start many apps in one process, each of which would bind the gRPC port 8081: gRPC is off
# unless a test turns it on with a free port of its own (tests/test_grpc.py).
os.environ.setdefault("DIGLM_GRPC_PORT", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def free_port() -> int:
    """A local TCP port free now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``condition()`` every 50 ms until it is true (an exception counts as not yet); fail the
    test after ``timeout`` seconds, saying ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # not listening yet, say
            pass
        time.sleep(0.05)
    pytest.fail(f"waited {timeout:g} s for {what}")


def wait_ready(client, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until a started ``TestClient``'s service answers ``/v2/health/ready`` with 200."""
    wait_for(lambda: client.get("/v2/health/ready").status_code == 200, "the service to be ready", timeout)


@contextmanager
def served_in_thread(app, port: int, ready: Callable[[], bool]) -> Iterator[None]:
    """``app`` served by uvicorn on 127.0.0.1:``port`` in a daemon thread, entered once ``ready()``;
    stopped (and waited for, at most 30 s) on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(ready, "the service to be ready")
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    """``wait_for`` inside an event loop: awaits 10 ms between polls, so the loop keeps running."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(0.01)


def run_without(packages: list[str], code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python in the repository root where importing any of ``packages`` (top
    level names) fails: what an environment without those extras can do."""
    guard = (
        "import sys\n"
        f"blocked = {packages!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    return subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
