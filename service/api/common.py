"""Helpers the routers share: the app state, the size-limited JSON body, the orjson response, the
answer to an error, and ``serve_http``: REST's way into the one dispatch (``service.dispatch``),
taken by the prediction routes and by the fast path (``service.fast_path``) alike."""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from inference.errors import BadInput, ServiceError, TooLarge, UnsupportedMedia
from models.validation import validation_message
from service.codecs import RestCodec, RestRequest
from service.dispatch import ServedBy, dispatch, request_id
from service.schemas import ErrorResponse
from service.serving import ServedVersion
from service.state import ServiceState
from service.status import error_body, http_status

log = logging.getLogger(__name__)

SERVED_BY = "diglm.served_by"  # the ASGI scope's ``ServedBy`` of the request, made by the metrics middleware

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 503, 504)}
JSON_TYPES = ("application/json",)
BINARY_TYPES = ("application/json", "application/octet-stream")  # with the binary tensor extension's header


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


def codec_post(codec: RestCodec) -> dict:
    """``router.post`` options of a codec's endpoint: documented response and error models, and the
    request schema for OpenAPI, from the codec's ``request_model`` and ``response_model`` (the body
    itself is decoded by the codec); with ``binary`` the body and the answer may also be the binary
    tensor extension."""
    content = {"application/json": {"schema": inline_definitions(codec.request_model.model_json_schema())}}
    answer = {"model": codec.response_model}
    if codec.binary:
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


def error_response(error: Exception, path: str) -> Response:
    """The answer to an error raised while handling a request: ``{"error": message}`` with the
    status of a domain error (``service.status``) or of an ``HTTPException`` (and their headers:
    Retry-After, Allow on a 405), 422 naming the first invalid field, and otherwise a 500 whose
    cause goes to the log only."""
    headers = {}
    if isinstance(error, ServiceError):
        (status, headers), message = http_status(error), str(error)
    elif isinstance(error, HTTPException):
        status, message, headers = error.status_code, str(error.detail), error.headers or {}
    elif isinstance(error, RequestValidationError):
        status, message = 422, validation_message(error.errors(), "body")
    else:
        log.error("unexpected error on %s", path, exc_info=error)
        status, message = 500, "internal error; see the server log"
    return Response(error_body(message), status_code=status, headers=headers, media_type="application/json")


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def served_by(request: Request) -> ServedBy:
    """The request's ``ServedBy`` (the metrics middleware's; a fresh one without it)."""
    return request.scope.get(SERVED_BY) or ServedBy()


def lookup(request: Request, name: str, version: str | None = None) -> ServedVersion:
    """The ready model version a route names (its default version when ``version`` is None);
    ``NotFound`` or ``NotReady`` otherwise."""
    served = service_state(request).models.lookup(name, version)
    served_by(request).record(served)
    return served


def answered_by(codec: RestCodec):
    """Marks a FastAPI endpoint that answers with ``serve_http(request, codec, name[, version])``:
    the fast path (``service.fast_path``) serves its routes the same way without the router."""

    def mark(endpoint):
        endpoint.codec = codec
        return endpoint

    return mark


async def serve_http(request: Request, codec: RestCodec, name: str, version: str | None = None) -> Response:
    """A REST inference call through the one dispatch: the body (JSON, or raw bytes after a JSON
    header for a codec of the binary tensor extension), within the size limit, decoded and answered
    by ``codec``. Content type and size are REST's checks, made here and not in the codec. Answers,
    errors too, carry the call's ``X-Request-ID``."""
    header_length = request.headers.get("inference-header-content-length")
    allowed = BINARY_TYPES if codec.binary and header_length is not None else JSON_TYPES

    async def read() -> RestRequest:
        return RestRequest(await read_body(request, allowed), header_length)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    state, call = service_state(request), request_id(request.headers.get("x-request-id"))
    try:
        answer = await dispatch(state.models, codec, name, version, read, served_by(request), client_gone, state.decisions, call, state.loop_lag)
    except Exception as error:  # noqa: BLE001 - answered here, as the error handlers would, to carry the call's id
        response = error_response(error, request.scope["path"])
        response.headers["x-request-id"] = call
        return response
    return Response(answer.body, media_type=answer.media_type, headers={**answer.headers, "x-request-id": call})


def check_content_type(request: Request, allowed: tuple[str, ...]) -> None:
    """415 unless the Content-Type is one of ``allowed`` (or a ``+json`` type); none at all is read as
    JSON, as most clients send."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media and media not in allowed and not media.endswith("+json"):
        raise UnsupportedMedia(f"Content-Type {media[:60]!r} is not supported here; send {' or '.join(allowed)}")


async def read_body(request: Request, allowed: tuple[str, ...] = JSON_TYPES, optional: bool = False) -> bytes:
    """The raw body, after checking its Content-Type against ``allowed``; 413 when it is over
    ``max_body_bytes`` (checked before reading it all); 400 when empty unless ``optional``."""
    check_content_type(request, allowed)
    limit = service_state(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
    if not body and not optional:
        raise BadInput("request body is empty")
    return bytes(body)
