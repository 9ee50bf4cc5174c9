"""Where the serving time goes: py-spy samples our service (ONNX backend, batching) while wrk (HTTP)
or h2load (gRPC) loads it, and the samples are attributed to one category each by the innermost
frame that names one. Beside the samples, each thread's CPU time from /proc over the same seconds,
per request (exact, and it sees the threads without Python frames: gRPC core's), and the mean batch
the requests were run in (the service's own metrics).

One run per request kind (one 28x28 instance per request at c = 32 over v1 JSON and over gRPC, and
32 instances per request at c = 8: v1 JSON and v2 binary); each table gives the share of the samples
per thread and category. Needs py-spy (in the benchmark environment) and may need ptrace rights
(root here), and h2load for the gRPC load. Prints the tables; ``--write`` updates the serve-profile
section of docs/benchmarks.md.

    .venv-bench/bin/python -m bench.serve_profile --write
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.grpc_load import h2load
from bench.model import ROOT, build_benchmark_checkpoint
from bench.serve import RequestBody, metric_total, request_bodies, wrk
from bench.serve_load import free_port, start_server
from training.docs import update_section

# (category, substrings of a frame "function (file:line)"); the innermost frame matching any wins.
CATEGORIES = [
    ("ONNX Runtime forward", ("onnxruntime",)),
    ("gate and outputs (ModelRuntime.predict)", ("models/gate.py", "models/conformal.py", "models/scores.py", "inference/runtime.py", "inference/prediction.py")),
    ("batching (concatenate, split, hand-off)", ("service/batching.py",)),
    ("waiting for work (thread pool, select)", ("concurrent/futures/thread.py", "threading.py", "selectors.py")),
    ("input decoding (JSON to numpy, checks)", ("service/inputs.py",)),
    ("response encoding", ("service/encoding.py", "orjson")),
    ("metrics", ("prometheus_client", "service/metrics.py", "service/drift.py")),
    ("gRPC handling (our servicer and codec, grpc.aio's Python)", ("service/grpc_server.py", "service/codecs/grpc.py", "grpc/")),
    ("our request handling (fast path, endpoint, auth)", ("service/fast_path.py", "service/api/", "service/auth.py", "service/serving.py", "service/app.py", "service/dispatch.py")),
    ("Starlette / FastAPI", ("starlette/", "fastapi/")),
    ("HTTP parsing and writing (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("asyncio / uvloop (and, over gRPC, grpc.aio's compiled code: no Python frames)", ("asyncio/", "uvloop")),
]
LOADS = [("1 instance, JSON", 32), ("1 instance, gRPC", 32), ("32 instances, JSON", 8), ("32 instances, v2 binary", 8)]
THREADS = {"MainThread": "event loop", "inference": "inference", "onnx-rows": "ONNX row ranges", "_poll_wrapper": "grpc.aio poller", "event_engine": "gRPC core (C++)"}


def thread_name(name: str) -> str:
    """Our name for a thread called ``name`` (Python's, or the OS's for threads Python does not know)."""
    return next((ours for prefix, ours in THREADS.items() if prefix in name), name)


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of ``pid``: its OS name and CPU seconds so far (user + system, from /proc)."""
    ticks, threads = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            threads[int(task.name)] = ((task / "comm").read_text().strip(), (int(fields[11]) + int(fields[12])) / ticks)
        except (OSError, ValueError):  # the thread ended
            continue
    return threads


HISTOGRAMS = ("diglm_batch_size", "diglm_queue_duration_seconds", "diglm_inference_duration_seconds")


def histogram_totals(port: int) -> dict[str, tuple[float, float]]:
    """Sum and count so far of each of ``HISTOGRAMS`` (all versions), from the service's /metrics."""
    return {name: (metric_total(port, f"{name}_sum"), metric_total(port, f"{name}_count")) for name in HISTOGRAMS}


def categorise(frames: list[str]) -> str:
    """The category of one sample (``frames``: outermost first)."""
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                return name
    return "other"


def profile(port: int, grpc_port: int, pid: int, kind: str, body: RequestBody, concurrency: int, seconds: float, scratch: Path) -> dict:
    """During ``seconds`` of load with ``body`` (after 1 s of it): ``shares`` of the samples by
    (thread, category), ``cpu_us`` per request by thread, the ``rate`` (requests/s over the whole
    load) and the means of the service's histograms over those seconds (``mean_batch``: instances
    per forward pass; ``queue_ms``: a request's wait for its batch; ``forward_ms``: a batch's run)."""
    if "gRPC" in kind:
        run_load = functools.partial(h2load, f"127.0.0.1:{grpc_port}", body.body.read_bytes(), concurrency, warm_up_s=0)
    else:
        url = f"http://127.0.0.1:{port}{'/v2/models/mnist-bench/infer' if 'v2' in kind else '/v1/models/mnist-bench:predict'}"
        run_load = functools.partial(wrk, url, body.body, concurrency, content_type=body.content_type, header_length=body.header_length)
    run_load(seconds=3)  # warm-up
    load: dict = {}
    loader = threading.Thread(target=lambda: load.update(run_load(seconds=seconds + 2)))
    loader.start()
    time.sleep(1)
    raw = scratch / "profile.txt"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cpu_before, histograms_before, started = thread_cpu_seconds(pid), histogram_totals(port), time.perf_counter()
    subprocess.run([py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--threads", "--format", "raw", "--output", str(raw), "--nonblocking"],
                   check=True, capture_output=True)
    cpu_after, histograms_after, elapsed = thread_cpu_seconds(pid), histogram_totals(port), time.perf_counter() - started
    loader.join()
    counts: collections.Counter = collections.Counter()
    python_names = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        tid, _, name = thread.partition(": ")  # "thread (TID): NAME"
        python_names[int(re.sub(r"\D", "", tid))] = name
        counts[thread_name(name), categorise(frames)] += int(count)
    total = sum(counts.values())
    requests = load["requests_per_s"] * elapsed
    cpu_us: collections.Counter = collections.Counter()
    for tid, (os_name, after) in cpu_after.items():
        cpu_us[thread_name("MainThread" if tid == pid else python_names.get(tid, os_name))] += (after - cpu_before.get(tid, (os_name, 0.0))[1]) / requests * 1e6
    mean = {name: (histograms_after[name][0] - histograms_before[name][0]) / max(histograms_after[name][1] - histograms_before[name][1], 1) for name in HISTOGRAMS}
    return {"shares": {key: value / total for key, value in counts.most_common()}, "cpu_us": dict(cpu_us), "rate": load["requests_per_s"], "concurrency": concurrency,
            "mean_batch": mean["diglm_batch_size"], "queue_ms": mean["diglm_queue_duration_seconds"] * 1e3, "forward_ms": mean["diglm_inference_duration_seconds"] * 1e3}


def cpu_table(results: dict[str, dict]) -> str:
    """Server CPU per request by thread (microseconds), one column per load."""
    threads = sorted({thread for result in results.values() for thread in result["cpu_us"]}, key=lambda thread: -max(r["cpu_us"].get(thread, 0.0) for r in results.values()))
    lines = [f"| thread | {' | '.join(results)} |", "|---|" + "---:|" * len(results)]
    for thread in threads:
        if max(result["cpu_us"].get(thread, 0.0) for result in results.values()) >= 1:
            lines.append(f"| {thread} | " + " | ".join(f"{result['cpu_us'].get(thread, 0.0):.0f}" for result in results.values()) + " |")
    lines.append("| **all threads** | " + " | ".join(f"**{sum(result['cpu_us'].values()):.0f}**" for result in results.values()) + " |")
    rows = {
        "requests/s": lambda result: f"{result['rate']:.0f}",
        "instances per forward pass": lambda result: f"{result['mean_batch']:.1f}",
        "a request's round trip, ms (concurrency / rate)": lambda result: f"{result['concurrency'] / result['rate'] * 1e3:.1f}",
        "of which waiting for its batch, ms": lambda result: f"{result['queue_ms']:.1f}",
        "of which its batch's forward pass, ms": lambda result: f"{result['forward_ms']:.1f}",
    }
    lines += [f"| {row} | " + " | ".join(cell(result) for result in results.values()) + " |" for row, cell in rows.items()]
    return "### Server CPU per request, by thread (microseconds, from /proc), and where a request's time goes\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per load")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true", help="update the serve-profile section of docs/benchmarks.md")
    args = parser.parse_args()
    checkpoint = build_benchmark_checkpoint(Path(args.checkpoint))
    scratch = Path(tempfile.mkdtemp())
    port, grpc_port = free_port(), free_port()
    server = start_server(port, "--model-dir", str(checkpoint), "--backend", "onnx", "--grpc-port", str(grpc_port))
    bodies = request_bodies(scratch)
    sections, results = [], {}
    try:
        for kind, concurrency in LOADS:
            result = results[f"{kind}, c = {concurrency}"] = profile(port, grpc_port, server.pid, kind, bodies[kind], concurrency, args.seconds, scratch)
            instances = result["rate"] * bodies[kind].instances
            rows = "\n".join(f"| {thread} | {category} | {share:.1%} |" for (thread, category), share in result["shares"].items() if share >= 0.005)
            sections.append(f"### {kind}, c = {concurrency} ({result['rate']:.0f} requests/s, {instances:.0f} instances/s, {result['mean_batch']:.1f} instances per forward pass)\n\n"
                            f"| thread | where | share of samples |\n|---|---|---:|\n{rows}\n")
            print(sections[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    sections.insert(0, cpu_table(results))
    print(sections[0])
    if args.write:
        machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "serve-profile",
            "## Where the serving time goes (`python -m bench.serve_profile`)\n\n"
            f"`python -m service` (ONNX backend, batching, the `bench/serve.py` model) under wrk (HTTP, one connection per request in flight) "
            f"or h2load (gRPC, one connection), {args.seconds:.0f} s per load after 1 s of it. First each thread's CPU time over those seconds "
            f"(from /proc, so it includes gRPC core's C++ threads that have no Python frames), per request; then py-spy samples "
            f"(200/s, every Python thread, idle time left out), each counted under the innermost frame that names a category "
            f"(py-spy counts a thread blocked in compiled code as busy: the grpc.aio poller's samples are mostly its wait, so /proc is the measure of CPU). "
            f"py-spy and the load client share the {machine} with the service.\n\n" + "\n".join(sections),
        )


if __name__ == "__main__":
    main()
