"""Evaluation report of a checkpoint: test metrics, OOD detection per set, a printed table, JSON and
a histogram of log p(x) (nats) for the test split against each OOD set with tau marked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.checkpoint import LoadedCheckpoint
from training.config import ExperimentConfig
from training.data import DataError, load_dataset, split_dataset
from training.data.files import read_images
from training.evaluate import builtin_ood_sets, evaluate_split, model_outputs, ood_metrics


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


def format_table(test: dict, ood: dict) -> str:
    keys = [k for k in ("error", "rmse", "nll", "entropy", "bits_per_dim", "accepted") if k in test]
    lines = ["test split: " + "  ".join(f"{k} {test[k]:.4f}" for k in keys)]
    if ood:
        lines.append(f"{'OOD set':<20}{'AUROC':>8}{'AUPR':>8}{'FPR@95':>8}{'rejected':>10}")
        for name, row in ood.items():
            lines.append(f"{name:<20}{row['auroc']:>8.4f}{row['aupr']:>8.4f}{row['fpr_at_95_tpr']:>8.4f}{row['rejected']:>10.4f}")
    return "\n".join(lines)


def plot_log_px_histograms(in_log_px: np.ndarray, ood_log_px: dict[str, np.ndarray], tau: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [v[np.isfinite(v)] for v in (in_log_px, *ood_log_px.values())]
    low, high = np.percentile(np.concatenate(finite), [0.5, 100])
    bins = np.linspace(low, high, 60)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(np.clip(in_log_px, low, high), bins=bins, alpha=0.6, density=True, label="test (in-distribution)")
    for name, values in ood_log_px.items():
        axis.hist(np.clip(values[np.isfinite(values)], low, high), bins=bins, alpha=0.4, density=True, label=name)
    axis.axvline(tau, color="black", linestyle="--", label=f"tau = {tau:.1f}")
    axis.set_xlabel("log p(x) [nats]")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate_checkpoint(loaded: LoadedCheckpoint, ood_names: list[str] | None, data_dir: str | None, out: Path) -> dict:
    """Rebuild the checkpoint's test split from its training config, evaluate it and each OOD set,
    write the JSON report to ``out`` and the histogram beside it; returns the report (with ``table``)."""
    manifest = loaded.manifest
    config = ExperimentConfig.model_validate(manifest["training"]["config"])
    if data_dir is not None:
        config.data.data_dir = Path(data_dir)
    dataset = load_dataset(config.data, config.seed)
    test = split_dataset(dataset, config.data, config.seed).test
    tau = manifest["gate"]["tau"]
    test_metrics, test_outputs = evaluate_split(
        loaded.model, test.x, test.y, manifest["gate"], config.evaluation.dequantization_samples, config.evaluation.batch_size, config.seed
    )
    levels = manifest["preprocessing"].get("levels") if manifest["preprocessing"]["kind"] == "dequantize" else None
    builtin = builtin_ood_sets(test.x, levels, config.seed) if levels else {}
    names = ood_names if ood_names is not None else list(builtin)
    ood, ood_log_px = {}, {}
    for name in names:
        x = load_ood_set(name, builtin, test.x.shape[1:])
        ood_log_px[name] = model_outputs(loaded.model, x, config.evaluation.batch_size)["log_px"]
        ood[name] = ood_metrics(test_outputs["log_px"], ood_log_px[name], tau)
    report = {
        "checkpoint": str(loaded.path),
        "model": {"name": manifest["name"], "version": manifest["version"]},
        "tau": tau,
        "gate_method": manifest["gate"]["method"],
        "test": test_metrics,
        "ood": ood,
        "ood_positive_class": "in-distribution (score: log p(x))",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if ood_log_px:
        plot_log_px_histograms(test_outputs["log_px"], ood_log_px, tau, out.with_suffix(".png"))
    return {**report, "table": format_table(test_metrics, ood)}
