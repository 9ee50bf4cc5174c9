"""Closed-loop gRPC load with h2load (nghttp2's HTTP/2 load generator, Debian's nghttp2-client): one
connection, as one gRPC channel, with ``concurrency`` calls in flight at all times, each a unary
``/inference.GRPCInferenceService/ModelInfer`` with the same serialized ``ModelInferRequest`` in
gRPC's length-prefixed framing. A C client, as wrk is for the HTTP rows, so that both protocols are
measured with clients of like cost; its CPU time is measured all the same.

h2load reads HTTP statuses, not gRPC's (a refused call is an HTTP 200 with a grpc-status trailer), so
one call through grpcio before and after the run must answer OK with outputs, and ``bench/serve.py``
adds the refusals our service counts in its own metrics (MLServer's are not read).

    .venv/bin/python -m bench.grpc_load 127.0.0.1:8081 REQUEST.bin --concurrency 32 --seconds 8
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_answers(address: str, request: bytes) -> None:
    """One call through grpcio: it must answer OK, with outputs (h2load cannot tell)."""
    from service.protos import message

    with grpc.insecure_channel(address) as channel:
        try:
            answer = channel.unary_unary(METHOD, response_deserializer=message("ModelInferResponse").FromString)(request, timeout=60)
        except grpc.RpcError as error:
            raise SystemExit(f"{address} refused the benchmark request: {error.code().name}: {error.details()}") from None
    if not answer.outputs:
        raise SystemExit(f"{address} answered the benchmark request without outputs")


def h2load(address: str, request: bytes, concurrency: int, seconds: float, warm_up_s: float = 1.0) -> dict:
    """Requests/s, latency percentiles (ms) of the calls answered, errors (HTTP-level) and the
    client's CPU (cores, microseconds per call) of one h2load run."""
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    check_answers(address, request)
    with tempfile.TemporaryDirectory() as scratch:
        body, log = Path(scratch) / "request.grpc", Path(scratch) / "calls.log"
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)  # uncompressed, 4-byte big-endian length
        command = [
            "h2load", "-c", "1", "-m", str(concurrency), "-D", f"{seconds * 1000:.0f}ms", f"--warm-up-time={warm_up_s * 1000:.0f}ms",  # integer durations
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body), "--log-file", str(log), f"http://{address}{METHOD}",
        ]
        cpu = children_cpu_seconds()
        run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + warm_up_s + 120)
        output = run.stdout + run.stderr
        cpu = children_cpu_seconds() - cpu
        finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)  # over the measured seconds, after the warm-up
        counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", output)
        if finished is None or counts is None:
            raise SystemExit(f"h2load printed no result:\n{output[-2000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    check_answers(address, request)
    durations_ms = np.array([int(duration) / 1000 for _, status, duration in rows if status == "200"]) if rows else np.full(1, np.nan)
    done, succeeded = int(counts.group(2)), int(counts.group(3))
    return {
        "requests_per_s": float(finished.group(1)) * succeeded / max(done, 1),
        "p50_ms": float(np.percentile(durations_ms, 50)), "p95_ms": float(np.percentile(durations_ms, 95)), "p99_ms": float(np.percentile(durations_ms, 99)),
        "errors": done - succeeded,  # HTTP-level: failed includes errored
        "client_cores": cpu / (seconds + warm_up_s), "client_cpu_us_per_call": cpu / max(done, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("request", type=Path, help="a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(json.dumps(h2load(args.address, args.request.read_bytes(), args.concurrency, args.seconds)))


if __name__ == "__main__":
    main()
