"""The inference runtime and its typed prediction, the response encoding and the trainer's gate calibration against direct
computations: eq. 10 outputs (the training label frequencies or target moments for rejected inputs)
for classification and regression, units, the outlier convention, null for non-finite values, and
the calibration split's size rules. No HTTP here: ``test_service.py`` covers the routes."""
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.backends import TORCH_CPU_MIN_ROWS
from inference.inputs import InferenceInput
from inference.prediction import ClassOutputs, Prediction, RegressionOutputs
from inference.runtime import ModelRuntime
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.gate import GATE_FILE
from models.manifest import ManifestDraft
from models.hybrid import HybridModel
from models.scores import forward_scores
from service.encoding import instance_records, output_table, output_tensors, v2_output
from tests.agreement import ROUNDING, Movement, assert_answers_agree, assert_same_answers
from training.calibration import differs_only_in_gate, fit_gate, recalibrate, refit_gate, score_names, subsample
from training.cli import main as training_main
from training.config import ConfigError, ExperimentConfig, GateSettings
from training.data import DataError, Split, Splits, load_dataset, split_dataset
from training.ood_sets import builtin_ood_sets

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny config trained for one epoch, with its ONNX export. Under ``make mutation`` the
    unmutated code trains it once (mutmut's first, "stats", run; cwd is mutants/) and every
    mutant's run reuses it: the calibration tests call ``fit_gate`` themselves."""
    mutant = os.environ.get("MUTANT_UNDER_TEST")
    out = Path(".mutation-cache/tiny").resolve() if mutant else tmp_path_factory.mktemp("runtime") / "tiny"
    if mutant and (out / "manifest.json").is_file():
        return out
    if mutant and mutant != "stats":
        out = tmp_path_factory.mktemp("runtime") / "tiny"  # never cache what a mutant trained
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1", "--onnx"]) == 0
    return out


@pytest.fixture
def runtime(tiny) -> ModelRuntime:
    return ModelRuntime.load(tiny, "cpu")


def tiny_splits(manifest) -> Splits:
    config = ExperimentConfig.model_validate(manifest.training.config)
    return split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)


def test_classification_predict_is_the_gate_and_eq_10_with_the_training_label_frequencies(runtime):
    splits = tiny_splits(runtime.manifest)
    counts = np.bincount(splits.train.y, minlength=10)
    np.testing.assert_allclose(runtime.model.label_prior.numpy(), counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(runtime.manifest.label_prior, counts / counts.sum(), rtol=1e-6)
    blank, noise, beyond = np.zeros((1, 8, 8)), np.random.default_rng(0).integers(0, 17, (1, 8, 8)), np.full((1, 8, 8), 17.0)
    x = np.concatenate([splits.test.x[:6], blank, noise, beyond]).astype(np.float32)
    result = runtime.predict(InferenceInput(x)).columns()
    with torch.no_grad():
        scores = {k: v.numpy() for k, v in forward_scores(runtime.model, torch.from_numpy(x), runtime.gate.fitted).items()}
    decision = runtime.gate.decide(scores)
    accepted = result["accepted"]
    np.testing.assert_array_equal(accepted, decision.accepted)
    assert accepted.any() and not accepted.all() and not accepted[-1] and result["rejected_by"][-1] == "support"
    np.testing.assert_array_equal(result["rejected_by"], decision.rejected_by)
    np.testing.assert_array_equal(result["p_value"], decision.p_value)
    np.testing.assert_array_equal(result["instance_score"], decision.instance_score)
    np.testing.assert_allclose(result["log_px"], scores["log_px"], rtol=1e-5)
    assert result["log_px"][-1] == -math.inf
    np.testing.assert_allclose(result["bits_per_dim"][:-1], -scores["log_px"][:-1] / (64 * math.log(2)), rtol=1e-5)
    np.testing.assert_array_equal(result["label"], scores["probabilities"].argmax(axis=1))
    np.testing.assert_allclose(result["model_probabilities"], scores["probabilities"], rtol=1e-5)
    np.testing.assert_allclose(result["probabilities"][accepted], scores["probabilities"][accepted], rtol=1e-5)
    np.testing.assert_allclose(result["probabilities"][~accepted], np.broadcast_to(counts / counts.sum(), (int((~accepted).sum()), 10)), rtol=1e-6)
    for name in runtime.gate.tails:
        np.testing.assert_allclose(result[f"score_{name}"], scores[name], rtol=1e-5)
        np.testing.assert_array_equal(result[f"p_value_{name}"], decision.p_values[name])
    assert set(result) == {spec.name for spec in output_table("classification", 10, runtime.gate_scores)} - {"is_outlier", "threshold"}


def test_runtime_describes_its_checkpoint_and_backend(tiny, runtime):
    manifest = runtime.manifest
    assert (runtime.name, runtime.version, runtime.task) == (manifest.name, manifest.version, "classification")
    assert runtime.input_shape == (8, 8) and runtime.dims == 64 and runtime.gate_scores == list(runtime.gate.tails)
    assert runtime.backend.name == "torch" and runtime.platform == "pytorch_torch"
    assert runtime.input_range == (0.0, 16.0)
    midrange = runtime.midrange_inputs(3).x
    assert midrange.shape == (3, 8, 8) and midrange.dtype == np.float32 and (midrange == 8.0).all()
    assert 0 < runtime.warm_up(2) < 60
    onnx = ModelRuntime.load(tiny, "cpu", "onnx", threads=3)
    assert onnx.backend.name == "onnx" and onnx.platform == "onnxruntime_onnx"
    # threads are row ranges run at once, each session.run on one thread (batch-invariant)
    assert onnx.backend.session.get_session_options().intra_op_num_threads == 1 and onnx.backend.workers == 3
    assert runtime.backend.min_rows == TORCH_CPU_MIN_ROWS  # torch on the CPU: small batches padded onto the large-batch kernels
    assert ModelRuntime.load(tiny, "cpu", "auto").backend.name == "onnx"  # a rule, the same on every replica
    assert runtime.checkpoint_path == tiny
    renamed = ModelRuntime.load(tiny, "cpu", name="digits", version="7")  # served from a repository's folders
    assert (renamed.name, renamed.version, renamed.manifest.version) == ("digits", "7", manifest.version)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_input_gets_the_same_answer_in_any_batch(tiny, backend, threads):
    """docs/gate.md, "Same input, same answer": bit for bit alone, in batches of 3 and 64 and all at
    once, on the tiny data set's own rows (training, reference and calibration rows: scores that
    sit on reference and calibration scores, the hardest case), OOD families and noise. ONNX
    Runtime also across thread counts (one-thread runs over row ranges); torch at each thread
    count (across them its BLAS may split sums differently: not promised)."""
    previous = torch.get_num_threads()
    try:
        runtime = ModelRuntime.load(tiny, "cpu", backend, threads=threads)  # torch's threads are the process's: set here
        digits = load_dataset(ExperimentConfig.model_validate(runtime.manifest.training.config).data).x
        families = builtin_ood_sets(digits[:8], levels=17)
        noise = np.random.default_rng(0).integers(0, 17, (8, 8, 8)).astype(np.float32)
        x = np.concatenate([digits, *families.values(), noise]).astype(np.float32)
        whole = runtime.predict(InferenceInput(x)).columns()
        assert not whole["accepted"][len(digits) :].all()  # the OOD rows include rejections
        for size in (1, 3, 64):
            parts = [runtime.predict(InferenceInput(x[start : start + size])) for start in range(0, len(x), size)]
            assert_same_answers(whole, Prediction.concatenate(parts).columns(), f"in batches of {size}")
        if backend == "onnx":
            other = ModelRuntime.load(tiny, "cpu", "onnx", threads=3 - threads)
            assert_same_answers(whole, other.predict(InferenceInput(x)).columns(), f"on {3 - threads} threads")
    finally:
        torch.set_num_threads(previous)


def test_answers_agree_checks_rounding_and_no_further(runtime):
    """``tests.agreement`` (torch against ONNX Runtime) against the real thing: a p-value, score,
    decision, label or reason changed beyond rounding does not agree."""
    digits = load_dataset(ExperimentConfig.model_validate(runtime.manifest.training.config).data).x
    x = np.concatenate([digits, np.random.default_rng(0).integers(0, 17, (8, 8, 8)).astype(np.float32)])  # noise: clear rejections
    whole = runtime.predict(InferenceInput(x)).columns()
    assert_answers_agree(whole, whole, runtime.gate)
    clear = ~Movement.of(whole, runtime.gate, ROUNDING).anything  # rows whose answers rounding cannot move
    row = int(np.flatnonzero(clear & (whole["p_value"] > 0.3) & (whole["p_value"] < 0.9))[0])
    rejected = int(np.flatnonzero(clear & ~whole["accepted"])[0])
    step = 1 / (len(runtime.gate.statistic) + 1)
    faults = {
        "p_value": lambda answer: answer["p_value"].__setitem__(row, answer["p_value"][row] + step),
        "p_value_log_px": lambda answer: answer["p_value_log_px"].__setitem__(row, answer["p_value_log_px"][row] + 2 * step),
        "log_px": lambda answer: answer["log_px"].__setitem__(row, answer["log_px"][row] + 0.01),
        "latent_distance": lambda answer: answer["score_latent_distance"].__setitem__(row, answer["score_latent_distance"][row] * 1.001),
        "decisions differ": lambda answer: answer["accepted"].__setitem__(row, not answer["accepted"][row]),
        "labels differ": lambda answer: answer["label"].__setitem__(row, (answer["label"][row] + 1) % 10),
        "probabilities": lambda answer: answer["probabilities"].__setitem__(row, answer["probabilities"][row][::-1].copy()),
        "rejected_by": lambda answer: answer["rejected_by"].__setitem__(rejected, "support"),
    }
    for message, fault in faults.items():
        changed = {key: value.copy() for key, value in whole.items()}
        fault(changed)
        with pytest.raises(AssertionError, match=message):
            assert_answers_agree(whole, changed, runtime.gate)


def test_load_sets_threads_on_the_device_and_logs_what_it_loaded(tiny, caplog):
    threads = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="inference.runtime"):
            runtime = ModelRuntime.load(tiny, "cpu", "torch", threads=3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert caplog.messages == [f"loaded tiny version {runtime.version} from {tiny}: torch backend on cpu"]
    assert runtime.device == torch.device("cpu") and next(runtime.model.parameters()).device == torch.device("cpu")


def test_onnx_backend_needs_an_export(tiny, tmp_path):
    loaded = load_checkpoint(tiny)
    plain = tmp_path / "plain"
    save_checkpoint(plain, loaded.model, loaded.manifest.draft().revised(onnx=None), extra_files={GATE_FILE: tiny / GATE_FILE})
    assert ModelRuntime.load(plain, "cpu", "auto").backend.name == "torch"
    with pytest.raises(CheckpointError, match=f"python -m training export --checkpoint {plain}"):
        ModelRuntime.load(plain, "cpu", "onnx")


def regression_problem(rows: int = 240) -> tuple[HybridModel, Splits]:
    """A Bayesian linear head on a RealNVP over 3 standardized features, y = sum(x) + noise."""
    generator = np.random.default_rng(1)
    x = generator.normal(size=(rows, 3)).astype(np.float32)
    y = (x.sum(1) + 0.1 * generator.normal(size=rows)).astype(np.float32)
    config = ModelConfig(input_shape=[3], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=2, hidden=8), head=HeadConfig(kind="bayesian"))
    model = HybridModel(config)
    model.preprocessing.fit(torch.from_numpy(x))
    model.train()
    model.loss(torch.from_numpy(x), torch.from_numpy(y), None, 1.0)  # actnorm init, posterior from the batch
    model.eval()
    model.target_moments.copy_(torch.tensor([5.0, 9.0]))
    part = rows // 4
    return model, Splits(*(Split(x[i * part : (i + 1) * part], y[i * part : (i + 1) * part]) for i in range(3)), calibration=Split(x[3 * part :], y[3 * part :]))


def test_regression_predict_falls_back_to_the_target_moments_when_rejected(tmp_path):
    model, splits = regression_problem()
    gate = fit_gate(model, splits, GateSettings(alpha=0.05))
    assert gate.summary.fitted.latent_space == "all" and gate.summary.fitted.latent_dims == 3 and gate.summary.fitted.latent_classes == 1
    assert gate.combine == "min" and gate.weights is None  # no images to draw synthetic outliers like
    gate.save(tmp_path / GATE_FILE)
    manifest = ManifestDraft(name="sums", task="regression", input_shape=[3], preprocessing=model.config.preprocessing, gate=gate.summary, target_moments=[5.0, 9.0])
    save_checkpoint(tmp_path / "sums", model, manifest, extra_files={GATE_FILE: tmp_path / GATE_FILE})
    runtime = ModelRuntime.load(tmp_path / "sums", "cpu")
    x = np.concatenate([splits.test.x[:5], np.full((2, 3), 40.0, dtype=np.float32)])
    result = runtime.predict(InferenceInput(x)).columns()
    accepted = result["accepted"]
    assert accepted[:5].sum() >= 3 and not accepted[5:].any()
    with torch.no_grad():
        head = model.head.predict(model(torch.from_numpy(x)).z)
    np.testing.assert_allclose(result["model_mean"], head["mean"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["model_variance"], head["variance"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(result["mean"][accepted], head["mean"].numpy()[accepted], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result["mean"][~accepted], 5.0)
    np.testing.assert_array_equal(result["variance"][~accepted], 9.0)
    np.testing.assert_allclose(result["variance"][accepted], head["variance"].numpy()[accepted], rtol=1e-5)
    assert "label" not in result and [s.name for s in output_table("regression", None, runtime.gate_scores)][:4] == ["mean", "variance", "model_mean", "model_variance"]
    assert runtime.midrange_inputs(1).x.tolist() == [[0.5, 0.5, 0.5]]  # no levels: the middle of [0, 1]


def test_the_weighted_combination_needs_images_to_draw_its_outliers_from():
    model, splits = regression_problem()
    with pytest.raises(ConfigError, match="weighted.*use min"):
        fit_gate(model, splits, GateSettings(alpha=0.05, combine="weighted"))


def test_fit_gate_needs_a_calibration_split_big_enough_for_alpha():
    model, splits = regression_problem()
    calibration = splits.calibration
    exactly = Splits(splits.train, splits.validation, splits.test, Split(calibration.x[:20], calibration.y[:20]))
    gate = fit_gate(model, exactly, GateSettings(alpha=0.05))  # 1 / (20 + 1) < 0.05
    assert gate.summary.calibration_size == 20 and gate.summary.reference_size == len(splits.validation)
    np.testing.assert_array_equal(np.sort(gate.calibration["log_px"]), gate.calibration["log_px"])
    short = Splits(splits.train, splits.validation, splits.test, Split(calibration.x[:19], calibration.y[:19]))
    with pytest.raises(DataError, match="at least 20 rows to reject at alpha 0.05, this data gives 19"):
        fit_gate(model, short, GateSettings(alpha=0.05))
    assert fit_gate(model, short, GateSettings(method="validation", alpha=0.05)).method == "validation"  # tau gates need 2 rows
    with pytest.raises(DataError, match="gives 0"):
        fit_gate(model, Splits(splits.train, splits.validation, splits.test), GateSettings(method="validation"))
    with pytest.raises(DataError, match="gives 1"):
        fit_gate(model, Splits(splits.train, splits.validation, splits.test, Split(calibration.x[:1], calibration.y[:1])), GateSettings(method="min_train"))
    with pytest.raises(ConfigError, match="'head' needs a classification model"):
        fit_gate(model, splits, GateSettings(alpha=0.05, latent_space="head"))
    with pytest.raises(ConfigError, match="gate.scores"):
        fit_gate(model, splits, GateSettings(alpha=0.05, scores={"no_such_score": "upper"}))


def test_fit_gate_for_a_classifier_uses_the_head_space_and_labelled_rows(runtime):
    splits = tiny_splits(runtime.manifest)
    gate = fit_gate(runtime.model, splits, GateSettings(alpha=0.05))
    assert gate.summary.fitted.latent_space == "head" and gate.summary.fitted.latent_classes == 10
    assert gate.summary.fitted.latent_dims == 10 and gate.summary.fitted.neighbour_scale > 0
    assert gate.summary.calibration_size == len(splits.calibration) and gate.summary.reference_size == len(splits.validation)
    # fitted again here, maybe with another thread count than at training: the same up to rounding
    torch.testing.assert_close(gate.fitted.latent.means, runtime.gate.fitted.latent.means, rtol=ROUNDING.rtol, atol=1e-5)
    assert {"latent_distance", "likelihood_ratio", "complexity"} <= set(gate.tails)  # the calibration scores use the fitted parts
    pca = fit_gate(runtime.model, splits, GateSettings(alpha=0.05, latent_space="pca", latent_dims=2))
    assert pca.summary.fitted.latent_space == "pca" and pca.summary.fitted.latent_dims == 2
    two = Splits(splits.train, splits.validation, splits.test, Split(splits.calibration.x[:2], splits.calibration.y[:2]))
    assert fit_gate(runtime.model, two, GateSettings(method="validation", alpha=0.05)).summary.calibration_size == 2


def test_score_names_subsample_and_what_counts_as_a_gate_only_change():
    outputs = {"z": np.zeros((4, 2)), "log_px": np.zeros(4), "mean": np.zeros(4), "variance": np.zeros(4), "log_px_dequantized": np.zeros(4), "level_1": np.zeros(4), "probabilities": np.zeros((4, 3))}
    assert score_names(outputs) == ["log_px", "level_1"]
    split = Split(np.arange(50.0)[:, None], np.arange(50), np.arange(50) % 2 == 0)
    assert subsample(split, 50, 0) is split
    np.testing.assert_array_equal(subsample(split, 10, 3).labeled, subsample(split, 10, 3).y % 2 == 0)
    small = subsample(split, 10, 3)
    assert len(small) == 10 and len(set(small.y)) == 10 and (np.diff(small.y) > 0).all()
    np.testing.assert_array_equal(small.x[:, 0], small.y)
    np.testing.assert_array_equal(subsample(split, 10, 3).y, small.y)
    assert not np.array_equal(subsample(split, 10, 4).y, small.y)
    trained = ExperimentConfig(name="a")
    assert differs_only_in_gate(trained, ExperimentConfig.model_validate({"name": "a", "gate": {"alpha": 0.2}, "evaluation": {"batch_size": 8}}))
    assert not differs_only_in_gate(trained, ExperimentConfig.model_validate({"name": "a", "train": {"epochs": 2}}))


def test_recalibrate_changes_only_the_gate(tiny, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny, copy)
    before = load_checkpoint(copy)
    with pytest.raises(ConfigError, match="only gate.\\* and evaluation.\\* settings, not 'train.epochs=3'"):
        recalibrate(before, ["train.epochs=3"])
    with pytest.raises(ConfigError, match="gate.alpha"):
        recalibrate(before, ["gate.alpha=2"])
    written = recalibrate(before, ["gate.alpha=0.1", "evaluation.batch_size=64"])
    after = load_checkpoint(copy)
    splits = tiny_splits(before.manifest)  # the very calibration split it was trained beside
    from training.evaluate import model_outputs

    expected = model_outputs(after.model, splits.calibration.x, fitted=after.gate.fitted)["log_px"]
    # recalibrated in batches of 64, computed here in one batch of 72: the same up to rounding
    np.testing.assert_allclose(after.gate.calibration["log_px"], np.sort(expected), rtol=ROUNDING.rtol, atol=ROUNDING.atol)
    assert "optimizer.safetensors" in after.manifest.files
    other = ExperimentConfig.model_validate({**before.manifest.training.config, "train": {**before.manifest.training.config["train"], "epochs": 9}})
    with pytest.raises(ConfigError, match="was trained with another data or model config"):
        refit_gate(after, other)
    assert written.gate.alpha == after.manifest.gate.alpha == 0.1 and after.gate.alpha == 0.1
    assert after.manifest.training.config["evaluation"]["batch_size"] == 64
    assert after.manifest.files["weights.safetensors"] == before.manifest.files["weights.safetensors"]
    assert after.manifest.onnx is not None and after.manifest.files["model.onnx"]
    assert set(after.manifest.metrics) == {"train", "validation", "calibration", "test"}


def encoded_result() -> Prediction:
    return Prediction(
        head=ClassOutputs(np.array([3, 1]), np.array([[0.2, 0.8], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.9, 0.1]])),
        log_px=np.array([-10.0, -np.inf]), bits_per_dim=np.array([1.5, np.inf]), accepted=np.array([True, False]),
        p_value=np.array([0.4, 0.001]), rejected_by=np.array([None, "support"], dtype=object), instance_score=np.array([0.4, np.inf]),
        scores={"log_px": np.array([-10.0, -np.inf])}, p_values={"log_px": np.array([0.4, 0.001])},
    )


def test_a_prediction_splits_into_parts_that_concatenate_back():
    whole = replace(encoded_result(), scores={"log_px": np.array([-10.0, -np.inf]), "other": np.array([1.0, 2.0])})
    first, second = whole.split([1, 1])
    assert len(first) == len(second) == 1 and first.head.label.tolist() == [3] and second.scores["other"].tolist() == [2.0]
    assert second.head.probabilities.tolist() == [[0.5, 0.5]] and second.rejected_by.tolist() == ["support"]
    again = Prediction.concatenate([first, second]).columns()
    assert list(again) == list(whole.columns())
    for name, values in whole.columns().items():
        np.testing.assert_array_equal(again[name], values)
    assert [len(part) for part in whole.split([0, 2])] == [0, 2]


def test_v1_records_turn_non_finite_values_into_null_and_follow_the_outlier_convention():
    first, second = instance_records(encoded_result(), 2.0)
    assert first == {
        "label": 3, "probabilities": [0.2, 0.8], "model_probabilities": [0.2, 0.8], "log_px": -10.0, "bits_per_dim": 1.5, "accepted": True,
        "p_value": 0.4, "rejected_by": None, "scores": {"log_px": -10.0}, "p_values": {"log_px": 0.4},
        "outlier": {"is_outlier": False, "instance_score": 0.4, "threshold": 2.0},
    }
    assert second["log_px"] is None and second["bits_per_dim"] is None and second["scores"] == {"log_px": None}
    assert second["outlier"] == {"is_outlier": True, "instance_score": None, "threshold": 2.0} and second["rejected_by"] == "support"
    regression = replace(encoded_result(), head=RegressionOutputs(np.array([1.0, 5.0]), np.array([0.1, 9.0]), np.array([1.0, 2.0]), np.array([0.1, 0.2])))
    records = instance_records(regression, 2.0)
    assert [(r["mean"], r["variance"], r["model_mean"], r["model_variance"]) for r in records] == [(1.0, 0.1, 1.0, 0.1), (5.0, 9.0, 2.0, 0.2)]


def test_v2_tensors_match_the_output_table():
    common = [
        ("log_px", "FP64", (-1,)), ("bits_per_dim", "FP64", (-1,)), ("accepted", "BOOL", (-1,)), ("p_value", "FP64", (-1,)),
        ("rejected_by", "BYTES", (-1,)), ("is_outlier", "BOOL", (-1,)), ("instance_score", "FP64", (-1,)), ("threshold", "FP64", (-1,)),
    ]
    evidence = [("score_a", "FP64", (-1,)), ("p_value_a", "FP64", (-1,)), ("score_b", "FP64", (-1,)), ("p_value_b", "FP64", (-1,))]
    head = [("label", "INT64", (-1,)), ("probabilities", "FP64", (-1, 3)), ("model_probabilities", "FP64", (-1, 3))]
    assert [(s.name, s.datatype, s.shape) for s in output_table("classification", 3, ["a", "b"])] == head + common + evidence
    regression = [(name, "FP64", (-1,)) for name in ("mean", "variance", "model_mean", "model_variance")]
    assert [(s.name, s.datatype, s.shape) for s in output_table("regression", None, ["a", "b"])] == regression + common + evidence
    table = output_table("classification", 2, ["log_px"])
    tensors = output_tensors(encoded_result(), 2.0)
    assert set(tensors) == {spec.name for spec in table}
    np.testing.assert_array_equal(tensors["threshold"], [2.0, 2.0])
    np.testing.assert_array_equal(tensors["is_outlier"], [False, True])
    encoded = {spec.name: v2_output(spec, tensors[spec.name]) for spec in table}
    assert encoded["label"] == {"name": "label", "shape": [2], "datatype": "INT64", "data": [3, 1]}
    assert encoded["probabilities"] == {"name": "probabilities", "shape": [2, 2], "datatype": "FP64", "data": [0.2, 0.8, 0.5, 0.5]}
    assert encoded["log_px"]["data"] == [-10.0, None] and encoded["instance_score"]["data"] == [0.4, None]
    assert encoded["rejected_by"] == {"name": "rejected_by", "shape": [2], "datatype": "BYTES", "data": ["", "support"]}
    assert encoded["accepted"]["data"] == [True, False] and encoded["is_outlier"]["data"] == [False, True]
