"""What the decision log costs and whether it loses records (issue 37's targets): two servers of the
benchmark model, the log off and on (JSON Lines, every instance), loaded in alternating rounds with
one-instance v1 JSON requests at c = 32 by wrk, so that the machine's drift falls on both alike;
then a soak of the logged server, after which the records written (counted by the service and
counted as lines in the files) must equal the instances it answered (a prediction whose client had
already left is not answered, nor logged). Prints a table; ``--write``
updates the decision-log section of docs/benchmarks.md.

    .venv/bin/python -m bench.decision_log --rounds 5 --seconds 5 --soak-s 300 --write
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.model import ROOT
from bench.serve import MODEL_NAME, prepare, stop, wait_until_up, wrk
from bench.serve_load import free_port

CONCURRENCY = 32


def counter(port: int, name: str, *labels: str) -> float:
    """The sum of a counter's series on our service's /metrics (those whose labels include each of ``labels``, e.g. 'status="200"')."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(value) for found, value in re.findall(rf"^{name}(\{{.*\}})? (\S+)$", text, re.MULTILINE) if all(label in found for label in labels))


def start(checkpoint: Path, scratch: Path, name: str, variables: dict[str, str], body: bytes) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = scratch / f"{name}.log"
    command = [sys.executable, "-m", "service", "--model-dir", str(checkpoint), "--device", "cpu", "--port", str(port), "--backend", "onnx", "--grpc-port", "0"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "DIGLM_LOG_LEVEL": "warning", **variables}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_up(port, process, f"/v1/models/{MODEL_NAME}:predict", body, log)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per server, per round")
    parser.add_argument("--soak-s", type=float, default=300.0, help="length of the soak of the logged server")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    checkpoint, scratch, bodies = prepare(args.checkpoint)
    body = bodies["1 instance, JSON"].body
    folder = Path(tempfile.mkdtemp(prefix="decisions-"))
    variables = {"DIGLM_DECISION_LOG_DIR": str(folder), "DIGLM_DECISION_LOG_MAX_BYTES": str(256 << 20), "DIGLM_DECISION_LOG_KEEP": "100"}
    servers = {}
    try:
        servers["off"] = start(checkpoint, scratch, "off", {}, body.read_bytes())
        servers["on"] = start(checkpoint, scratch, "on", variables, body.read_bytes())
        rates: dict[str, list[float]] = {"off": [], "on": []}
        p99: dict[str, list[float]] = {"off": [], "on": []}
        for name in servers:  # warm-up
            wrk(f"http://127.0.0.1:{servers[name][1]}/v1/models/{MODEL_NAME}:predict", body, 8, 3)
        for round_ in range(args.rounds):
            for name in (["off", "on"] if round_ % 2 == 0 else ["on", "off"]):
                result = wrk(f"http://127.0.0.1:{servers[name][1]}/v1/models/{MODEL_NAME}:predict", body, CONCURRENCY, args.seconds)
                rates[name].append(result["requests_per_s"])
                p99[name].append(result["p99_ms"])
            print(f"round {round_ + 1}/{args.rounds}: off {rates['off'][-1]:.0f}/s, on {rates['on'][-1]:.0f}/s", flush=True)
        stop(servers.pop("off")[0])
        port = servers["on"][1]
        soak = wrk(f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict", body, CONCURRENCY, args.soak_s)
        time.sleep(2)  # the requests in flight when wrk stopped are answered (or dropped: client gone)
        served = counter(port, "diglm_requests_total", 'endpoint="/v1/models/{name}:predict"', 'status="200"')  # one instance each
        deadline = time.monotonic() + 60
        while counter(port, "diglm_decision_log_records_total") + counter(port, "diglm_decision_log_dropped_total") < served and time.monotonic() < deadline:
            time.sleep(0.5)
        written, dropped = counter(port, "diglm_decision_log_records_total"), counter(port, "diglm_decision_log_dropped_total")
        stop(servers.pop("on")[0])
        lines = sum(1 for path in folder.glob("decisions*.jsonl") for _ in path.open("rb"))
        megabytes = sum(path.stat().st_size for path in folder.glob("decisions*.jsonl")) / 1e6
    finally:
        for process, _ in servers.values():
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)
    ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
    table = "\n".join([
        "| decision log | requests/s, median | min-max over rounds | p99 ms, median | on / off, median of per-round ratios |",
        "|---|---:|---:|---:|---:|",
        f"| off | {statistics.median(rates['off']):.0f} | {min(rates['off']):.0f}-{max(rates['off']):.0f} | {statistics.median(p99['off']):.1f} | |",
        f"| on: JSON Lines, every instance | {statistics.median(rates['on']):.0f} | {min(rates['on']):.0f}-{max(rates['on']):.0f} | {statistics.median(p99['on']):.1f} | {statistics.median(ratios):.3f} |",
    ])
    soak_line = (f"Soak, log on, {args.soak_s:.0f} s at c = {CONCURRENCY}: {soak['requests_per_s']:.0f} requests/s, {served:.0f} instances served, "
                 f"{written:.0f} records written (counted by the service), {lines} lines in the files ({megabytes:.0f} MB), {dropped:.0f} dropped; "
                 f"{'none lost' if lines == written == served and not dropped else 'RECORDS LOST'}.")
    print(table)
    print(soak_line)
    if args.write:
        from training.docs import update_section

        machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"
        update_section(
            ROOT / "docs" / "benchmarks.md", "decision-log",
            "## The decision log's cost (`bench/decision_log.py`)\n\n"
            f"Two servers (`python -m service`, onnx backend, the benchmark model of `bench/serve.py`), the decision log off and on "
            f"(`DIGLM_DECISION_LOG_DIR`: JSON Lines, every instance, inputs never); one-instance v1 JSON requests at c = {CONCURRENCY} by wrk, "
            f"{args.rounds} rounds of {args.seconds:.0f} s per server in alternating order. Client and servers share the {machine}.\n\n"
            f"Command: `.venv/bin/python -m bench.decision_log --rounds {args.rounds} --seconds {args.seconds:.0f} --soak-s {args.soak_s:.0f} --write`\n\n"
            f"{table}\n\n{soak_line}\n",
        )


if __name__ == "__main__":
    main()
