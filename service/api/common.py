"""Helpers the routers share: the app state, the size-limited JSON body, the orjson response."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from inference.inputs import InvalidInput
from service.batching import QueueFull
from service.inputs import InputError
from service.schemas import ErrorResponse
from service.serving import ServedVersion
from service.state import ServiceState

log = logging.getLogger(__name__)

SERVED_BY = "served_by"  # request state: the (model, version) that answered, for the metrics' labels

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 503, 504)}
JSON_TYPES = ("application/json",)
BINARY_TYPES = ("application/json", "application/octet-stream")  # the binary tensor extension's bodies


def inline_definitions(schema: dict) -> dict:
    """A JSON schema with its ``#/$defs/...`` references replaced by the definitions: in an OpenAPI
    request body they would point at a root the document does not have."""
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


BINARY_BODY = {
    "schema": {"type": "string", "format": "binary"},
    "description": "the binary tensor extension: the JSON request (its length in the Inference-Header-Content-Length header), "
    "then each input's raw little-endian bytes, sized by its parameters.binary_data_size",
}
BINARY_ANSWER = {
    "schema": {"type": "string", "format": "binary"},
    "description": "when outputs are asked for in binary (binary_data, binary_data_output): the JSON response (its length in the "
    "Inference-Header-Content-Length header), then those outputs' raw little-endian bytes, sized by their parameters.binary_data_size",
}


def json_post(response: type[BaseModel], request: type[BaseModel], binary: bool = False) -> dict:
    """``router.post`` options of a hot-path endpoint: orjson response, documented response and error
    models, and the request schema for OpenAPI (the body itself is decoded by ``service.inputs``);
    ``binary``: the body and the answer may also be the binary tensor extension."""
    content = {"application/json": {"schema": inline_definitions(request.model_json_schema())}}
    answer = {"model": response}
    if binary:
        content["application/octet-stream"] = BINARY_BODY
        answer["content"] = {"application/octet-stream": BINARY_ANSWER}
    return {
        "response_class": JSONBody,
        "responses": {200: answer, **ERRORS},
        "openapi_extra": {"requestBody": {"content": content, "required": True}},
    }


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: Exception, path: str) -> JSONBody:
    """The answer to an error raised while handling a request: ``{"error": message}`` with the
    status of an ``InputError`` or ``HTTPException`` (and its headers, e.g. Allow on a 405), 400 for
    an ``InvalidInput``, 503 with Retry-After when a queue is full, 422 naming the first invalid
    field, and otherwise a 500 whose cause goes to the log only."""
    headers = {}
    if isinstance(error, InputError):
        status, message = error.status, str(error)
    elif isinstance(error, InvalidInput):
        status, message = 400, str(error)
    elif isinstance(error, QueueFull):
        status, message, headers = 503, str(error), {"Retry-After": "1"}
    elif isinstance(error, HTTPException):
        status, message, headers = error.status_code, str(error.detail), error.headers or {}
    elif isinstance(error, RequestValidationError):
        first = error.errors()[0]
        status, message = 422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    else:
        log.error("unexpected error on %s", path, exc_info=error)
        status, message = 500, "internal error; see the server log"
    return JSONBody({"error": message}, status_code=status, headers=headers)


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def lookup(request: Request, name: str, version: str | None = None) -> ServedVersion:
    """The ready model version a route names (its default version when ``version`` is None); a 404
    or 503 ``InputError`` otherwise."""
    served = service_state(request).models.lookup(name, version)
    setattr(request.state, SERVED_BY, (served.name, served.version))
    return served


@contextmanager
def serving(request: Request, name: str, version: str | None = None) -> Iterator[ServedVersion]:
    """``lookup``, holding the version for the block: it is not released before the answer."""
    served = lookup(request, name, version)
    with served.use():
        yield served


def check_content_type(request: Request, allowed: tuple[str, ...]) -> None:
    """415 unless the Content-Type is one of ``allowed`` (or a ``+json`` type); none at all is read as
    JSON, as most clients send."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media and media not in allowed and not media.endswith("+json"):
        raise InputError(f"Content-Type {media[:60]!r} is not supported here; send {' or '.join(allowed)}", status=415)


async def read_body(request: Request, allowed: tuple[str, ...] = JSON_TYPES, optional: bool = False) -> bytes:
    """The raw body, after checking its Content-Type against ``allowed``; 413 when it is over
    ``max_body_bytes`` (checked before reading it all); 400 when empty unless ``optional``."""
    check_content_type(request, allowed)
    limit = service_state(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(f"request body of {declared} bytes is over the limit of {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InputError(f"request body is over the limit of {limit} bytes", status=413)
    if not body and not optional:
        raise InputError("request body is empty")
    return bytes(body)
