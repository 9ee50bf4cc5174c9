"""Paper sec. 6.5 / fig. 6: semi-supervised half moons. The same RealNVP hybrid trained on the labeled
points only, and on labeled + unlabeled points (unlabeled rows add lambda log p(x) minus an entropy
penalty on p(y|x)), over several seeds."""
from __future__ import annotations

import numpy as np
import torch

from training.data import load_dataset, split_dataset
from training.evaluate import model_outputs
from training.experiments.common import Computed, Experiment, ExperimentContext, Stopwatch, mean_std, pyplot

ARMS = {"labeled_only": ["data.unlabeled=drop"], "labeled_and_unlabeled": ["data.unlabeled=keep"]}
SEEDS = (0, 1, 2, 3, 4)


def compute(context: ExperimentContext) -> Computed:
    clock = Stopwatch()
    quick = ["train.epochs=30", "data.options.n_train=300", "data.options.n_test=200"] if context.quick else []
    seeds = SEEDS[:2] if context.quick else SEEDS
    scores: dict[str, dict[str, list[float]]] = {arm: {"accuracy": [], "test_log_px": []} for arm in ARMS}
    models, arrays = {}, {}
    for seed in seeds:
        for arm, overrides in ARMS.items():
            config = context.config("moons", [*overrides, *quick], seed=seed)
            loaded = context.train(config, f"moons-{arm}-seed{seed}")
            test = split_dataset(load_dataset(config.data, seed), config.data, seed).test
            outputs = model_outputs(loaded.model, test.x)
            scores[arm]["accuracy"].append(float(np.mean(outputs["probabilities"].argmax(1) == test.y)))
            scores[arm]["test_log_px"].append(float(np.mean(outputs["log_px"])))
            if seed == seeds[0]:
                models[arm] = config
                arrays.update(figure_data(arm, loaded.model, config))

    results = {
        "seeds": list(seeds),
        "labels_per_class": models["labeled_only"].data.labels_per_class,
        "unlabeled_points": models["labeled_and_unlabeled"].data.options["n_train"],
        "lambda_per_dim": models["labeled_only"].train.lambda_per_dim,
        "entropy_weight": models["labeled_only"].train.entropy_weight,
        "results": {arm: {metric: mean_std(values) for metric, values in arm_scores.items()} for arm, arm_scores in scores.items()},
        "seconds": clock.seconds(),
    }
    return Computed(results, arrays)


def report(context: ExperimentContext, results: dict) -> str:
    seeds = results["seeds"]
    rows = "\n".join(
        f"| {arm.replace('_', ' ')} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['std']:.3f} | {r['test_log_px']['mean']:.3f} ± {r['test_log_px']['std']:.3f} |"
        for arm, r in results["results"].items()
    )
    return f"""## Half moons, semi-supervised (paper sec. 6.5, fig. 6)

Command: `python -m training experiment moons` ({results['seconds']:.0f} s on 2 CPU cores for {len(seeds)} seeds x 2 runs).
Two moons (noise 0.1), {results['labels_per_class']} labels per class; the semi-supervised run adds {results['unlabeled_points']} unlabeled points
(lambda log p(x) with lambda = {results['lambda_per_dim']}/D and an entropy penalty of weight {results['entropy_weight']}). RealNVP (6 coupling
steps, MLP nets of 64 units) + softmax head, full batch, 1,000 steps. Both runs pick their best step on the same 200 labeled
validation points. Mean ± std over seeds {list(seeds)}; test set of 2,000 fresh points.

![half moons]({context.figure_link('moons')})

| training data | test accuracy | test log p(x) (nats) |
|---|---:|---:|
{rows}

The paper shows only fig. 6 (samples; "noticeably less warping" with unlabeled data) and no numbers.
"""


GRID = np.linspace(-2, 3, 200, dtype=np.float32), np.linspace(-1.5, 2, 200, dtype=np.float32)


def figure_data(arm: str, model, config) -> dict[str, np.ndarray]:
    """Samples, p(y|x) and p(x) on ``GRID``, and the points, of one arm's model."""
    splits = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    outputs = model_outputs(model, np.stack(np.meshgrid(*GRID), axis=-1).reshape(-1, 2))
    return {
        f"{arm}.samples": model.sample(1000, generator=torch.Generator().manual_seed(0)).numpy(),
        f"{arm}.p_lower": outputs["probabilities"][:, 1].reshape(200, 200),
        f"{arm}.density": np.exp(outputs["log_px"]).reshape(200, 200),
        f"{arm}.train_x": splits.train.x, f"{arm}.train_y": splits.train.y, f"{arm}.labeled": splits.train.labeled, f"{arm}.test_x": splits.test.x,
    }


def plot(context: ExperimentContext, computed: Computed) -> None:
    """Fig. 6: per arm, model samples over the test data, p(y|x) and p(x), with the training points."""
    a = computed.arrays
    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(13, 8))
    for row, arm in enumerate(ARMS):
        train_x, train_y, labeled, test_x, samples = (a[f"{arm}.{key}"] for key in ("train_x", "train_y", "labeled", "test_x", "samples"))
        title = arm.replace("_", " ")
        axes[row, 0].scatter(test_x[:, 0], test_x[:, 1], s=2, color="lightgray", label="test data")
        axes[row, 0].scatter(samples[:, 0], samples[:, 1], s=2, color="C2", label="model samples")
        axes[row, 1].contourf(*GRID, a[f"{arm}.p_lower"], levels=20, cmap="coolwarm", alpha=0.6)
        axes[row, 2].contourf(*GRID, a[f"{arm}.density"], levels=20, cmap="viridis")
        for column, name in enumerate(("samples", "p(y = lower | x)", "p(x)")):
            axis = axes[row, column]
            if labeled.sum() < len(train_x) and column < 2:
                axis.scatter(train_x[~labeled, 0], train_x[~labeled, 1], s=1, color="black", alpha=0.15)
            axis.scatter(train_x[labeled, 0], train_x[labeled, 1], c=train_y[labeled], cmap="coolwarm", edgecolor="black", s=30)
            axis.set_title(f"{title}: {name}")
            axis.set_xlim(-2, 3)
            axis.set_ylim(-1.5, 2)
        axes[row, 0].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(context.figure_path("moons"), dpi=100)
    plt.close(figure)


EXPERIMENT = Experiment("moons", compute, report, plot)
