"""Serving throughput and latency, side by side in one run: the raw model in-process (the ceiling),
our service (torch / ONNX backends, batching on and off; REST and gRPC), plain FastAPI baselines,
LitServe and MLServer (REST and gRPC), all on the same MNIST-size Glow hybrid (``bench/model.py``).

Load: over HTTP wrk (Debian package) with one thread and a Lua script for the POST body; over gRPC
h2load (``bench/grpc_load.py``; Debian's nghttp2-client), one connection with the calls multiplexed
as one gRPC channel does; each client's CPU time is reported, since client and servers share the
machine's cores unpinned; one server at a time, warmed up before measuring.
Prints one table and, with ``--write``, rewrites the serve section of docs/benchmarks.md. Needs the
benchmark environments (LitServe in .venv-bench, MLServer in .venv-mlserver): ``make bench-serve``.

    .venv-bench/bin/python -m bench.serve --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench.grpc_load import children_cpu_seconds, h2load
from bench.model import ROOT, build_benchmark_checkpoint, random_images
from bench.peers.mlserver_onnx import MODEL_NAME, write_model_folder
from bench.serve_load import free_port
from training.config import GateSettings

CONCURRENCY = (1, 8, 32, 128)
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length ~= nil and header_length ~= "" then wrk.headers["Inference-Header-Content-Length"] = header_length end
local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = file:read("*a")
file:close()
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), errors))
end
"""


def wait_until_up(port: int, process: subprocess.Popen, path: str, body: bytes, log: Path, timeout: float = 120) -> None:
    """Until ``path`` answers ``body`` with a 200; the server's output goes to ``log`` (a file, never a
    pipe nobody reads: a server blocks once a full pipe stops its logging)."""
    import http.client

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited during start: {log.read_text(errors='replace')[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server on port {port} did not answer in {timeout:.0f} s")


def wrk(url: str, body_file: Path, concurrency: int, seconds: float, content_type: str = "application/json", header_length: int | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA)
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_CONTENT_TYPE": content_type, "BENCH_HEADER_LENGTH": "" if header_length is None else str(header_length)}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "20s", "-s", script.name, url]
    cpu = children_cpu_seconds()
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=False).stdout
    cpu = children_cpu_seconds() - cpu
    os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", output)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    requests, duration_us, p50, p95, p99, errors = match.groups()
    rate = int(requests) / (int(duration_us) / 1e6)
    return {
        "requests_per_s": rate, "p50_ms": float(p50) / 1000, "p95_ms": float(p95) / 1000, "p99_ms": float(p99) / 1000, "errors": int(errors),
        "client_cores": cpu / (int(duration_us) / 1e6),
    }


def in_process(checkpoint: Path) -> dict:
    """The ceiling: best batch throughput of ONNX Runtime and torch with all cores, no HTTP; and the
    single-instance model time with the service's own thread setting."""
    import onnxruntime
    import torch

    from inference.inputs import InferenceInput
    from inference.runtime import ModelRuntime
    from models.checkpoint import load_checkpoint

    def instances_per_s(run, batch: int, repeats: int = 20) -> float:
        x = random_images(batch, seed=1)
        run(x)
        started = time.perf_counter()
        for _ in range(repeats):
            run(x)
        return batch * repeats / (time.perf_counter() - started)

    session = onnxruntime.InferenceSession(str(checkpoint / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_checkpoint(checkpoint).model.eval()
    torch.set_num_threads(os.cpu_count() or 1)

    def torch_run(x):
        with torch.inference_mode():
            output = model(torch.from_numpy(x))
            model.head.predict(output.z)

    ceiling = {
        f"{name} batch {batch}": instances_per_s(run, batch)
        for name, run in (("onnxruntime", lambda x: session.run(None, {"input": x})), ("torch", torch_run))
        for batch in (32, 64, 128)
    }
    single = {}
    for backend in ("onnx", "torch"):
        runtime = ModelRuntime.load(checkpoint, "cpu", backend)
        x = InferenceInput(random_images(1, seed=2))
        times = []
        for _ in range(200):
            started = time.perf_counter()
            runtime.predict(x)
            times.append(time.perf_counter() - started)
        single[backend] = float(np.median(times[20:]) * 1000)
    torch.set_num_threads(os.cpu_count() or 1)
    return {"instances_per_s": ceiling, "single_instance_ms": single}


LOG_PX_GATE = GateSettings(scores={"log_px": "lower"})  # the paper's evidence alone, for the gate's cost
SEVEN_SCORE_GATE = GateSettings(neighbour_reference=0, combine="min")  # the gate before neighbour_distance and max_sum


ONE_REQUEST_KIND = {"v1": "1 instance, JSON", "v2": "1 instance, v2 JSON"}
MANY_REQUEST_KINDS = {"v1": ["32 instances, JSON"], "v2": ["32 instances, v2 JSON", "32 instances, v2 binary"]}
GRPC_REQUEST_KINDS = ["1 instance, gRPC", "32 instances, gRPC"]  # raw FP32 contents, every output raw
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
MLSERVER_NAME = "MLServer + ONNX Runtime (adaptive batching 32 / 5 ms)"


@dataclass
class Server:
    """How to start one server and what it speaks: ``paths`` by protocol (``v1``: a JSON body of
    ``instances``; ``v2``: the Open Inference Protocol), ``many``: whether it also gets the
    32-instance rows, ``binary``: whether it takes the binary tensor extension, ``grpc_port``: the
    port of its Open Inference Protocol over gRPC, when measured there."""

    command: list[str]
    env: dict[str, str]
    paths: dict[str, str]
    many: bool = False
    binary: bool = False
    grpc_port: int | None = None

    def rows(self) -> list[tuple[str, str | None, int]]:
        """(request kind, path (None over gRPC), concurrency) of every row this server is measured at."""
        rows = [(ONE_REQUEST_KIND[protocol], path, concurrency) for protocol, path in self.paths.items() for concurrency in CONCURRENCY]
        if self.many:
            rows += [(kind, path, 8) for protocol, path in self.paths.items() for kind in MANY_REQUEST_KINDS[protocol] if self.binary or "binary" not in kind]
        if self.grpc_port is not None:
            rows += [(kind, None, concurrency) for kind in GRPC_REQUEST_KINDS for concurrency in CONCURRENCY]
        return rows


def servers(checkpoint: Path, python: str, scratch: Path, device: str = "cpu") -> dict[str, Callable[[int], Server]]:
    """Name -> a function of the port that gives the ``Server`` listening on it (what a server needs
    on disk is written only when it is started). ``device`` applies to our service (the peers run on
    the CPU). granian and MLServer are listed when their environments exist."""
    quiet = {"DIGLM_LOG_LEVEL": "warning"}
    v1 = {"v1": "/v1/models/mnist-bench:predict"}
    both = {**v1, "v2": "/v2/models/mnist-bench/infer"}

    def ours(port: int, backend: str, batching: bool, model: Path = checkpoint, grpc_port: int = 0, **env: str) -> tuple[list[str], dict[str, str]]:
        command = [python, "-m", "service", "--model-dir", str(model), "--device", device, "--port", str(port), "--backend", backend, "--grpc-port", str(grpc_port)]
        return command, {**quiet, "DIGLM_BATCHING": str(batching).lower(), **env}

    def ours_with_grpc(port: int) -> Server:
        grpc_port = free_port()
        return Server(*ours(port, "onnx", True, grpc_port=grpc_port), both, many=True, binary=True, grpc_port=grpc_port)

    def peer(module: str, *arguments: str) -> Callable[[int], Server]:
        return lambda port: Server([python, "-m", module, str(checkpoint), *arguments, str(port)], {}, {"v1": "/predict"})

    listed = {
        "ours: torch, no batching": lambda port: Server(*ours(port, "torch", False), v1),
        "ours: torch, batching": lambda port: Server(*ours(port, "torch", True), v1),
        "ours: onnx, no batching": lambda port: Server(*ours(port, "onnx", False), v1),
        "ours: onnx, batching": ours_with_grpc,
        "ours: onnx, batching, 1 ONNX Runtime thread": lambda port: Server(
            *ours(port, "onnx", True, DIGLM_INFERENCE_THREADS="1"), both, many=True, binary=True
        ),
        "ours: onnx, batching, gate on log p(x) alone": lambda port: Server(*ours(port, "onnx", True, gate_checkpoint(checkpoint, "log-px-gate", LOG_PX_GATE)), v1),
        "ours: onnx, batching, seven-score gate": lambda port: Server(*ours(port, "onnx", True, gate_checkpoint(checkpoint, "seven-score-gate", SEVEN_SCORE_GATE)), v1),
        "plain FastAPI + torch eager": peer("bench.peers.fastapi_plain", "torch"),
        "plain FastAPI + ONNX Runtime": peer("bench.peers.fastapi_plain", "onnx"),
        "LitServe + ONNX Runtime (batch 32 / 5 ms)": lambda port: Server(
            [python, "-m", "bench.peers.litserve_onnx", str(checkpoint), str(port), "32", "0.005"], {}, {"v1": "/predict"}
        ),
    }
    granian = Path(python).parent / "granian"
    if granian.exists():  # the same app under another ASGI server, to measure what a switch would give
        app_env = {**quiet, "DIGLM_MODEL_DIR": str(checkpoint), "DIGLM_DEVICE": device, "DIGLM_BACKEND": "onnx", "DIGLM_BATCHING": "true"}
        listed["ours: onnx, batching, under granian (not the shipped server)"] = lambda port: Server(
            [str(granian), "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--http", "1",
             "--loop", "uvloop", "--log-level", "warning", "service.app:create_app"],
            app_env, both, many=True, binary=True,
        )
    if MLSERVER.exists():

        def mlserver(port: int) -> Server:
            grpc_port = free_port()
            folder = write_model_folder(scratch / f"mlserver-{port}", checkpoint / "model.onnx", port, grpc_port, free_port())
            return Server([str(MLSERVER), "start", str(folder)], {"PYTHONPATH": str(ROOT)}, {"v2": f"/v2/models/{MODEL_NAME}/infer"}, many=True, grpc_port=grpc_port)

        listed[MLSERVER_NAME] = mlserver
    return listed


@dataclass
class RequestBody:
    body: Path
    instances: int
    content_type: str = "application/json"
    header_length: int | None = None  # the binary tensor extension's JSON header


def request_bodies(scratch: Path) -> dict[str, RequestBody]:
    """Every request kind's body file: v1 JSON (``instances``), v2 JSON (an FP32 tensor), the v2
    binary tensor extension (UINT8 bytes after the JSON header, every output asked for in binary,
    as tritonclient does by default), and a gRPC ModelInferRequest (raw FP32 contents, as
    tritonclient.grpc sends them; every output, raw)."""
    from service.protos import message

    def v2(images: np.ndarray) -> dict:
        return {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]}

    def written(name: str, content: bytes) -> Path:
        (scratch / name).write_bytes(content)
        return scratch / name

    def grpc(images: np.ndarray) -> bytes:
        request = message("ModelInferRequest")(model_name=MODEL_NAME, inputs=[{"name": "input", "datatype": "FP32", "shape": images.shape}])
        request.raw_input_contents.append(images.astype("<f4").tobytes())
        return request.SerializeToString()

    one, many = random_images(1), random_images(32)
    payload = random_images(32).astype(np.uint8).tobytes()
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [32, 28, 28], "datatype": "UINT8", "parameters": {"binary_data_size": len(payload)}}], "parameters": {"binary_data_output": True}}
    ).encode()
    return {
        "1 instance, JSON": RequestBody(written("one.json", json.dumps({"instances": one.tolist()}).encode()), 1),
        "1 instance, v2 JSON": RequestBody(written("one-v2.json", json.dumps(v2(one)).encode()), 1),
        "32 instances, JSON": RequestBody(written("many.json", json.dumps({"instances": many.tolist()}).encode()), 32),
        "32 instances, v2 JSON": RequestBody(written("many-v2.json", json.dumps(v2(many)).encode()), 32),
        "32 instances, v2 binary": RequestBody(written("binary.bin", header + payload), 32, "application/octet-stream", len(header)),
        "1 instance, gRPC": RequestBody(written("one.grpc", grpc(one)), 1, "application/grpc"),
        "32 instances, gRPC": RequestBody(written("many.grpc", grpc(many)), 32, "application/grpc"),
    }


def metric_total(port: int, name: str, **labels: str) -> float:
    """The sum of sample ``name``'s series on our service's /metrics whose labels include ``labels``
    (prometheus_client's parser); 0 for a server without them."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return 0.0
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def grpc_refusals(port: int) -> int:
    """The gRPC calls our service on ``port`` answered with an error so far, from its /metrics (calls
    its client cancelled, 499, are not refusals: h2load resets those in flight when it stops); 0 for
    a server without our metrics."""
    return int(metric_total(port, "diglm_requests_total", protocol="grpc") - sum(metric_total(port, "diglm_requests_total", protocol="grpc", status=status) for status in ("200", "499")))


def target_summary(rows: list, ceiling: float) -> str:
    """The issue's ratios from this run: our share of the ceiling and our throughput over MLServer's."""
    ours = {(request, c): r["requests_per_s"] * n for name, request, c, n, r in rows if name == "ours: onnx, batching"}
    mlserver = {(request, c): r["requests_per_s"] * n for name, request, c, n, r in rows if name == MLSERVER_NAME}
    parts = [f"{request} at c={c}: {value / ceiling:.2f} of the ceiling" for (request, c), value in ours.items() if c == 32 or request.startswith("32")]
    for (request, c), value in mlserver.items():
        if (request, c) in ours:
            parts.append(f"{request} at c={c}: {ours[request, c] / value:.2f}x MLServer")
    for rest in ("1 instance, JSON", "1 instance, v2 JSON"):
        if ("1 instance, gRPC", 32) in ours and (rest, 32) in ours:
            parts.append(f"1 instance, gRPC at c=32: {ours['1 instance, gRPC', 32] / ours[rest, 32]:.2f}x REST {rest.split(', ')[1]}")
    return ("Ours (onnx, batching): " + "; ".join(parts) + ".") if parts else ""


def gate_checkpoint(checkpoint: Path, suffix: str, gate: GateSettings) -> Path:
    """The benchmark model with another gate, beside ``checkpoint``."""
    return build_benchmark_checkpoint(checkpoint.parent / f"{checkpoint.name}-{suffix}", gate)


def gate_cost(rows: list) -> str:
    """Throughput of the full gate over the gate on log p(x) alone and over the seven-score gate, per
    concurrency (same run)."""
    def rates(name: str) -> dict[int, float]:
        return {c: r["requests_per_s"] for server, request, c, _, r in rows if server == name and request == "1 instance, JSON"}

    full = rates("ours: onnx, batching")
    lines = []
    for label, name in (("gate on log p(x) alone", "ours: onnx, batching, gate on log p(x) alone"), ("seven-score gate", "ours: onnx, batching, seven-score gate")):
        other = rates(name)
        common = sorted(set(full) & set(other))
        if common:
            cells = ", ".join(f"c={c}: {full[c] / other[c]:.2f}x" for c in common)
            lines.append(f"Full gate vs {label} (requests/s ratio, 1 instance per request): {cells}.")
    return " ".join(lines)


def prepare(checkpoint: str) -> tuple[Path, Path, dict[str, RequestBody]]:
    """Before any measurement: wrk and h2load present, the benchmark checkpoint built (``bench/model.py``), and
    every request kind's body written to a new scratch folder; (checkpoint, scratch, bodies)."""
    for client, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(client) is None:
            raise SystemExit(f"{client} not found: apt-get install {package}")
    scratch = Path(tempfile.mkdtemp())
    return build_benchmark_checkpoint(Path(checkpoint)), scratch, request_bodies(scratch)


def stop(process: subprocess.Popen) -> None:
    """End a server started in its own session: SIGTERM to its process group (the server and any
    workers it started), SIGKILL after 15 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per row")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--only", nargs="+", help="run only the servers whose name contains one of these texts")
    parser.add_argument("--exact", action="store_true", help="with --only: only the servers of exactly those names")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="our service's device (cuda: the GPU variant; pair it with bench/gpu.py)")
    parser.add_argument("--write", action="store_true", help="rewrite the serve section of docs/benchmarks.md")
    args = parser.parse_args()
    checkpoint, scratch, bodies = prepare(args.checkpoint)
    ceiling = in_process(checkpoint)  # CPU ceiling; on a GPU see bench/gpu.py
    if not MLSERVER.exists():
        print(f"{MLSERVER} not found: MLServer is left out (make bench-env builds its environment)")
    rows = []
    for name, make_server in servers(checkpoint, sys.executable, scratch, args.device).items():
        if args.only and not any(name == only if args.exact else only in name for only in args.only):
            continue
        port = free_port()
        server = make_server(port)
        log = scratch / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(server.command, cwd=ROOT, env={**os.environ, **server.env}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            protocol, path = next(iter(server.paths.items()))
            first = bodies[ONE_REQUEST_KIND[protocol]]
            wait_until_up(port, process, path, first.body.read_bytes(), log)
            wrk(f"http://127.0.0.1:{port}{path}", first.body, 8, 3)  # warm-up
            for kind, path, concurrency in server.rows():
                body = bodies[kind]
                if path is None:
                    refused = grpc_refusals(port)
                    result = h2load(f"127.0.0.1:{server.grpc_port}", body.body.read_bytes(), concurrency, args.seconds)
                    result["errors"] += grpc_refusals(port) - refused
                else:
                    result = wrk(f"http://127.0.0.1:{port}{path}", body.body, concurrency, args.seconds, body.content_type, body.header_length)
                rows.append((name, kind, concurrency, body.instances, result))
        finally:
            stop(process)
        time.sleep(1)

    again = in_process(checkpoint)  # the ceiling once more: the machine's speed drifts over a run
    ceiling = {
        "instances_per_s": {key: max(value, again["instances_per_s"][key]) for key, value in ceiling["instances_per_s"].items()},
        "single_instance_ms": {key: min(value, again["single_instance_ms"][key]) for key, value in ceiling["single_instance_ms"].items()},
    }
    best_ceiling = max(ceiling["instances_per_s"].values())
    lines = [
        "| server | request | concurrency | requests/s | instances/s | share of ceiling | p50 ms | p95 ms | p99 ms | errors | client CPU (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, request, concurrency, per_request, r in rows:
        instances = r["requests_per_s"] * per_request
        lines.append(
            f"| {name} | {request} | {concurrency} | {r['requests_per_s']:.0f} | {instances:.0f} | {instances / best_ceiling:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['client_cores']:.2f} |"
        )
    ceiling_lines = ["| in-process run | instances/s |", "|---|---:|"] + [f"| {k} | {v:.0f} |" for k, v in ceiling["instances_per_s"].items()]
    ceiling_lines += [f"| single instance, {k} backend (service threads) | {1000 / v:.0f} ({v:.2f} ms) |" for k, v in ceiling["single_instance_ms"].items()]
    table, ceiling_table = "\n".join(lines), "\n".join(ceiling_lines)
    cost = gate_cost(rows)
    targets = target_summary(rows, best_ceiling)
    print(ceiling_table)
    print(table)
    print(cost)
    print(targets)
    (scratch / "rows.json").write_text(json.dumps({"rows": rows, "ceiling": ceiling}, indent=1))
    print(f"raw numbers: {scratch / 'rows.json'}")
    if args.write:
        from training.docs import update_section

        machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"
        section = "serve" if args.device == "cpu" else "serve-http-gpu"
        title = "Serving: ours vs plain FastAPI, LitServe and MLServer"
        command = "make bench-serve"
        if args.only:  # a subset is its own section, so the full table stays
            section += "-only-" + re.sub(r"[^a-z0-9]+", "-", " ".join(args.only).lower()).strip("-")
            title = f"Serving, only the servers named {', '.join(repr(only) for only in args.only)}"
            listed = " ".join(f"'{only}'" for only in args.only)
            command = f".venv-bench/bin/python -m bench.serve --only {listed}{' --exact' if args.exact else ''} --seconds {args.seconds:.0f} --write"
        update_section(
            ROOT / "docs" / "benchmarks.md",
            section,
            f"## {title} (`bench/serve.py`)\n\n"
            f"Model: MNIST-size Glow hybrid (`mnist-cpu` architecture, 28x28, L=2, K=4, 64 hidden), random weights. Load: wrk, one "
            f"thread, Lua POST body, {args.seconds:.0f} s per row after a 3 s warm-up; over gRPC h2load (`bench/grpc_load.py`), one connection with the calls "
            f"multiplexed as one gRPC channel does, {args.seconds:.0f} s per row after 1 s; client and server share the {machine} "
            f"unpinned; one server at a time. Ceiling: the raw model in-process with all cores, no HTTP, the best of a run before and one after the servers. "
            f"Ours: `python -m service` defaults (one inference thread; torch uses the usable cores minus one, ONNX Runtime all of them with spinning off; batching up to 64 instances, no added delay; predict and infer on the fast path in front of FastAPI, `service/fast_path.py`). "
            f"MLServer: version 1.7.1 in its own environment, a custom ONNX Runtime model class (`bench/peers/mlserver_onnx.py`), its defaults otherwise (one inference worker process); "
            f"it has no binary tensor extension over HTTP (SeldonIO/MLServer#324), so it has no binary row; over gRPC it gets the same requests as ours. v2 JSON bodies carry an FP32 tensor; the binary body UINT8 bytes and asks for binary outputs; gRPC requests raw FP32 contents (as tritonclient.grpc sends them) and get every output raw.\n\n"
            f"Command: `{command}`\n\n{ceiling_table}\n\n{table}\n\n{cost}\n\n{targets}\n",
        )


if __name__ == "__main__":
    main()
