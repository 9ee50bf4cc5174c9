"""What every experiment shares: where it writes, training a config through the normal pipeline,
figures, the JSON / Markdown outputs, and the three steps every experiment is made of
(``Experiment``: compute, plot, report), so figures and text can be redrawn from saved results."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from training.calibration import differs_only_in_gate, refit_gate
from training.config import ExperimentConfig, load_config
from training.docs import update_section
from training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ExperimentContext:
    """``results_dir``: JSON and PNGs; ``document``: the Markdown file with one section per
    experiment; ``artifacts_dir``: checkpoints; ``quick``: tiny sizes for tests; ``seed``; and
    ``overrides`` applied to every config the experiment trains."""

    results_dir: Path
    document: Path
    artifacts_dir: Path
    seed: int = 0
    quick: bool = False
    progress: bool = True
    overrides: list[str] = field(default_factory=list)

    def config(self, name: str, overrides: list[str] = (), seed: int | None = None) -> ExperimentConfig:
        """``training/configs/<name>.yaml`` with the experiment's and the given overrides."""
        seed = self.seed if seed is None else seed
        return load_config(CONFIGS / f"{name}.yaml", [f"seed={seed}", *overrides, *self.overrides])

    def train(self, config: ExperimentConfig, run_name: str) -> LoadedCheckpoint:
        """Train through the normal pipeline into ``artifacts_dir/run_name`` and load the checkpoint."""
        out = self.artifacts_dir / run_name
        Trainer(config, progress=self.progress).run(out)
        return load_checkpoint(out)

    def train_or_load(self, config: ExperimentConfig, run_name: str) -> LoadedCheckpoint:
        """The checkpoint in ``artifacts_dir/run_name`` if it was trained with this very config (so an
        interrupted experiment resumes where it stopped); with its gate refitted if only the gate or
        evaluation settings differ; else a fresh training run."""
        out = self.artifacts_dir / run_name
        if (out / "manifest.json").is_file():
            try:
                loaded = load_checkpoint(out)
            except CheckpointError:
                loaded = None
            if loaded is not None:
                # validated again, so a field added since with its default compares equal
                trained = ExperimentConfig.model_validate(loaded.manifest.training.config)
                if trained.model_dump(mode="json") == config.model_dump(mode="json"):
                    return loaded
                if differs_only_in_gate(trained, config):
                    refit_gate(loaded, config)
                    return load_checkpoint(out)
        return self.train(config, run_name)

    def results_path(self, name: str) -> Path:
        return self.results_dir / f"{name}.json"

    def arrays_path(self, name: str) -> Path:
        """The raw values an experiment's figures draw: beside its checkpoints, not in the docs."""
        return self.artifacts_dir / f"{name}-figure-data.npz"

    def save(self, name: str, computed: "Computed") -> None:
        """Write ``<name>.json`` (results) and the figure data."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.results_path(name).write_text(json.dumps(computed.results, indent=2, default=_json_default) + "\n")
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.arrays_path(name), **computed.arrays)

    def load(self, name: str) -> "Computed":
        """What ``save`` wrote, for redrawing; ``FileNotFoundError`` names the file that is missing."""
        results = json.loads(self.results_path(name).read_text())
        with np.load(self.arrays_path(name)) as arrays:
            return Computed(results, dict(arrays))

    def write_section(self, name: str, section: str) -> None:
        update_section(self.document, f"experiment-{name}", section, title="# Results\n\nOne section per experiment; each names the command that rebuilds it.\n")

    def figure_path(self, name: str) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        return self.results_dir / f"{name}.png"

    def figure_link(self, name: str) -> str:
        """The figure's path relative to the document, for Markdown."""
        path = self.figure_path(name).resolve()
        try:
            return str(path.relative_to(self.document.resolve().parent))
        except ValueError:
            return str(path)


@dataclass
class Computed:
    """An experiment's measurements: ``results`` (JSON: metrics, settings, timings) and ``arrays``
    (the raw values its figures draw, flat names such as ``"digits.test.log_px"``)."""

    results: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """``compute(context) -> Computed`` trains or loads models and measures; ``plot(context,
    computed)`` draws the figures; ``report(context, results) -> str`` is the Markdown section.
    ``run`` does all three; with ``redraw`` only the last two, from what the last run saved."""

    name: str
    compute: Callable[[ExperimentContext], Computed]
    report: Callable[[ExperimentContext, dict], str]
    plot: Callable[[ExperimentContext, Computed], None] | None = None

    def run(self, context: ExperimentContext, redraw: bool = False) -> dict:
        """Returns the results."""
        if not redraw:
            context.save(self.name, self.compute(context))
        computed = context.load(self.name)  # the saved form either way, so a redraw equals the run
        if self.plot is not None:
            self.plot(context, computed)
        context.write_section(self.name, self.report(context, computed.results))
        return computed.results


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Stopwatch:
    def __init__(self):
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}
