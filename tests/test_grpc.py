"""The Open Inference Protocol over gRPC on a live service (a repository of one model in two
versions, API keys on): tritonclient.grpc's every call against REST's answers (in a process of its
own, ``tests.grpc_client``), typed and raw tensors, each error code with REST's message, deadlines
and cancellation dropping queued work, health and reflection, and generated malformed messages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st

from service.app import create_app
from service.codecs.grpc import INPUT_CONTENTS, OUTPUT_CONTENTS
from service.inputs import V2_DTYPES
from service.protos import POOL, SERVICE, message
from service.settings import ServiceSettings
from tests.agreement import held_out_digits
from tests.conftest import ROOT, free_port, served_in_thread
from training.cli import main as training_main

grpc = pytest.importorskip("grpc")

CONFIGS = ROOT / "training" / "configs"
USER, ADMIN = "user-key", "admin-key"
LIMITS = {"max_instances": 32, "max_body_bytes": 64 * 1024, "request_timeout_s": 1.0, "max_queue": 20}


@dataclass
class Live:
    """The running service: its REST base URL, gRPC address, state, and the model's slow-down switch
    (while ``delay_s`` is set, every forward pass first sleeps that long and records its size in ``runs``)."""

    rest: str
    grpc: str
    state: object
    delay_s: float = 0.0
    runs: list = field(default_factory=list)

    def slow_down(self, delay_s: float) -> None:
        """From now on every forward pass of the versions loaded now sleeps ``delay_s`` first (0: none)."""
        for served in self.state.models.table.loaded():
            runtime = served.runtime
            if not getattr(runtime, "slowed", False):
                runtime.predict, runtime.slowed = self._slowed(runtime.predict), True
        self.delay_s = delay_s

    def _slowed(self, predict):
        def slowed(inputs):
            if self.delay_s:
                self.runs.append(len(inputs))
                time.sleep(self.delay_s)
            return predict(inputs)

        return slowed


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    checkpoint = root / "trained"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(checkpoint), "--quiet", "--set", "train.epochs=2", "--onnx"]) == 0
    for version in ("1", "2"):
        shutil.copytree(checkpoint, root / "repository" / "tiny" / version)
    port, grpc_port = free_port(), free_port()
    settings = ServiceSettings(
        model_repository=root / "repository", version_policy=["all"], device="cpu", port=port, grpc_port=grpc_port, log_level="warning",
        api_keys=[USER], admin_api_keys=[ADMIN], warmup_batch=1, **LIMITS,
    )
    app = create_app(settings)
    state = app.state.service
    with served_in_thread(app, port, lambda: state.accepting):
        yield Live(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", state)


class Stub:
    """Calls of ``inference.GRPCInferenceService`` with the service's own messages (``service.protos``)."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.methods = {method.name: method for method in POOL.FindServiceByName(SERVICE).methods}

    def method(self, name: str):
        method = self.methods[name]
        return self.channel.unary_unary(
            f"/{SERVICE}/{name}", request_serializer=lambda request: request.SerializeToString(), response_deserializer=message(method.output_type.name).FromString
        )

    def __call__(self, method: str, request=None, /, key: str | None = USER, timeout: float = 30, **fields):
        request = request if request is not None else message(self.methods[method].input_type.name)(**fields)
        return self.method(method)(request, timeout=timeout, metadata=[("authorization", f"Bearer {key}")] if key else None)

    def future(self, name: str, request, timeout: float = 30):
        return self.method(name).future(request, timeout=timeout, metadata=[("x-api-key", USER)])


@pytest.fixture(scope="module")
def stub(live) -> Stub:
    return Stub(live.grpc)


def infer_request(x: np.ndarray, datatype: str = "FP32", raw: bool = True, outputs=(), **parameters):
    """A ModelInferRequest for version 1 of ``tiny``: ``x`` raw (little-endian) or typed."""
    request = message("ModelInferRequest")(model_name="tiny", model_version="1")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=x.shape)
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(x, dtype=V2_DTYPES[datatype]).tobytes())
    else:
        getattr(tensor.contents, INPUT_CONTENTS[datatype]).extend(x.ravel().tolist())
    for name, binary in outputs:
        output = request.outputs.add(name=name)
        if binary is not None:
            output.parameters["binary_data"].bool_param = binary
    for name, value in parameters.items():
        request.parameters[name].bool_param = value
    return request


def outputs_of(response) -> dict[str, np.ndarray]:
    """Every output of a ModelInferResponse as an array: from raw_output_contents or typed contents."""
    arrays = {}
    for index, output in enumerate(response.outputs):
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            if output.datatype == "BYTES":
                items, offset = [], 0
                while offset < len(raw):
                    size = int.from_bytes(raw[offset:offset + 4], "little")
                    items.append(raw[offset + 4:offset + 4 + size].decode())
                    offset += 4 + size
                array = np.array(items, dtype=object)
            else:
                array = np.frombuffer(raw, {"FP64": "<f8", "INT64": "<i8", "BOOL": "?"}[output.datatype])
        else:
            values = list(getattr(output.contents, OUTPUT_CONTENTS[output.datatype]))
            array = np.array([item.decode() for item in values], dtype=object) if output.datatype == "BYTES" else np.array(values)
        arrays[output.name] = array.reshape(tuple(output.shape))
    return arrays


def rest(live: Live, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, live.rest + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30, **kwargs)


def rest_outputs(answer: dict) -> dict[str, np.ndarray]:
    """A REST v2 JSON answer's outputs as arrays (null, a non-finite float, as NaN)."""
    arrays = {}
    for output in answer["outputs"]:
        data = output["data"]
        if output["datatype"] == "FP64":
            data = [np.nan if value is None else value for value in data]
        arrays[output["name"]] = np.array(data, dtype=object if output["datatype"] == "BYTES" else None).reshape(output["shape"])
    return arrays


def assert_equal_answers(ours: dict, theirs: dict) -> None:
    """The same outputs, floats within float32 rounding (non-finite ones as NaN), the rest exactly."""
    assert list(ours) == list(theirs)
    for name, array in ours.items():
        if array.dtype.kind == "f":
            np.testing.assert_allclose(np.where(np.isfinite(array), array, np.nan), np.asarray(theirs[name], dtype=float), rtol=1e-6, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(array, theirs[name], err_msg=name)


def test_the_protocol_is_the_published_one():
    """Every message, field number and type of ``service/protos`` as in tritonclient's descriptors;
    and the vendored descriptor set is what ``make protos`` compiles now."""
    found = json.loads(subprocess.run([sys.executable, "-m", "tests.grpc_client", "protocol"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert found["differences"] == {} and len(found["checked"]) >= 30
    from grpc_tools import protoc

    protos = ROOT / "service" / "protos"
    fresh = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()) / "inference.binpb"
    assert protoc.main(["protoc", f"-I{protos}", f"--descriptor_set_out={fresh}", str(protos / "inference.proto")]) == 0
    assert fresh.read_bytes() == (protos / "inference.binpb").read_bytes(), "run `make protos`"


def test_tritonclient_grpc_every_call_equals_rest(live, tmp_path):
    x = held_out_digits(17)[0].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run([sys.executable, "-m", "tests.grpc_client", "calls", live.grpc, str(tmp_path / "x.npy"), USER, ADMIN], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"] == {"": True, "1": True, "2": True, "9": False} and not seen["unknown_ready"]
    assert seen["server_metadata"]["name"] == "diglm" and "model_repository" in seen["server_metadata"]["extensions"]
    for version in ("1", "2"):  # the protocol's fields of REST's metadata, identical
        expected = json_format.ParseDict(rest(live, "GET", f"/v2/models/tiny/versions/{version}").json(), message("ModelMetadataResponse")(), ignore_unknown_fields=True)
        assert json_format.ParseDict(seen["metadata"][version], message("ModelMetadataResponse")()) == expected
    expected_config = json_format.ParseDict(rest(live, "GET", "/v2/models/tiny/config").json(), message("ModelConfig")())
    assert json_format.ParseDict(seen["config"]["config"], message("ModelConfig")()) == expected_config
    described = {output["name"]: output for output in rest(live, "GET", "/v2/models/tiny").json()["outputs"]}
    for size, answer in seen["infer"].items():
        size = int(size)
        assert answer["id"] == f"r{size}"
        body = {"inputs": [{"name": "input", "shape": [size, 8, 8], "datatype": "FP32", "data": x[:size].ravel().tolist()}]}
        over_rest = rest_outputs(rest(live, "POST", "/v2/models/tiny/versions/1/infer", json=body).json())
        for name, output in answer["outputs"].items():  # REST's names, datatypes and shapes, BYTES included
            assert output["datatype"] == described[name]["datatype"] and output["shape"] == list(over_rest[name].shape), name
        ours = {name: np.array(output["data"], dtype=object if output["datatype"] == "BYTES" else None).reshape(output["shape"]) for name, output in answer["outputs"].items()}
        assert_equal_answers(ours, over_rest)
    assert seen["chosen_outputs"] == ["log_px", "accepted"]
    statistics = seen["statistics"]["model_stats"][0]
    assert statistics["version"] == "1" and int(statistics["inference_count"]) >= 1 + 3 + 17
    assert {(entry["version"], entry["state"]) for entry in seen["index"]["models"]} == {("1", "READY"), ("2", "READY")}
    assert not seen["after_unload"]["ready"] and {entry["state"] for entry in seen["after_unload"]["index"]["models"]} == {"UNAVAILABLE"}
    assert seen["after_load"]
    errors = seen["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND" and "'nope'" in errors["unknown_model"]["message"]
    assert errors["no_key"]["status"] == errors["wrong_key"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert errors["user_key_on_load"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert errors["load_with_config"]["status"] == "StatusCode.INVALID_ARGUMENT" and "not supported" in errors["load_with_config"]["message"]
    for version in ("1", "2"):  # the reload left both versions serving
        assert rest(live, "GET", f"/v2/models/tiny/versions/{version}/ready").status_code == 200


def test_raw_and_typed_tensors_and_outputs_agree(live, stub):
    x = held_out_digits(5)[0]
    raw = stub("ModelInfer", infer_request(x.astype(np.float32)))
    assert len(raw.raw_output_contents) == len(raw.outputs) and not raw.outputs[0].HasField("contents")
    expected = outputs_of(raw)
    for datatype in ("FP32", "FP64", "UINT8", "INT64"):  # digits are 0..16: exact in every type
        for as_raw in (True, False):
            answer = stub("ModelInfer", infer_request(x.astype(V2_DTYPES[datatype]), datatype, raw=as_raw))
            assert_equal_answers(outputs_of(answer), expected)
    typed = stub("ModelInfer", infer_request(x.astype(np.float32), outputs=[(name, False) for name in expected]))
    assert not typed.raw_output_contents and typed.outputs[0].HasField("contents")
    assert_equal_answers(outputs_of(typed), expected)
    typed_all = stub("ModelInfer", infer_request(x.astype(np.float32), binary_data_output=False))
    assert not typed_all.raw_output_contents and [output.name for output in typed_all.outputs] == list(expected)
    chosen = stub("ModelInfer", infer_request(x.astype(np.float32), outputs=[("rejected_by", None), ("log_px", None)], batch_test=True))
    assert [output.name for output in chosen.outputs] == ["rejected_by", "log_px"] and outputs_of(chosen)["rejected_by"].dtype == object
    over_rest = rest(live, "POST", "/v2/models/tiny/versions/1/infer", json={
        "inputs": [{"name": "input", "shape": [5, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}], "parameters": {"batch_test": True},
    }).json()["parameters"]
    assert chosen.parameters["batch_p_value"].double_param == pytest.approx(over_rest["batch_p_value"], rel=1e-9)
    assert chosen.parameters["batch_is_outlier"].bool_param == over_rest["batch_is_outlier"]


def settle(stub: Stub) -> None:
    """20 fast calls: the batcher's estimate of the wait (past which it refuses calls, 503 /
    UNAVAILABLE) forgets the slow batches of earlier tests."""
    request = infer_request(held_out_digits(1)[0].astype(np.float32))
    for _ in range(20):
        stub("ModelInfer", request)


def test_rest_and_grpc_calls_fill_the_same_batches(live, stub):
    """One version, one batcher: a gRPC call and a REST request queued together run in one forward pass."""
    x = held_out_digits(6)[0]
    body = {"inputs": [{"name": "input", "shape": [3, 8, 8], "datatype": "FP32", "data": x[3:].ravel().tolist()}]}
    settle(stub)
    live.runs.clear()
    live.slow_down(0.5)
    try:
        running = stub.future("ModelInfer", infer_request(x[:1].astype(np.float32)))
        time.sleep(0.2)  # its batch is running: the next two queue together
        over_grpc = stub.future("ModelInfer", infer_request(x[1:3].astype(np.float32)))
        with ThreadPoolExecutor(1) as pool:
            over_rest = pool.submit(rest, live, "POST", "/v2/models/tiny/versions/1/infer", json=body)
            assert running.result().outputs and over_grpc.result().outputs and over_rest.result().status_code == 200
    finally:
        live.slow_down(0.0)
    assert live.runs == [1, 5]


def code_and_message(call) -> tuple:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details()


def test_invalid_requests_get_rests_message(live, stub):
    """INVALID_ARGUMENT with the one-line message the same request gets as REST's 400."""
    x = held_out_digits(2)[0]
    cases = [  # (name, datatype, shape, values, outputs)
        ("image", "FP32", [2, 8, 8], x.ravel().tolist(), []),
        ("input", "FP8", [2, 8, 8], x.ravel().tolist(), []),
        ("input", "FP32", [2, 8, 8], x.ravel().tolist()[:-3], []),
        ("input", "FP32", [2, 9, 7], x.ravel().tolist()[:126], []),
        ("input", "FP32", [2, 8, 8], (x.ravel() * 1000).tolist(), []),
        ("input", "FP32", [2, 8, 8], x.ravel().tolist(), ["label", "wrong"]),
        ("input", "FP32", [0, 8, 8], [], []),
    ]
    for name, datatype, shape, values, outputs in cases:
        body = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": values}], "outputs": [{"name": output} for output in outputs]}
        over_rest = rest(live, "POST", "/v2/models/tiny/versions/1/infer", json=body)
        assert over_rest.status_code == 400, body
        request = message("ModelInferRequest")(model_name="tiny", model_version="1", inputs=[{"name": name, "datatype": datatype, "shape": shape}])
        request.inputs[0].contents.fp32_contents.extend(values)
        request.outputs.extend([message("ModelInferRequest.InferRequestedOutputTensor")(name=output) for output in outputs])
        assert code_and_message(lambda: stub("ModelInfer", request)) == (grpc.StatusCode.INVALID_ARGUMENT, over_rest.json()["error"])
    both = infer_request(x.astype(np.float32))
    both.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    wrong_field = infer_request(x.astype(np.float32), "FP64", raw=False)
    wrong_field.inputs[0].datatype = "FP32"
    short_raw = infer_request(x.astype(np.float32))
    short_raw.raw_input_contents[0] = short_raw.raw_input_contents[0][:-1]
    mixed = infer_request(x.astype(np.float32), outputs=[("label", True), ("log_px", False)])
    for request, says in [(both, "both raw_input_contents and contents"), (wrong_field, "go in contents.fp32_contents"), (short_raw, "511 bytes of FP32"), (mixed, "all raw")]:
        code, details = code_and_message(lambda: stub("ModelInfer", request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details, details


def test_error_codes_limits_and_keys(live, stub):
    x = held_out_digits(40)[0].astype(np.float32)
    too_many = code_and_message(lambda: stub("ModelInfer", infer_request(x)))
    over_rest = rest(live, "POST", "/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [40, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert over_rest.status_code == 413 and too_many == (grpc.StatusCode.RESOURCE_EXHAUSTED, over_rest.json()["error"])
    huge = infer_request(x[:1])
    huge.raw_input_contents[0] = bytes(LIMITS["max_body_bytes"] + 1)
    assert code_and_message(lambda: stub("ModelInfer", huge))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    unknown = infer_request(x[:1])
    unknown.model_version = "7"
    assert code_and_message(lambda: stub("ModelInfer", unknown))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_message(lambda: stub("ModelMetadata", name="tiny", key=None))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code_and_message(lambda: stub("ModelMetadata", name="tiny", key="wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code_and_message(lambda: stub("RepositoryIndex", key=USER))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert stub("RepositoryIndex", key=ADMIN).models and stub("ModelMetadata", name="tiny", key=ADMIN).name == "tiny"
    assert stub("ServerLive", key=None).live and stub("ServerReady", key=None).ready  # probes are open, as over REST


def test_deadlines_overload_and_cancellation(live, stub):
    """A call whose client deadline passes, or that is cancelled, has its queued work dropped; the
    service's own deadline answers DEADLINE_EXCEEDED with REST's message; a full queue UNAVAILABLE with
    retry-after. Each counted in the request metrics."""
    x = held_out_digits(21)[0].astype(np.float32)
    settle(stub)
    live.runs.clear()
    live.slow_down(0.6)
    running = stub.future("ModelInfer", infer_request(x[:1]))
    time.sleep(0.2)  # its batch is running
    expired = stub.future("ModelInfer", infer_request(x[1:2]), timeout=0.2)
    cancelled = stub.future("ModelInfer", infer_request(x[2:3]))
    time.sleep(0.1)
    assert cancelled.cancel()
    with pytest.raises(grpc.RpcError) as late:
        expired.result()
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert running.result().model_version == "1"
    time.sleep(0.3)
    assert live.runs == [1]  # the expired and the cancelled calls never ran
    live.slow_down(1.5)
    code, details = code_and_message(lambda: stub("ModelInfer", infer_request(x[:1])))
    over_rest = rest(live, "POST", "/v2/models/tiny/versions/1/infer", json={"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": x[0].ravel().tolist()}]})
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and over_rest.status_code == 504 and details == over_rest.json()["error"]
    live.slow_down(0.0)
    time.sleep(1.6)  # the two slow batches end before the next call (or test)
    with pytest.raises(grpc.RpcError) as full:
        stub("ModelInfer", infer_request(x))  # 21 instances, the queue holds 20
    assert full.value.code() == grpc.StatusCode.UNAVAILABLE and ("retry-after", "1") in full.value.trailing_metadata()
    metrics = rest(live, "GET", "/metrics").text
    for status in ("504", "499", "503"):
        assert f'diglm_requests_total{{endpoint="/{SERVICE}/ModelInfer",model="tiny",protocol="grpc",status="{status}",version="1"}}' in metrics, status


def test_health_readiness_and_reflection(live, stub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    health = health_pb2_grpc.HealthStub(stub.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    live.state.draining = True  # what SIGTERM sets
    try:
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not stub("ServerReady").ready
        watched = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert next(watched).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        live.state.draining = False
    assert next(watched).status == health_pb2.HealthCheckResponse.SERVING  # a watcher sees the change (within 0.5 s)
    watched.cancel()
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(stub.channel)
    assert SERVICE in database.get_services() and "grpc.health.v1.Health" in database.get_services()
    described = database.FindFileContainingSymbol(f"{SERVICE}")
    assert "ModelInfer" in [method.name for method in described.service[0].method]


DATATYPES = [*V2_DTYPES, "BOOL", "BYTES", "", "fp32", "FP8"]
CONTENTS = {
    "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1), "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1), "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=8),
}
PARAMETER = st.one_of(
    st.builds(lambda v: {"bool_param": v}, st.booleans()), st.builds(lambda v: {"int64_param": v}, st.integers(-5, 5)),
    st.builds(lambda v: {"string_param": v}, st.text(max_size=5)), st.builds(lambda v: {"double_param": v}, st.floats()), st.just({}),
)


@st.composite
def malformed_requests(draw):
    """A ModelInferRequest that may be wrong anywhere: datatype, shape against the contents' length,
    raw contents of any size, raw and typed at once, values in any typed field, unknown outputs,
    parameters of the wrong kind."""
    request = message("ModelInferRequest")(model_name="tiny", model_version=draw(st.sampled_from(["", "1", "2"])), id=draw(st.text(max_size=4)))
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 9)) == 0 else 1):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["input", "input", "x", ""])), datatype=draw(st.sampled_from(DATATYPES)),
            shape=draw(st.lists(st.integers(-2, 40), max_size=4) | st.just([1, 8, 8]) | st.just([2, 64])),
        )
        for name in draw(st.lists(st.sampled_from(list(CONTENTS)), max_size=2, unique=True)):
            getattr(tensor.contents, name).extend(draw(st.lists(CONTENTS[name], max_size=140)))
    for _ in range(draw(st.integers(0, 2))):
        request.raw_input_contents.append(draw(st.binary(max_size=600) | st.just(bytes(256)) | st.just(bytes(512))))
    for name in draw(st.lists(st.sampled_from(["label", "log_px", "rejected_by", "nope", ""]), max_size=3)):
        output = request.outputs.add(name=name)
        output.parameters["binary_data"].MergeFrom(message("InferParameter")(**draw(PARAMETER)))
    for name in draw(st.lists(st.sampled_from(["batch_test", "binary_data_output", "other"]), max_size=2, unique=True)):
        request.parameters[name].MergeFrom(message("InferParameter")(**draw(PARAMETER)))
    return request


EXAMPLES = int(os.environ.get("GRPC_FUZZ_EXAMPLES", "300"))  # the run: 10,000


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(request=malformed_requests())
def test_malformed_messages_answer_invalid_argument(live, stub, request):
    """Never UNKNOWN, INTERNAL, a hang or a crash: INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for too
    many instances), or an answer where the message happens to be valid."""
    try:
        answer = stub("ModelInfer", request, timeout=10)
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (error.code(), error.details())
        assert error.details() and "\n" not in error.details()
    else:
        event("OK")
        assert answer.model_name == "tiny" and answer.outputs


@hypothesis_settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300) | st.just(b"\x0a\xff"))
def test_bytes_that_are_no_message_answer_invalid_argument(live, stub, raw):
    """Bytes the protocol's message cannot be parsed from: INVALID_ARGUMENT naming the message, not
    grpc's UNKNOWN (bytes that happen to parse are checked like any request)."""
    call = stub.channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes as they are
    try:
        call(raw, timeout=10, metadata=[("x-api-key", USER)])
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND), (error.code(), error.details())
        if "not a valid" in error.details():
            assert error.details() == "the request is not a valid ModelInferRequest message"

