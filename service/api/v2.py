"""Open Inference Protocol (KServe v2): health, server and model metadata, ``infer``. Every model
route also has its version form, ``/v2/models/{name}/versions/{version}/...``; without a version,
the model's default (newest served) version answers."""
from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from service.api.common import BINARY_TYPES, ERRORS, JSONBody, json_post, lookup, read_body, service_state, serving
from service.encoding import output_tensors, v2_binary_output, v2_output
from service.inputs import InputError, decode_v2_tensor, may_hold_booleans, optional_flag, parse_json, split_binary_request
from service.schemas import ErrorResponse, InferRequest, InferResponse

router = APIRouter(prefix="/v2", tags=["v2"])
INPUT_NAME = "input"


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> JSONBody:
    state = service_state(request)
    if not state.accepting:
        return JSONBody({"ready": False, "error": state.not_ready_reason()}, status_code=503)
    return JSONBody({"ready": True})


@router.get("")
async def server_metadata(request: Request) -> dict:
    models = sorted(service_state(request).models.table.routes)
    return {"name": "diglm", "version": "0.1.0", "extensions": ["binary_tensor_data", "statistics", "model_repository"], "models": models}


@router.get("/models/{name}/ready", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/ready", responses=ERRORS)
async def model_ready(name: str, request: Request, version: str | None = None) -> dict:
    served = lookup(request, name, version)
    return {"name": served.name, "version": served.version, "ready": True}


@router.get("/models/{name}", responses=ERRORS)
@router.get("/models/{name}/versions/{version}", responses=ERRORS)
async def model_metadata(name: str, request: Request, version: str | None = None) -> dict:
    """Input and output tensors, classes, input range, the gate with its calibration, metrics, hashes;
    ``versions``: every version of the model being served, ``version``: the one described."""
    served = lookup(request, name, version)
    runtime = served.runtime
    manifest = runtime.manifest
    return {
        "name": runtime.name,
        "versions": list(service_state(request).models.table.routes[name]),
        "version": runtime.version,
        "digest": manifest.digest,
        "platform": runtime.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *runtime.input_shape]}],
        "outputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)} for spec in served.outputs],
        "task": runtime.task,
        "classes": manifest.classes,
        "input_range": manifest.input_range,
        "input_note": "values in the scale the model was trained on (see input_range); a leading channel of 1 is optional",
        "gate": manifest.gate.model_dump(mode="json"),
        "metrics": manifest.metrics,
        "files": manifest.files,
        "device": str(runtime.device),
    }


TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}


@router.get("/models/{name}/config", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/config", responses=ERRORS)
async def model_config(name: str, request: Request, version: str | None = None) -> dict:
    """The model's configuration in Triton's layout (what tritonclient's get_model_config reads)."""
    state = service_state(request)
    served = lookup(request, name, version)
    runtime = served.runtime
    config = {
        "name": runtime.name,
        "platform": runtime.platform,
        "max_batch_size": state.settings.max_instances,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": list(runtime.input_shape)}],
        "output": [{"name": spec.name, "data_type": TRITON_TYPES[spec.datatype], "dims": list(spec.shape[1:]) or [1]} for spec in served.outputs],
    }
    if state.settings.batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(state.settings.max_delay_ms * 1000)}
    return config


@router.get("/models/{name}/drift", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/drift", responses=ERRORS)
async def model_drift(name: str, request: Request, version: str | None = None) -> dict:
    """The drift monitor's sliding window of the inputs this version served against the gate's
    calibration split (``service.drift``): per-test statistics and p-values, the combined p-value
    and ``is_drift``."""
    served = lookup(request, name, version)
    return {"name": served.name, "version": served.version, **served.drift.report().as_dict()}


@router.get("/models/{name}/stats", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/stats", responses=ERRORS)
async def model_statistics(name: str, request: Request, version: str | None = None) -> dict:
    """Inference statistics of the version since it was loaded (the statistics extension: counts and
    nanoseconds)."""
    served = lookup(request, name, version)
    totals = served.metrics.statistics
    return {
        "model_stats": [
            {
                "name": served.name,
                "version": served.version,
                "last_inference": totals.last_inference_ms,
                "inference_count": totals.instances,
                "execution_count": totals.executions,
                "inference_stats": {
                    "success": {"count": totals.requests, "ns": totals.queue_ns + totals.compute_ns},
                    "fail": {"count": 0, "ns": 0},
                    "queue": {"count": totals.requests, "ns": totals.queue_ns},
                    "compute_infer": {"count": totals.executions, "ns": totals.compute_ns},
                },
            }
        ]
    }


@router.post("/models/{name}/infer", **json_post(InferResponse, InferRequest, binary=True))
@router.post("/models/{name}/versions/{version}/infer", **json_post(InferResponse, InferRequest, binary=True))
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """One input tensor named ``input`` of shape ``[N, *input_shape]``, as JSON data or raw bytes (the
    binary tensor extension: header ``Inference-Header-Content-Length``); outputs as listed in the
    model's metadata, as JSON tensors or, asked for with ``binary_data`` (per output) or
    ``binary_data_output`` (request parameters), as raw bytes after the JSON answer. ``parameters:
    {"batch_test": true}`` adds the batch typicality test (``batch_p_value``, ``batch_is_outlier`` in
    the response's parameters)."""
    with serving(request, name, version) as served:
        return await _infer(served, request)


async def _infer(served, request: Request) -> Response:
    state, runtime = service_state(request), served.runtime
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None:
        raw = await read_body(request)
        body, binary, booleans = parse_json(raw), b"", may_hold_booleans(raw)
    else:
        booleans = True  # a JSON header only: any data is in the binary part
        body, binary = split_binary_request(await read_body(request, BINARY_TYPES), header_length)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
        raise InputError(f'request must hold "inputs": a list with one tensor named {INPUT_NAME!r}')
    tensor = body["inputs"][0]
    if tensor.get("name") != INPUT_NAME:
        raise InputError(f"unknown input {tensor.get('name')!r}; the model's input is named {INPUT_NAME!r}")
    inputs = decode_v2_tensor(tensor, runtime.input_shape, state.settings.max_instances, binary, runtime.input_range, booleans)
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InputError('"parameters" must be an object')
    batch_test = optional_flag((parameters or {}).get("batch_test"), 'parameters "batch_test"')
    all_binary = optional_flag((parameters or {}).get("binary_data_output"), 'parameters "binary_data_output"')
    specs = {spec.name: spec for spec in served.outputs}
    requested = _requested_outputs(body.get("outputs"), list(specs), all_binary)
    prediction = await served.predict(inputs, request)
    tensors = output_tensors(prediction, runtime.gate.outlier_threshold)
    outputs, chunks = [], []
    for name, binary in requested:
        if binary:
            header, data = v2_binary_output(specs[name], tensors[name])
            outputs.append(header)
            chunks.append(data)
        else:
            outputs.append(v2_output(specs[name], tensors[name]))
    response = {"model_name": runtime.name, "model_version": runtime.version, "outputs": outputs}
    if body.get("id") is not None:
        response["id"] = str(body["id"])
    if batch_test:
        p_value, is_outlier = runtime.gate.batch_test(prediction.log_px)
        response["parameters"] = {"batch_p_value": p_value, "batch_is_outlier": is_outlier}
    if not chunks:
        return JSONBody(response)
    header = orjson.dumps(response)
    return Response(header + b"".join(chunks), media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(len(header))})


def _requested_outputs(outputs, available: list[str], all_binary: bool) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to return: those the request lists (``binary_data`` per
    output, default ``all_binary``), else every one."""
    if outputs is None:
        return [(name, all_binary) for name in available]
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise InputError('"outputs" must be a list of objects {"name": ..., "parameters": {"binary_data": true}}')
    requested = []
    for output in outputs:
        parameters = output.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputError('output "parameters" must be an object')
        binary = parameters.get("binary_data")
        requested.append((output.get("name"), all_binary if binary is None else optional_flag(binary, 'output parameters "binary_data"')))
    unknown = [name for name, _ in requested if name not in available]
    if unknown:
        raise InputError(f"unknown outputs {unknown}; available: {available}")
    return requested or [(name, all_binary) for name in available]
