"""The protocols side by side on one server: one-instance requests over REST v1 JSON, REST v2 JSON,
REST v2 binary and gRPC, in alternating rounds at each concurrency, so that the machine's drift over
a run falls on every protocol alike (``bench/serve.py`` measures its rows one after the other).
Prints the median rate of each and its ratio to REST v1 JSON; ``--write`` updates its section of
docs/benchmarks.md.

    .venv/bin/python -m bench.serve_protocols --rounds 5 --seconds 5 --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.grpc_load import h2load
from bench.model import ROOT, random_images
from bench.serve import MODEL_NAME, prepare, stop, wait_until_up, wrk
from bench.serve_load import free_port


def binary_body(scratch: Path) -> tuple[Path, int]:
    """One instance in the binary tensor extension (FP32 bytes after the JSON header), every output binary."""
    payload = random_images(1).astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": len(payload)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    (scratch / "one-binary.bin").write_bytes(header + payload)
    return scratch / "one-binary.bin", len(header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per protocol, per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    checkpoint, scratch, bodies = prepare(args.checkpoint)
    binary, header_length = binary_body(scratch)
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "service", "--model-dir", str(checkpoint), "--device", "cpu", "--port", str(port), "--backend", "onnx", "--grpc-port", str(grpc_port)]
    log = scratch / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "DIGLM_LOG_LEVEL": "warning"}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    v1, v2 = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict", f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer"
    protocols = {
        "REST v1 JSON": lambda c: wrk(v1, bodies["1 instance, JSON"].body, c, args.seconds),
        "REST v2 JSON": lambda c: wrk(v2, bodies["1 instance, v2 JSON"].body, c, args.seconds),
        "REST v2 binary": lambda c: wrk(v2, binary, c, args.seconds, "application/octet-stream", header_length),
        "gRPC": lambda c: h2load(f"127.0.0.1:{grpc_port}", bodies["1 instance, gRPC"].body.read_bytes(), c, args.seconds),
    }
    rates: dict[tuple[str, int], list[float]] = {(name, c): [] for name in protocols for c in args.concurrency}
    errors = 0
    try:
        wait_until_up(port, process, f"/v1/models/{MODEL_NAME}:predict", bodies["1 instance, JSON"].body.read_bytes(), log)
        wrk(v1, bodies["1 instance, JSON"].body, 8, 3)  # warm-up
        for round_ in range(args.rounds):
            for c in args.concurrency:
                order = list(protocols) if round_ % 2 == 0 else list(reversed(protocols))
                for name in order:
                    result = protocols[name](c)
                    rates[name, c].append(result["requests_per_s"])
                    errors += result["errors"]
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        stop(process)
    lines = ["| protocol (1 instance per request) | concurrency | requests/s, median | min-max over rounds | over REST v1 JSON, median of per-round ratios |", "|---|---:|---:|---:|---:|"]
    for c in args.concurrency:
        for name in protocols:
            values = rates[name, c]
            ratio = statistics.median(np.array(values) / np.array(rates["REST v1 JSON", c]))
            lines.append(f"| {name} | {c} | {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} | {ratio:.2f} |")
    table = "\n".join(lines)
    print(table)
    print(f"errors: {errors}")
    if args.write:
        from training.docs import update_section

        machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"
        update_section(
            ROOT / "docs" / "benchmarks.md", "serve-protocols",
            "## The protocols side by side (`bench/serve_protocols.py`)\n\n"
            f"One server (`python -m service`, onnx backend, batching, the benchmark model of `bench/serve.py`), one-instance requests; "
            f"{args.rounds} rounds, each protocol {args.seconds:.0f} s per round in alternating order, so that the machine's drift falls on all alike. "
            f"HTTP: wrk (one thread, one connection per concurrent request); gRPC: h2load (one connection, the calls multiplexed as one channel does). "
            f"Client and server share the {machine}. Errors: {errors}.\n\n"
            f"Command: `.venv/bin/python -m bench.serve_protocols --rounds {args.rounds} --seconds {args.seconds:.0f} --concurrency {' '.join(map(str, args.concurrency))} --write`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
