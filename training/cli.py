"""``python -m training``: train a model, evaluate a checkpoint, reproduce the paper's experiments.

Errors meant for the user (bad config, missing data, damaged checkpoint) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, load_checkpoint
from models.device import DeviceUnavailable, resolve_device, usable_cpus
from models.manifest import Manifest
from training.config import ConfigError, load_config
from training.data import DataError
from training.distributed import launched, local_processes
from training.export import ExportError
from training.trainer import TrainingError

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, DeviceUnavailable, ExportError)


def cpus_busy_elsewhere(seconds: float = 0.2) -> float:
    """CPUs that other processes kept busy during ``seconds`` (this one sleeps meanwhile), from the
    machine's idle counters in /proc/stat; 0 where they cannot be read."""

    def idle_and_total() -> tuple[int, int]:
        counters = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return counters[3] + counters[4], sum(counters)  # idle + iowait, all

    try:
        idle_before, total_before = idle_and_total()
        time.sleep(seconds)
        idle_after, total_after = idle_and_total()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total_after <= total_before:
        return 0.0
    return (1 - (idle_after - idle_before) / (total_after - total_before)) * (os.cpu_count() or 1)


def _set_threads(threads: int | None) -> None:
    """torch's CPU threads for this run: ``--threads``; else the CPUs this process may use, shared
    among the training processes torchrun started on this machine, and for a single process less
    the CPUs other processes keep busy when it starts (OpenMP threads that spin-wait for a core
    another process holds slow training to about a tenth: docs/benchmarks.md, "Training beside a busy process")."""
    if threads is None:
        cpus, processes = usable_cpus(), local_processes()
        threads = max(1, cpus // processes)
        if processes == 1:
            busy = cpus_busy_elsewhere()
            threads = max(1, min(threads, round(cpus - busy)))
            if threads < cpus:
                log.info("other processes keep %.1f CPUs busy: training with %d torch thread(s) (--threads sets it)", busy, threads)
    torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> None:
    from training.trainer import Trainer

    _set_threads(args.threads)
    overrides = list(args.set)
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    config = load_config(args.config, overrides)
    with launched(resolve_device(config.train.device)) as cluster:
        manifest = Trainer(config, progress=not args.quiet, cluster=cluster).run(args.out, resume=args.resume)
    if manifest is None:  # not rank 0 of data-parallel training
        return
    processes = f" on {cluster.world_size} processes" if cluster.distributed else ""
    print(f"wrote {args.out} ({manifest.name} version {manifest.version}{processes}); {_summary(manifest)}")
    if args.onnx:
        _export_after_writing(args.out)


def _summary(manifest: Manifest) -> str:
    test, gate = manifest.metrics["test"], manifest.gate
    metrics = ", ".join(f"{k} {test[k]:.4f}" for k in ("error", "rmse", "nll", "bits_per_dim", "accepted") if k in test)
    decision = f"alpha {gate.alpha} on {', '.join(gate.scores)}" if gate.method == "conformal" else f"tau {gate.tau:.2f} nats"
    return f"test: {metrics}; gate {gate.method} ({decision})"


def _export_after_writing(checkpoint: str) -> None:
    """ONNX export of a checkpoint just written: a failure leaves it complete and servable by torch."""
    from training.export import export_checkpoint

    try:
        export_checkpoint(load_checkpoint(checkpoint))
    except ExportError as error:
        print(f"warning: {error}; the checkpoint {checkpoint} is complete and serves with --backend torch", file=sys.stderr)


def _export(args: argparse.Namespace) -> None:
    from training.export import export_checkpoint

    section = export_checkpoint(load_checkpoint(args.checkpoint))
    differences = ", ".join(f"{k} {v:.2g}" for k, v in section.parity_max_abs_difference.items())
    print(f"wrote {Path(args.checkpoint) / section.file} (ONNX Runtime vs torch, largest difference: {differences})")


def _calibrate(args: argparse.Namespace) -> None:
    from training.calibration import recalibrate

    manifest = recalibrate(load_checkpoint(args.checkpoint), list(args.set), args.data_dir, args.outliers)
    print(f"wrote {args.checkpoint} ({manifest.name} version {manifest.version}); {_summary(manifest)}")


def _sign(args: argparse.Namespace) -> None:
    from models.checkpoint import sign_checkpoint

    key_file = Path(args.key_file)
    if not key_file.is_file() or not key_file.read_bytes().strip():
        raise ConfigError(f"--key-file {key_file}: no such file, or it is empty")
    manifest = sign_checkpoint(args.checkpoint, key_file.read_bytes().strip())
    print(f"signed {args.checkpoint} ({manifest.name} version {manifest.version}); serve it with DIGLM_SIGNING_KEY_FILE={key_file}")


def _decisions(args: argparse.Namespace) -> None:
    from training.decisions import Selection, export, parse_time

    selection = Selection(
        decision="accept" if args.accepted else None if args.all else "reject", model=args.model,
        since=None if args.since is None else parse_time(args.since), until=None if args.until is None else parse_time(args.until),
    )
    print(export(Path(args.log), selection, Path(args.out), None if args.labels is None else Path(args.labels)))


def _evaluate(args: argparse.Namespace) -> None:
    from training.report import evaluate_checkpoint

    loaded = load_checkpoint(args.checkpoint, resolve_device(args.device))
    out = Path(args.out) if args.out else Path(args.checkpoint) / "evaluation.json"
    report = evaluate_checkpoint(loaded, args.ood, data_dir=args.data_dir, out=out)
    print(report["table"])
    print(f"wrote {out}")


def _experiment(args: argparse.Namespace) -> None:
    from training.experiments import EXPERIMENTS, ExperimentContext

    _set_threads(args.threads)
    context = ExperimentContext(
        results_dir=Path(args.results_dir),
        document=Path(args.document),
        artifacts_dir=Path(args.artifacts_dir),
        seed=args.seed,
        quick=args.quick,
        progress=not args.quiet,
        overrides=list(args.set) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else []),
    )
    try:
        EXPERIMENTS[args.name].run(context, redraw=args.redraw)
    except FileNotFoundError as error:
        if not args.redraw:
            raise
        raise ConfigError(f"--redraw needs the saved results of a full run: {error.filename} not found") from None
    print(f"wrote {'the figures of ' if args.redraw else ''}{context.results_path(args.name)} and the {args.name!r} section of {args.document}")


def _score(args: argparse.Namespace) -> None:
    from training.score import score

    if args.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("the ray engine needs Ray: pip install -e '.[score]' (or use --engine local)")
    result = score(args.input, args.checkpoint, args.output, args.engine, args.backend, args.batch_size, args.actors, args.address, not args.quiet)
    print(f"scored {result['rows']} rows of {result['files']} file(s) in {result['seconds']:.1f} s ({result['rows_per_s']:.0f} rows/s) into {result['output']}")


THREADS_HELP = "torch CPU threads (default: every CPU this process may use, less those other processes keep busy at the start); 1 keeps training usable beside another busy process (docs/benchmarks.md)"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train DIGLM hybrid models (normalizing flow + GLM head), calibrate the density gate and evaluate checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write a checkpoint folder", description="Train a model from a YAML config, calibrate tau, evaluate on the test split and write a checkpoint folder. Data-parallel on several processes: torchrun --nproc_per_node N -m training train ... (gloo on the CPU, NCCL on GPUs; rank 0 writes the checkpoint).")
    train.add_argument("--config", required=True, help="YAML experiment config, e.g. training/configs/digits.yaml")
    train.add_argument("--out", required=True, help="checkpoint folder to write (replaced atomically if it exists)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field; nested keys with dots, e.g. --set model.flow.hidden=64 (repeatable)")
    train.add_argument("--data-dir", help="folder with the data files (for data sets read from files)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device (auto: CUDA when present)")
    train.add_argument("--resume", help="continue training from this checkpoint folder (same model config)")
    train.add_argument("--onnx", action="store_true", help="also export the trained model to ONNX (model.onnx in the checkpoint)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    train.set_defaults(handler=_train)

    export = commands.add_parser("export", help="export a checkpoint to ONNX", description="Export the checkpoint's density direction (log p(x) and the head's output, dynamic batch) to model.onnx inside the checkpoint, check ONNX Runtime against torch, and record the file's hash in the manifest.")
    export.add_argument("--checkpoint", required=True, help="checkpoint folder")
    export.set_defaults(handler=_export)

    calibrate = commands.add_parser("calibrate", help="refit the gate of a checkpoint", description="Refit the gate of a checkpoint on the calibration split it was trained beside (rebuilt from its config and seed): latent Gaussian, conformal calibration, taus; rewrite the checkpoint (and its ONNX model) atomically. Weights do not change.")
    calibrate.add_argument("--checkpoint", required=True, help="checkpoint folder")
    calibrate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a gate.* or evaluation.* setting, e.g. --set gate.combine=min (repeatable)")
    calibrate.add_argument("--data-dir", help="folder with the training data files, if the data set reads files")
    calibrate.add_argument(
        "--outliers", action="append", default=[], metavar="FILE",
        help="known outliers (IDX or .npz, as evaluate --ood reads; e.g. decisions --rejected's output) that gate.combine weighted or max_sum "
             "also choose their weights against, each file a set; the manifest records each one's name, sha256 and rows (repeatable)",
    )
    calibrate.set_defaults(handler=_calibrate)

    sign = commands.add_parser("sign", help="sign a checkpoint's manifest with a key", description="Add an HMAC-SHA256 of the manifest's digest (which covers every field and file hash) with the key in --key-file. A service started with that key (DIGLM_SIGNING_KEY_FILE) refuses checkpoints without a matching signature.")
    sign.add_argument("--checkpoint", required=True, help="checkpoint folder")
    sign.add_argument("--key-file", required=True, help="file holding the signing key (its bytes, surrounding whitespace stripped)")
    sign.set_defaults(handler=_sign)

    decisions = commands.add_parser(
        "decisions", help="export the service's logged inputs as a data set",
        description="Read the service's decision log (DIGLM_DECISION_LOG_DIR, JSON Lines) and write the inputs of the records chosen to an .npz: "
        "x (what evaluate --ood reads) with each one's request_id, instance, time, decision, p_value, reason, model and version. "
        "With --labels, only the labelled inputs, and y (train adds them with --set data.add_to_train=[FILE]). The log keeps inputs only with DIGLM_DECISION_LOG_INPUTS.",
    )
    decisions.add_argument("--log", required=True, help="the decision log's folder")
    chosen = decisions.add_mutually_exclusive_group()
    chosen.add_argument("--rejected", action="store_true", help="the rejected inputs (the default)")
    chosen.add_argument("--accepted", action="store_true", help="the accepted inputs")
    chosen.add_argument("--all", action="store_true", help="both")
    decisions.add_argument("--model", help="one model's records only")
    decisions.add_argument("--since", help="records from this time on (ISO 8601, e.g. 2026-12-07T00:00:00Z; no offset: UTC)")
    decisions.add_argument("--until", help="records before this time")
    decisions.add_argument("--labels", help="CSV with request_id and label (and optionally instance): write the labelled inputs only, with y")
    decisions.add_argument("--out", required=True, help="the .npz to write")
    decisions.set_defaults(handler=_decisions)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on its test split and OOD sets", description="Evaluate a checkpoint on the test split of its training data and on out-of-distribution sets; print a table and write JSON and a log p(x) histogram.")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint folder")
    evaluate.add_argument("--ood", action="append", default=None, metavar="NAME_OR_PATH", help="OOD set: uniform-noise, gaussian-noise, shuffled-pixels, inverted, or an image file (IDX, gzipped or not, or .npz); repeatable; default: all built-in sets")
    evaluate.add_argument("--data-dir", help="folder with the training data files, if the data set reads files")
    evaluate.add_argument("--out", help="JSON report path (default: evaluation.json in the checkpoint folder)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluate.set_defaults(handler=_evaluate)

    from training.experiments import EXPERIMENTS

    experiment = commands.add_parser("experiment", help="reproduce one of the paper's experiments", description="Run one of the paper's experiments end to end: train through the normal pipeline, compare with baselines, write JSON and PNG figures and the experiment's section of the results document.")
    experiment.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    experiment.add_argument("--seed", type=int, default=0, help="seed for data, splits and training (default 0)")
    experiment.add_argument("--results-dir", default="docs/results", help="folder for JSON and figures (default docs/results)")
    experiment.add_argument("--document", default="docs/results.md", help="Markdown file whose section for this experiment is rewritten (default docs/results.md)")
    experiment.add_argument("--artifacts-dir", default="artifacts/experiments", help="folder for the checkpoints it trains")
    experiment.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of every config the experiment trains")
    experiment.add_argument("--data-dir", help="folder with data files (MNIST experiments: the folder holding mnist/ and notmnist/)")
    experiment.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke test, not the experiment)")
    experiment.add_argument("--quiet", action="store_true", help="no progress bars")
    experiment.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    experiment.add_argument("--redraw", action="store_true", help="no training or measuring: redraw the figures and the results section from the last run's saved results")
    experiment.set_defaults(handler=_experiment)

    score = commands.add_parser(
        "score", help="score files offline (Ray Data) into Parquet",
        description="Run every row of IDX / NPZ / CSV / Parquet files through a checkpoint (the service's model math, gate included) and write "
        "each row's prediction, log p(x), gate scores and decision to a Parquet folder. Ray Data with an actor pool (pip install -e '.[score]'), "
        "or a plain loop with --engine local.",
    )
    score.add_argument("--checkpoint", required=True, help="checkpoint folder")
    score.add_argument("--input", required=True, metavar="FILE_OR_GLOB", help="input file(s), e.g. 'data/*.parquet' (quote globs)")
    score.add_argument("--output", required=True, help="Parquet folder to create (never overwritten)")
    score.add_argument("--engine", choices=["ray", "local"], default="ray", help="ray: Ray Data actor pool (default); local: a loop in this process")
    score.add_argument("--backend", choices=["torch", "onnx", "auto"], default="auto", help="inference runtime (auto: ONNX Runtime where the checkpoint has model.onnx, else torch)")
    score.add_argument("--batch-size", type=positive_int, default=256, help="rows per model call (default 256)")
    score.add_argument("--actors", type=positive_int, help="Ray actors, one model and one CPU each (default on a local Ray: the usable CPUs minus one)")
    score.add_argument("--address", help="an existing Ray cluster (ray://HOST:10001 or auto); default: start a local one")
    score.add_argument("--quiet", action="store_true", help="no progress bar (local engine)")
    score.set_defaults(handler=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
