"""Latency of single requests and throughput at N concurrent clients against the real service.

Starts ``python -m service`` (uvicorn) on a free loopback port for a checkpoint, sends one-instance
``/v1/models/{name}:predict`` requests with an async httpx client from this process (client and
server share the machine's cores, unpinned), prints a table and, with ``--write``, updates its
section of docs/benchmarks.md.

    .venv/bin/python -m bench.serve_load --model-dir artifacts/digits --write
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, *service_args: str, cpus: set[int] | None = None) -> subprocess.Popen:
    """``python -m service --port PORT --device cpu SERVICE_ARGS`` (e.g. ``--model-dir DIR``), once
    ready; on ``cpus`` only when given. Its log (warnings and errors) goes to a temporary file,
    ``server.log_path``: a pipe that nobody reads would stop the server once full."""
    command = [sys.executable, "-m", "service", "--port", str(port), "--device", "cpu", *service_args]
    log_path = Path(tempfile.mkstemp(prefix="diglm-server-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "DIGLM_LOG_LEVEL": "warning"},
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    server.log_path = log_path
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text().strip()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("server did not become ready in 60 s")


async def clients(url: str, body: bytes | None, concurrency: int, seconds: float) -> list[float]:
    """Each of ``concurrency`` clients sends requests back to back for ``seconds`` (POST ``body``, or
    GET when it is None); returns latencies."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                if body is None:
                    response = await client.get(url)
                else:
                    response = await client.post(url, content=body, headers={"content-type": "application/json"})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies


def summarize(latencies: list[float], seconds: float) -> dict:
    values = np.array(latencies) * 1000
    return {
        "requests": len(values),
        "requests_per_s": len(values) / seconds,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
    }


def in_process_ms(model_dir: str, instance: list, repeats: int = 200) -> tuple[float, str]:
    """Median time of the model call alone and the backend, chosen as the service chooses it."""
    import torch

    from inference.inputs import InferenceInput
    from inference.runtime import ModelRuntime
    from service.settings import ServiceSettings

    runtime = ModelRuntime.load(model_dir, "cpu", ServiceSettings().backend)
    x = InferenceInput(np.asarray([instance], dtype=np.float32))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - started)
    torch.set_num_threads(os.cpu_count() or 1)
    return float(np.median(times[20:]) * 1000), runtime.backend.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="artifacts/digits")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per concurrency level")
    parser.add_argument("--write", action="store_true", help="update the serve-load section of docs/benchmarks.md")
    args = parser.parse_args()

    manifest = json.loads((Path(args.model_dir) / "manifest.json").read_text())
    levels = manifest["preprocessing"].get("levels") or 2
    instance = np.random.default_rng(0).integers(0, levels, size=manifest["input_shape"]).tolist()
    body = json.dumps({"instances": [instance]}).encode()
    port = free_port()
    server = start_server(port, "--model-dir", args.model_dir)
    url = f"http://127.0.0.1:{port}/v1/models/{manifest['name']}:predict"
    try:
        asyncio.run(clients(url, body, 4, 2.0))  # warm-up
        rows = {f"predict, {c}": summarize(asyncio.run(clients(url, body, c, args.seconds)), args.seconds) for c in args.concurrency}
        floor = f"http://127.0.0.1:{port}/v2/health/live"
        rows["GET /v2/health/live (HTTP floor), 1"] = summarize(asyncio.run(clients(floor, None, 1, args.seconds)), args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=10)

    header = "| request, concurrency | requests/s | p50 ms | p95 ms | p99 ms | requests |\n|---:|---:|---:|---:|---:|---:|"
    lines = [f"| {c} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests']} |" for c, r in rows.items()]
    table = "\n".join([header, *lines])
    print(table)
    model_ms, backend = in_process_ms(args.model_dir, instance)
    print(f"in-process ModelRuntime.predict, one instance ({backend} backend): {model_ms:.2f} ms")
    table += f"\n\nIn-process `ModelRuntime.predict` of one instance (no HTTP, {backend} backend): {model_ms:.2f} ms."
    if args.write:
        machine = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "serve-load",
            f"## Service latency and throughput (`bench/serve_load.py`)\n\n"
            f"Model `{manifest['name']}` ({manifest['input_shape']} input, version {manifest['version']}), one instance per "
            f"request, JSON over loopback, service defaults (backend auto, dynamic batching, one inference thread). Client (async httpx) and "
            f"server (uvicorn) share the machine's cores unpinned: {machine}. {args.seconds:.0f} s per row after a 2 s warm-up.\n\n"
            f"Command: `.venv/bin/python -m bench.serve_load --model-dir {args.model_dir} --write`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
