"""``make soak-open``: open-loop overload. Starts ``python -m service`` on a free loopback port,
measures its capacity (wrk, closed loop, ``--capacity-connections`` connections for 15 s after 5 s
of warm-up), then offers
1x, 2x and 4x that rate for ``--phase-s`` each (wrk driven by bench/open_loop.lua: requests go at
fixed times whatever the answers, over more connections than can be in flight) and prints, per
phase: offered and achieved rate, the share of 200, 503 and 504, p50 and p99 of the 200s, the
server's resident memory, and the answers that differ from the same input's answer at rest.

Why wrk and not locust or autocannon: on this 2-core machine locust's workers could not offer even
1x (1,429 of 1,804 requests/s asked, with seconds of their own delay in the latencies), and
autocannon's rate sends each connection's quota in a burst at the start of every second. wrk is C,
and its Lua ``delay()`` hook keeps a fixed schedule as wrk2 does. wrk runs on its own CPUs (a
quarter of them, at least one; the server on the rest): sharing them, at 4x it fell seconds behind
its schedule and its own delay showed in the latencies.

Pass, at 2x and 4x: p99 of the 200s under the request deadline; every other answer a 503 with
Retry-After or a 504; no wrong answer and none missing; in each phase, RSS at its end within 10% of
its start. wrk's socket errors are reported for the whole run, the warm-up (wrk opens every
connection at once) and the cut-off tail included. The answers to the cases are compared again after the phases, and the
generator's lag (due to sent) is reported: a generator that cannot keep its schedule offers less.

    .venv/bin/python -m bench.soak_open --model-dir artifacts/digits --write
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench import wrk
from bench.serve_load import ROOT, free_port, start_server
from bench.soak import CLASSIFY, rss_kib
from service.settings import ServiceSettings
from training.config import DataConfig
from training.data import load_dataset
from training.docs import update_section

DEADLINE_S = ServiceSettings.model_fields["request_timeout_s"].default
QUEUE_WAIT_S = ServiceSettings.model_fields["max_queue_wait_s"].default
CPUS = sorted(os.sched_getaffinity(0))
GENERATOR_CPUS = set(CPUS[: max(1, len(CPUS) // 4)])  # wrk's own CPUs (a quarter, at least one), so that it never takes the server's
SERVER_CPUS = set(CPUS) - GENERATOR_CPUS or set(CPUS)
THREADS = len(GENERATOR_CPUS)  # wrk threads


def cases(base: str, model: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """The v2 infer path, and ``count`` digits as one-instance bodies, each with its answer at rest (sent alone)."""
    metadata = httpx.get(f"{base}/v2/models/{model}").json()["inputs"][0]
    path = f"/v2/models/{model}/infer"
    found = []
    for x in load_dataset(DataConfig(name="digits")).x[:count]:
        body = json.dumps({"inputs": [{"name": metadata["name"], "shape": [1, *x.shape], "datatype": "FP32", "data": x.ravel().tolist()}]})
        answer = httpx.post(base + path, content=body, headers={"content-type": "application/json"})
        answer.raise_for_status()
        found.append((body, answer.text))
    return path, found


class MemorySampler(threading.Thread):
    """The server's RSS (KiB) once a second, with the seconds since the sampler started."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(1.0):
            self.samples.append((time.monotonic() - started, rss_kib(self.pid)))

    def between(self, begin_s: float, end_s: float) -> list[float]:
        """The samples (MiB) taken between ``begin_s`` and ``end_s``."""
        return [kib / 1024 for seconds, kib in self.samples if begin_s <= seconds <= end_s]


def offer(url: str, cases_path: Path, rate: float, connections: int, warm_s: float, phase_s: float, pid: int) -> dict:
    """One phase: wrk offers ``rate`` requests/s for ``warm_s + phase_s`` plus the deadline and 2 s
    (so that every request due in the phase has its answer); the phase's requests are those due in
    its last ``phase_s`` before that tail."""
    out = Path(tempfile.mkdtemp(prefix="soak-open-"))
    run_s = warm_s + phase_s + DEADLINE_S + 2
    memory = MemorySampler(pid)
    memory.start()
    result = subprocess.run(
        ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{run_s:.0f}s", "--timeout", "30s", "-s", str(ROOT / "bench" / "open_loop.lua"), url,
         "--", str(rate / THREADS), str(cases_path), str(out)],
        capture_output=True, text=True, timeout=run_s + 60, preexec_fn=lambda: os.sched_setaffinity(0, GENERATOR_CPUS),
    )
    memory.stopped.set()
    memory.join()
    if "ERRORS" not in result.stdout:
        raise SystemExit(f"wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    socket_errors = [int(n) for n in result.stdout.split("ERRORS", 1)[1].split()[:4]]
    sent, answers, unpaired = {}, {}, 0
    for path in out.glob("thread-*.txt"):
        for line in path.read_text().splitlines():
            kind, key, *fields = line.split()
            if key == "?":
                unpaired += 1
            elif kind == "sent":
                sent[path.name, key] = (float(fields[0]), float(fields[1]))
            else:
                answers[path.name, key] = (int(fields[0]), float(fields[1]), fields[2])
    shutil.rmtree(out)
    window = [key for key, (due, _) in sent.items() if warm_s <= due < warm_s + phase_s]
    lag = np.array([sent[key][1] - sent[key][0] for key in window])
    answered = [answers[key] for key in window if key in answers]
    status = np.array([answer[0] for answer in answered], dtype=int)
    seconds = np.array([answer[1] for answer in answered])
    verdicts = [answer[2] for answer in answered]
    ok = status == 200
    counts = {str(code): int(n) for code, n in zip(*np.unique(status, return_counts=True))}
    return {
        "asked_per_s": rate,
        "offered_per_s": len(window) / phase_s,
        "achieved_per_s": int(ok.sum()) / phase_s,
        "requests": len(window),
        "statuses": counts,
        "missing": len(window) - len(answered),
        "unpaired": unpaired,
        "p50_s": float(np.percentile(seconds[ok], 50)) if ok.any() else float("nan"),
        "p99_s": float(np.percentile(seconds[ok], 99)) if ok.any() else float("nan"),
        "lag_p99_s": float(np.percentile(lag, 99)),
        "wrong": verdicts.count("wrong"),
        "no_retry_after": verdicts.count("no-retry-after"),
        "socket_errors": socket_errors,
        "connections": connections,
        "rss_mib": memory.between(warm_s, warm_s + phase_s),
    }


def share(phase: dict, code: str) -> str:
    return f"{phase['statuses'].get(code, 0) / max(phase['requests'], 1):.1%}"


def table(capacity: dict, phases: list[tuple[float, dict]]) -> str:
    lines = [
        f"Capacity: {capacity['requests_per_s']:.0f} requests/s (wrk, closed loop, 64 connections, 15 s after 5 s of warm-up, p99 {capacity['p99_s']:.3f} s). "
        f"The server runs on CPUs {sorted(SERVER_CPUS)}, wrk on {sorted(GENERATOR_CPUS)}.",
        "",
        "| load | connections | asked (/s) | offered (/s) | achieved 200s (/s) | 200 | 503 | 504 | other or none | p50 of 200s (s) | p99 of 200s (s) | generator lag p99 (s) | wrong answers | 503 without Retry-After | server RSS first / most / last (MiB) | wrk's socket errors, whole run (connect, read, write, timeout) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for multiple, phase in phases:
        other = sum(n for code, n in phase["statuses"].items() if code not in ("200", "503", "504")) + phase["missing"]
        rss = phase["rss_mib"]
        rss = f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f}"
        lines.append(
            f"| {multiple:g}x | {phase['connections']:,} | {phase['asked_per_s']:.0f} | {phase['offered_per_s']:.0f} | {phase['achieved_per_s']:.0f} | {share(phase, '200')} | "
            f"{share(phase, '503')} | {share(phase, '504')} | {other} | {phase['p50_s']:.3f} | {phase['p99_s']:.3f} | {phase['lag_p99_s']:.3f} | "
            f"{phase['wrong']} | {phase['no_retry_after']} | {rss} | {', '.join(map(str, phase['socket_errors']))} |"
        )
    return "\n".join(lines)


def verdict(phases: list[tuple[float, dict]], unchanged: bool) -> list[str]:
    """What failed (empty: passed)."""
    failures = []
    for multiple, phase in phases:
        other = {code: n for code, n in phase["statuses"].items() if code not in ("200", "503", "504")}
        if other:
            failures.append(f"{multiple:g}x: answers other than 200, 503 and 504: {other}")
        if phase["wrong"] or phase["no_retry_after"] or phase["missing"] or phase["unpaired"]:
            failures.append(
                f"{multiple:g}x: {phase['wrong']} wrong answers, {phase['no_retry_after']} 503s without Retry-After, {phase['missing']} requests "
                f"without an answer, {phase['unpaired']} answers without a known X-Request-ID"
            )
        if multiple > 1 and not phase["p99_s"] < DEADLINE_S:
            failures.append(f"{multiple:g}x: p99 of the 200s {phase['p99_s']:.3f} s is not under the {DEADLINE_S:g} s deadline")
        first, last = phase["rss_mib"][0], phase["rss_mib"][-1]
        if last > 1.10 * first:
            failures.append(f"{multiple:g}x: server RSS grew from {first:.0f} to {last:.0f} MiB")
    if not unchanged:
        failures.append("the answers at rest changed after the phases")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="artifacts/digits")
    parser.add_argument("--multiples", default="1,2,4", help="offered load, in multiples of the measured capacity")
    parser.add_argument("--phase-s", type=float, default=120.0, help="seconds measured per phase")
    parser.add_argument("--warm-s", type=float, default=10.0, help="seconds offered before each phase's measurement")
    parser.add_argument("--capacity-connections", type=int, default=64)
    parser.add_argument("--cases", type=int, default=64, help="distinct inputs, sent in turn")
    parser.add_argument("--write", action="store_true", help="update the table in docs/operations.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 1
    multiples = [float(part) for part in args.multiples.split(",")]
    port = free_port()
    server = start_server(port, "--model-dir", args.model_dir, cpus=SERVER_CPUS)
    base = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="soak-open-cases-"))
    try:
        model = httpx.get(f"{base}/v2").json()["models"][0]
        path, at_rest = cases(base, model, args.cases)
        cases_path = folder / "cases.txt"
        cases_path.write_text("".join(f"{body}\n{answer}\n" for body, answer in at_rest))
        script = wrk.write_script(folder / "post.lua", at_rest[0][0], CLASSIFY)
        wrk.run(base + path, script, args.capacity_connections, 5, cpus=GENERATOR_CPUS)  # warm-up, not counted
        capacity = wrk.run(base + path, script, args.capacity_connections, 15, cpus=GENERATOR_CPUS)
        print(f"capacity: {capacity['requests_per_s']:.0f} requests/s ({capacity['statuses']})", flush=True)
        phases = []
        for multiple in multiples:
            rate = multiple * capacity["requests_per_s"]
            # more connections than can be in flight: the queue's longest wait and a second more at capacity, and a quarter
            # second of arrivals (few: each waiting connection is a timer that wrk scans on every turn of its loop)
            connections = int(capacity["requests_per_s"] * (QUEUE_WAIT_S + 1) + rate / 4) + 64
            print(f"{multiple:g}x: {rate:.0f} requests/s for {args.warm_s:g} + {args.phase_s:g} s over {connections} connections ...", flush=True)
            phases.append((multiple, offer(base + path, cases_path, rate, connections, args.warm_s, args.phase_s, server.pid)))
            time.sleep(DEADLINE_S)  # the queue empties between phases
        unchanged = cases(base, model, args.cases)[1] == at_rest
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(folder)
        errors = [line for line in server.log_path.read_text().splitlines() if " ERROR " in line]
        server.log_path.unlink()
    text = table(capacity, phases)
    print("\n" + text)
    failures = verdict(phases, unchanged)
    if errors:
        failures.append(f"{len(errors)} errors in the server's log, the first: {errors[0]}")
    print("\nsoak-open: passed" if not failures else "\nsoak-open: FAILED\n- " + "\n- ".join(failures))
    if args.write:
        command = "python -m bench.soak_open " + " ".join(sys.argv[1:])
        update_section(
            ROOT / "docs" / "operations.md", "soak-open",
            f"## Open-loop overload (`make soak-open`)\n\nCommand: `{command}` (bench/soak_open.py; the arrivals: bench/open_loop.lua in wrk). "
            f"Each phase is measured for {args.phase_s:g} s after {args.warm_s:g} s of the same load; requests of one digit each, "
            f"{args.cases} digits in turn; deadline {DEADLINE_S:g} s.\n\n{text}\n\n"
            + ("All targets met." if not failures else "Failed: " + "; ".join(failures)),
        )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
