"""Evaluation report of a checkpoint: test metrics, the gate's realised false-rejection rate, OOD
detection per set (per gate score and combined), a printed table, JSON and a figure of score
histograms per OOD set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.checkpoint import LoadedCheckpoint
from models.gate import Gate
from training.config import ExperimentConfig
from training.data import DataError, load_dataset, split_dataset
from training.data.files import read_images
from training.evaluate import evaluate_split, false_rejections, model_outputs, ood_metrics
from training.ood_sets import builtin_ood_sets, unseen_ood_sets


def load_ood_set(name_or_path: str, builtin: dict[str, np.ndarray], input_shape: tuple[int, ...]) -> np.ndarray:
    """A built-in OOD set by name (from ``builtin``), or images from a file reshaped to ``input_shape``."""
    if name_or_path in builtin:
        return builtin[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(builtin) or "none for continuous data"
        raise DataError(f"OOD set {name_or_path!r} is neither a built-in set ({known}) nor an existing file")
    images = read_images(path)
    if images[0].size != int(np.prod(input_shape)):
        raise DataError(f"{path} holds inputs of shape {images.shape[1:]}, the model takes {tuple(input_shape)}")
    return images.reshape(len(images), *input_shape)


def format_table(test: dict, gate: dict, ood: dict) -> str:
    keys = [k for k in ("error", "accepted_error", "rmse", "nll", "entropy", "bits_per_dim", "accepted") if k in test]
    rejections = gate["false_rejection"]
    lines = [
        "test split: " + "  ".join(f"{k} {test[k]:.4f}" for k in keys),
        f"gate {gate['method']} (alpha {gate['alpha']}, {gate['combine']} of {', '.join(gate['scores'])}): false rejections "
        f"{rejections['rate']:.4f} ({rejections['rejected']}/{rejections['count']}, 95% interval {rejections['interval_95'][0]:.4f}-{rejections['interval_95'][1]:.4f})",
    ]
    if ood:
        names = list(gate["scores"])
        lines.append(f"{'OOD set':<18}{'gate AUROC':>11}{'FPR@95':>8}{'rejected':>10}  " + "".join(f"{n[:14]:>15}" for n in names) + "   (per score: AUROC / rejected)")
        for name, row in ood.items():
            per_score = "".join(f"{row['scores'][n]['auroc']:>8.3f}/{row['scores'][n]['rejected']:<6.2f}" for n in names)
            lines.append(f"{name:<18}{row['gate']['auroc']:>11.4f}{row['gate']['fpr_at_95_tpr']:>8.4f}{row['gate']['rejected']:>10.4f}  {per_score}")
    return "\n".join(lines)


def gate_values(gate: Gate, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the score histograms draw: each gate score, and the combined ``p_value``."""
    return {**{name: outputs[name] for name in gate.tails}, "p_value": gate.decide(outputs).p_value}


def plot_score_histograms(values_in: dict[str, np.ndarray], ood_values: dict[str, dict[str, np.ndarray]], alpha: float, path: Path) -> None:
    """One row per gate score (and the combined p-value, as log10), one column per OOD set: the
    set's histogram over the in-distribution test split's. ``values_in`` and each of ``ood_values``:
    ``gate_values``' dicts; dashed line: alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def drawn(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**values, "p_value": np.log10(np.maximum(values["p_value"], 1e-12))}

    rows = list(values_in)
    values_in = drawn(values_in)
    figure, axes = plt.subplots(len(rows), len(ood_values), figsize=(2.2 * len(ood_values), 1.7 * len(rows)), squeeze=False)
    for column, (name, values) in enumerate(ood_values.items()):
        values_out = drawn(values)
        for row, score in enumerate(rows):
            axis = axes[row, column]
            inside, outside = (np.asarray(v[score], dtype=np.float64) for v in (values_in, values_out))
            finite = np.concatenate([inside[np.isfinite(inside)], outside[np.isfinite(outside)]])
            low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
            bins = np.linspace(low, high if high > low else low + 1, 40)
            axis.hist(np.clip(inside[np.isfinite(inside)], low, high), bins=bins, density=True, color="0.6", label="test")
            axis.hist(np.clip(outside[np.isfinite(outside)], low, high), bins=bins, density=True, color="C3", alpha=0.6, label=name)
            if score == "p_value":
                axis.axvline(np.log10(alpha), color="black", linestyle="--", linewidth=0.8)
            axis.set_yticks([])
            axis.tick_params(labelsize=6)
            if row == 0:
                axis.set_title(name, fontsize=8)
            if column == 0:
                axis.set_ylabel("log10 p" if score == "p_value" else score, fontsize=7)
    figure.suptitle("gate scores: in-distribution test (grey) vs each OOD set (red); dashed: alpha", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def ood_sets_for(loaded: LoadedCheckpoint, names: list[str] | None, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The OOD sets to evaluate: ``names`` (built-in or unseen families, or image files), default
    every family (``training.ood_sets``)."""
    preprocessing = loaded.manifest.preprocessing
    levels = preprocessing.levels if preprocessing.kind == "dequantize" else None
    builtin = {**builtin_ood_sets(x, levels, seed), **unseen_ood_sets(x, levels, seed)} if levels and len(loaded.manifest.input_shape) == 2 else {}
    return {name: load_ood_set(name, builtin, x.shape[1:]) for name in (names if names is not None else list(builtin))}


def gate_report(loaded: LoadedCheckpoint, config: ExperimentConfig, test_x: np.ndarray, test_y: np.ndarray, ood_sets: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """The gate on an in-distribution test set and OOD sets: the report, and the raw outputs."""
    evaluation = config.evaluation
    gate = loaded.gate
    test_metrics, test_outputs = evaluate_split(loaded.model, gate, test_x, test_y, evaluation.dequantization_samples, evaluation.batch_size, config.seed)
    ood_outputs = {name: model_outputs(loaded.model, x, evaluation.batch_size, fitted=gate.fitted) for name, x in ood_sets.items()}
    report = {
        "model": {"name": loaded.manifest.name, "version": loaded.manifest.version},
        "gate": {
            "method": gate.method, "alpha": gate.alpha, "combine": gate.combine, "scores": gate.tails, "weights": gate.summary.weights,
            "calibration_size": gate.summary.calibration_size, "false_rejection": false_rejections(test_outputs["accepted"], gate.alpha),
        },
        "test": test_metrics,
        "ood": {name: ood_metrics(gate, test_outputs, outputs) for name, outputs in ood_outputs.items()},
        "ood_positive_class": "in-distribution; each score's statistic is its conformal p-value, the gate's the combined p-value",
    }
    return report, test_outputs, ood_outputs


def evaluate_checkpoint(loaded: LoadedCheckpoint, ood_names: list[str] | None, data_dir: str | None, out: Path) -> dict:
    """Rebuild the checkpoint's test split from its training config, evaluate it and each OOD set,
    write the JSON report to ``out`` and the score histograms beside it; returns the report (with
    ``table``)."""
    config = ExperimentConfig.model_validate(loaded.manifest.training.config)
    if data_dir is not None:
        config.data.data_dir = Path(data_dir)
    test = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed).test
    ood_sets = ood_sets_for(loaded, ood_names, test.x, config.seed)
    report, test_outputs, ood_outputs = gate_report(loaded, config, test.x, test.y, ood_sets)
    report = {"checkpoint": str(loaded.path), **report}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if ood_outputs:
        gate = loaded.gate
        ood_values = {name: gate_values(gate, outputs) for name, outputs in ood_outputs.items()}
        plot_score_histograms(gate_values(gate, test_outputs), ood_values, gate.alpha, out.with_suffix(".png"))
    return {**report, "table": format_table(report["test"], report["gate"], report["ood"])}
