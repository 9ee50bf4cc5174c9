"""Helpers the routers share: the app state, the size-limited JSON body, the orjson response."""
from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request, Response
from pydantic import BaseModel

from service.inputs import InputError, parse_json
from service.schemas import ErrorResponse
from service.state import ServiceState

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 503)}


def json_post(response: type[BaseModel], request: type[BaseModel]) -> dict:
    """``router.post`` options of a hot-path endpoint: orjson response, documented response and error
    models, and the request schema for OpenAPI (the body itself is decoded by ``service.inputs``)."""
    return {
        "response_class": JSONBody,
        "responses": {200: {"model": response}, **ERRORS},
        "openapi_extra": {"requestBody": {"content": {"application/json": {"schema": request.model_json_schema()}}, "required": True}},
    }


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


async def read_body(request: Request) -> bytes:
    """The raw body; 413 when it is over ``max_body_bytes`` (checked before reading it all)."""
    limit = service_state(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(f"request body of {declared} bytes is over the limit of {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InputError(f"request body is over the limit of {limit} bytes", status=413)
    if not body:
        raise InputError("request body is empty")
    return bytes(body)


async def json_body(request: Request) -> Any:
    """The parsed JSON body (size-limited like ``read_body``)."""
    return parse_json(await read_body(request))
