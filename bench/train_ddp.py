"""Data-parallel training throughput: one process against ``torchrun`` with N gloo processes on the
same configuration, global batch and seed, side by side in one run (images/s of the training loop,
validation included, from the checkpoint's training record).

Every run gets the same CPUs: one process uses all of them as torch threads, N processes share
them (torchrun's default, the CPUs divided by N threads each). Prints a table; ``--write`` saves
docs/results/train_ddp.json and updates its section of docs/benchmarks.md.

    .venv/bin/python -m bench.train_ddp --config training/configs/mnist-cpu.yaml --data-dir ../shared/data --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from models.device import usable_cpus
from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, processes: int, args: argparse.Namespace) -> dict:
    """One training run; its images/s and losses from the manifest."""
    overrides = ["--set", f"data.limit={args.limit}", "--set", f"train.epochs={args.epochs}", "--set", "train.compile=false"]
    command = ["-m", "training", "train", "--config", args.config, "--out", str(out), "--quiet", *overrides]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if processes == 1:
        command = [sys.executable, *command]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *command]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"training with {processes} process(es) failed:\n{result.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["training"]
    images = manifest["data"]["sizes"]["train"] * record["epochs_completed"]
    return {
        "processes": processes,
        "threads_per_process": max(1, usable_cpus() // processes),
        "images": images,
        "seconds": record["seconds"],
        "images_per_s": images / record["seconds"],
        "final_train_loss": record["history"][-1]["train_loss"],
        "final_validation_loss": record["history"][-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/mnist-cpu.yaml")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--limit", type=int, default=8000, help="examples kept (stratified) before the splits")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", action="store_true", help="write docs/results/train_ddp.json and its section of docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diglm-ddp-") as scratch:
        rows = [train(Path(scratch) / f"p{n}", n, args) for n in args.processes]
    base = rows[0]["images_per_s"]
    header = "| processes x threads | images | seconds | images/s | vs 1 process | final train loss | final validation loss |\n|---|---:|---:|---:|---:|---:|---:|"
    lines = [
        f"| {r['processes']} x {r['threads_per_process']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
        f"{r['images_per_s'] / base:.2f}x | {r['final_train_loss']:.4f} | {r['final_validation_loss']:.4f} |"
        for r in rows
    ]
    table = "\n".join([header, *lines])
    print(table)
    if args.write:
        machine = f"{usable_cpus()} usable CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        results = {"machine": machine, "config": args.config, "limit": args.limit, "epochs": args.epochs, "rows": rows}
        (ROOT / "docs" / "results" / "train_ddp.json").write_text(json.dumps(results, indent=2) + "\n")
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "train-ddp",
            f"## Data-parallel training (`python -m bench.train_ddp`)\n\n`{args.config}` on {args.limit} examples, {args.epochs} "
            f"epoch(s), torch.compile off, the same global batch and seed; one process with every CPU as threads against "
            f"torchrun with gloo processes sharing them. {machine}.\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
