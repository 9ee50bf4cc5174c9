"""``python -m service`` as a process: the graceful drain (SIGTERM while 50 requests and 10 gRPC
calls are in flight: readiness turns 503 and the gRPC health service NOT_SERVING at once, requests
and calls are still served during the shutdown delay, every one in flight gets a complete answer
and its decision records, exit 0 within the delay plus the drain timeout) and slow-header clients closed at the header timeout."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, wait_for
from training.cli import main as training_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("server") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    return out


def serve(checkpoint: Path, **variables: str) -> tuple[subprocess.Popen, str, int]:
    """``python -m service`` on a free port with ``DIGLM_*`` variables, once it is ready: the
    process (output piped, text), its base URL and port."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--model-dir", str(checkpoint), "--port", str(port), "--device", "cpu"],
        cwd=ROOT, env={**os.environ, **{f"DIGLM_{name.upper()}": value for name, value in variables.items()}},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200, "the service process to be ready")
    return server, base, port


def test_sigterm_with_50_requests_and_10_grpc_calls_in_flight_loses_none(checkpoint, tmp_path):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.protos import SERVICE, message

    grpc_port = free_port()
    server, base, _ = serve(
        checkpoint, shutdown_delay_s="2.5", drain_timeout_s="20", log_level="info", max_queue="100000", request_timeout_s="60", max_queue_wait_s="60",
        grpc_port=str(grpc_port),
        decision_log_dir=str(tmp_path),
    )
    try:
        x = np.random.default_rng(0).integers(0, 17, (1024, 8, 8))
        instances = x.tolist()
        call = message("ModelInferRequest")(model_name="tiny", inputs=[{"name": "input", "datatype": "INT64", "shape": x.shape}], raw_input_contents=[x.astype("<i8").tobytes()])

        async def watch_statuses(watch) -> list[int]:
            return [answer.status async for answer in watch]

        async def health_status(checks) -> int:
            return (await checks.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)).status

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=100)) as client, grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                infer = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=lambda m: m.SerializeToString(), response_deserializer=message("ModelInferResponse").FromString)
                checks = health_pb2_grpc.HealthStub(channel)
                serving_before = await health_status(checks)
                watch = checks.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=60)
                watched = asyncio.ensure_future(watch_statuses(watch))
                flying = [asyncio.create_task(client.post("/v1/models/tiny:predict", json={"instances": instances})) for _ in range(50)]
                calls = [asyncio.ensure_future(infer(call, timeout=60)) for _ in range(10)]
                await asyncio.sleep(0.3)
                in_flight = sum(not task.done() for task in flying) + sum(not task.done() for task in calls)
                signalled = time.monotonic()
                server.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                readiness = (await client.get("/v2/health/ready")).status_code
                sent_during_delay = asyncio.ensure_future(client.post("/v1/models/tiny:predict", json={"instances": instances[:2]}))
                called_during_delay = asyncio.ensure_future(infer(call, timeout=60))  # both sent within the delay, answered after the queue ahead
                serving_after = await health_status(checks)
                during_delay = (await sent_during_delay).status_code
                grpc_during_delay = len((await called_during_delay).outputs)
                responses = await asyncio.gather(*flying, return_exceptions=True)
                answers = await asyncio.gather(*calls, return_exceptions=True)
                statuses = await asyncio.wait_for(watched, 30)  # the drain ends the watch stream itself
                return in_flight, signalled, readiness, during_delay, responses, (serving_before, serving_after, grpc_during_delay, answers, statuses)

        in_flight, signalled, readiness, during_delay, responses, over_grpc = asyncio.run(scenario())
        exit_code = server.wait(timeout=30)
        seconds = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stdout.read()
    assert in_flight >= 10, f"only {in_flight} requests were in flight at SIGTERM"
    assert readiness == 503 and during_delay == 200
    assert [getattr(r, "status_code", repr(r)) for r in responses] == [200] * 50
    assert all(len(r.json()["predictions"]) == 1024 for r in responses)
    assert exit_code == 0, log[-2000:]
    assert 2.5 <= seconds < 2.5 + 20, seconds
    assert "readiness is 503" in log and "Traceback" not in log
    serving_before, serving_after, grpc_during_delay, answers, statuses = over_grpc
    assert statuses == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]  # then the stream ended, OK
    assert (serving_before, serving_after) == (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert grpc_during_delay > 0 and not [answer for answer in answers if isinstance(answer, BaseException)], answers
    assert [list(answer.outputs[0].shape) for answer in answers] == [[1024]] * 10
    logged = sum(1 for path in tmp_path.glob("decisions*.jsonl") for _ in path.open("rb"))
    assert logged == (50 + 11) * 1024 + 2  # every instance answered has its record, written before the exit


def test_slow_header_connections_are_closed_at_the_header_timeout(checkpoint):
    server, base, port = serve(checkpoint, header_timeout_s="1", log_level="warning")
    try:
        slow = []
        for _ in range(50):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            connection.settimeout(5)
            slow.append(connection)
        started = time.monotonic()
        for _ in range(3):  # one more header byte now and then, as slowloris does
            time.sleep(0.3)
            for connection in slow:
                try:
                    connection.sendall(b"X")
                except OSError:
                    pass
        closed = 0
        for connection in slow:
            try:
                closed += connection.recv(1024) == b""
            except (ConnectionResetError, socket.timeout):
                pass
            connection.close()
        seconds = time.monotonic() - started
        assert closed == 50 and seconds < 4, (closed, seconds)
        with httpx.Client(base_url=base) as client:  # keep-alive: two requests on one connection
            assert client.get("/v2/health/live").status_code == 200
            time.sleep(0.5)
            assert client.get("/v2/health/live").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
