"""Training beside a busy process: the digits default's steps/s alone and beside a second process
that keeps every core busy (torch matrix products on all of them), per torch thread count and
OpenMP wait setting, side by side in one run.

Each cell is its own ``python -m training train`` (OpenMP reads its settings when torch loads), the
settings given explicitly in its environment, so the rows do not depend on the CLI's own default;
steps/s is the training loop's (validation passes included) from the checkpoint's record. Prints a
table; ``--write`` saves docs/results/train_busy.json and updates its section of docs/benchmarks.md.

    .venv/bin/python -m bench.train_busy --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from models.device import usable_cpus
from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
# name -> (torch threads, None for the CLI's default; OpenMP environment)
SETTINGS = {
    "the CLI's default (every CPU, less those busy at the start)": (None, {}),
    "every CPU, OpenMP defaults": (usable_cpus(), {}),
    "every CPU, GOMP_SPINCOUNT=10000": (usable_cpus(), {"GOMP_SPINCOUNT": "10000"}),
    "every CPU, GOMP_SPINCOUNT=1000": (usable_cpus(), {"GOMP_SPINCOUNT": "1000"}),
    "every CPU, OMP_WAIT_POLICY=PASSIVE": (usable_cpus(), {"OMP_WAIT_POLICY": "PASSIVE"}),
    "1 thread, OpenMP defaults": (1, {}),
}
BUSY = "import torch\ntorch.set_num_threads({threads})\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without OpenMP settings, plus ``extra``."""
    return {**{key: value for key, value in os.environ.items() if key not in OPENMP_VARIABLES}, **extra}


def train(threads: int | None, openmp: dict[str, str], epochs: int, out: Path) -> float:
    """Steps/s of one training run of the digits default."""
    command = [sys.executable, "-m", "training", "train", "--config", "training/configs/digits.yaml", "--out", str(out), "--quiet",
               "--set", f"train.epochs={epochs}", "--set", "train.patience=null"]
    if threads is not None:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, cwd=ROOT, env=clean_environment(openmp), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-2000:]}")
    record = json.loads((out / "manifest.json").read_text())["training"]
    return record["optimizer"]["scheduler_last_epoch"] / record["seconds"]


def measure(epochs: int) -> list[dict]:
    rows = []
    scratch = Path(tempfile.mkdtemp())
    for index, (name, (threads, openmp)) in enumerate(SETTINGS.items()):
        alone = train(threads, openmp, epochs, scratch / f"{index}-alone")
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(threads=usable_cpus())], env=clean_environment({}))
        try:
            time.sleep(2)  # the busy process is at full speed
            beside = train(threads, openmp, epochs, scratch / f"{index}-busy")
        finally:
            busy.kill()
            busy.wait()
        rows.append({"setting": name, "alone_steps_per_s": alone, "beside_busy_steps_per_s": beside, "ratio": beside / alone})
        print(f"{name}: alone {alone:.2f} steps/s, beside a busy process {beside:.2f} steps/s ({beside / alone:.2f}x)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (16 steps each)")
    parser.add_argument("--write", action="store_true", help="save docs/results/train_busy.json and update docs/benchmarks.md")
    args = parser.parse_args()
    rows = measure(args.epochs)
    fastest_alone = max(row["alone_steps_per_s"] for row in rows)
    table = "\n".join(
        [
            "| torch threads, OpenMP setting | alone (steps/s) | beside a busy process (steps/s) | beside / alone | alone vs the fastest alone |",
            "|---|---:|---:|---:|---:|",
        ]
        + [
            f"| {row['setting']} | {row['alone_steps_per_s']:.2f} | {row['beside_busy_steps_per_s']:.2f} | {row['ratio']:.2f} | {row['alone_steps_per_s'] / fastest_alone:.2f} |"
            for row in rows
        ]
    )
    print(table)
    if args.write:
        machine = f"{usable_cpus()} usable CPUs, {platform.machine()}, Python {platform.python_version()}"
        results = ROOT / "docs" / "results" / "train_busy.json"
        results.write_text(json.dumps({"machine": machine, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "train-busy",
            f"## Training beside a busy process (`python -m bench.train_busy`)\n\n"
            f"`training/configs/digits.yaml`, {args.epochs} epochs per run, each run its own `python -m training train` process with "
            f"the setting in its environment; the busy process does matrix products on all {usable_cpus()} cores. {machine}.\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
