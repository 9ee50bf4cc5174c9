"""Our service at two commits, side by side in one run: the working tree against ``--before`` (a git
revision, checked out into a temporary worktree), both serving the benchmark model
(``bench/model.py``) with the same settings, measured by wrk in alternating rounds so that drift of
the machine falls on both alike. Prints requests/s per side (median over the rounds) and their
ratio, per request kind and concurrency. For refactors that must not cost throughput; ``--write``
puts the table in docs/benchmarks.md.

    .venv/bin/python -m bench.ab --before main~1 --rounds 3 --seconds 5   (after make install; needs wrk)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.model import ROOT
from bench.serve import MANY_REQUEST_KINDS, ONE_REQUEST_KIND, prepare, stop, wait_until_up, wrk
from bench.serve_load import free_port

PATHS = {"v1": "/v1/models/mnist-bench:predict", "v2": "/v2/models/mnist-bench/infer"}


def start(source: Path, checkpoint: Path, backend: str, port: int) -> subprocess.Popen:
    """``python -m service`` with ``source`` first on the import path (its own packages, not the
    installed ones)."""
    command = [sys.executable, "-m", "service", "--model-dir", str(checkpoint), "--device", "cpu", "--port", str(port), "--backend", backend]
    env = {**os.environ, "PYTHONPATH": str(source), "DIGLM_LOG_LEVEL": "warning"}
    return subprocess.Popen(command, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare the working tree with (e.g. main~1)")
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--protocols", nargs="+", choices=sorted(PATHS), default=["v1"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--many", action="store_true", help="also the 32-instance requests of each protocol (bench/serve.py's kinds), at concurrency 8")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements per row and side")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk time per measurement")
    parser.add_argument("--write", action="store_true", help="rewrite the ab section of docs/benchmarks.md")
    args = parser.parse_args()
    checkpoint, scratch, bodies = prepare(args.checkpoint)
    worktree = scratch / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True, capture_output=True)
    sides = {"before": worktree, "after": ROOT}
    ports = {side: free_port() for side in sides}
    processes = {}
    try:
        for side, source in sides.items():
            processes[side] = start(source, checkpoint, args.backend, ports[side])
        for side, process in processes.items():
            body = bodies[ONE_REQUEST_KIND["v1"]].body
            wait_until_up(ports[side], process, PATHS["v1"], body.read_bytes())
            wrk(f"http://127.0.0.1:{ports[side]}{PATHS['v1']}", body, 8, 3)  # warm-up
        rows = [(protocol, ONE_REQUEST_KIND[protocol], concurrency) for protocol in args.protocols for concurrency in args.concurrency]
        if args.many:
            rows += [(protocol, kind, 8) for protocol in args.protocols for kind in MANY_REQUEST_KINDS[protocol]]
        rates: dict[tuple, list[float]] = {}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
            for protocol, kind, concurrency in rows:
                body = bodies[kind]
                for side in order:
                    result = wrk(f"http://127.0.0.1:{ports[side]}{PATHS[protocol]}", body.body, concurrency, args.seconds, body.content_type, body.header_length)
                    if result["errors"]:
                        raise SystemExit(f"{side}: {result['errors']} failed requests at c={concurrency}")
                    rates.setdefault((kind, concurrency, side), []).append(result["requests_per_s"])
    finally:
        for process in processes.values():
            stop(process)
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    revision = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"Before: `{args.before}` ({revision}); after: the working tree. {args.backend} backend, batching on, "
        f"median of {args.rounds} alternating {args.seconds:.0f} s wrk runs per row and side, both servers up throughout; {os.cpu_count()} CPU cores.",
        "",
        "| request | concurrency | before requests/s | after requests/s | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for _, kind, concurrency in rows:
        before, after = (statistics.median(rates[kind, concurrency, side]) for side in sides)
        lines.append(f"| {kind} | {concurrency} | {before:.0f} | {after:.0f} | {after / before:.3f} |")
    print("\n".join(lines))
    if args.write:
        from training.docs import update_section

        command = (f".venv/bin/python -m bench.ab --before {args.before} --backend {args.backend} --rounds {args.rounds} --seconds {args.seconds:.0f} "
                   f"--protocols {' '.join(args.protocols)}{' --many' if args.many else ''} --write")
        update_section(ROOT / "docs" / "benchmarks.md", f"ab-{args.backend}", f"## Our service at two commits, {args.backend} backend (`bench/ab.py`)\n\nCommand: `{command}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
