"""The service: every endpoint, both protocols against the model called directly, bad input,
metrics, readiness, and concurrency. Uses a tiny checkpoint trained once for the module."""
import asyncio
import json
import math
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.checkpoint import load_checkpoint
from models.gate import Gate, gated_probabilities
from models.scores import forward_scores
from service.app import create_app
from service.settings import ServiceSettings
from tests.agreement import assert_answers_agree, held_out_digits, v1_answer
from tests.conftest import wait_ready, wait_until
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("service") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def settings(checkpoint) -> ServiceSettings:
    return ServiceSettings(model_dir=checkpoint, device="cpu", max_instances=64, max_body_bytes=64 * 1024, drift_window=10)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Eight digits in no split of the tiny data set (``tests.agreement``)."""
    return held_out_digits(8)[0]


def direct(checkpoint: Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], Gate]:
    """The model, its scores and the gate called directly in this thread, without the service: the
    answer in ``ModelRuntime.predict``'s names, and the gate."""
    loaded = load_checkpoint(checkpoint)
    with torch.no_grad():
        scores = {k: v.numpy() for k, v in forward_scores(loaded.model, torch.from_numpy(x), loaded.gate.fitted).items()}
    decision = loaded.gate.decide(scores)
    answer = {
        "log_px": scores["log_px"], "p_value": decision.p_value, "accepted": decision.accepted, "rejected_by": decision.rejected_by,
        "label": scores["probabilities"].argmax(axis=1), "model_probabilities": scores["probabilities"],
        "probabilities": gated_probabilities(scores["probabilities"], decision.accepted, loaded.model.label_prior.numpy()),
    }
    for name in loaded.gate.tails:
        answer[f"score_{name}"], answer[f"p_value_{name}"] = scores[name], decision.p_values[name]
    return answer, loaded.gate


def predict(client, instances, name="tiny"):
    return client.post(f"/v1/models/{name}:predict", json={"instances": instances})


def test_v1_predictions_equal_the_model_called_directly(client, checkpoint, digits):
    response = predict(client, digits.tolist())
    assert response.status_code == 200
    body = response.json()
    manifest = load_checkpoint(checkpoint).manifest
    assert body["model_name"] == "tiny" and body["model_version"] == manifest.version
    expected, gate = direct(checkpoint, digits)
    served = v1_answer(body["predictions"], gate)
    # the service's inference thread and this one may run other thread counts: the same up to rounding
    assert_answers_agree(expected, served, gate)
    # the gate applied to the scores the service reports gives exactly the p-values and decisions it reports
    decision = gate.decide({"log_px": served["log_px"], **{name: served[f"score_{name}"] for name in gate.tails}})
    np.testing.assert_array_equal(served["p_value"], decision.p_value)
    np.testing.assert_array_equal(served["accepted"], decision.accepted)
    np.testing.assert_array_equal(served["accepted"], served["p_value"] >= gate.alpha)
    assert list(served["rejected_by"]) == list(decision.rejected_by)
    for name in gate.tails:
        np.testing.assert_array_equal(served[f"p_value_{name}"], decision.p_values[name])
    np.testing.assert_array_equal(served["label"], served["model_probabilities"].argmax(axis=1))
    for prediction in body["predictions"]:
        assert prediction["bits_per_dim"] == pytest.approx(-prediction["log_px"] / (64 * math.log(2)))
        assert set(prediction["scores"]) == set(prediction["p_values"]) == set(gate.tails)
        outlier = prediction["outlier"]
        assert outlier["threshold"] == pytest.approx(-math.log10(gate.alpha))
        assert outlier["instance_score"] == pytest.approx(-math.log10(prediction["p_value"]))
        assert outlier["is_outlier"] == (not prediction["accepted"]) == (outlier["instance_score"] > outlier["threshold"])


def test_v2_infer_gives_the_same_numbers_as_v1(client, digits):
    v1 = predict(client, digits.tolist()).json()["predictions"]
    body = {"id": "r1", "inputs": [{"name": "input", "shape": [len(digits), 1, 8, 8], "datatype": "UINT8", "data": digits.astype(int).ravel().tolist()}]}
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert response.json()["id"] == "r1"
    assert outputs["probabilities"]["shape"] == [len(digits), 10] and outputs["label"]["datatype"] == "INT64"
    np.testing.assert_allclose(outputs["log_px"]["data"], [p["log_px"] for p in v1])
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (-1, 10)), [p["probabilities"] for p in v1])
    assert outputs["accepted"]["data"] == [p["accepted"] for p in v1]
    assert outputs["is_outlier"]["data"] == [p["outlier"]["is_outlier"] for p in v1]
    assert outputs["rejected_by"]["data"] == [p["rejected_by"] or "" for p in v1]
    np.testing.assert_allclose(outputs["p_value"]["data"], [p["p_value"] for p in v1])
    np.testing.assert_allclose(outputs["threshold"]["data"], [p["outlier"]["threshold"] for p in v1])
    for name in v1[0]["scores"]:
        np.testing.assert_allclose(outputs[f"score_{name}"]["data"], [p["scores"][name] for p in v1])
        np.testing.assert_allclose(outputs[f"p_value_{name}"]["data"], [p["p_values"][name] for p in v1])
    nested = dict(body, inputs=[dict(body["inputs"][0], shape=[len(digits), 8, 8], datatype="FP32", data=digits.tolist())], outputs=[{"name": "log_px"}])
    only = client.post("/v2/models/tiny/infer", json=nested).json()["outputs"]
    assert [o["name"] for o in only] == ["log_px"]
    np.testing.assert_allclose(only[0]["data"], outputs["log_px"]["data"])


def test_input_layouts_agree(client, digits):
    base = predict(client, digits[:2].tolist()).json()["predictions"]
    for layout in (digits[:2].reshape(2, 1, 8, 8), digits[:2].reshape(2, 64)):
        again = predict(client, layout.tolist()).json()["predictions"]
        assert [p["log_px"] for p in again] == [p["log_px"] for p in base]


def test_noise_is_rejected_and_a_test_digit_accepted(client, checkpoint):
    manifest = load_checkpoint(checkpoint).manifest
    config = DataConfig(**manifest.training.config["data"])
    from training.data import split_dataset

    test = split_dataset(load_dataset(config), config, manifest.training.config["seed"]).test
    predictions = predict(client, test.x[:20].tolist()).json()["predictions"]
    assert any(p["accepted"] for p in predictions)
    noise = np.random.default_rng(0).integers(0, 17, size=(20, 8, 8))
    noise_predictions = predict(client, noise.tolist()).json()["predictions"]
    assert sum(p["accepted"] for p in noise_predictions) < sum(p["accepted"] for p in predictions)
    rejected = next(p for p in noise_predictions if not p["accepted"])
    np.testing.assert_allclose(rejected["probabilities"], manifest.label_prior, atol=1e-6)


def test_inputs_outside_the_declared_input_range_are_a_clear_400(client):
    for value, shown in ((20, "20"), (-1e6, "-1e+06"), (1e300, "1e+300"), (16.5, "16.5")):
        response = predict(client, [[[value] * 8] * 8])
        assert response.status_code == 400 and response.json()["error"] == f"instances: values must lie in the model's input range [0, 16]; found {shown}"
    body = {"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [17.0] * 64}]}
    assert "input range [0, 16]" in client.post("/v2/models/tiny/infer", json=body).json()["error"]
    assert predict(client, [[[16] * 8] * 8]).status_code == 200 and predict(client, [[[0] * 8] * 8]).status_code == 200


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"instances": [[1, 2, 3]]}, 400, "shape"),
        ({"instances": [[["a"] * 8] * 8]}, 400, "numbers"),
        ({"instances": [[[1] * 8] * 7 + [[1] * 5]]}, 400, "equal lengths"),
        ({"instances": []}, 400, "no instances"),
        ({"instances": [[[0] * 8] * 8] * 65}, 413, "limit is 64"),
        ({"wrong": 1}, 400, "instances"),
        ([1, 2], 400, "instances"),
        ({"instances": "x"}, 400, "list"),
        ({"instances": [[["7"] * 8] * 8]}, 400, "numbers, not strings"),
        ({"instances": [[[True] * 8] * 8]}, 400, "not true / false"),
        ({"instances": [[[1] * 7 + [False]] * 8]}, 400, "not true / false"),
        ({"instances": [[[None] * 8] * 8]}, 400, "numbers"),
        ({"instances": [[[0] * 8] * 8], "batch_test": "yes"}, 400, "true or false"),
    ],
)
def test_bad_v1_input_is_a_clear_4xx(client, body, status, message):
    response = client.post("/v1/models/tiny:predict", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_nan_infinity_invalid_json_and_oversized_bodies(client):
    nan_body = json.dumps({"instances": [[[float("nan")] * 8] * 8]})
    for text in (nan_body, nan_body.replace("NaN", "Infinity"), json.dumps({"instances": [[[1e400] * 8] * 8]})):
        response = client.post("/v1/models/tiny:predict", content=text, headers={"content-type": "application/json"})
        assert response.status_code == 400 and ("NaN" in response.json()["error"] or "finite" in response.json()["error"])
    response = client.post("/v1/models/tiny:predict", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = client.post("/v1/models/tiny:predict", content=b" " * (65 * 1024), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_malformed_bodies_found_by_fuzzing_are_4xx_with_the_real_reason(client):
    post = lambda body, **headers: client.post("/v1/models/tiny:predict", content=body, headers={"content-type": "application/json", **headers})
    cases = [
        (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
        (b'{"instances": [' + b"9" * 5000 + b"]}", 400, "number that cannot be read"),
        (b'{"instances": [' + b"9" * 400 + b"]}", 400, "numbers (at most 64-bit)"),
        ('{"instances": [[1]]}'.encode("utf-32"), 400, "not UTF-8"),
        (b'{"instances": [NaN]}', 400, "holds NaN"),
    ]
    for body, status, message in cases:
        response = post(body)
        assert response.status_code == status and message in response.json()["error"], (body[:40], response.text)
    response = post(b'{"instances": [[0]]}', **{"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert post(b'{"instances": [[0]]}', **{"content-type": "application/json; charset=utf-8"}).status_code == 400  # shape, not type
    response = client.get("/v1/models/tiny:predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = client.put("/v2/models/tiny/infer", json={})
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = client.get("/v2/models/" + "x" * 10_000)
    assert response.status_code == 404 and len(response.json()["error"]) < 200
    good = {"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    for tensor, message in ((dict(good, parameters=[1]), '"parameters" must be an object'), (dict(good, shape=[1, True, 8]), "non-negative integers")):
        response = client.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
        assert response.status_code == 400 and message in response.json()["error"]
    paths = client.get("/openapi.json").json()["paths"]
    schema = paths["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["instances"]["minItems"] == 1
    infer = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert set(infer) == {"application/json", "application/octet-stream"} and "$defs" not in json.dumps(infer)
    assert infer["application/json"]["schema"]["properties"]["inputs"]["items"]["required"] == ["name", "shape", "datatype"]  # data absent in binary requests


def test_bad_v2_input_is_a_clear_4xx(client):
    good = {"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    cases = [
        ({"inputs": [dict(good, name="pixels")]}, 400, "named 'input'"),
        ({"inputs": [dict(good, datatype="BYTES")]}, 400, "datatype"),
        ({"inputs": [dict(good, shape=[1, 8, 7])]}, 400, "shape [1, 8, 7] needs 56"),
        ({"inputs": [dict(good, shape=[2, 32])]}, 400, "shape"),
        ({"inputs": [good], "outputs": [{"name": "nope"}]}, 400, "unknown outputs"),
        ({"inputs": []}, 400, "one tensor"),
    ]
    for body, status, message in cases:
        response = client.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == status, body
        assert message in response.json()["error"]


def test_unknown_model_is_404(client):
    assert predict(client, [[[0] * 8] * 8], name="other").status_code == 404
    assert client.get("/v2/models/other").status_code == 404
    assert client.post("/v2/models/other/infer", json={}).status_code == 404


def test_every_domain_error_has_its_own_status():
    """Each error the core and the registry raise (``inference.errors``) answers with a 4xx or 5xx of
    its own from the one table, none with the 500 of an unexpected error; over gRPC none with
    UNKNOWN or INTERNAL."""
    import grpc

    from inference import errors
    from service.status import STATUS, grpc_status, http_status

    kinds = [kind for kind in vars(errors).values() if isinstance(kind, type) and issubclass(kind, errors.ServiceError) and kind is not errors.ServiceError]
    assert set(kinds) == set(STATUS)
    codes = {kind.__name__: grpc_status(kind("why")) for kind in kinds}
    assert not {code for code, _ in codes.values()} & {grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}, codes
    assert codes["Overloaded"] == (grpc.StatusCode.UNAVAILABLE, (("retry-after", "1"),)) and codes["BadInput"][0] == grpc.StatusCode.INVALID_ARGUMENT
    statuses = {kind.__name__: http_status(kind("why")) for kind in kinds}
    assert all(400 <= status < 600 and status != 500 for status, _ in statuses.values()), statuses
    assert statuses["Overloaded"] == (503, {"Retry-After": "1"}) and statuses["NotReady"] == (503, {})
    assert statuses["DeadlineExceeded"][0] == 504 and statuses["TooLarge"][0] == 413 and statuses["Unauthenticated"][1]["WWW-Authenticate"]


def test_health_and_metadata(client, checkpoint):
    manifest = load_checkpoint(checkpoint).manifest
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/").json() == {"status": "alive"}  # KServe v1 liveness
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v1/models/tiny").json()["version"] == manifest.version
    metadata = client.get("/v2/models/tiny").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert metadata["gate"] == manifest.gate.model_dump(mode="json") and metadata["gate"]["method"] == "conformal"
    assert metadata["classes"] == [str(d) for d in range(10)] and metadata["input_range"] == [0, 16]
    assert metadata["files"] == manifest.files and "test" in metadata["metrics"]
    assert client.get("/v2").json()["models"] == ["tiny"]


def test_v2_metadata_lists_exactly_what_infer_returns(client, digits):
    """Every output's name, datatype and shape (batch axis -1) as infer returns them."""
    metadata = {o["name"]: o for o in client.get("/v2/models/tiny").json()["outputs"]}
    body = {"inputs": [{"name": "input", "shape": [3, 8, 8], "datatype": "FP32", "data": digits[:3].ravel().tolist()}]}
    outputs = client.post("/v2/models/tiny/infer", json=body).json()["outputs"]
    assert [o["name"] for o in outputs] == list(metadata)
    for output in outputs:
        described = metadata[output["name"]]
        assert output["datatype"] == described["datatype"], output["name"]
        assert output["shape"] == [3, *described["shape"][1:]] and described["shape"][0] == -1
        assert len(output["data"]) == math.prod(output["shape"])


def test_batch_typicality_test_on_request(client, digits):
    typical = client.post("/v1/models/tiny:predict", json={"instances": digits.tolist(), "batch_test": True}).json()
    assert set(typical["batch"]) == {"is_outlier", "p_value", "size"} and typical["batch"]["size"] == len(digits)
    noise = np.random.default_rng(1).integers(0, 17, size=(8, 8, 8)).tolist()
    noisy = client.post("/v1/models/tiny:predict", json={"instances": noise, "batch_test": True}).json()
    assert noisy["batch"]["is_outlier"] and noisy["batch"]["p_value"] < typical["batch"]["p_value"]
    assert "batch" not in client.post("/v1/models/tiny:predict", json={"instances": digits.tolist()}).json()
    body = {"inputs": [{"name": "input", "shape": [8, 8, 8], "datatype": "FP32", "data": np.ravel(noise).tolist()}], "parameters": {"batch_test": True}}
    parameters = client.post("/v2/models/tiny/infer", json=body).json()["parameters"]
    assert parameters == {"batch_p_value": pytest.approx(noisy["batch"]["p_value"]), "batch_is_outlier": True}
    assert client.post("/v1/models/tiny:predict", json={"instances": digits.tolist(), "batch_test": "yes"}).status_code == 400
    assert client.post("/v2/models/tiny/infer", json={**body, "parameters": [1]}).status_code == 400


def metric(client, name: str, **labels) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


REJECTION_REASONS = ("support", "log_px", "complexity", "likelihood_ratio", "latent_distance", "neighbour_distance", "level_1", "level_2", "max_probability")


def test_metrics_move_after_requests(client, digits):
    before = {
        "ok": metric(client, "diglm_requests_total", endpoint="/v1/models/{name}:predict", status="200"),
        "bad": metric(client, "diglm_requests_total", endpoint="/v1/models/{name}:predict", status="400"),
        "instances": metric(client, "diglm_instances_total"),
        "rejected": sum(metric(client, "diglm_instances_rejected_total", reason=r) for r in REJECTION_REASONS),
        "support": metric(client, "diglm_instances_rejected_total", reason="support"),
        "log_px": metric(client, "diglm_log_px_nats_count"),
    }
    predict(client, digits[:3].tolist())
    predict(client, [[[0] * 8] * 8])  # a blank image: rejected
    predict(client, [[1]])
    assert metric(client, "diglm_requests_total", endpoint="/v1/models/{name}:predict", status="200") == before["ok"] + 2
    assert metric(client, "diglm_requests_total", endpoint="/v1/models/{name}:predict", status="400") == before["bad"] + 1
    assert metric(client, "diglm_instances_total") == before["instances"] + 4
    assert metric(client, "diglm_instances_rejected_total", reason="support") == before["support"]  # inputs outside the range are a 400
    rejected = sum(metric(client, "diglm_instances_rejected_total", reason=r) for r in REJECTION_REASONS)
    assert rejected >= before["rejected"] + 1
    assert metric(client, "diglm_log_px_nats_count") == before["log_px"] + 4
    text = client.get("/metrics").text
    for name in ("diglm_request_duration_seconds_bucket", "diglm_inference_duration_seconds_bucket", "diglm_batch_size_bucket", "diglm_requests_in_flight", "diglm_model_info"):
        assert name in text


def test_batch_histogram_exposes_what_prometheus_clients_histogram_does():
    """Values observed a batch at a time against prometheus_client's Histogram observing them one by
    one: the same buckets (bounds included: a value on a bound counts in it), count and sum (none
    with a negative bound)."""
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.exposition import generate_latest

    from service.metrics import BatchHistogram

    def samples(text: bytes) -> dict[str, float]:
        lines = [line.rsplit(" ", 1) for line in text.decode().splitlines() if line.startswith("h_") and "_created" not in line]
        return {name: float(value) for name, value in lines}

    for edges in ([-10.0, -1.0, 0.0, 0.5, 2.0], [0.001, 0.01, 0.1, 1.0]):
        values = np.concatenate([np.random.default_rng(0).normal(0, 5, 200), edges, [-1e9, 1e9]])
        registry = CollectorRegistry()
        reference = Histogram("h", "doc", ["model"], buckets=edges, registry=registry).labels(model="m")
        for value in values:
            reference.observe(float(value))
        ours = BatchHistogram("h", "doc", {"model": "m"}, edges[::-1])  # any order of the bounds
        for part in np.array_split(values, 7):
            ours.observe(part)
        ours.observe(np.array([]))
        mine = CollectorRegistry()
        mine.register(ours)
        expected, got = samples(generate_latest(registry)), samples(generate_latest(mine))
        assert set(got) == set(expected) and len(got) == len(edges) + 2 + (edges[0] >= 0)  # buckets, +Inf, count (and sum)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-5), name  # the sum: +-1e9 summed in another order


def test_drift_endpoint_and_gauges_follow_the_served_window(client, checkpoint, digits):
    predict(client, digits.tolist())
    predict(client, [[[0] * 8] * 8] * 4)  # blank images: rejected, the lowest or highest log p(x)
    body = client.get("/v2/models/tiny/drift").json()
    assert body["window_size"] == body["instances"] == 10 and body["instances_seen"] >= 12
    assert set(body["tests"]) == {"log_px", "p_value", "rejection_rate"} and 0 <= body["p_val"] <= 1
    assert body["is_drift"] in (0, 1) and body["threshold"] == 1e-4 and body["rejection_rate"] >= 0.4
    assert body["alpha"] == load_checkpoint(checkpoint).gate.alpha
    assert metric(client, "diglm_drift_window_instances") == 10
    assert metric(client, "diglm_drift_rejection_rate") == pytest.approx(body["rejection_rate"])
    assert metric(client, "diglm_drift_test_p_value", test="rejection_rate") == pytest.approx(body["tests"]["rejection_rate"]["p_val"])
    assert client.get("/v2/models/other/drift").status_code == 404


def test_gate_route_gives_each_scores_calibration_distribution_as_the_checkpoint_stores_it(client, checkpoint):
    from safetensors.numpy import load_file

    manifest = load_checkpoint(checkpoint).gate.summary
    stored = load_file(str(checkpoint / manifest.file))
    body = client.get("/v2/models/tiny/gate", params={"bins": 7}).json()
    assert client.get(f"/v2/models/tiny/versions/{body['version']}/gate", params={"bins": 7}).json() == body
    assert (body["method"], body["alpha"], body["combine"], body["tau"]) == (manifest.method, manifest.alpha, manifest.combine, None)
    assert "below alpha = " in body["rule"] and body["calibration_size"] == manifest.calibration_size
    assert [(score["name"], score["tail"]) for score in body["scores"]] == list(manifest.scores.items())
    for score in body["scores"]:
        values = stored[f"calibration.{score['name']}"].astype(np.float64)
        described, finite = score["calibration"], values[np.isfinite(values)]
        assert score["weight"] == (manifest.weights or {}).get(score["name"])
        assert described["count"] == len(values) == manifest.calibration_size and described["non_finite"] == len(values) - len(finite)
        assert (described["min"], described["max"]) == pytest.approx((finite.min(), finite.max()))
        for q, value in described["quantiles"].items():
            assert value == pytest.approx(np.quantile(finite, float(q))), (score["name"], q)
        edges, counts = np.asarray(described["histogram"]["edges"]), np.asarray(described["histogram"]["counts"])
        assert len(edges) == 8 and (edges[0], edges[-1]) == pytest.approx((finite.min(), finite.max())) and np.all(np.diff(edges) >= 0)
        inside = [np.count_nonzero((finite >= low) & ((finite < high) if i < 6 else (finite <= high))) for i, (low, high) in enumerate(zip(edges[:-1], edges[1:]))]
        assert counts.tolist() == inside and counts.sum() == len(finite)
    assert len(client.get("/v2/models/tiny/gate").json()["scores"][0]["calibration"]["histogram"]["counts"]) == 40
    assert client.get("/v2/models/tiny/gate", params={"bins": 0}).status_code == 422
    assert client.get("/v2/models/other/gate").status_code == 404


def test_gate_evidence_of_a_tau_gate_is_log_px_against_tau(checkpoint):
    from types import SimpleNamespace

    from service.descriptions import gate_evidence

    gate = load_checkpoint(checkpoint).gate.with_method("validation")
    body = gate_evidence(SimpleNamespace(name="tiny", version="1", runtime=SimpleNamespace(gate=gate)), bins=3)
    assert (body["method"], body["tau"], body["combine"]) == ("validation", gate.tau, None)
    assert [(score["name"], score["tail"]) for score in body["scores"]] == [("log_px", "lower")]
    assert f"below tau = {gate.tau:.6g} nats" in body["rule"]


def test_dashboard_and_alert_rules_query_only_metrics_the_service_exports(client, checkpoint, digits):
    from tests.test_deploy import referenced_metrics

    predict(client, [*digits[:2].tolist(), [[0] * 8] * 8])  # with a blank image, rejected: the rejection counter has a series in any test order
    exported = {re.split(r"[{ ]", line, 1)[0] for line in client.get("/metrics").text.splitlines() if line.startswith("diglm_")}
    queried = {name for name in referenced_metrics() if not name.startswith("diglm_decision_log_")}  # with a log only: tests/test_decision_log.py
    assert queried and queried <= exported, queried - exported
    assert metric(client, "diglm_ready") == 1 and metric(client, "diglm_gate_alpha") == load_checkpoint(checkpoint).gate.alpha


def test_not_ready_before_load_and_never_with_a_damaged_checkpoint(checkpoint, tmp_path):
    app = create_app(ServiceSettings(model_dir=checkpoint, device="cpu"))
    unstarted = TestClient(app)  # no lifespan: nothing loaded
    assert unstarted.get("/v2/health/ready").status_code == 503
    assert unstarted.get("/v2/health/live").status_code == 200
    assert unstarted.post("/v1/models/tiny:predict", json={"instances": [[[0] * 8] * 8]}).status_code == 503

    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    (damaged / "weights.safetensors").write_bytes(b"x" + (damaged / "weights.safetensors").read_bytes()[1:])
    with TestClient(create_app(ServiceSettings(model_dir=damaged, device="cpu"))) as client:
        for _ in range(100):
            response = client.get("/v2/health/ready")
            if "sha256" in response.text:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert response.status_code == 503 and "sha256" in response.json()["error"]


def test_service_cli_refuses_a_damaged_checkpoint(checkpoint, tmp_path, capsys):
    from service.__main__ import main

    assert main(["--model-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is missing" in err and "make train" in err


def test_fifty_concurrent_requests_are_answered_correctly(settings, checkpoint, digits):
    expected = direct(checkpoint, digits)[0]["log_px"]
    app = create_app(settings)

    async def run() -> list:
        async with app.router.lifespan_context(app):
            await wait_until(lambda: app.state.service.ready, "the service to be ready")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                requests = [client.post("/v1/models/tiny:predict", json={"instances": [digits[i % 8].tolist()]}) for i in range(50)]
                return await asyncio.gather(*requests)

    responses = asyncio.run(run())
    for i, response in enumerate(responses):
        assert response.status_code == 200
        assert response.json()["predictions"][0]["log_px"] == pytest.approx(float(expected[i % 8]), abs=1e-4)


def test_every_diglm_variable_in_the_readme_is_a_setting_and_unknown_ones_are_refused(monkeypatch, capsys):
    import re

    from service.__main__ import main
    from service.settings import known_variables

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    mentioned = set(re.findall(r"DIGLM_[A-Z_]+[A-Z]", readme)) - {"DIGLM_OPTION"}
    assert mentioned and mentioned <= set(known_variables()), mentioned - set(known_variables())
    monkeypatch.setenv("DIGLM_TORCH_THREADS", "2")
    assert main(["--model-dir", "nowhere"]) == 2
    assert "unknown environment variable DIGLM_TORCH_THREADS" in capsys.readouterr().err
    monkeypatch.delenv("DIGLM_TORCH_THREADS")
    monkeypatch.setenv("DIGLM_MAX_QUEUE", "0")
    assert main(["--model-dir", "nowhere"]) == 2
    assert "max_queue" in capsys.readouterr().err
    monkeypatch.delenv("DIGLM_MAX_QUEUE")
    assert main(["--model-dir", "nowhere", "--port", "http"]) == 2
    assert "port" in capsys.readouterr().err


def test_console_serves_its_three_files_with_a_policy_that_keeps_requests_home(client):
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/console/console.js" in page.text and "/console/console.css" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert client.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    for path in ("/console/settings.py", "/console/..%2Fapi%2Fconsole.py"):
        assert client.get(path).status_code == 404, path


def test_stats_count_decisions_by_reason(client, digits):
    before = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    blank = np.zeros((1, 8, 8))
    answers = [answer for x in (digits[:3], blank) for answer in client.post("/v1/models/tiny:predict", json={"instances": x.tolist()}).json()["predictions"]]
    after = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    reasons = [answer["rejected_by"] for answer in answers if not answer["accepted"]]
    added = {reason: after["gate"]["rejected"].get(reason, 0) - before["gate"]["rejected"].get(reason, 0) for reason in after["gate"]["rejected"]}
    assert {reason: count for reason, count in added.items() if count} == {reason: reasons.count(reason) for reason in set(reasons)}
    assert after["gate"]["accepted"] - before["gate"]["accepted"] == sum(answer["accepted"] for answer in answers)
    assert after["gate"]["accepted"] + sum(after["gate"]["rejected"].values()) == after["inference_count"]
