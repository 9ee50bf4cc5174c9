"""The app factory: routers, error handlers, the metrics middleware, and the lifespan that starts
the gRPC server (``service.grpc_server``; ``app.state.grpc``, None without a gRPC port), loads the
models (``service.loader``: each version verified and warmed up) and only then reports ready, then
polls the model repository (``service.poller``) when asked to; at shutdown it writes the decision
log's queued records (``service.decision_log``)."""
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

from inference.errors import ServiceError
from inference.runtime import ModelRuntime
from service.api import console, repository, v1, v2
from service.api.common import SERVED_BY, error_response
from service.auth import ApiKeyMiddleware
from service.dispatch import ServedBy
from service.fast_path import PredictionFastPath, PredictionRoutes
from service.grpc_server import GrpcServer
from service.metrics import ServiceMetrics
from service.poller import RepositoryPoller
from service.settings import ServiceSettings
from service.shedding import ShedAtTheDoor
from service.state import ServiceState

log = logging.getLogger(__name__)


class MetricsMiddleware:
    """Counts requests by route template and status, times them, and tracks requests in flight."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        metrics = self.metrics
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        served_by = scope[SERVED_BY] = ServedBy()  # filled by the lookup of the model version that answers

        async def send_with_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics.in_flight.dec()
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe("rest", endpoint, status["code"], served_by.model, served_by.version, time.perf_counter() - started)


def create_app(settings: ServiceSettings | None = None, runtimes: list[ModelRuntime] = ()) -> FastAPI:
    """The app; its models load when the lifespan starts. ``runtimes``: versions already loaded, used
    instead of loading their folders again (``python -m service`` loads them first with
    ``state.models.preload()``, to stop with a clear error)."""
    settings = settings or ServiceSettings()
    state = ServiceState(settings)
    state.models.preloaded.update({(runtime.name, runtime.version): runtime for runtime in runtimes})

    async def start() -> None:
        await state.models.start()
        if state.ready and settings.repository_poll_s:
            await RepositoryPoller(state.models).run(settings.repository_poll_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        grpc = app.state.grpc = GrpcServer(state) if settings.grpc_port else None
        if grpc is not None:
            await grpc.start()
        state.loop_lag.start()
        loading = asyncio.create_task(start())
        yield
        if grpc is not None:  # drained already beside REST's connections under ``python -m service``
            await grpc.stop(settings.drain_timeout_s)
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await asyncio.to_thread(state.decisions.close, settings.drain_timeout_s)  # every request is answered: write their records
        await state.models.close()
        await state.loop_lag.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="DIGLM service",
        description="Predictions with exact log p(x) and a density gate that rejects inputs unlike the training data.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(v1.liveness)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(console.router)
    predictions = PredictionRoutes([*v1.router.routes, *v2.router.routes])
    app.add_middleware(PredictionFastPath, routes=predictions)  # innermost: after the key check
    app.add_middleware(
        ApiKeyMiddleware, keys=settings.all_api_keys(), admin_keys=settings.all_admin_api_keys(), metrics_require_key=settings.metrics_require_key
    )
    app.add_middleware(ShedAtTheDoor, routes=predictions, models=state.models, loop_lag=state.loop_lag)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: 401s and shed calls are counted too

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def handle_error(request: Request, error: Exception) -> Response:
        return error_response(error, request.scope["path"])

    for kind in (ServiceError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, handle_error)

    return app
