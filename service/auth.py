"""API keys: when the service has any (settings ``api_keys`` / ``api_keys_file``), every route needs
one, sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, except liveness and readiness
(probes carry no secrets), the console's static page and files (``/console``: they hold no data; the
page's own calls need a key) and ``/metrics`` unless ``metrics_require_key``. The model repository
routes (``/v2/repository/...``: load, unload, index) need an admin key (``admin_api_keys``) once any
keys are configured; an admin key also opens every other route. Keys are compared in constant time;
a missing or wrong key is ``Unauthenticated`` (401 with ``WWW-Authenticate``), a valid key without
the admin right ``Forbidden`` (403): ``KeyCheck`` decides, for any protocol."""
from __future__ import annotations

import hmac
import ipaddress
import logging

from inference.errors import Forbidden, ServiceError, Unauthenticated
from service.status import error_body, http_status

log = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready")  # liveness (KServe v1 and v2) and readiness
OPEN_PREFIX = "/console"  # the console's page and files (``service.api.console``)
ADMIN_PREFIX = "/v2/repository/"


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key in ``Authorization: Bearer`` or ``X-API-Key`` (raw ASGI headers, lower-case names)."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key") or None


def key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit that times which one matched)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


class KeyCheck:
    def __init__(self, keys: list[str], admin_keys: list[str]):
        self.keys = [key.encode() for key in keys]
        self.admin_keys = [key.encode() for key in admin_keys]

    def check(self, presented: bytes | None, admin: bool) -> None:
        """Nothing when the call may go on: no keys guard it, or ``presented`` opens it (``admin``:
        a model repository call); ``Unauthenticated`` or ``Forbidden`` otherwise."""
        if not self.keys and not (admin and self.admin_keys):  # no keys guard this call
            return
        if presented is None:
            raise Unauthenticated("an API key is required: send Authorization: Bearer KEY or X-API-Key: KEY")
        if key_matches(presented, self.admin_keys) or (not admin and key_matches(presented, self.keys)):
            return
        if admin and key_matches(presented, self.keys):
            raise Forbidden("this route needs an admin API key" if self.admin_keys else "model control is off: no admin API keys are configured (DIGLM_ADMIN_API_KEYS)")
        raise Unauthenticated("the API key is not valid")


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str], admin_keys: list[str], metrics_require_key: bool):
        self.app = app
        self.keys = KeyCheck(keys, admin_keys)
        self.open_paths = OPEN_PATHS if metrics_require_key else (*OPEN_PATHS, "/metrics")

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path == OPEN_PREFIX or path.startswith(OPEN_PREFIX + "/")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        try:
            self.keys.check(presented_key(dict(scope["headers"])), admin=scope["path"].startswith(ADMIN_PREFIX))
        except ServiceError as error:
            return await _refuse(send, error)
        await self.app(scope, receive, send)


async def _refuse(send, error: ServiceError) -> None:
    status, headers = http_status(error)
    listed = [(b"content-type", b"application/json"), *((name.lower().encode(), value.encode()) for name, value in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": listed})
    await send({"type": "http.response.body", "body": error_body(str(error))})


def warn_if_open(host: str, keys: list[str]) -> None:
    """Log a warning when the service listens beyond loopback with no API keys."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not keys and not loopback:
        log.warning(
            "listening on %s with no API keys: anyone who reaches it can use it and load or unload models (set DIGLM_API_KEYS and DIGLM_ADMIN_API_KEYS)", host
        )
