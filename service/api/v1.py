"""KServe v1: server liveness ``GET /``, model readiness ``GET /v1/models/{name}``, and ``POST
/v1/models/{name}:predict`` with ``{"instances": [...]}`` (``service.codecs.v1``)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from service.api.common import ERRORS, answered_by, codec_post, lookup, serve_http
from service.codecs.v1 import V1

router = APIRouter(prefix="/v1", tags=["v1"])
liveness = APIRouter(tags=["v1"])


@liveness.get("/")
async def live() -> dict:
    """KServe v1 server liveness."""
    return {"status": "alive"}


@router.post("/models/{name}:predict", **codec_post(V1))
@answered_by(V1)
async def predict(name: str, request: Request) -> Response:
    """Predictions, log p(x) (nats), the gate's decision and its evidence for each instance, in
    request order, from the model's default version. ``"batch_test": true`` adds ``batch``: a
    typicality test of the whole request."""
    return await serve_http(request, V1, name)


@router.get("/models/{name}", responses=ERRORS)
async def model_status(name: str, request: Request) -> dict:
    if name.endswith(":predict"):  # GET on the prediction route, which this path pattern also matches
        raise HTTPException(405, "use POST to predict", headers={"Allow": "POST"})
    served = lookup(request, name)
    return {"name": served.name, "version": served.version, "ready": True}
