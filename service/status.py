"""The domain errors (``inference.errors``) as protocol answers, in one table: each error's HTTP
status here, beside which a gRPC status code goes when that server comes; and the JSON body of every
error answer, ``{"error": message}``."""
from __future__ import annotations

import orjson

from inference.errors import (
    BadInput, ClientGone, Conflict, DeadlineExceeded, Forbidden, NotFound, NotReady, Overloaded, ServiceError, TooLarge,
    Unauthenticated, UnsupportedMedia,
)

HTTP_STATUS: dict[type[ServiceError], int] = {
    BadInput: 400,
    TooLarge: 413,
    UnsupportedMedia: 415,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    ClientGone: 499,  # nginx's "client closed request": nobody reads it, the metrics count it
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
}


def http_status(error: ServiceError) -> tuple[int, dict[str, str]]:
    """The HTTP status of ``error`` (its nearest class in the table) and the headers that go with
    it: Retry-After when overloaded, WWW-Authenticate without a valid key."""
    status = next((HTTP_STATUS[kind] for kind in type(error).__mro__ if kind in HTTP_STATUS), 500)
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="diglm"'
    return status, headers


def error_body(message: str) -> bytes:
    """The JSON body of every error answer."""
    return orjson.dumps({"error": message})
