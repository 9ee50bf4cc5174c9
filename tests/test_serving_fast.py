"""ONNX export and backend parity, dynamic batching, queue overflow and the binary tensor input."""
import asyncio
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from inference.inputs import InferenceInput
from inference.runtime import ModelRuntime
from models.checkpoint import CheckpointError, load_checkpoint, read_manifest
from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.hybrid import HybridModel
from service.app import create_app
from inference.errors import ClientGone, DeadlineExceeded, Overloaded
from service.batching import DynamicBatcher
from service.settings import ServiceSettings
from tests.agreement import BACKENDS, assert_answers_agree, assert_same_answers, held_out_digits, v1_answer
from tests.conftest import wait_ready, wait_until
from training.cli import main as training_main
from training.export import DensityGraph, export_onnx, parity

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fast") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=2", "--onnx"]) == 0
    return out


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """40 digits in no split of the tiny data set (``tests.agreement``)."""
    return held_out_digits(40)[0]


def test_export_is_recorded_and_hashed(exported):
    manifest = read_manifest(exported)
    assert manifest.onnx.file == "model.onnx" and "model.onnx" in manifest.files
    assert manifest.onnx.parity_max_abs_difference["log_px"] <= 1e-3
    assert manifest.onnx.parity_max_abs_difference["probabilities"] <= 1e-5
    assert set(manifest.onnx.outputs) >= {"log_px", "probabilities", "latent_distance", "likelihood_ratio", "complexity"}


def test_onnx_and_torch_backends_agree_on_real_and_random_inputs(exported, digits):
    torch_runtime = ModelRuntime.load(exported, "cpu", "torch")
    onnx_runtime = ModelRuntime.load(exported, "cpu", "onnx")
    random = np.random.default_rng(1).integers(0, 17, size=(40, 8, 8)).astype(np.float32)
    blank = np.zeros((3, 8, 8), dtype=np.float32)
    for x in (digits, random, digits[:1], blank):
        ours, theirs = torch_runtime.predict(InferenceInput(x)).columns(), onnx_runtime.predict(InferenceInput(x)).columns()
        assert set(ours) == set(theirs)
        # every gate score and its p-value come from the ONNX graph too, within the export's parity
        assert_answers_agree(ours, theirs, torch_runtime.gate, BACKENDS)
    assert ModelRuntime.load(exported, "cpu", "auto").backend.name == "onnx"  # a rule: every replica serves the same backend


def test_bayesian_regression_head_exports(tmp_path):
    config = ModelConfig(input_shape=[3], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=2, hidden=8), head=HeadConfig(kind="bayesian"))
    model = HybridModel(config)
    x = torch.randn(64, 3)
    model.preprocessing.fit(x)
    model.train()
    model.loss(x, x.sum(1), torch.ones(64, dtype=torch.bool), 1.0)  # actnorm init, posterior from the batch
    model.eval()
    path = tmp_path / "model.onnx"
    names = export_onnx(model, None, path, x[:2])
    assert names == ["log_px", "mean", "variance"]
    differences = parity(model, None, path, x.numpy())
    assert differences["log_px"] < 1e-3 and differences["mean"] < 1e-5 and differences["variance"] < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(DensityGraph(model, None)(x)[2], model.head.predict(model(x).z)["variance"], rtol=1e-5, atol=1e-5)


def test_onnx_backend_without_an_export_is_a_clear_error(tmp_path, exported):
    plain = tmp_path / "plain"
    shutil.copytree(exported, plain)
    loaded = load_checkpoint(exported)
    from models.checkpoint import save_checkpoint

    save_checkpoint(plain, loaded.model, loaded.manifest.draft().revised(onnx=None), extra_files={"gate.safetensors": exported / "gate.safetensors"})
    with pytest.raises(CheckpointError, match="training export"):
        ModelRuntime.load(plain, "cpu", "onnx")


def before_predict(runtime: ModelRuntime, hook) -> None:
    """Make ``runtime.predict(inputs)`` call ``hook(inputs)`` first (in the inference thread): to hold or slow it."""
    original = runtime.predict

    def predict(inputs):
        hook(inputs)
        return original(inputs)

    runtime.predict = predict


def run_app(settings: ServiceSettings, runtime: ModelRuntime, requests):
    """Start the app's lifespan, wait until ready, and run ``requests(client)`` concurrently."""
    app = create_app(settings, [runtime])

    async def go():
        async with app.router.lifespan_context(app):
            await wait_until(lambda: app.state.service.ready, "the service to be ready")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                return await requests(client), app

    return asyncio.run(go())


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_batched_requests_get_their_own_results_in_order(exported, digits, backend):
    settings = ServiceSettings(model_dir=exported, device="cpu", max_batch_size=16, max_delay_ms=2.0, backend=backend)
    runtime = ModelRuntime.load(exported, "cpu", backend)
    expected = runtime.predict(InferenceInput(digits)).columns()

    async def requests(client):
        single = [client.post("/v1/models/tiny:predict", json={"instances": [digits[i].tolist()]}) for i in range(len(digits))]
        many = client.post("/v1/models/tiny:predict", json={"instances": digits.tolist()})
        return await asyncio.gather(*single, many)

    responses, app = run_app(settings, runtime, requests)
    *single, many = responses
    # each answer is its own input's, exactly, whatever batch it was served in (docs/gate.md)
    assert_same_answers(expected, v1_answer([r.json()["predictions"][0] for r in single], runtime.gate), "one per request")
    assert_same_answers(expected, v1_answer(many.json()["predictions"], runtime.gate), "all in one request")
    metrics = app.state.service.models.lookup("tiny").metrics
    batches = metrics.batch_size.labels(**metrics.labels).collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < len(digits) + 2  # some requests shared a forward pass


def test_full_queue_is_503_with_retry_after(exported, digits):
    runtime = ModelRuntime.load(exported, "cpu", "torch")
    release = threading.Event()
    release.set()  # the warm-up batch goes through
    before_predict(runtime, lambda x: release.wait(5))
    settings = ServiceSettings(model_dir=exported, device="cpu", max_queue=2, warmup_batch=1)
    body = {"instances": [digits[0].tolist()]}

    async def requests(client):
        release.clear()
        first = asyncio.ensure_future(client.post("/v1/models/tiny:predict", json=body))
        await asyncio.sleep(0.3)  # the first batch is running, held
        queued = [asyncio.ensure_future(client.post("/v1/models/tiny:predict", json=body)) for _ in range(2)]
        await asyncio.sleep(0.3)  # two instances queued: the limit
        overflow = await client.post("/v1/models/tiny:predict", json=body)
        release.set()
        return [overflow, await first, *(await asyncio.gather(*queued))]

    (overflow, first, *queued), _ = run_app(settings, runtime, requests)
    assert overflow.status_code == 503 and overflow.headers["retry-after"] == "1" and "queued" in overflow.json()["error"]
    assert first.status_code == 200 and all(r.status_code == 200 for r in queued)


def test_batcher_refuses_past_its_queue_limit():
    async def go():
        started = threading.Event()
        release = threading.Event()

        def run_batch(inputs, queue_seconds):
            started.set()
            release.wait(5)
            return {"value": inputs.x.sum(axis=1)}

        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(run_batch, executor, max_batch_size=4, max_delay_s=0, max_queue=3)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit(InferenceInput(np.ones((2, 2)))))
            await wait_until(started.is_set, "the first batch to start")
            second = asyncio.ensure_future(batcher.submit(InferenceInput(np.full((3, 2), 2.0))))
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):
                await batcher.submit(InferenceInput(np.ones((1, 2))))
            release.set()
            results = await asyncio.gather(first, second)
            await batcher.stop()
            return results

    first, second = asyncio.run(go())
    np.testing.assert_array_equal(first["value"], [2, 2])
    np.testing.assert_array_equal(second["value"], [4, 4, 4])


def test_a_request_past_its_deadline_is_504_and_its_queued_work_is_dropped(exported, digits):
    runtime = ModelRuntime.load(exported, "cpu", "torch")
    calls, slow = [], threading.Event()

    def delay(x):
        if slow.is_set():
            calls.append(len(x))
            time.sleep(0.6)

    before_predict(runtime, delay)
    settings = ServiceSettings(model_dir=exported, device="cpu", request_timeout_s=0.25, warmup_batch=1)
    body = {"instances": [digits[0].tolist()]}

    async def requests(client):
        slow.set()
        first = asyncio.ensure_future(client.post("/v1/models/tiny:predict", json=body))
        await asyncio.sleep(0.1)  # its batch is running
        second = await client.post("/v1/models/tiny:predict", json={"instances": [digits[1].tolist()] * 3})  # queued behind it
        answers = [await first, second]
        await asyncio.sleep(0.8)  # the running batch ends; the queued, expired request must not run
        slow.clear()
        return [*answers, await client.post("/v1/models/tiny:predict", json=body)]

    (first, second, later), _ = run_app(settings, runtime, requests)
    assert first.status_code == second.status_code == 504 and "request timeout of 0.25 s" in first.json()["error"]
    assert calls == [1] and later.status_code == 200


def test_batcher_refuses_when_the_expected_wait_is_past_the_deadline():
    async def go():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(lambda inputs, queue_seconds: {"value": inputs.x.sum(axis=1)}, executor, max_batch_size=4, max_delay_s=0, max_queue=1000, max_wait_s=0.5)
            batcher.queued_instances = 100
            assert batcher.expected_wait() == 0.0  # nothing measured yet: only the count limit applies
            batcher.seconds_per_instance, batcher.queued_instances = 0.2, 0
            assert batcher.expected_wait() == 0.0  # an empty queue: a lone request is always tried
            batcher.queued_instances = 3
            assert batcher.expected_wait() == pytest.approx(0.6)
            with pytest.raises(Overloaded, match="expected wait of 0.6 s is over the limit of 0.5 s"):
                await batcher.submit(InferenceInput(np.ones((1, 2))))
            batcher.queued_instances = 1
            batcher.admit(0, waited_s=0.25)  # 0.45 s in all
            with pytest.raises(Overloaded, match="expected wait of 0.6 s"):  # the event loop's lag counts
                batcher.admit(0, waited_s=0.4)

    asyncio.run(go())


def test_the_loop_lag_is_a_stall_that_two_probes_in_a_row_see():
    from service.loop_lag import LoopLag

    async def stall_then_yield() -> None:
        time.sleep(0.3)  # the event loop held
        for _ in range(3):
            await asyncio.sleep(0)  # the late probe runs

    async def go():
        lag = LoopLag()
        lag.start()
        await asyncio.sleep(0.05)
        await stall_then_yield()
        once = lag.seconds
        await stall_then_yield()
        twice = lag.seconds
        await asyncio.sleep(0.05)
        await lag.stop()
        return once, twice, lag.seconds

    once, twice, after = asyncio.run(go())
    assert once < 0.1 and 0.2 < twice < 0.6 and after < 0.1


def test_an_event_loop_behind_sheds_predictions_at_the_door(exported, digits):
    """Past the admission limit (here the loop's lag alone) prediction calls are shed before the key
    check and the body (503, Retry-After, the call's id, counted with their version); other routes are
    still served, and below the limit calls are admitted."""
    runtime = ModelRuntime.load(exported, "cpu", "torch")
    settings = ServiceSettings(model_dir=exported, device="cpu", warmup_batch=1, max_queue_wait_s=0.5, api_keys="key")
    body, key = {"instances": [digits[0].tolist()]}, {"x-api-key": "key"}

    async def requests(client):
        lag = client._transport.app.state.service.loop_lag
        await lag.stop()  # the probe would measure the real lag again
        lag.seconds = 0.8
        seen = {"shed": await client.post("/v1/models/tiny:predict", json=body, headers={"x-request-id": "r1"})}
        seen["no key"] = await client.post("/v2/models/tiny/infer", content=b"not even read")
        seen["ready"] = await client.get("/v2/health/ready")
        seen["metrics"] = (await client.get("/metrics")).text
        lag.seconds = 0.3
        seen["admitted"] = await client.post("/v1/models/tiny:predict", json=body, headers=key)
        return seen

    seen, _ = run_app(settings, runtime, requests)
    shed = seen["shed"]
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and shed.headers["x-request-id"] == "r1"
    assert shed.json() == {"error": "the expected wait of 0.8 s is over the limit of 0.5 s; retry shortly"}
    assert seen["no key"].status_code == 503 and seen["ready"].status_code == 200 and seen["admitted"].status_code == 200
    version = seen["admitted"].json()["model_version"]
    assert f'diglm_requests_total{{endpoint="/v1/models/{{name}}:predict",model="tiny",protocol="rest",status="503",version="{version}"}} 1.0' in seen["metrics"]


def test_a_client_that_disconnects_gets_its_work_dropped(exported):
    from service.serving import ServedVersion

    async def gone() -> None:
        return None

    runtime = ModelRuntime.load(exported, "cpu", "torch")
    calls = []
    before_predict(runtime, lambda x: (calls.append(len(x)), time.sleep(0.3)))  # the answer outlasts the client (no race)
    with ThreadPoolExecutor(1) as executor:
        served = ServedVersion(runtime, ServiceSettings(model_dir=exported, device="cpu", batching=False), executor)
        with pytest.raises(ClientGone):
            asyncio.run(served.predict(runtime.midrange_inputs(2), gone))
    assert calls == [2]


def test_without_a_client_watch_a_request_waits_its_whole_deadline(exported):
    """No ``client_gone`` (gRPC: grpc cancels the call itself): an answer that takes longer than the
    disconnect watch's start still comes, within the request timeout."""
    from service.serving import DISCONNECT_WATCH_AFTER_S, ServedVersion

    runtime = ModelRuntime.load(exported, "cpu", "torch")
    before_predict(runtime, lambda x: time.sleep(DISCONNECT_WATCH_AFTER_S * 4))
    with ThreadPoolExecutor(1) as executor:
        served = ServedVersion(runtime, ServiceSettings(model_dir=exported, device="cpu", batching=False), executor)
        assert len(asyncio.run(served.predict(runtime.midrange_inputs(2)))) == 2


def test_the_wait_before_the_queue_counts_in_the_deadline(exported):
    """A request that has waited ``waited_s`` in the event loop already has that much less of its
    request timeout: an answer taking 0.2 s of a 0.3 s timeout comes, unless 0.15 s went before."""
    from service.serving import ServedVersion

    runtime = ModelRuntime.load(exported, "cpu", "torch")
    before_predict(runtime, lambda x: time.sleep(0.2))
    with ThreadPoolExecutor(1) as executor:
        served = ServedVersion(runtime, ServiceSettings(model_dir=exported, device="cpu", batching=False, request_timeout_s=0.3), executor)
        assert len(asyncio.run(served.predict(runtime.midrange_inputs(1)))) == 1
        with pytest.raises(DeadlineExceeded, match="request timeout of 0.3 s"):
            asyncio.run(served.predict(runtime.midrange_inputs(1), waited_s=0.15))
        with pytest.raises(Overloaded, match="0.4 s behind, over the 0.3 s limit"):
            served.admit(0.4)


def test_binary_tensor_input_equals_json(exported, digits):
    with TestClient(create_app(ServiceSettings(model_dir=exported, device="cpu"))) as client:
        for _ in range(200):
            if client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.02)
        payload = digits[:5].astype(np.uint8).tobytes()
        header = json.dumps({"inputs": [{"name": "input", "shape": [5, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": len(payload)}}], "outputs": [{"name": "log_px"}]}).encode()
        binary = client.post("/v2/models/tiny/infer", content=header + payload, headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"})
        assert binary.status_code == 200, binary.text
        as_json = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [5, 8, 8], "datatype": "FP32", "data": digits[:5].ravel().tolist()}], "outputs": [{"name": "log_px"}]})
        assert binary.json()["outputs"][0]["data"] == as_json.json()["outputs"][0]["data"]
        wrong = client.post("/v2/models/tiny/infer", content=header + payload[:-1], headers={"Inference-Header-Content-Length": str(len(header))})
        assert wrong.status_code == 400 and "binary_data_size" in wrong.json()["error"]
        assert client.post("/v2/models/tiny/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}).status_code == 400


def test_binary_outputs_carry_exact_values_and_mix_with_json_outputs(exported, digits):
    from service.encoding import OutputSpec, v2_binary_output

    header, data = v2_binary_output(OutputSpec("log_px", "FP64", (-1,)), np.array([-np.inf, 1.5, np.nan]))
    assert header["parameters"]["binary_data_size"] == len(data) == 24 and "data" not in header
    np.testing.assert_array_equal(np.frombuffer(data, "<f8"), [-np.inf, 1.5, np.nan])  # JSON would need null
    _, reasons = v2_binary_output(OutputSpec("rejected_by", "BYTES", (-1,)), np.array(["", "log_px"], dtype=object))
    assert reasons == b"\x00\x00\x00\x00" + b"\x06\x00\x00\x00log_px"
    assert v2_binary_output(OutputSpec("accepted", "BOOL", (-1,)), np.array([True, False]))[1] == b"\x01\x00"

    body = {"inputs": [{"name": "input", "shape": [3, 8, 8], "datatype": "FP32", "data": digits[:3].ravel().tolist()}]}
    with TestClient(create_app(ServiceSettings(model_dir=exported, device="cpu"))) as client:
        wait_ready(client)
        as_json = client.post("/v2/models/tiny/infer", json={**body, "outputs": [{"name": "label"}, {"name": "log_px"}]}).json()["outputs"]
        mixed = client.post("/v2/models/tiny/infer", json={**body, "outputs": [{"name": "label"}, {"name": "log_px", "parameters": {"binary_data": True}}]})
        everything = client.post("/v2/models/tiny/infer", json={**body, "parameters": {"binary_data_output": True}})
        refused = client.post("/v2/models/tiny/infer", json={**body, "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]})
    length = int(mixed.headers["inference-header-content-length"])
    header = json.loads(mixed.content[:length])
    assert header["outputs"][0] == as_json[0] and header["outputs"][1]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(np.frombuffer(mixed.content[length:], "<f8"), as_json[1]["data"])
    all_outputs = json.loads(everything.content[: int(everything.headers["inference-header-content-length"])])["outputs"]
    assert all("data" not in output for output in all_outputs)
    assert len(everything.content) == int(everything.headers["inference-header-content-length"]) + sum(o["parameters"]["binary_data_size"] for o in all_outputs)
    assert refused.status_code == 400 and "binary_data" in refused.json()["error"]


def test_prediction_routes_skip_the_router_and_answer_exactly_as_it_does(exported, digits, monkeypatch):
    """Every answer of the fast path (successes and errors) equals the answer FastAPI's router gives
    to the same request, and the router never sees those requests."""
    from starlette.routing import Router

    from service.fast_path import PredictionFastPath

    image = digits[0].tolist()
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8], "data": digits[0].ravel().tolist()}], "id": "a"}
    cases = [
        ("/v1/models/tiny:predict", {"json": {"instances": [image, image]}}),
        ("/v1/models/tiny:predict", {"json": {"instances": [image], "batch_test": True}}),
        ("/v2/models/tiny/infer", {"json": v2}),
        (f"/v2/models/tiny/versions/{read_manifest(exported).version}/infer", {"json": {**v2, "outputs": [{"name": "log_px"}]}}),
        ("/v2/models/tiny/versions/9/infer", {"json": v2}),  # no such version: 404
        ("/v1/models/nope:predict", {"json": {"instances": [image]}}),  # no such model: 404
        ("/v1/models/tiny:predict", {"content": b"{not json", "headers": {"content-type": "application/json"}}),  # 400
        ("/v1/models/tiny:predict", {"content": b"x", "headers": {"content-type": "text/plain"}}),  # 415
        ("/v2/models/tiny/infer", {"content": b"{}", "headers": {"content-type": "application/octet-stream"}}),  # raw bytes with no JSON header: 415
        ("/v1/models/tiny:predict", {"json": {"instances": [[[1e9] * 8] * 8]}}),  # out of the input range: 400
        ("/v2/models/tiny/infer", {"json": {**v2, "outputs": [{"name": "nope"}]}}),  # unknown output: 400
    ]
    runtime = ModelRuntime.load(exported, "cpu", "onnx")
    settings = ServiceSettings(model_dir=exported, device="cpu", backend="onnx")

    async def requests(client):
        return [await client.post(path, **options) for path, options in cases] + [await client.get("/v2/models/tiny")]  # the router's

    def answers(responses):
        return [(r.status_code, r.json(), r.headers.get("content-type")) for r in responses]

    router_call = Router.__call__

    async def only_other_routes(self, scope, receive, send):
        assert not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(("predict", "infer"))), scope["path"]
        await router_call(self, scope, receive, send)

    with monkeypatch.context() as patch:
        patch.setattr(Router, "__call__", only_other_routes)
        fast, _ = run_app(settings, runtime, requests)

    async def pass_through(self, scope, receive, send):
        await self.app(scope, receive, send)

    with monkeypatch.context() as patch:
        patch.setattr(PredictionFastPath, "__call__", pass_through)
        routed, _ = run_app(settings, runtime, requests)
    assert [status for status, _, _ in answers(fast)] == [200, 200, 200, 200, 404, 404, 400, 415, 415, 400, 400, 200]
    assert answers(fast) == answers(routed)
