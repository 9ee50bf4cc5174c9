"""The app factory: routers, error handlers, the metrics middleware, and the lifespan that loads the
checkpoint (unless one is passed in), runs a warm-up batch and only then reports ready."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from models.checkpoint import CheckpointError
from models.device import DeviceUnavailable
from service.api import v1, v2
from service.api.common import JSONBody
from service.auth import ApiKeyMiddleware
from service.batching import QueueFull
from service.inputs import InputError
from service.runtime import ModelRuntime
from service.settings import ServiceSettings
from service.state import ServiceState

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONBody:
    return JSONBody({"error": message}, status_code=status)


class MetricsMiddleware:
    """Counts requests by route template and status, times them, and tracks requests in flight."""

    def __init__(self, app, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        metrics = self.state.metrics
        if scope["type"] != "http" or metrics is None:
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_with_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        gauge = metrics.in_flight.labels(**metrics.labels)
        gauge.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            gauge.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            metrics.requests.labels(endpoint=endpoint, status=str(status["code"]), **metrics.labels).inc()
            metrics.request_seconds.labels(endpoint=endpoint, **metrics.labels).observe(time.perf_counter() - started)


def create_app(settings: ServiceSettings | None = None, runtime: ModelRuntime | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    state = ServiceState(settings)

    def load_and_warm_up() -> None:
        loaded = runtime or ModelRuntime.load(settings.model_dir, settings.device, settings.backend, settings.inference_threads, settings.signing_key())
        seconds = loaded.warm_up(settings.warmup_batch)
        state.attach(loaded)
        log.info("warmed up %s version %s (batch of %d in %.3f s)", loaded.name, loaded.version, settings.warmup_batch, seconds)

    async def start() -> None:
        try:
            await asyncio.to_thread(load_and_warm_up)
            state.start_batching()
            state.mark_ready()
        except (CheckpointError, DeviceUnavailable) as error:
            state.load_error = str(error)
            log.error("not ready: %s", error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(start())
        yield
        loading.cancel()
        if state.batcher is not None:
            await state.batcher.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="DIGLM service",
        description="Predictions with exact log p(x) and a density gate that rejects inputs unlike the training data.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.add_middleware(ApiKeyMiddleware, keys=settings.all_api_keys(), metrics_require_key=settings.metrics_require_key)
    app.add_middleware(MetricsMiddleware, state=state)  # outermost: 401s are counted too

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(state.metrics.registry) if state.metrics else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONBody:
        return _error(error.status, str(error))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONBody:
        response = _error(503, str(error))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONBody:
        response = _error(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONBody:
        first = error.errors()[0]
        return _error(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONBody:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal error; see the server log")

    return app
