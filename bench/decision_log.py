"""What the decision log costs and whether it loses records (issue 37's targets): servers of the
benchmark model with the log off, on (JSON Lines, every instance), and on with a CloudEvents sink
beside it that is down (a port nobody listens on) or slow (answers each event after 1 s, within
the sink's 2 s timeout), and a second server with the log off, whose ratio to the first shows how
far two like servers differ on this machine; loaded in rotating order, round after round, with
one-instance v1 JSON requests at c = 32 by wrk, so that the machine's drift falls on all alike; then a soak of the
JSON Lines server, after which the records written (counted by the service and
counted as lines in the files) must equal the instances it answered (a prediction whose client had
already left is not answered, nor logged). Prints a table; ``--write``
updates the decision-log section of docs/benchmarks.md.

    .venv/bin/python -m bench.decision_log --rounds 20 --seconds 3 --soak-s 300 --write
"""
from __future__ import annotations

import argparse
import http.server
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.model import ROOT
from bench.serve import MODEL_NAME, metric_total, prepare, stop, wait_until_up, wrk
from bench.serve_load import free_port

CONCURRENCY = 32
NOISE_FLOOR = "off, a second server (the noise floor: how far two like servers differ)"
SLOW_SINK_S = 1.0


class SlowReceiver(http.server.BaseHTTPRequestHandler):
    """A CloudEvents receiver that answers 202 after ``SLOW_SINK_S``."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(SLOW_SINK_S)
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument("--rounds", type=int, default=20, help="many short rounds pair each server with the others under the same drift")
    parser.add_argument("--seconds", type=float, default=3.0, help="per server, per round")
    parser.add_argument("--soak-s", type=float, default=300.0, help="length of the soak of the logged server")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    checkpoint, scratch, bodies = prepare(args.checkpoint)
    body = bodies["1 instance, JSON"].body
    folder = Path(tempfile.mkdtemp(prefix="decisions-"))
    logged = {"DIGLM_DECISION_LOG_MAX_BYTES": str(256 << 20), "DIGLM_DECISION_LOG_KEEP": "100"}
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowReceiver)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    configurations = {
        "off": {},
        "on: JSON Lines, every instance": {"DIGLM_DECISION_LOG_DIR": str(folder / "jsonl"), **logged},
        "on, and a CloudEvents sink that is down": {"DIGLM_DECISION_LOG_DIR": str(folder / "down"), "DIGLM_DECISION_LOG_CLOUDEVENTS_URL": f"http://127.0.0.1:{free_port()}/", **logged},
        f"on, and a CloudEvents sink that answers in {SLOW_SINK_S:g} s": {
            "DIGLM_DECISION_LOG_DIR": str(folder / "slow"), "DIGLM_DECISION_LOG_CLOUDEVENTS_URL": f"http://127.0.0.1:{slow.server_port}/", **logged,
        },
        NOISE_FLOOR: {},
    }
    servers = {}
    try:
        for number, (name, variables) in enumerate(configurations.items()):
            servers[name] = start(checkpoint, scratch, f"server-{number}", variables, body.read_bytes())
        rates: dict[str, list[float]] = {name: [] for name in servers}
        p99: dict[str, list[float]] = {name: [] for name in servers}
        cpu_us: dict[str, list[float]] = {name: [] for name in servers}  # server CPU per request, microseconds
        for name in servers:  # warm-up
            wrk(f"http://127.0.0.1:{servers[name][1]}/v1/models/{MODEL_NAME}:predict", body, 8, 3)
        names = list(servers)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                before = cpu_seconds(servers[name][0].pid)
                result = wrk(f"http://127.0.0.1:{servers[name][1]}/v1/models/{MODEL_NAME}:predict", body, CONCURRENCY, args.seconds)
                cpu_us[name].append((cpu_seconds(servers[name][0].pid) - before) / (result["requests_per_s"] * args.seconds) * 1e6)
                rates[name].append(result["requests_per_s"])
                p99[name].append(result["p99_ms"])
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{rates[name][-1]:.0f}/s" for name in names), flush=True)
        dropped_by_sink = {name: metric_total(servers[name][1], "diglm_decision_log_dropped_total", sink="cloudevents") for name in names if "CloudEvents" in name}
        for name in names:
            if name != names[1]:
                stop(servers.pop(name)[0])
        port = servers[names[1]][1]
        soak = wrk(f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict", body, CONCURRENCY, args.soak_s)
        time.sleep(2)  # the requests in flight when wrk stopped are answered (or dropped: client gone)
        served = metric_total(port, "diglm_requests_total", endpoint="/v1/models/{name}:predict", status="200")  # one instance each
        deadline = time.monotonic() + 60
        while metric_total(port, "diglm_decision_log_records_total") + metric_total(port, "diglm_decision_log_dropped_total") < served and time.monotonic() < deadline:
            time.sleep(0.5)
        written, dropped = metric_total(port, "diglm_decision_log_records_total"), metric_total(port, "diglm_decision_log_dropped_total")
        stop(servers.pop(names[1])[0])
        files = list((folder / "jsonl").glob("decisions*.jsonl"))
        lines = sum(1 for path in files for _ in path.open("rb"))
        megabytes = sum(path.stat().st_size for path in files) / 1e6
    finally:
        for process, _ in servers.values():
            stop(process)
        slow.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    lines_out = [
        "| decision log | requests/s, median | min-max over rounds | p99 ms, median | over off: median of per-round ratios (quartiles) | server CPU per request, µs (median) | CloudEvents records dropped (counted) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        ratios = [on / off for on, off in zip(rates[name], rates["off"])]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        ratio = "" if name == "off" else f"{statistics.median(ratios):.3f} ({quartiles[0]:.2f}-{quartiles[2]:.2f})"
        drops = f"{dropped_by_sink[name]:.0f}" if name in dropped_by_sink else ""
        lines_out.append(
            f"| {name} | {statistics.median(rates[name]):.0f} | {min(rates[name]):.0f}-{max(rates[name]):.0f} | {statistics.median(p99[name]):.1f} | {ratio} "
            f"| {statistics.median(cpu_us[name]):.0f} | {drops} |"
        )
    table = "\n".join(lines_out)
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
            f"Five servers (`python -m service`, onnx backend, the benchmark model of `bench/serve.py`): the decision log off; on "
            f"(`DIGLM_DECISION_LOG_DIR`: JSON Lines, every instance, inputs never); on with a CloudEvents sink beside it that is down (nobody listens) "
            f"or slow (each event answered after {SLOW_SINK_S:g} s, the sink's timeout 2 s); and a second server with the log off, whose ratio to the "
            f"first is the noise floor: a ratio inside its quartiles is no difference this machine can show. One-instance v1 JSON requests at c = {CONCURRENCY} by wrk, "
            f"{args.rounds} rounds of {args.seconds:.0f} s per server, the order rotating each round. Client and servers share the {machine}.\n\n"
            f"Command: `.venv/bin/python -m bench.decision_log --rounds {args.rounds} --seconds {args.seconds:.0f} --soak-s {args.soak_s:.0f} --write`\n\n"
            f"{table}\n\n{soak_line}\n",
        )


if __name__ == "__main__":
    main()
