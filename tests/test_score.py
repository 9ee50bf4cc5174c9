"""Offline batch scoring (``python -m training score``): every input kind gives the service's answers
for every row (the runtime called directly), Ray Data and the local loop write the same table, and
bad inputs are one-line errors that leave no output behind."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference.inputs import InferenceInput
from inference.runtime import ModelRuntime
from tests.agreement import assert_answers_agree, assert_same_answers, held_out_digits
from tests.conftest import run_without
from training.cli import main as training_main

TINY = str(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml")
KEY = ["source", "row", "id"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("score") / "tiny"
    assert training_main(["train", "--config", TINY, "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The same 40 held-out digits (no score on a calibration score) as an NPZ, a CSV (with id and
    label) and a Parquet file (one list column x)."""
    folder = tmp_path_factory.mktemp("inputs")
    x, y = held_out_digits(40)
    np.savez(folder / "digits.npz", x=x)
    table = pd.DataFrame(x.reshape(40, -1), columns=[f"pixel{i}" for i in range(64)])
    table.insert(0, "id", [f"d{i}" for i in range(40)])
    table["label"] = y
    table.to_csv(folder / "digits.csv", index=False)
    pd.DataFrame({"id": [f"d{i}" for i in range(40)], "x": list(x.reshape(40, -1))}).to_parquet(folder / "digits.parquet")
    return folder, x


def score(checkpoint: Path, pattern: str, out: Path, *options: str) -> pd.DataFrame:
    assert training_main(["score", "--checkpoint", str(checkpoint), "--input", pattern, "--output", str(out), "--quiet", *options]) == 0
    return pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)


def as_prediction(table: pd.DataFrame, classes: int) -> dict[str, np.ndarray]:
    """Score-table rows in ``ModelRuntime.predict``'s names."""
    answer = {name: table[name].to_numpy() for name in table.columns if name.startswith(("score_", "p_value")) or name in ("log_px", "accepted")}
    answer["rejected_by"] = np.array([reason or None for reason in table["rejected_by"]], dtype=object)
    answer["label"] = table["prediction"].to_numpy()
    answer["probabilities"] = table[[f"probability_{k}" for k in range(classes)]].to_numpy()
    answer["model_probabilities"] = table[[f"model_probability_{k}" for k in range(classes)]].to_numpy()
    return answer


def test_every_input_kind_gets_the_service_answers(checkpoint, inputs, tmp_path):
    """Batches of 16 against the whole set at once: the same answers (docs/gate.md, "Same input, same answer")."""
    folder, x = inputs
    table = score(checkpoint, str(folder / "digits.*"), tmp_path / "out", "--engine", "local", "--batch-size", "16")
    assert len(table) == 120 and sorted(table["source"].map(lambda s: Path(s).suffix).unique()) == [".csv", ".npz", ".parquet"]
    runtime = ModelRuntime.load(checkpoint, "cpu", "torch")
    expected = runtime.predict(InferenceInput(x)).columns()
    for suffix in (".csv", ".npz", ".parquet"):
        part = table[table["source"].str.endswith(suffix)]
        order = np.argsort(part["row"].to_numpy()) if suffix == ".npz" else np.argsort(part["id"].str[1:].astype(int).to_numpy())
        assert_same_answers(expected, as_prediction(part.iloc[order], 10), suffix)
    csv = table[table["source"].str.endswith(".csv")]
    assert set(csv["id"]) == {f"d{i}" for i in range(40)} and csv["label"].notna().all() and (csv["row"] == -1).all()
    assert table[table["source"].str.endswith(".npz")]["label"].isna().all()


def test_ray_data_writes_the_same_table_as_the_local_loop(checkpoint, inputs, tmp_path):
    """Ray's actors (batches of 16, other processes) against the local loop (one batch per file):
    the same rows and columns, and the same answers up to rounding: the actors run torch on one
    thread each, the loop on the usable CPUs minus one, and torch promises no bits across thread
    counts (docs/gate.md, "Same input, same answer")."""
    pytest.importorskip("ray")
    folder, _ = inputs
    pattern = str(folder / "digits.*")
    local = score(checkpoint, pattern, tmp_path / "local", "--engine", "local")
    distributed = score(checkpoint, pattern, tmp_path / "ray", "--engine", "ray", "--actors", "2", "--batch-size", "16", "--backend", "torch")
    assert list(distributed.columns) == list(local.columns)
    pd.testing.assert_frame_equal(distributed[KEY + ["label"]], local[KEY + ["label"]])
    assert_answers_agree(as_prediction(local, 10), as_prediction(distributed, 10), ModelRuntime.load(checkpoint, "cpu", "torch").gate)


def test_bad_inputs_are_one_line_errors_and_leave_no_output(checkpoint, inputs, tmp_path, capsys):
    folder, _ = inputs
    np.savez(tmp_path / "small.npz", x=np.zeros((3, 7, 7)))
    pd.DataFrame(np.zeros((3, 5))).to_csv(tmp_path / "narrow.csv", index=False)
    (tmp_path / "notes.txt").write_text("not data")
    words = pd.DataFrame(np.zeros((3, 64)), columns=[f"p{i}" for i in range(64)])
    words["p5"] = "dark"
    words.to_csv(tmp_path / "words.csv", index=False)
    cases = {
        str(tmp_path / "small.npz"): "holds images of 49 values; the model takes 64",
        str(tmp_path / "narrow.csv"): "has 5 feature columns; the model takes 64",
        str(tmp_path / "notes.txt"): "inputs are IDX",
        str(tmp_path / "none-*.csv"): "no input files match",
        str(tmp_path / "words.csv"): "column 'p5' is not numeric",
    }
    for pattern, message in cases.items():
        out = tmp_path / "out"
        assert training_main(["score", "--checkpoint", str(checkpoint), "--input", pattern, "--output", str(out), "--engine", "local", "--quiet"]) == 2
        assert message in capsys.readouterr().err, pattern
        assert not out.exists() and not (tmp_path / ".out.partial").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert training_main(["score", "--checkpoint", str(checkpoint), "--input", str(folder / "digits.npz"), "--output", str(existing), "--engine", "local"]) == 2
    assert "never overwrites" in capsys.readouterr().err


def test_scoring_needs_nothing_of_the_web_service(checkpoint, inputs, tmp_path):
    """The score extra is enough: a process where the service and its web stack cannot be imported
    still scores a file with the local engine."""
    blocked = ["service", "fastapi", "starlette", "uvicorn", "orjson", "prometheus_client", "pydantic_settings"]
    arguments = ["score", "--checkpoint", str(checkpoint), "--input", str(inputs[0] / "digits.npz"), "--output", str(tmp_path / "out"), "--engine", "local", "--quiet"]
    result = run_without(blocked, f"from training.cli import main\nsys.exit(main({arguments!r}))\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "out")) == 40
