"""Real Open Inference Protocol clients against the live service: tritonclient's HTTP client
allocates outputs from the metadata, so what the metadata says must be what infer returns; the
KServe SDK's REST client checks health and infers: v2 with JSON and binary tensors, and v1."""
import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import free_port, served_in_thread
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

httpclient = pytest.importorskip("tritonclient.http")
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on a free local port, in a thread, for the module: its host:port."""
    checkpoint = tmp_path_factory.mktemp("clients") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(checkpoint), "--quiet", "--set", "train.epochs=2", "--onnx"]) == 0
    port = free_port()
    settings = ServiceSettings(model_dir=checkpoint, device="cpu", port=port, log_level="warning")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    with served_in_thread(create_app(settings), port, client.is_server_ready):
        yield f"127.0.0.1:{port}"


def test_tritonclient_health_metadata_and_infer_json_and_binary(server):
    client = httpclient.InferenceServerClient(url=server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    metadata = client.get_model_metadata("tiny")
    described = {output["name"]: output for output in metadata["outputs"]}
    x = load_dataset(DataConfig(name="digits")).x[:5]
    results = {}
    for binary in (False, True):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in described]
        response = client.infer("tiny", [tensor], outputs=outputs)
        for name, spec in described.items():
            array = response.as_numpy(name)
            assert array is not None, name
            assert response.get_output(name)["datatype"] == spec["datatype"], name
            assert list(array.shape) == [5, *spec["shape"][1:]], name
        results[binary] = {name: response.as_numpy(name) for name in described}
    for name in described:
        if results[False][name].dtype.kind in "fc":
            np.testing.assert_allclose(results[False][name], results[True][name], rtol=1e-6)
        else:
            np.testing.assert_array_equal(results[False][name], results[True][name])
    assert results[True]["label"].dtype == np.int64 and results[True]["accepted"].dtype == np.bool_
    np.testing.assert_array_equal(results[True]["is_outlier"], ~results[True]["accepted"])
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    binary_outputs = client.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput(name, binary_data=True) for name in described])
    for name in described:  # the binary tensor extension in the response too: the same values, floats exact
        assert binary_outputs.get_output(name)["parameters"]["binary_data_size"] > 0, name
        array = binary_outputs.as_numpy(name)
        if described[name]["datatype"] == "BYTES":  # tritonclient gives bytes for binary, str for JSON elements
            array = np.array([item.decode() for item in array.ravel()], dtype=object).reshape(array.shape)
        np.testing.assert_array_equal(array, results[True][name])
    config = client.get_model_config("tiny")
    assert config["input"][0]["dims"] == [8, 8] and [o["name"] for o in config["output"]] == list(described)
    statistics = client.get_inference_statistics("tiny")["model_stats"][0]
    assert statistics["inference_count"] >= 10 and statistics["inference_stats"]["success"]["count"] >= 2


def test_kserve_sdk_health_and_infer_json_and_binary(server):
    kserve = pytest.importorskip("kserve")
    base = f"http://{server}"
    described = {output["name"]: output for output in httpx.get(f"{base}/v2/models/tiny").json()["outputs"]}
    x = load_dataset(DataConfig(name="digits")).x[:4]

    async def calls():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=1, timeout=30))
        try:
            health = (await client.is_server_live(base), await client.is_server_ready(base), await client.is_model_ready(base, "tiny"))
            responses = {}
            for binary in (False, True):
                tensor = kserve.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                responses[binary] = await client.infer(base, kserve.InferRequest("tiny", [tensor]), model_name="tiny")
            return health, responses
        finally:
            await client.close()

    health, responses = asyncio.run(calls())
    assert health == (True, True, True)
    arrays = {}
    for binary, response in responses.items():
        outputs = {output.name: output for output in response.outputs}
        assert list(outputs) == list(described)
        for name, spec in described.items():
            assert outputs[name].datatype == spec["datatype"] and outputs[name].shape == [4, *spec["shape"][1:]], name
        arrays[binary] = {name: output.as_numpy() for name, output in outputs.items()}
    for name in described:
        np.testing.assert_array_equal(arrays[False][name], arrays[True][name])
    assert arrays[True]["label"].dtype == np.int64 and arrays[True]["accepted"].dtype == np.bool_
    np.testing.assert_allclose(arrays[True]["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_kserve_sdk_v1_liveness_readiness_and_predict_equal_v2(server):
    kserve = pytest.importorskip("kserve")
    base = f"http://{server}"
    x = load_dataset(DataConfig(name="digits")).x[:3]

    async def calls():
        v1 = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", retries=1, timeout=30))
        v2 = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=1, timeout=30))
        try:
            health = (await v1.is_server_live(base), await v1.is_model_ready(base, "tiny"))
            predicted = await v1.infer(base, {"instances": x.tolist()}, model_name="tiny")
            tensor = kserve.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            inferred = await v2.infer(base, kserve.InferRequest("tiny", [tensor]), model_name="tiny")
            return health, predicted, {output.name: output.as_numpy() for output in inferred.outputs}
        finally:
            await v1.close()
            await v2.close()

    health, predicted, outputs = asyncio.run(calls())
    assert health == (True, True)
    records = predicted["predictions"]
    assert [record["label"] for record in records] == outputs["label"].tolist()
    assert [record["accepted"] for record in records] == outputs["accepted"].tolist()
    np.testing.assert_allclose([record["log_px"] for record in records], outputs["log_px"], rtol=1e-6)


def test_tritonclient_model_repository_and_version_routes(server):
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=server)
    index = client.get_model_repository_index()
    assert len(index) == 1 and index[0]["name"] == "tiny" and index[0]["state"] == "READY"
    version = index[0]["version"]
    x = load_dataset(DataConfig(name="digits")).x[:2]
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    assert client.is_model_ready("tiny", model_version=version) and not client.is_model_ready("tiny", model_version="999")
    versioned = client.infer("tiny", [tensor], model_version=version)
    assert versioned.get_response()["model_version"] == version
    np.testing.assert_allclose(versioned.as_numpy("log_px"), client.infer("tiny", [tensor]).as_numpy("log_px"))
    assert client.get_model_metadata("tiny", model_version=version)["version"] == version
    client.unload_model("tiny")
    assert not client.is_model_ready("tiny") and client.get_model_repository_index(headers=None)[0]["state"] == "UNAVAILABLE"
    client.load_model("tiny")
    assert client.is_model_ready("tiny") and client.get_model_repository_index()[0]["state"] == "READY"
    with pytest.raises(InferenceServerException, match="not in the checkpoint"):
        client.load_model("elsewhere")
