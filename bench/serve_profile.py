"""Where the serving time goes: py-spy samples our service (ONNX backend, batching) while wrk loads
it, and the samples are attributed to one category each by the innermost frame that names one.

One run per request kind (one 28x28 instance per JSON request at c = 32, and 32 instances per
request at c = 8: v1 JSON and v2 binary); each table gives the share of the samples per thread and
category. Needs py-spy (in the benchmark environment) and may need ptrace rights (root here).
Prints the tables; ``--write`` updates the serve-profile section of docs/benchmarks.md.

    .venv-bench/bin/python -m bench.serve_profile --write
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.model import ROOT, build_benchmark_checkpoint
from bench.serve import RequestBody, request_bodies, wrk
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
    ("our request handling (fast path, endpoint, auth)", ("service/fast_path.py", "service/api/", "service/auth.py", "service/serving.py", "service/app.py")),
    ("Starlette / FastAPI", ("starlette/", "fastapi/")),
    ("HTTP parsing and writing (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
]
LOADS = [("1 instance, JSON", 32), ("32 instances, JSON", 8), ("32 instances, v2 binary", 8)]


def categorise(frames: list[str]) -> str:
    """The category of one sample (``frames``: outermost first)."""
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                return name
    return "other"


def profile(port: int, pid: int, kind: str, body: RequestBody, concurrency: int, seconds: float, scratch: Path) -> tuple[dict, float]:
    """Shares of the samples by (thread, category) during ``seconds`` of wrk load with ``body``, and the requests/s."""
    path = "/v2/models/mnist-bench/infer" if "v2" in kind else "/v1/models/mnist-bench:predict"
    url = f"http://127.0.0.1:{port}{path}"
    wrk(url, body.body, concurrency, 3, body.content_type, body.header_length)  # warm-up
    load: dict = {}
    loader = threading.Thread(target=lambda: load.update(wrk(url, body.body, concurrency, seconds + 2, body.content_type, body.header_length)))
    loader.start()
    raw = scratch / "profile.txt"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--threads", "--format", "raw", "--output", str(raw), "--nonblocking"],
                   check=True, capture_output=True)
    loader.join()
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        thread_name = thread.rpartition(": ")[2]  # "thread (TID): NAME"
        name = "inference" if thread_name.startswith("inference") else "event loop" if thread_name == "MainThread" else thread_name
        counts[name, categorise(frames)] += int(count)
    total = sum(counts.values())
    return {key: value / total for key, value in counts.most_common()}, load["requests_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per load")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true", help="update the serve-profile section of docs/benchmarks.md")
    args = parser.parse_args()
    checkpoint = build_benchmark_checkpoint(Path(args.checkpoint))
    scratch = Path(tempfile.mkdtemp())
    port = free_port()
    server = start_server(port, "--model-dir", str(checkpoint), "--backend", "onnx")
    bodies = request_bodies(scratch)
    sections = []
    try:
        for kind, concurrency in LOADS:
            shares, rate = profile(port, server.pid, kind, bodies[kind], concurrency, args.seconds, scratch)
            instances = rate * (32 if kind.startswith("32") else 1)
            rows = "\n".join(f"| {thread} | {category} | {share:.1%} |" for (thread, category), share in shares.items() if share >= 0.005)
            sections.append(f"### {kind}, c = {concurrency} ({rate:.0f} requests/s, {instances:.0f} instances/s while sampled)\n\n"
                            f"| thread | where | share of samples |\n|---|---|---:|\n{rows}\n")
            print(sections[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.write:
        machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "serve-profile",
            "## Where the serving time goes (`python -m bench.serve_profile`)\n\n"
            f"py-spy samples (200/s, {args.seconds:.0f} s per load, every thread, idle time left out) of `python -m service` "
            f"(ONNX backend, batching, the `bench/serve.py` model) under wrk; each sample is counted under the innermost frame "
            f"that names a category. py-spy and wrk share the {machine} with the service.\n\n" + "\n".join(sections),
        )


if __name__ == "__main__":
    main()
