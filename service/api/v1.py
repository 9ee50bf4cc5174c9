"""KServe v1: ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}``."""
from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.common import ERRORS, JSONBody, json_body, json_post, service_state
from service.encoding import instance_records
from service.inputs import decode_v1
from service.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"])


@router.post("/models/{name}:predict", **json_post(PredictResponse, PredictRequest))
async def predict(name: str, request: Request) -> JSONBody:
    """Predictions, log p(x) (nats) and the gate's decision for each instance, in request order."""
    state = service_state(request)
    runtime = state.require_model(name)
    x = decode_v1(await json_body(request), runtime.input_shape, state.settings.max_instances)
    result = await state.predict(runtime, x)
    return JSONBody(
        {"predictions": instance_records(result, runtime.tau), "model_name": runtime.name, "model_version": runtime.version}
    )


@router.get("/models/{name}", responses=ERRORS)
async def model_status(name: str, request: Request) -> dict:
    runtime = service_state(request).require_model(name)
    return {"name": runtime.name, "version": runtime.version, "ready": True}
