"""A real Open Inference Protocol client against the live service: tritonclient's HTTP client
allocates outputs from the metadata, so what the metadata says must be what infer returns."""
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.settings import ServiceSettings
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

httpclient = pytest.importorskip("tritonclient.http")
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on a free local port, in a thread, for the module."""
    checkpoint = tmp_path_factory.mktemp("clients") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(checkpoint), "--quiet", "--set", "train.epochs=2", "--onnx"]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServiceSettings(model_dir=checkpoint, device="cpu", port=port, log_level="warning")
    uvicorn_server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if client.is_server_ready():
                break
        except Exception:  # not listening yet
            pass
        time.sleep(0.1)
    yield client
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


def test_tritonclient_health_metadata_and_infer_json_and_binary(server):
    client = server
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
    config = client.get_model_config("tiny")
    assert config["input"][0]["dims"] == [8, 8] and [o["name"] for o in config["output"]] == list(described)
    statistics = client.get_inference_statistics("tiny")["model_stats"][0]
    assert statistics["inference_count"] >= 10 and statistics["inference_stats"]["success"]["count"] >= 2
