"""The model repository extension of the Open Inference Protocol (Triton's): the index of the models
on disk and their states, load (or reload: a hot swap to what the version policy selects now) and
unload. Admin routes: with API keys configured they need an admin key (``service.auth``)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from service.api.common import ERRORS, read_body, service_state
from inference.errors import BadInput
from service.inputs import check_load_parameters, optional_object, parse_json

router = APIRouter(prefix="/v2/repository", tags=["model repository"])
ADMIN_ERRORS = {**ERRORS, 401: ERRORS[400], 403: ERRORS[400], 409: ERRORS[400]}


async def _options(request: Request, allowed: set[str]) -> dict:
    """The optional JSON object body; a 400 for anything but ``allowed`` keys."""
    raw = await read_body(request, optional=True)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(f"unknown fields {unknown}; this route takes {sorted(allowed) or 'no body'}")
    return body


@router.post("/index", responses=ADMIN_ERRORS)
async def index(request: Request) -> list[dict]:
    """Every version of every model in the repository, and the loaded ones, with its state (READY,
    UNLOADING, UNAVAILABLE) and, when not ready, the reason. ``{"ready": true}``: only ready ones."""
    body = await _options(request, {"ready"})
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadInput('"ready" must be true or false')
    models = service_state(request).models
    return [entry.as_dict() for entry in models.index(await asyncio.to_thread(models.scan), ready_only)]


def _no_parameters(body: dict) -> None:
    check_load_parameters(optional_object(body.get("parameters") or None, '"parameters"'))  # empty as absent


@router.post("/models/{name}/load", responses=ADMIN_ERRORS)
async def load(name: str, request: Request) -> Response:
    """Load the versions the model's policy selects from its folders, or reload: new or rewritten
    versions are verified and warmed up, then take the traffic at once; versions no longer selected
    finish their requests and are released. A version that fails keeps no traffic and the serving
    ones go on (the error says so). An empty 200 on success."""
    _no_parameters(await _options(request, {"parameters"}))
    await service_state(request).models.load(name)
    return Response(status_code=200)


@router.post("/models/{name}/unload", responses=ADMIN_ERRORS)
async def unload(name: str, request: Request) -> Response:
    """Stop routing to every version of the model; answers once their requests are done and they are
    released. An empty 200 on success (also for a model that was not loaded)."""
    _no_parameters(await _options(request, {"parameters"}))
    await service_state(request).models.unload(name)
    return Response(status_code=200)
