"""Open Inference Protocol (KServe v2): health, server and model metadata, ``infer``. Every model
route also has its version form, ``/v2/models/{name}/versions/{version}/...``; without a version,
the model's default (newest served) version answers."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.common import ERRORS, JSONBody, answered_by, codec_post, lookup, serve_http, service_state
from service.codecs.v2 import INPUT_NAME, V2
from service.schemas import ErrorResponse

router = APIRouter(prefix="/v2", tags=["v2"])


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


@router.post("/models/{name}/infer", **codec_post(V2))
@router.post("/models/{name}/versions/{version}/infer", **codec_post(V2))
@answered_by(V2)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """One input tensor named ``input`` of shape ``[N, *input_shape]``, as JSON data or raw bytes (the
    binary tensor extension: header ``Inference-Header-Content-Length``); outputs as listed in the
    model's metadata, as JSON tensors or, asked for with ``binary_data`` (per output) or
    ``binary_data_output`` (request parameters), as raw bytes after the JSON answer. ``parameters:
    {"batch_test": true}`` adds the batch typicality test (``batch_p_value``, ``batch_is_outlier`` in
    the response's parameters)."""
    return await serve_http(request, V2, name, version)
