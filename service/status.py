"""The domain errors (``inference.errors``) as protocol answers, in one table: each error's HTTP
status and gRPC status code; and the JSON body of every REST error answer, ``{"error": message}``."""
from __future__ import annotations

import orjson
from grpc import StatusCode

from inference.errors import (
    BadInput, ClientGone, Conflict, DeadlineExceeded, Forbidden, NotFound, NotReady, Overloaded, ServiceError, TooLarge,
    Unauthenticated, UnsupportedMedia,
)

STATUS: dict[type[ServiceError], tuple[int, StatusCode]] = {
    BadInput: (400, StatusCode.INVALID_ARGUMENT),
    TooLarge: (413, StatusCode.RESOURCE_EXHAUSTED),
    UnsupportedMedia: (415, StatusCode.INVALID_ARGUMENT),
    Unauthenticated: (401, StatusCode.UNAUTHENTICATED),
    Forbidden: (403, StatusCode.PERMISSION_DENIED),
    NotFound: (404, StatusCode.NOT_FOUND),
    Conflict: (409, StatusCode.FAILED_PRECONDITION),
    ClientGone: (499, StatusCode.CANCELLED),  # 499: nginx's "client closed request": nobody reads it, the metrics count it
    NotReady: (503, StatusCode.UNAVAILABLE),
    Overloaded: (503, StatusCode.UNAVAILABLE),
    DeadlineExceeded: (504, StatusCode.DEADLINE_EXCEEDED),
}
UNEXPECTED = (500, StatusCode.INTERNAL)


def _row(error: ServiceError) -> tuple[int, StatusCode]:
    """The row of ``error``'s nearest class in the table."""
    return next((STATUS[kind] for kind in type(error).__mro__ if kind in STATUS), UNEXPECTED)


def http_status(error: ServiceError) -> tuple[int, dict[str, str]]:
    """The HTTP status of ``error`` and the headers that go with it: Retry-After when overloaded,
    WWW-Authenticate without a valid key."""
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="diglm"'
    return _row(error)[0], headers


def grpc_status(error: ServiceError) -> tuple[StatusCode, tuple[tuple[str, str], ...]]:
    """The gRPC status code of ``error`` and its trailing metadata (``retry-after`` when overloaded)."""
    trailers = (("retry-after", str(error.retry_after_s)),) if isinstance(error, Overloaded) else ()
    return _row(error)[1], trailers


def error_body(message: str) -> bytes:
    """The JSON body of every REST error answer."""
    return orjson.dumps({"error": message})
