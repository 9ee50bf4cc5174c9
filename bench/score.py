"""Offline batch scoring throughput: Ray Data (an actor pool) against the plain single-process loop
(``--engine local``) over the same files and checkpoint, side by side in one run, end to end (start-up,
reading, scoring, writing Parquet). Each engine runs as ``python -m training score`` in its own
process. Prints a table; ``--write`` saves docs/results/score.json and updates its section of
docs/benchmarks.md.

    .venv/bin/python -m bench.score --checkpoint artifacts/experiments/mnist-hybrid-0.1 \\
        --input '../shared/data/*/t10k-images-idx3-ubyte.gz' --write
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from models.device import usable_cpus
from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]


def run(engine: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, "-m", "training", "score", "--checkpoint", args.checkpoint, "--input", args.input, "--output", str(out),
               "--engine", engine, "--backend", args.backend, "--batch-size", str(args.batch_size), "--quiet"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{result.stderr[-2000:]}")
    rows = int(re.search(r"scored (\d+) rows", result.stdout).group(1))
    return {"engine": engine, "rows": rows, "seconds": wall, "rows_per_s": rows / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="artifacts/experiments/mnist-hybrid-0.1")
    parser.add_argument("--input", default="../shared/data/*/t10k-images-idx3-ubyte.gz", help="file or glob (default: the MNIST and NotMNIST test sets)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--write", action="store_true", help="write docs/results/score.json and its section of docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diglm-score-") as scratch:
        rows = [run(engine, args, Path(scratch) / engine) for engine in ("local", "ray")]
        tables = [pd.read_parquet(Path(scratch) / engine).sort_values(["source", "row"]).reset_index(drop=True) for engine in ("local", "ray")]
    same = bool((tables[0]["prediction"] == tables[1]["prediction"]).all() and (tables[0]["log_px"] - tables[1]["log_px"]).abs().max() < 1e-3)
    by_source = tables[0].groupby("source")["accepted"].mean().to_dict()
    base = rows[0]["rows_per_s"]
    header = "| engine | rows | seconds (end to end) | rows/s | vs local loop |\n|---|---:|---:|---:|---:|"
    lines = [f"| {r['engine']} | {r['rows']} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | {r['rows_per_s'] / base:.2f}x |" for r in rows]
    accepted = ", ".join(f"{Path(source).parent.name}: {share:.1%} accepted" for source, share in by_source.items())
    table = "\n".join([header, *lines])
    print(table)
    print(f"same answers from both engines: {same}; {accepted}")
    if args.write:
        machine = f"{usable_cpus()} usable CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        results = {"machine": machine, "checkpoint": args.checkpoint, "input": args.input, "rows": rows, "same_answers": same, "accepted_by_source": by_source}
        (ROOT / "docs" / "results" / "score.json").write_text(json.dumps(results, indent=2) + "\n")
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "score",
            f"## Offline batch scoring (`python -m bench.score`)\n\n`python -m training score` on `{args.input}` with "
            f"`{args.checkpoint}` (backend {args.backend}, batches of {args.batch_size}): Ray Data's actor pool against the plain loop "
            f"in one process, each end to end in its own process. {machine}.\n\n{table}\n\nSame answers from both engines: {same}; {accepted}.\n",
        )


if __name__ == "__main__":
    main()
