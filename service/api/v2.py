"""Open Inference Protocol (KServe v2): health, server and model metadata, ``infer``. Every model
route also has its version form, ``/v2/models/{name}/versions/{version}/...``; without a version,
the model's default (newest served) version answers."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from service import descriptions
from service.api.common import ERRORS, JSONBody, answered_by, codec_post, lookup, serve_http, service_state
from service.codecs.v2 import V2
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
    return descriptions.server_metadata(service_state(request))


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
    return descriptions.model_metadata(service_state(request), lookup(request, name, version))


@router.get("/models/{name}/config", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/config", responses=ERRORS)
async def model_config(name: str, request: Request, version: str | None = None) -> dict:
    """The model's configuration in Triton's layout (what tritonclient's get_model_config reads)."""
    return descriptions.model_config(service_state(request), lookup(request, name, version))


@router.get("/models/{name}/drift", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/drift", responses=ERRORS)
async def model_drift(name: str, request: Request, version: str | None = None) -> dict:
    """The drift monitor's sliding window of the inputs this version served against the gate's
    calibration split (``service.drift``): per-test statistics and p-values, the combined p-value
    and ``is_drift``."""
    served = lookup(request, name, version)
    return {"name": served.name, "version": served.version, **served.drift.report().as_dict()}


@router.get("/models/{name}/gate", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/gate", responses=ERRORS)
async def gate_evidence(name: str, request: Request, version: str | None = None, bins: int = Query(descriptions.GATE_HISTOGRAM_BINS, ge=1, le=1000)) -> dict:
    """What the gate judges an input against: per gate score, its outlying tail, its weight and the
    calibration split's distribution (count, range, quantiles, a histogram of ``bins`` bins); alpha,
    the method and the rule that combines the scores' p-values into one."""
    return descriptions.gate_evidence(lookup(request, name, version), bins)


@router.get("/models/{name}/rejections", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/rejections", responses=ERRORS)
async def recent_rejections(name: str, request: Request, version: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict:
    """The model's latest rejected instances, newest first (of every version it serves, or of
    ``version``): each one's decision record (``service.decision_log``) with its input, from the
    last ``DIGLM_RECENT_REJECTIONS`` the service keeps in memory; empty when it keeps none."""
    state = service_state(request)
    served = lookup(request, name, version)
    recent = state.decisions.recent
    found = [] if recent is None else recent.latest(served.name, version and served.version, limit)
    return {"name": served.name, "version": version and served.version, "kept": 0 if recent is None else recent.capacity, "rejections": found}


@router.get("/models/{name}/stats", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/stats", responses=ERRORS)
async def model_statistics(name: str, request: Request, version: str | None = None) -> dict:
    """Inference statistics of the version since it was loaded (the statistics extension: counts and
    nanoseconds)."""
    return descriptions.model_statistics(lookup(request, name, version))


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
