"""Same input, same answer: every answer of ``ModelRuntime.predict`` (scores, p-values, decisions,
labels, probabilities) for inputs served alone, in small batches and in large ones, compared bit for
bit per backend; then across backends and thread counts, and what each batch-invariant setting
costs (docs/gate.md, "Same input, same answer").

Input sets: the digits data set for a digits model (its training, reference and calibration rows
among them: the hardest case, scores lying on calibration scores), IDX files given with ``--input``,
and every built-in and unseen OOD family made from the first set. Prints tables; ``--write`` saves
docs/results/batch_invariance.json and updates its section of docs/benchmarks.md.

    .venv/bin/python -m bench.batch_invariance --checkpoint artifacts/digits --write
    .venv/bin/python -m bench.batch_invariance --checkpoint artifacts/bench/mnist-bench \\
        --input ../shared/data/mnist/t10k-images-idx3-ubyte.gz --write
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from tqdm import tqdm

from inference.backends import TORCH_CPU_MIN_ROWS
from inference.inputs import InferenceInput
from inference.prediction import Prediction
from inference.runtime import ModelRuntime
from models.device import usable_cpus
from training.config import DataConfig
from training.data import load_dataset
from training.data.files import read_idx
from training.docs import update_section
from training.ood_sets import builtin_ood_sets, unseen_ood_sets

ROOT = Path(__file__).resolve().parents[1]
LARGEST = 1000  # the largest batch: the reference every other batch size is compared with


def input_sets(runtime: ModelRuntime, files: list[str], family_rows: int) -> dict[str, np.ndarray]:
    """Name -> inputs ``(N, *input_shape)`` float32: the data sets, then the OOD families of the first."""
    sets = {Path(path).name: read_idx(path).astype(np.float32) for path in files}
    if runtime.manifest.data.name == "digits":
        sets = {"digits": load_dataset(DataConfig(name="digits")).x.astype(np.float32), **sets}
    if not sets:
        raise SystemExit("no input set: give --input IDX files (or a digits checkpoint)")
    first = next(iter(sets.values()))
    levels = runtime.manifest.preprocessing.levels or 256
    families = {**builtin_ood_sets(first[:family_rows], levels), **unseen_ood_sets(first[:family_rows], levels)}
    return {**sets, **{f"ood:{name}": images.astype(np.float32) for name, images in families.items()}}


def answers(runtime: ModelRuntime, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Every answer column for ``x`` served ``batch`` rows at a time."""
    parts = [runtime.predict(InferenceInput(x[start : start + batch])) for start in range(0, len(x), batch)]
    return Prediction.concatenate(parts).columns()


def differing_rows(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], columns=None) -> np.ndarray:
    """Per row ``(N,)``: whether any of ``columns`` (default all) differs in any bit."""
    rows = np.zeros(len(expected["accepted"]), dtype=bool)
    for name in columns or expected:
        a, b = expected[name], actual[name]
        same = a == b if a.dtype == object else (a.view(np.uint8) == b.view(np.uint8)).reshape(len(a), -1).all(axis=1)
        rows |= ~np.asarray(same).reshape(len(a), -1).all(axis=1)
    return rows


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> dict:
    p_columns = [name for name in expected if name.startswith("p_value")]
    finite = np.isfinite(expected["log_px"]) & np.isfinite(actual["log_px"])
    return {
        "rows": len(expected["accepted"]),
        "answers_differ": int(differing_rows(expected, actual).sum()),
        "p_values_differ": int(differing_rows(expected, actual, p_columns).sum()),
        "decisions_differ": int((expected["accepted"] != actual["accepted"]).sum()),
        "max_log_px_difference": float(np.abs(expected["log_px"][finite] - actual["log_px"][finite]).max(initial=0.0)),
    }


def across_batches(runtime: ModelRuntime, sets: dict[str, np.ndarray], sizes: list[int]) -> tuple[list[dict], dict[str, dict]]:
    """Rows per (set, batch size) against the largest batch, and each set's largest-batch answers."""
    rows, references = [], {}
    for name, x in tqdm(sets.items(), desc=f"{runtime.backend.name}: sets", leave=False):
        references[name] = answers(runtime, x, LARGEST)
        for size in sizes:
            rows.append({"backend": runtime.backend.name, "set": name, "batch": size, **compare(references[name], answers(runtime, x, size))})
    return rows, references


def total(rows: list[dict]) -> dict:
    """Sums of the counts over rows (and the largest log p(x) difference)."""
    keys = ("rows", "answers_differ", "p_values_differ", "decisions_differ")
    return {**{key: sum(row[key] for row in rows) for key in keys}, "max_log_px_difference": max(row["max_log_px_difference"] for row in rows)}


def instances_per_second(runtime: ModelRuntime, x: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    """In-process ``predict`` throughput at one batch size (after one untimed call)."""
    inputs = InferenceInput(x[:batch])
    runtime.predict(inputs)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.predict(inputs)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def settings(checkpoint: str, torch_threads: int) -> dict[str, tuple[tuple[str, callable], tuple[str, callable]]]:
    """Per backend, (label, loader) of its batch-invariant default and of the setting it replaced."""
    def torch_unpadded():
        runtime = ModelRuntime.load(checkpoint, "cpu", "torch", threads=torch_threads)
        runtime.backend.min_rows = 1
        return runtime

    def onnx_intra_op():
        runtime = ModelRuntime.load(checkpoint, "cpu", "onnx", threads=1)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = usable_cpus(), 1, 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        runtime.backend.session = onnxruntime.InferenceSession(str(Path(checkpoint) / runtime.manifest.onnx.file), options, providers=["CPUExecutionProvider"])
        return runtime

    return {
        "torch": (
            (f"torch, padded to {TORCH_CPU_MIN_ROWS} rows (default)", lambda: ModelRuntime.load(checkpoint, "cpu", "torch", threads=torch_threads)),
            ("torch, unpadded (before)", torch_unpadded),
        ),
        "onnx": (
            (f"onnx, {usable_cpus()} row ranges of one thread (default)", lambda: ModelRuntime.load(checkpoint, "cpu", "onnx")),
            (f"onnx, {usable_cpus()} intra-op threads (before)", onnx_intra_op),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="artifacts/digits")
    parser.add_argument("--input", nargs="*", default=[], help="IDX image files (gzipped or not) to serve besides the OOD families")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 64], help="batch sizes compared with batches of %d" % LARGEST)
    parser.add_argument("--family-rows", type=int, default=1000, help="images per OOD family")
    parser.add_argument("--write", action="store_true", help="write docs/results/batch_invariance.json and its section of docs/benchmarks.md")
    args = parser.parse_args()
    torch_threads = max(1, usable_cpus() - 1)
    other_threads = 2 if torch_threads == 1 else 1
    options = settings(args.checkpoint, torch_threads)
    runtimes = {backend: default() for backend, ((_, default), _) in options.items()}
    sets = input_sets(runtimes["torch"], args.input, args.family_rows)
    batch_rows, references = [], {}
    for backend, runtime in runtimes.items():
        rows, references[backend] = across_batches(runtime, sets, args.sizes)
        batch_rows += rows

    def against(backend: str, runtime: ModelRuntime) -> dict:
        return total([compare(references[backend][name], answers(runtime, x, LARGEST)) for name, x in sets.items()])

    conditions = {
        "torch vs onnx (defaults)": total([compare(references["torch"][name], references["onnx"][name]) for name in sets]),
        f"torch, {torch_threads} vs {other_threads} threads": against("torch", ModelRuntime.load(args.checkpoint, "cpu", "torch", threads=other_threads)),
        f"onnx, {usable_cpus()} row ranges vs 1": against("onnx", ModelRuntime.load(args.checkpoint, "cpu", "onnx", threads=1)),
        f"onnx, default vs {usable_cpus()} intra-op threads": against("onnx", options["onnx"][1][1]()),
    }
    torch.set_num_threads(torch_threads)
    first = next(iter(sets.values()))
    costs = []
    for label, make in [setting for pair in options.values() for setting in pair]:
        runtime = make()
        costs.append({"setting": label, **{f"batch_{b}": instances_per_second(runtime, first, b) for b in (1, 64)}})
    report(args, sets, batch_rows, conditions, costs)


def report(args, sets: dict[str, np.ndarray], batch_rows: list[dict], conditions: dict[str, dict], costs: list[dict]) -> None:
    model = Path(args.checkpoint).name
    by_backend = "\n".join(
        f"| {backend} | {size} | {t['rows']} | {t['answers_differ']} | {t['p_values_differ']} | {t['decisions_differ']} | {t['max_log_px_difference']:.2g} |"
        for backend in ("torch", "onnx")
        for size in args.sizes
        for t in [total([row for row in batch_rows if row["backend"] == backend and row["batch"] == size])]
    )
    across = "\n".join(
        f"| {name} | {t['rows']} | {t['answers_differ']} | {t['p_values_differ']} | {t['decisions_differ']} | {t['max_log_px_difference']:.2g} |"
        for name, t in conditions.items()
    )
    cost = "\n".join(f"| {c['setting']} | {c['batch_1']:.0f} | {c['batch_64']:.0f} |" for c in costs)
    text = f"""Model `{model}` ({len(sets)} input sets: {', '.join(sets)}; {sum(len(x) for x in sets.values())} inputs), CPU, {usable_cpus()} usable cores, {platform.machine()}, Python {platform.python_version()}. Each batch size against batches of {LARGEST}; a row counts as differing when any bit of that answer differs.

Command: `.venv/bin/python -m bench.batch_invariance --checkpoint {args.checkpoint}{''.join(' --input ' + path for path in args.input)} --write`

| backend | batch size | inputs | answers differ | p-values differ | decisions differ | largest log p(x) difference (nats) |
|---|---:|---:|---:|---:|---:|---:|
{by_backend}

| across | inputs | answers differ | p-values differ | decisions differ | largest log p(x) difference (nats) |
|---|---:|---:|---:|---:|---:|
{across}

| setting (in-process `predict`) | instances/s, batch 1 | instances/s, batch 64 |
|---|---:|---:|
{cost}"""
    print(text)
    if args.write:
        results = ROOT / "docs" / "results"
        path = results / "batch_invariance.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        saved[model] = {"sets": {name: len(x) for name, x in sets.items()}, "batches": batch_rows, "across": conditions, "costs": costs}
        path.write_text(json.dumps(saved, indent=2) + "\n")
        update_section(ROOT / "docs" / "benchmarks.md", f"batch-invariance-{model}", f"## Same input, same answer: `{model}` (`bench/batch_invariance.py`)\n\n{text}")


if __name__ == "__main__":
    main()
