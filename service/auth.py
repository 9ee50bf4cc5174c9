"""API keys: when the service has any (settings ``api_keys`` / ``api_keys_file``), every route needs
one, sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, except liveness and readiness
(probes carry no secrets) and ``/metrics`` unless ``metrics_require_key``. Keys are compared in
constant time; a missing or wrong key is a 401 with ``WWW-Authenticate``."""
from __future__ import annotations

import hmac
import ipaddress
import logging

import orjson

log = logging.getLogger(__name__)

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")


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


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str], metrics_require_key: bool):
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_paths = OPEN_PATHS if metrics_require_key else (*OPEN_PATHS, "/metrics")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        presented = presented_key(dict(scope["headers"]))
        if presented is not None and key_matches(presented, self.keys):
            return await self.app(scope, receive, send)
        message = "an API key is required: send Authorization: Bearer KEY or X-API-Key: KEY" if presented is None else "the API key is not valid"
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="diglm"')],
        })
        await send({"type": "http.response.body", "body": orjson.dumps({"error": message})})


def warn_if_open(host: str, keys: list[str]) -> None:
    """Log a warning when the service listens beyond loopback with no API keys."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not keys and not loopback:
        log.warning("listening on %s with no API keys: anyone who reaches it can use it (set DIGLM_API_KEYS or DIGLM_API_KEYS_FILE)", host)
