"""``python -m training decisions``: the service's decision log (``service.decision_log``, JSON
Lines) back to a data set. The logged inputs of the records chosen (rejected or accepted ones, a
model, a time window) go to an ``.npz`` that ``evaluate --ood`` reads (key ``x``), with each one's
request id, instance, time, decision, p-value and reason beside it. With a labels CSV (columns
``request_id`` and ``label``, optionally ``instance``) only the labelled inputs are written, with
``y``: reviewed inputs that training adds to its training split (``data.add_to_train``).

Records without an input (the log keeps them only with ``DIGLM_DECISION_LOG_INPUTS``), lines that
are not records (a write cut short) and inputs whose sha256 is not the record's are skipped and
counted."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from inference.logged_inputs import decoded, digest
from training.data import DataError


@dataclass
class Selection:
    """Which records to export: ``decision`` ("reject", "accept" or None for both), ``model`` (None:
    any), and records from ``since`` up to ``until`` (UTC, either None for open)."""

    decision: str | None = "reject"
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def wants(self, record: dict) -> bool:
        if self.decision is not None and record.get("decision") != self.decision:
            return False
        if self.model is not None and record.get("model") != self.model:
            return False
        if self.since is None and self.until is None:
            return True
        at = parse_time(record["time"])
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)


@dataclass
class Export:
    """The inputs found (``x``), their records' fields, and what was skipped, by why."""

    x: list[np.ndarray] = field(default_factory=list)
    fields: dict[str, list] = field(default_factory=lambda: {name: [] for name in ("request_id", "instance", "time", "decision", "p_value", "reason", "model", "version")})
    skipped: dict[str, int] = field(default_factory=lambda: {"no input": 0, "not a record": 0, "sha256 differs": 0})


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; none: UTC) as an aware datetime; DataError otherwise."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-07T00:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def log_files(folder: Path) -> list[Path]:
    """The log's files, oldest first: the rotated ones (named by time) and then the one being written."""
    if not folder.is_dir():
        raise DataError(f"--log {folder}: no such folder")
    files = sorted(folder.glob("decisions-*.jsonl")) + [path for path in [folder / "decisions.jsonl"] if path.exists()]
    if not files:
        raise DataError(f"--log {folder}: no decision log files (decisions*.jsonl) there; is it DIGLM_DECISION_LOG_DIR?")
    return files


def read_labels(path: Path) -> dict[tuple[str, int | None], int]:
    """(request id, instance or None for every instance of the request) -> label, from a CSV with a header."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DataError(f"--labels {path}: {error.strerror or error}") from None
    if not rows or not {"request_id", "label"} <= set(rows[0]):
        raise DataError(f"--labels {path}: needs a header with request_id and label (and optionally instance)")
    try:
        return {(row["request_id"], int(row["instance"]) if row.get("instance") not in (None, "") else None): int(row["label"]) for row in rows}
    except ValueError as error:
        raise DataError(f"--labels {path}: {error}") from None


def collect(folder: Path, selection: Selection) -> Export:
    """The selected records' inputs from every file of the log in ``folder``."""
    found = Export()
    for path in log_files(folder):
        with path.open("rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    chosen = isinstance(record, dict) and selection.wants(record)
                except (ValueError, KeyError, TypeError):
                    found.skipped["not a record"] += 1
                    continue
                if not chosen:
                    continue
                if "input" not in record:
                    found.skipped["no input"] += 1
                    continue
                try:
                    x = decoded(record["input"])
                except (ValueError, TypeError):
                    found.skipped["not a record"] += 1
                    continue
                if digest(x) != record.get("input_sha256"):
                    found.skipped["sha256 differs"] += 1
                    continue
                found.x.append(x)
                for name, values in found.fields.items():
                    values.append(record.get(name))
    return found


def export(folder: Path, selection: Selection, out: Path, labels: Path | None = None) -> str:
    """Write the selected logged inputs (labelled ones only, with ``y``, given ``labels``) to ``out``
    (``.npz``, written whole or not at all); a one-line summary."""
    found = collect(folder, selection)
    keep = list(range(len(found.x)))
    y = None
    if labels is not None:
        table = read_labels(labels)
        label_of = [table.get((request, instance), table.get((request, None))) for request, instance in zip(found.fields["request_id"], found.fields["instance"])]
        keep = [i for i in keep if label_of[i] is not None]
        y = np.array([label_of[i] for i in keep], dtype=np.int64)
    if not keep:
        skipped = ", ".join(f"{count} {why}" for why, count in found.skipped.items() if count)
        raise DataError(f"no logged inputs match in {folder}" + (f" (skipped: {skipped})" if skipped else "") + "; the log keeps inputs only with DIGLM_DECISION_LOG_INPUTS")
    shapes = {found.x[i].shape for i in keep}
    if len(shapes) > 1:
        raise DataError(f"the inputs selected have several shapes {sorted(shapes)}; choose one model with --model")
    arrays = {"x": np.stack([found.x[i] for i in keep])}
    for name, values in found.fields.items():
        column = [values[i] for i in keep]
        arrays[name] = np.array(column, dtype=np.float64 if name == "p_value" else np.int64 if name == "instance" else str)
    if y is not None:
        arrays["y"] = y
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(out)
    skipped = ", ".join(f"{count} {why}" for why, count in found.skipped.items() if count) or "none"
    return f"wrote {len(keep)} inputs{' with labels' if y is not None else ''} to {out} (skipped: {skipped})"
