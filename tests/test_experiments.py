"""Each experiment's pipeline end to end at tiny sizes (the full runs are not tests), the synthetic
and flight data sets, and the section-preserving results document."""
import json
from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.data import load_dataset, split_dataset
from training.data.flights import FEATURES
from training.data.toy import gmm1d_log_density
from training.docs import update_section
from training.experiments import EXPERIMENTS, ExperimentContext


def context(tmp_path: Path, overrides=()) -> ExperimentContext:
    return ExperimentContext(
        results_dir=tmp_path / "results", document=tmp_path / "results.md", artifacts_dir=tmp_path / "artifacts",
        quick=True, progress=False, overrides=list(overrides),
    )


def test_update_section_keeps_other_sections(tmp_path):
    document = tmp_path / "doc.md"
    update_section(document, "a", "## A\nfirst")
    update_section(document, "b", "## B\nsecond")
    update_section(document, "a", "## A\nrewritten")
    text = document.read_text()
    assert "rewritten" in text and "first" not in text and "## B\nsecond" in text
    assert text.index("## A") < text.index("## B")


def test_gmm1d_data_and_true_density():
    dataset = load_dataset(DataConfig(name="gmm1d", options={"n_test": 2000}), seed=3)
    splits = split_dataset(dataset, DataConfig(name="gmm1d"), seed=3)
    assert (len(splits.train), len(splits.validation), len(splits.calibration), len(splits.test)) == (225, 250, 25, 2000)
    grid = np.linspace(-10, 10, 20001)
    assert abs(np.trapezoid(np.exp(gmm1d_log_density(grid)), grid) - 1) < 1e-6
    middle = np.abs(splits.test.x[:, 0]) < 1.5
    residual = splits.test.y - splits.test.x[:, 0] ** 3
    assert 15 < residual[middle].std() < 25 and residual[~middle].std() < 5


def test_gmm1d_experiment_pipeline(tmp_path):
    ctx = context(tmp_path)
    results = EXPERIMENTS["gmm1d"].run(ctx)
    saved = json.loads((tmp_path / "results" / "gmm1d.json").read_text())
    assert saved["regression"]["b_diglm"]["rmse"] == pytest.approx(results["regression"]["b_diglm"]["rmse"])
    for model in ("b_diglm", "gaussian_process"):
        assert np.isfinite(saved["regression"][model]["nll"]) and saved["regression"][model]["rmse"] > 0
    assert set(saved["density_test_log_likelihood"]) == {"b_diglm", "kde", "true_density"}
    assert isinstance(saved["claim_no_density_above_training_minimum_outside_support"]["holds"], bool)
    assert (tmp_path / "results" / "gmm1d.png").stat().st_size > 10_000
    assert "## 1-D regression" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "artifacts" / "gmm1d-figure-data.npz").is_file()


def test_gate_experiment_redraws_its_figures_and_section_from_saved_results(tmp_path, monkeypatch, capsys):
    from training.cli import main
    from training.experiments import gate

    monkeypatch.setattr(gate, "flights_available", lambda context: False)
    ctx = context(tmp_path)
    results = EXPERIMENTS["gate"].run(ctx)
    assert set(results["models"]) == {"digits"} and results["models"]["digits"]["ood"]["blank"]["gate"]["rejected"] == 1.0
    figure, document = tmp_path / "results" / "gate_digits.png", tmp_path / "results.md"
    section = document.read_text()
    assert figure.stat().st_size > 10_000 and "### digits" in section and "gate_digits.png" in section
    assert "at equal false rejections" in section and results["models"]["digits"]["ood"]["blank"]["gate"]["rejected_matched"] == 1.0
    figure.unlink()
    document.unlink()
    assert EXPERIMENTS["gate"].run(ctx, redraw=True) == results
    assert figure.stat().st_size > 10_000 and document.read_text() == section
    args = ["experiment", "gmm1d", "--redraw", "--results-dir", str(tmp_path / "none"), "--document", str(document), "--artifacts-dir", str(tmp_path / "none")]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: --redraw needs the saved results of a full run: {tmp_path / 'none' / 'gmm1d.json'} not found"


def test_moons_experiment_pipeline(tmp_path):
    results = EXPERIMENTS["moons"].run(context(tmp_path, ["data.options.n_train=200", "train.epochs=10"]))
    for arm in ("labeled_only", "labeled_and_unlabeled"):
        accuracy = results["results"][arm]["accuracy"]
        assert len(accuracy["values"]) == 2 and 0 <= accuracy["mean"] <= 1
    assert (tmp_path / "results" / "moons.png").is_file()


def test_labeled_only_drops_unlabeled_rows():
    config = DataConfig(name="moons", labels_per_class=10, unlabeled="drop", options={"n_train": 500})
    splits = split_dataset(load_dataset(config, seed=0), config, seed=0)
    assert len(splits.train) == 20 and splits.train.labeled.all()


def write_flights(folder: Path, rows: int = 600) -> None:
    rng = np.random.default_rng(0)
    tails = [f"N{i:03d}" for i in range(20)]
    lines = ["year,month,day,dep_time,arr_time,arr_delay,tailnum,air_time,distance"]
    for i in range(rows):
        month, day = 1 + i % 12, 1 + i % 28
        delay = "NA" if i % 50 == 0 else str(int(rng.normal(5, 30)))
        lines.append(f"2013,{month},{day},{rng.integers(500, 2300)},{rng.integers(600, 2359)},{delay},{tails[i % 20]},{rng.integers(30, 300)},{rng.integers(100, 2500)}")
    (folder / "flights.csv").write_text("\n".join(lines) + "\n")
    planes = ["tailnum,year"] + [f"{tail},{1990 + i}" for i, tail in enumerate(tails[:-1])]  # one tail without a plane
    (folder / "planes.csv").write_text("\n".join(planes) + "\n")


def test_flights_data_set_reads_and_splits_chronologically(tmp_path):
    write_flights(tmp_path)
    dataset = load_dataset(DataConfig(name="flights", data_dir=tmp_path, options={"path": "."}))
    assert dataset.x.shape[1] == len(FEATURES) and np.isfinite(dataset.x).all()
    assert set(np.unique(dataset.x[:, 0])) <= set(range(1, 11)) and set(np.unique(dataset.test[0][:, 0])) == {11, 12}
    assert "dropped for missing values" in dataset.description
    first = dataset.x[(dataset.x[:, 0] == 1) & (dataset.x[:, 1] == 1)]
    assert (first[:, 2] == 2).all()  # 2013-01-01 was a Tuesday (Monday = 1)
    assert (dataset.x[:, 3] >= 2013 - 2008).all()  # plane age = 2013 - year of manufacture


def test_flights_experiment_pipeline(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_flights(data, rows=1200)
    results = EXPERIMENTS["flights"].run(context(tmp_path, [f"data.data_dir={data}", "data.options.path=.", "data.validation_fraction=0.2", "gate.alpha=0.05"]))
    assert set(results["models"]) == set(results["models_in_distribution"]) == {"b_diglm", "b_diglm_gated", "diglm_gaussian_head", "bayesian_linear_regression", "gradient_boosted_tree", "deep_ensemble"}
    for metrics in results["models"].values():
        assert metrics["rmse"] > 0 and np.isfinite(metrics["nll"])
    assert 0 <= results["covariate_shift"]["auroc_train_vs_test"] <= 1
    assert (tmp_path / "results" / "flights.png").is_file()


def write_fake_mnist(root: Path) -> None:
    """Small IDX files laid out like ../shared/data: mnist/ (train, t10k) and notmnist/ (t10k)."""
    from tests.test_training import write_idx

    rng = np.random.default_rng(0)
    for folder, prefix, count in (("mnist", "train", 200), ("mnist", "t10k", 50), ("notmnist", "t10k", 50)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        images = rng.integers(0, 256, size=(count, 28, 28))
        if folder == "mnist":  # dark background with a bright blob, unlike the noise of notmnist
            images = np.where(rng.random((count, 28, 28)) < 0.8, 0, images)
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, compress=True)


def test_mnist_data_set_needs_its_folder(tmp_path):
    from training.data import DataError

    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(DataConfig(name="mnist"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        load_dataset(DataConfig(name="mnist", data_dir=tmp_path))
    write_fake_mnist(tmp_path)
    dataset = load_dataset(DataConfig(name="mnist", data_dir=tmp_path))
    assert dataset.input_shape == [28, 28] and dataset.levels == 256 and len(dataset.test[0]) == 50


def test_mnist_experiments_pipeline_and_resume(tmp_path):
    data = tmp_path / "data"
    write_fake_mnist(data)
    ctx = context(tmp_path, [f"data.data_dir={data}", "gate.alpha=0.1"])  # 200 training images: a calibration split of 20
    results = EXPERIMENTS["mnist-sweep"].run(ctx)
    assert set(results["models"]) == {"discriminative", "hybrid-0.01", "hybrid-0.1", "hybrid-1", "hybrid-10"}
    for row in results["models"].values():
        assert 0 <= row["ood"]["auroc"] <= 1 and row["notmnist"]["selective_nll"] > 0
    curves = results["confidence_curves"]
    assert f"{results['best_hybrid']}+gate" in curves and len(curves["discriminative"]["mnist"]["kept"]) == len(curves["thresholds"])
    for figure in ("mnist_histograms", "mnist_confidence", "mnist_samples"):
        assert (tmp_path / "results" / f"{figure}.png").is_file()
    before = (tmp_path / "artifacts" / "mnist-hybrid-1" / "manifest.json").stat().st_mtime_ns
    semi = EXPERIMENTS["mnist-semi"].run(ctx)
    assert set(semi["models"]) == {"labels_only", "labels_and_unlabeled", "all_labels"}
    all_labels = tmp_path / "artifacts" / "mnist-cpu-split-prior-logit" / "manifest.json"
    semi_trained = all_labels.stat().st_mtime_ns
    long = EXPERIMENTS["mnist-long"].run(ctx)
    assert (tmp_path / "artifacts" / "mnist-hybrid-1" / "manifest.json").stat().st_mtime_ns == before  # reused, not retrained
    assert all_labels.stat().st_mtime_ns == semi_trained
    assert set(long["models"]) == {"mnist-cpu", "mnist-cpu + split prior", "mnist-cpu + split prior + logit", "mnist-cpu-long"}
    assert long["models"]["mnist-cpu-long"]["schedule"] == "cosine" and "split prior, logit" in long["models"]["mnist-cpu-long"]["architecture"]
    assert "notmnist" in long["gate"]["ood"] and long["models"]["mnist-cpu-long"]["history"]
    for figure in ("mnist_long_curves", "mnist_long_samples", "gate_mnist-long"):
        assert (tmp_path / "results" / f"{figure}.png").is_file()
    text = (tmp_path / "results.md").read_text()
    assert "## MNIST: lambda sweep" in text and "## MNIST semi-supervised" in text and "## MNIST: a longer CPU run" in text
