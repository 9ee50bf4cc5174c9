"""Configs, data files and splits, and the training pipeline end to end on the tiny config."""
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from training.cli import main
from training.config import ConfigError, DataConfig, load_config
from training.data import DataError, load_dataset, split_dataset
from training.data.files import read_idx, read_images
from training.evaluate import detection_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4))
    path = tmp_path / ("images.idx.gz" if compress else "images.idx")
    write_idx(path, images, compress)
    np.testing.assert_array_equal(read_idx(path), images)
    np.testing.assert_array_equal(read_images(path), images.astype(np.float32))


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk.idx")
    with pytest.raises(DataError, match="not found"):
        read_images(tmp_path / "missing.npz")


def test_images_data_set_needs_its_data_dir(tmp_path):
    config = DataConfig(name="images", options={"images": "train.idx", "labels": "labels.idx"})
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(config)
    write_idx(tmp_path / "train.idx", np.zeros((20, 4, 4)), compress=False)
    write_idx(tmp_path / "labels.idx", np.arange(20) % 2, compress=False)
    dataset = load_dataset(config.model_copy(update={"data_dir": tmp_path}))
    assert dataset.input_shape == [4, 4] and dataset.levels == 256 and dataset.classes == ["0", "1"]


def test_table_data_set_reads_named_columns(tmp_path):
    rows = np.random.default_rng(0).normal(size=(50, 3))
    path = tmp_path / "table.csv"
    np.savetxt(path, rows, delimiter=",", header="a,b,delay", comments="")
    dataset = load_dataset(DataConfig(name="table", data_dir=tmp_path, options={"path": "table.csv", "features": ["a", "b"], "target": "delay"}))
    np.testing.assert_allclose(dataset.x, rows[:, :2].astype(np.float32))
    assert dataset.task == "regression"


def test_split_is_stratified_seeded_and_semi_supervised():
    config = DataConfig(name="digits", labels_per_class=5)
    dataset = load_dataset(config)
    first, second = split_dataset(dataset, config, seed=3), split_dataset(dataset, config, seed=3)
    np.testing.assert_array_equal(first.test.x, second.test.x)
    assert len(first.train) + len(first.validation) + len(first.calibration) + len(first.test) == len(dataset.x)
    everything = np.concatenate([first.train.x, first.validation.x, first.calibration.x, first.test.x]).reshape(len(dataset.x), -1)
    assert len(np.unique(everything, axis=0)) == len(np.unique(dataset.x.reshape(len(dataset.x), -1), axis=0))  # disjoint
    assert len(first.calibration) == round(0.1 * (len(dataset.x) - len(first.test)))
    assert np.abs(np.bincount(first.test.y) - len(first.test) / 10).max() <= 2
    labeled_per_class = np.bincount(first.train.y[first.train.labeled], minlength=10)
    assert (labeled_per_class == 5).all()


def test_unknown_data_set_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_dataset(DataConfig(name="nope"))


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match="model.flow.hiden"):
        load_config(CONFIGS / "tiny.yaml", ["model.flow.hiden=3"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(CONFIGS / "tiny.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS / "tiny.yaml", ["train.epochs"])
    assert load_config(CONFIGS / "tiny.yaml", ["model.flow.hidden=12"]).model.flow.hidden == 12


def test_shipped_configs_are_valid():
    for path in CONFIGS.glob("*.yaml"):
        load_config(path)


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: config file") and "\n" not in error
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=4"]) == 0
    return out


def test_tiny_run_writes_a_complete_manifest(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    manifest = loaded.manifest
    assert manifest.name == "tiny" and manifest.task == "classification" and manifest.input_shape == [8, 8]
    assert manifest.preprocessing.levels == 17
    gate = manifest.gate
    assert gate.method == "conformal" and gate.alpha == 0.05 and gate.tau == gate.validation.tau
    assert gate.combine == "max_sum" and list(gate.weights) == list(gate.scores)  # the default for images
    assert all(0 <= weight <= 1 for weight in gate.weights.values())
    assert gate.calibration_size == manifest.data.sizes["calibration"] == 72
    assert set(gate.scores) == {"log_px", "level_1", "level_2", "likelihood_ratio", "complexity", "max_probability", "latent_distance", "neighbour_distance"}
    assert gate.fitted.neighbour_k == 1 and gate.fitted.neighbour_reference == manifest.data.sizes["train"] and gate.fitted.neighbour_dims is None
    assert gate.min_train.tau == gate.statistics["train"].min
    assert abs(sum(manifest.label_prior) - 1) < 1e-6
    test = manifest.metrics["test"]
    assert 0 <= test["error"] <= 1 and 0 <= test["accepted"] <= 1 and test["bits_per_dim"] > 0
    assert manifest.training.epochs_completed == 4


def test_tiny_evaluation_rejects_noise_more_than_digits(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--ood", "uniform-noise", "--ood", "inverted"]) == 0
    report = json.loads(out.read_text())
    assert "AUROC" in capsys.readouterr().out and out.with_suffix(".png").is_file()
    accepted_test = report["test"]["accepted"]
    for name in ("uniform-noise", "inverted"):
        assert 1 - report["ood"][name]["gate"]["rejected"] < accepted_test
        assert 0 <= report["ood"][name]["gate"]["auroc"] <= 1
        assert set(report["ood"][name]["scores"]) == set(report["gate"]["scores"])
    rejections = report["gate"]["false_rejection"]
    assert rejections["count"] == report["test"]["count"] and rejections["interval_95"][0] <= rejections["rate"] <= rejections["interval_95"][1]



@pytest.mark.parametrize("seed", range(5))
def test_rejected_matched_is_the_most_an_outlier_threshold_rejects_within_alpha_of_the_inliers(seed):
    """Against a brute force over every threshold: the largest share of the outliers strictly below
    a threshold that puts at most alpha of the inliers below it (ties among the integers included)."""
    rng = np.random.default_rng(seed)
    inliers, outliers, alpha = rng.integers(0, 40, size=200), rng.integers(-10, 30, size=70), 0.05
    thresholds = np.unique(np.concatenate([inliers, outliers, [inliers.max() + 1]]))
    brute = max(np.mean(outliers < t) for t in thresholds if np.mean(inliers < t) <= alpha)
    assert detection_metrics(inliers, outliers, alpha)["rejected_matched"] == pytest.approx(brute)
    assert "rejected_matched" not in detection_metrics(inliers, outliers)

def test_resume_continues_epochs_optimizer_and_schedule(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "resumed"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--resume", str(tiny_checkpoint), "--set", "train.epochs=1"]) == 0
    before, after = load_checkpoint(tiny_checkpoint).manifest, load_checkpoint(out).manifest
    assert after.training.epochs_completed == 5
    steps_per_epoch = before.training.optimizer.scheduler_last_epoch // 4
    assert after.training.optimizer.scheduler_last_epoch == 5 * steps_per_epoch
    old_steps = load_file(tiny_checkpoint / "optimizer.safetensors")["state.0.step"]
    new_steps = load_file(out / "optimizer.safetensors")["state.0.step"]
    assert float(new_steps) == float(old_steps) + steps_per_epoch


def test_calibrate_refits_the_gate_and_keeps_the_weights(tiny_checkpoint, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, copy)
    before = load_checkpoint(copy)
    assert main(["calibrate", "--checkpoint", str(copy), "--set", "gate.combine=fisher", "--set", "gate.alpha=0.1", "--set", "gate.scores={log_px: lower, complexity: both}"]) == 0
    after = load_checkpoint(copy)
    assert after.manifest.files["weights.safetensors"] == before.manifest.files["weights.safetensors"]
    assert after.manifest.version != before.manifest.version  # a new gate is a new model version
    assert after.gate.combine == "fisher" and after.gate.alpha == 0.1 and after.gate.tails == {"log_px": "lower", "complexity": "both"}
    assert after.manifest.training.config["gate"]["alpha"] == 0.1 and "wrote" in capsys.readouterr().out
    assert main(["calibrate", "--checkpoint", str(copy), "--set", "gate.combine=weighted"]) == 0
    weighted = load_checkpoint(copy)
    weights = weighted.manifest.gate.weights
    assert weighted.gate.combine == "weighted" and list(weights) == list(weighted.gate.tails) and max(weights.values()) == 1
    assert min(weights.values()) >= 0.25 and weighted.manifest.files["weights.safetensors"] == before.manifest.files["weights.safetensors"]
    assert main(["calibrate", "--checkpoint", str(copy), "--set", "train.epochs=9"]) == 2
    assert "only gate.* and evaluation.*" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(copy), "--set", "gate.scores={entropy: upper}"]) == 2
    assert "not computed for this model" in capsys.readouterr().err


def test_a_failed_export_after_training_leaves_a_servable_checkpoint(tmp_path, monkeypatch, capsys):
    from training.export import ExportError

    def disagree(loaded):
        raise ExportError("ONNX Runtime and torch disagree on log_px by 0.5 (limit 0.1)")

    monkeypatch.setattr("training.export.export_checkpoint", disagree)
    out = tmp_path / "tiny"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1", "--onnx"]) == 0
    err = capsys.readouterr().err
    assert "warning: ONNX Runtime and torch disagree" in err and "--backend torch" in err
    assert "onnx" not in load_checkpoint(out).manifest


def test_export_parity_counts_equal_infinities_as_equal(tmp_path):
    from training.export import export_checkpoint, parity

    out = tmp_path / "tiny"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1", "--onnx"]) == 0
    loaded = load_checkpoint(out)
    outside = np.full((2, 8, 8), 40.0, dtype=np.float32)  # beyond the 17 levels: log p(x) = -inf in both runtimes
    differences = parity(loaded.model, loaded.gate.fitted, out / "model.onnx", outside)
    assert differences["log_px"] == 0.0 and differences["log_px_magnitude"] == 0.0
    assert export_checkpoint(loaded).parity_max_abs_difference["log_px"] < 1e-2


def test_a_glow_with_split_priors_trains_and_exports(tmp_path):
    out = tmp_path / "split-prior"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1", "--set", "model.flow.split_prior=true", "--onnx"]) == 0
    loaded = load_checkpoint(out)
    assert loaded.manifest.onnx is not None  # the export's parity check against torch passed
    prior = loaded.model.flow.split_priors[0].net.weight
    assert prior.abs().sum() > 0  # trained away from its zero (identity) start
    x = torch.from_numpy(load_dataset(load_config(CONFIGS / "tiny.yaml").data).x[:4])
    z = loaded.model(x).z
    torch.testing.assert_close(loaded.model.decode(z), x, atol=1e-3, rtol=0)


def test_the_trainer_fits_the_model_it_is_given():
    from models.hybrid import HybridModel
    from training.trainer import Trainer, complete_model_config

    config = load_config(CONFIGS / "tiny.yaml", ["train.epochs=1"])
    dataset = load_dataset(config.data)
    splits = split_dataset(dataset, config.data, config.seed)
    model = HybridModel(complete_model_config(config.model, dataset))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = Trainer(config, progress=False).fit(model, splits)
    assert record.epochs_completed == 1 and record.bad_steps == 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_noise_is_uniform_dequantization_and_none_for_continuous_data():
    from models.hybrid import HybridModel
    from training.trainer import Trainer, complete_model_config

    config = load_config(CONFIGS / "tiny.yaml")
    trainer = Trainer(config, progress=False)
    model = HybridModel(complete_model_config(config.model, load_dataset(config.data)))
    x = torch.zeros(4000, 8, 8)
    noise = trainer._noise(model, x, torch.Generator().manual_seed(0))
    assert noise.shape == x.shape and 0 <= float(noise.min()) and float(noise.max()) < 1
    assert abs(float(noise.mean()) - 0.5) < 0.01 and abs(float(noise.std()) - (1 / 12) ** 0.5) < 0.01
    assert not torch.equal(noise, trainer._noise(model, x, torch.Generator().manual_seed(1)))
    moons = load_config(CONFIGS / "moons.yaml")
    continuous = HybridModel(complete_model_config(moons.model, load_dataset(moons.data)))
    assert Trainer(moons, progress=False)._noise(continuous, torch.zeros(3, 2), torch.Generator()) is None


def test_sign_cli_and_a_service_that_requires_the_signature(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from models.checkpoint import CheckpointError
    from inference.runtime import ModelRuntime
    from service.settings import ServiceSettings

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, copy)
    key = tmp_path / "key"
    assert main(["sign", "--checkpoint", str(copy), "--key-file", str(key)]) == 2
    assert "no such file, or it is empty" in capsys.readouterr().err
    key.write_text("s3cret\n")
    settings = ServiceSettings(model_dir=copy, device="cpu", signing_key_file=key)
    with pytest.raises(CheckpointError, match="not signed with the configured key"):
        ModelRuntime.load(copy, "cpu", signing_key=settings.signing_key())
    assert main(["sign", "--checkpoint", str(copy), "--key-file", str(key)]) == 0
    assert f"DIGLM_SIGNING_KEY_FILE={key}" in capsys.readouterr().out
    assert ModelRuntime.load(copy, "cpu", signing_key=settings.signing_key()).version == load_checkpoint(tiny_checkpoint).manifest.version


def test_threads_flag_sets_torch_threads_and_refuses_zero(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "t"), "--quiet", "--set", "train.epochs=1", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "t"), "--threads", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_mixed_batches_hold_a_fixed_labeled_share_and_pass_over_the_unlabeled_rows_once():
    from training.data import Split
    from training.trainer import _mixed_batches, mixed_steps

    rng = np.random.default_rng(0)
    labeled = np.zeros(103, dtype=bool)
    labeled[rng.choice(103, 7, replace=False)] = True
    split = Split(x=np.arange(103, dtype=np.float32)[:, None], y=np.zeros(103, dtype=np.int64), labeled=labeled)
    batches = list(_mixed_batches(split, 16, 0.25, torch.Generator().manual_seed(0)))
    assert len(batches) == mixed_steps(split, 16, 0.25) == 8  # 96 unlabeled rows, 12 per batch
    rows = [int(v) for x, _, _ in batches for v in x[:, 0]]
    marks = [bool(v) for _, _, m in batches for v in m]
    assert all(int(m.sum()) == 4 for _, _, m in batches)
    assert all(labeled[r] == mark for r, mark in zip(rows, marks))
    unlabeled_seen = [r for r, mark in zip(rows, marks) if not mark]
    assert sorted(unlabeled_seen) == list(np.flatnonzero(~labeled))  # each unlabeled row exactly once
    labeled_seen = [r for r, mark in zip(rows, marks) if mark]
    counts = np.bincount(labeled_seen, minlength=103)[labeled]
    assert counts.max() - counts.min() <= 1  # labeled rows cycle through whole passes


def test_learning_rate_warms_up_then_stays_or_follows_a_cosine_to_zero():
    from training.trainer import learning_rate_factor

    warm = [learning_rate_factor(10, 110, "cosine", step) for step in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert [learning_rate_factor(10, 110, "constant", s) for s in (10, 60, 500)] == [1.0, 1.0, 1.0]
    assert learning_rate_factor(10, 110, "cosine", 10) == pytest.approx(1.0)
    assert learning_rate_factor(10, 110, "cosine", 60) == pytest.approx(0.5)  # half way: cos(pi/2)
    assert learning_rate_factor(10, 110, "cosine", 85) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.75)))
    assert learning_rate_factor(10, 110, "cosine", 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_factor(10, 110, "cosine", 200) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0


def test_a_cosine_run_ends_near_a_zero_learning_rate(tmp_path):
    out = tmp_path / "cosine"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.schedule=cosine", "--set", "train.patience=null"]) == 0
    groups = load_checkpoint(out).manifest.training.optimizer.param_groups
    assert groups[0]["lr"] < 0.01 * groups[0]["initial_lr"]


def test_default_threads_leave_out_the_cpus_other_processes_keep_busy(monkeypatch, tmp_path):
    from training import cli

    before = torch.get_num_threads()
    monkeypatch.setattr(cli, "usable_cpus", lambda: 4)
    try:
        for busy, expected in ((0.1, 4), (2.2, 2), (3.9, 1)):
            monkeypatch.setattr(cli, "cpus_busy_elsewhere", lambda busy=busy: busy)
            cli._set_threads(None)
            assert torch.get_num_threads() == expected
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes share the CPUs without a measurement
        cli._set_threads(None)
        assert torch.get_num_threads() == 2
        cli._set_threads(3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert 0 <= cli.cpus_busy_elsewhere(0.05) <= (os.cpu_count() or 1)
