"""Why a request cannot be answered, in the domain's words, below any protocol. The core (inputs,
batching, serving) and the model registry raise these; each server maps them to its protocol's
status in one table (``service.status``). Every message is for the client: one line that says what
is wrong and, where there is one, what to do."""
from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses or cannot finish; the subclass says why."""


class BadInput(ServiceError, ValueError):
    """The request itself is wrong: malformed, of the wrong type or shape, outside the input range."""


class TooLarge(BadInput):
    """Over a size limit: too many instances in one request, or too many bytes."""


class UnsupportedMedia(BadInput):
    """A body in a media type the route does not read."""


class NotFound(ServiceError):
    """No such model, version or repository entry."""


class Conflict(ServiceError):
    """The request is valid but clashes with the current state (e.g. the limit on loaded versions)."""


class Unauthenticated(ServiceError):
    """No API key, or one that is not valid."""


class Forbidden(ServiceError):
    """A valid key without the right to this call (the repository calls need an admin key)."""


class NotReady(ServiceError):
    """The service or the model is not ready to serve yet (loading, or its load failed)."""


class Overloaded(ServiceError):
    """Too much queued work to take this request in time; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServiceError):
    """No answer within the request's deadline; its queued work is dropped."""


class ClientGone(ServiceError):
    """The client left (closed the connection, cancelled the call) before the answer."""
