"""KServe v1: ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}``."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from service.api.common import ERRORS, JSONBody, json_post, lookup, read_body, service_state, serving
from service.encoding import instance_records
from service.inputs import decode_v1, may_hold_booleans, optional_flag, parse_json
from service.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"])


@router.post("/models/{name}:predict", **json_post(PredictResponse, PredictRequest))
async def predict(name: str, request: Request) -> JSONBody:
    """Predictions, log p(x) (nats), the gate's decision and its evidence for each instance, in
    request order, from the model's default version. ``"batch_test": true`` adds ``batch``: a
    typicality test of the whole request."""
    with serving(request, name) as served:
        runtime = served.runtime
        raw = await read_body(request)
        body = parse_json(raw)
        inputs = decode_v1(body, runtime.input_shape, service_state(request).settings.max_instances, runtime.input_range, may_hold_booleans(raw))
        batch_test = optional_flag(body.get("batch_test"), '"batch_test"')
        prediction = await served.predict(inputs, request)
    response = {
        "predictions": instance_records(prediction, runtime.gate.outlier_threshold),
        "model_name": runtime.name,
        "model_version": runtime.version,
    }
    if batch_test:
        p_value, is_outlier = runtime.gate.batch_test(prediction.log_px)
        response["batch"] = {"is_outlier": is_outlier, "p_value": p_value, "size": len(inputs)}
    return JSONBody(response)


@router.get("/models/{name}", responses=ERRORS)
async def model_status(name: str, request: Request) -> dict:
    if name.endswith(":predict"):  # GET on the prediction route, which this path pattern also matches
        raise HTTPException(405, "use POST to predict", headers={"Allow": "POST"})
    served = lookup(request, name)
    return {"name": served.name, "version": served.version, "ready": True}
