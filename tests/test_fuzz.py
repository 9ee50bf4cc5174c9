"""Property-based fuzzing of the prediction routes (hypothesis, a few hundred cases): arbitrary JSON
in v1 and v2 bodies, near-valid tensors, raw bytes, odd headers and the binary tensor extension.
Every answer is a 2xx or a 4xx with a JSON error, never a 5xx; every 2xx fits the codec's response
model, and its request the codec's request model (the OpenAPI description takes what the decoder
takes); the server answers correctly after."""
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_cases import content_types, datatypes, shapes, v1_bodies, v2_bodies, v2_tensors
from service.app import create_app
from service.codecs.v1 import V1
from service.codecs.v2 import V2
from service.settings import ServiceSettings
from tests.conftest import wait_ready
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])



@pytest.fixture(scope="module")
def client(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("fuzz") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(checkpoint), "--quiet", "--set", "train.epochs=1"]) == 0
    with TestClient(create_app(ServiceSettings(model_dir=checkpoint, device="cpu", max_instances=16, log_level="warning")), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        digits = load_dataset(DataConfig(name="digits")).x[:4].tolist()
        before = test_client.post("/v1/models/tiny:predict", json={"instances": digits}).json()["predictions"]
        yield test_client
        after = test_client.post("/v1/models/tiny:predict", json={"instances": digits}).json()["predictions"]
        assert after == before  # still answering, and the same answers


def answer_json(response) -> dict:
    """The JSON answer, without the raw outputs of the binary tensor extension."""
    length = response.headers.get("inference-header-content-length")
    return json.loads(response.content if length is None else response.content[: int(length)])


def assert_client_error_at_most(response, codec=None, request: dict | None = None) -> None:
    """A 4xx with a JSON error, or a 2xx; with ``codec``, a 2xx answer fits its response model and
    the request that got it (``request``: its JSON) its request model."""
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
    elif codec is not None:
        codec.response_model.model_validate(answer_json(response))
        if request is not None:
            codec.request_model.model_validate(request)


@FUZZ
@given(body=v1_bodies, content_type=content_types)
def test_v1_bodies_never_get_a_5xx(client, body, content_type):
    assert_client_error_at_most(client.post("/v1/models/tiny:predict", content=json.dumps(body).encode(), headers={"content-type": content_type}), V1, body)


@FUZZ
@given(body=v2_bodies, content_type=content_types)
def test_v2_bodies_never_get_a_5xx(client, body, content_type):
    assert_client_error_at_most(client.post("/v2/models/tiny/infer", content=json.dumps(body).encode(), headers={"content-type": content_type}), V2, body)


@FUZZ
@given(header=st.one_of(st.integers(-5, 400).map(str), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6)), payload=st.binary(max_size=300), shape=shapes, datatype=datatypes)
def test_binary_extension_never_gets_a_5xx(client, header, payload, shape, datatype):
    tensor = {"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(payload)}}
    json_part = json.dumps({"inputs": [tensor]}).encode()
    header = str(len(json_part)) if header == "0" else header
    headers = {"inference-header-content-length": header, "content-type": "application/octet-stream"}
    assert_client_error_at_most(client.post("/v2/models/tiny/infer", content=json_part + payload, headers=headers), V2, json.loads(json_part))


@FUZZ
@given(body=st.binary(max_size=400), path=st.sampled_from(["/v1/models/tiny:predict", "/v2/models/tiny/infer"]))
def test_raw_bytes_never_get_a_5xx(client, body, path):
    assert_client_error_at_most(client.post(path, content=body, headers={"content-type": "application/json"}), V1 if path.startswith("/v1") else V2)


def test_a_valid_binary_request_still_answers_like_json(client):
    x = np.zeros((1, 8, 8), dtype=np.float32)
    tensor = {"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    json_part = json.dumps({"inputs": [tensor]}).encode()
    binary = client.post("/v2/models/tiny/infer", content=json_part + x.tobytes(), headers={"inference-header-content-length": str(len(json_part))})
    as_json = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]})
    assert binary.status_code == as_json.status_code == 200 and binary.json()["outputs"] == as_json.json()["outputs"]


def test_valid_requests_and_their_answers_fit_the_documented_models(client):
    """Requests of every kind the decoders take, and their answers, against the codecs' pydantic
    models (what OpenAPI describes): JSON and binary tensors, chosen and binary outputs, batch test,
    request ids, flat and channel-first instances."""
    image = np.arange(64, dtype=np.float32).reshape(8, 8) % 17
    tensor = {"name": "input", "shape": [2, 8, 8], "datatype": "FP32", "data": np.stack([image, image]).ravel().tolist()}
    v1_requests = [{"instances": [image.tolist()]}, {"instances": [image.ravel().tolist()], "batch_test": True}, {"instances": [[image.tolist()]], "batch_test": False}]
    v2_requests = [
        {"inputs": [tensor]},
        {"inputs": [tensor], "id": "request-7", "parameters": {"batch_test": True}},
        {"inputs": [tensor], "outputs": [{"name": "label"}, {"name": "log_px", "parameters": {"binary_data": True}}]},
        {"inputs": [tensor], "parameters": {"binary_data_output": True}},
    ]
    for body in v1_requests:
        response = client.post("/v1/models/tiny:predict", json=body)
        assert response.status_code == 200, response.text
        assert_client_error_at_most(response, V1, body)
    for body in v2_requests:
        response = client.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == 200, response.text
        assert_client_error_at_most(response, V2, body)
    payload = np.stack([image, image]).astype(np.uint8).tobytes()
    header = {"inputs": [{"name": "input", "shape": [2, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": len(payload)}}], "parameters": {"binary_data_output": True}}
    json_part = json.dumps(header).encode()
    response = client.post("/v2/models/tiny/infer", content=json_part + payload, headers={"inference-header-content-length": str(len(json_part))})
    assert response.status_code == 200, response.text
    assert_client_error_at_most(response, V2, header)
