"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService`` with Triton's model
configuration, statistics and repository extensions), on ``grpc.aio`` in the REST server's process
and event loop: a gRPC call and a REST call of the same version share its batcher and fill the same
batches. Inference goes through the one dispatch with the gRPC codec (``service.codecs.grpc``); the
descriptions are REST's (``service.descriptions``), parsed into the protocol's messages.

Beside it: the standard health service (``grpc.health.v1``: SERVING while the service is ready, for
Kubernetes gRPC probes) and server reflection (grpcurl). Every call of the inference service is
authenticated as over REST (``authorization: Bearer KEY`` or ``x-api-key`` metadata; admin keys for
the repository calls; ServerLive and ServerReady open like REST's probes), counted in the same
Prometheus series (``protocol="grpc"``), and a domain error answers with its code from the one table
(``service.status``), with the same one-line message as over REST."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Awaitable, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from inference.errors import BadInput, NotFound, NotReady, ServiceError
from service import descriptions
from service.auth import KeyCheck, presented_key
from service.codecs.grpc import GRPC
from service.dispatch import ServedBy, dispatch, request_id
from service.inputs import check_load_parameters
from service.protos import POOL, SERVICE, add_file, message
from service.state import ServiceState
from service.status import grpc_status, http_status

log = logging.getLogger(__name__)

OPEN_METHODS = {"ServerLive", "ServerReady"}  # probes carry no secrets, as over REST
ADMIN_METHODS = {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
DEADLINE_SLACK_S = 0.005  # a call cancelled this close to its deadline counts as past it
HEALTH_REFRESH_S = 0.5  # the health service's watchers see a change of readiness within this

add_file(health_pb2.DESCRIPTOR.serialized_pb)  # so that reflection describes the health service too
add_file(reflection_pb2.DESCRIPTOR.serialized_pb)


def _parsed(values: dict, name: str):
    """A description dict as the protocol message ``name`` (fields only REST has are left out)."""
    return json_format.ParseDict(values, message(name)(), ignore_unknown_fields=True)


def _this_repository(name: str) -> None:
    if name:
        raise BadInput(f"unknown repository {name!r}; this server has one, leave repository_name empty")


class InferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService``: each takes its request, the call's
    ``ServedBy`` (filled with the version that answers) and the call's context."""

    def __init__(self, state: ServiceState):
        self.state, self.models = state, state.models

    async def ServerLive(self, request, served_by, context):
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request, served_by, context):
        return message("ServerReadyResponse")(ready=self.state.accepting)

    async def ModelReady(self, request, served_by, context):
        """Whether the version (the default one without ``version``) serves; an unknown model is not ready."""
        try:
            served_by.record(self.models.lookup(request.name, request.version or None))
        except (NotFound, NotReady):
            return message("ModelReadyResponse")(ready=False)
        return message("ModelReadyResponse")(ready=True)

    async def ServerMetadata(self, request, served_by, context):
        return _parsed(descriptions.server_metadata(self.state), "ServerMetadataResponse")

    def _lookup(self, request, served_by: ServedBy):
        served = self.models.lookup(request.name, request.version or None)
        served_by.record(served)
        return served

    async def ModelMetadata(self, request, served_by, context):
        return _parsed(descriptions.model_metadata(self.state, self._lookup(request, served_by)), "ModelMetadataResponse")

    async def ModelConfig(self, request, served_by, context):
        return _parsed({"config": descriptions.model_config(self.state, self._lookup(request, served_by))}, "ModelConfigResponse")

    async def ModelStatistics(self, request, served_by, context):
        """One version's statistics; every loaded version's without a model name (as Triton)."""
        versions = [self._lookup(request, served_by)] if request.name else self.models.table.loaded()
        stats = [entry for served in versions for entry in descriptions.model_statistics(served)["model_stats"]]
        return _parsed({"model_stats": stats}, "ModelStatisticsResponse")

    async def ModelInfer(self, request, served_by, context):
        """Through the one dispatch; a call the client cancels, or whose deadline passes, is
        cancelled by grpc and its queued work dropped (``ServedVersion.predict``). The call's id
        (``x-request-id`` metadata, or a new one) goes to the decision log and back in the trailers,
        an error's too."""

        async def read():
            return request

        call = request_id(next((value for key, value in context.invocation_metadata() or () if key == "x-request-id"), None))
        context.set_trailing_metadata((("x-request-id", call),))  # an error's status trailers join it
        return await dispatch(self.models, GRPC, request.model_name, request.model_version or None, read, served_by, None, self.state.decisions, call, self.state.loop_lag)

    async def RepositoryIndex(self, request, served_by, context):
        _this_repository(request.repository_name)
        found = await asyncio.to_thread(self.models.scan)
        return _parsed({"models": [entry.as_dict() for entry in self.models.index(found, request.ready)]}, "RepositoryIndexResponse")

    async def RepositoryModelLoad(self, request, served_by, context):
        _this_repository(request.repository_name)
        check_load_parameters(request.parameters.keys())
        await self.models.load(request.model_name)
        return message("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request, served_by, context):
        _this_repository(request.repository_name)
        check_load_parameters(request.parameters.keys())
        await self.models.unload(request.model_name)
        return message("RepositoryModelUnloadResponse")()


def _metadata_key(metadata) -> bytes | None:
    """The API key of a call's metadata (``authorization: Bearer KEY`` or ``x-api-key``)."""
    headers = {key.encode(): value.encode() for key, value in metadata or () if isinstance(value, str)}
    return presented_key(headers)


class CallHandling:
    """Wraps each RPC: the key check, the domain error as its status code and message, the request
    metrics (the HTTP status of the same outcome, so alerts on REST statuses cover gRPC too)."""

    def __init__(self, state: ServiceState):
        settings = state.settings
        self.metrics = state.metrics
        self.keys = KeyCheck(settings.all_api_keys(), settings.all_admin_api_keys())

    def __call__(self, method: str, rpc: Callable[..., Awaitable], request_type: type) -> Callable:
        """The handler of ``method``: it parses the request bytes itself (``request_type``), so that bytes
        that are no such message answer INVALID_ARGUMENT, not grpc's UNKNOWN."""
        endpoint, needs_key, admin = f"/{SERVICE}/{method}", method not in OPEN_METHODS, method in ADMIN_METHODS
        metrics, keys = self.metrics, self.keys

        async def handle(raw: bytes, context: grpc.aio.ServicerContext):
            served_by, status = ServedBy(), 500
            metrics.in_flight.inc()
            started, allowed = time.perf_counter(), context.time_remaining()  # the client's deadline, None without one
            try:
                if needs_key:
                    keys.check(_metadata_key(context.invocation_metadata()), admin)
                try:
                    request = request_type.FromString(raw)
                except DecodeError:
                    raise BadInput(f"the request is not a valid {request_type.DESCRIPTOR.name} message") from None
                response = await rpc(request, served_by, context)
                status = 200
                return response
            except ServiceError as error:
                status = http_status(error)[0]
                code, trailers = grpc_status(error)
                context.set_trailing_metadata((*(context.trailing_metadata() or ()), *trailers))
                await context.abort(code, str(error))
            except asyncio.CancelledError:  # the client's deadline passed, or it cancelled (a cancelled call has none left either)
                status = 504 if allowed is not None and time.perf_counter() - started >= allowed - DEADLINE_SLACK_S else 499
                raise
            except Exception as error:
                log.error("unexpected error in %s", endpoint, exc_info=error)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            finally:
                metrics.in_flight.dec()
                metrics.observe("grpc", endpoint, status, served_by.model, served_by.version, time.perf_counter() - started)

        return handle


class ReadinessHealth(health.aio.HealthServicer):
    """``grpc.health.v1`` for the server ("") and the inference service: SERVING while the service is
    ready (``ServiceState.accepting``), NOT_SERVING while loading and draining. A Check answers the
    state of the moment; watchers see each change within ``HEALTH_REFRESH_S`` (``GrpcServer``)."""

    def __init__(self, state: ServiceState):
        super().__init__()
        self.state, self.current = state, None
        self.watches: set[asyncio.Task] = set()
        self.closing = False

    async def follow(self) -> None:
        """Set both statuses from readiness, when it changed."""
        serving = health_pb2.HealthCheckResponse.SERVING if self.state.accepting else health_pb2.HealthCheckResponse.NOT_SERVING
        if serving != self.current:
            for name in ("", SERVICE):
                await self.set(name, serving)
            self.current = serving

    async def Check(self, request, context):
        await self.follow()
        return await super().Check(request, context)

    async def Watch(self, request, context):
        """The status, then each change, until the server drains: then NOT_SERVING and the end of the
        stream (a watch never ends by itself, and would hold the drain to its timeout)."""
        task = asyncio.current_task()
        self.watches.add(task)
        try:
            await super().Watch(request, context)
        except asyncio.CancelledError:
            if not self.closing:  # cancelled by its client or by grpc, not ended by the drain
                raise
        finally:
            self.watches.discard(task)

    async def close(self) -> None:
        """NOT_SERVING for good, and every watch stream ended after its watcher has seen it."""
        await self.enter_graceful_shutdown()
        self.closing = True
        await asyncio.sleep(0.1)  # the watchers write NOT_SERVING first
        for task in list(self.watches):
            task.cancel()


class GrpcServer:
    """The gRPC server of a ``ServiceState``: built, started and stopped by the app's lifespan."""

    def __init__(self, state: ServiceState):
        settings = state.settings
        limit = settings.max_body_bytes  # a larger message is refused with RESOURCE_EXHAUSTED, as REST's 413
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)])
        servicer, wrap = InferenceServicer(state), CallHandling(state)
        handlers = {}
        for method in POOL.FindServiceByName(SERVICE).methods:
            request, response = message(method.input_type.name), message(method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                wrap(method.name, getattr(servicer, method.name), request), response_serializer=response.SerializeToString
            )
        self.server.add_registered_method_handlers(SERVICE, handlers)
        self.health = ReadinessHealth(state)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server, pool=POOL)
        self.address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else f"{settings.host}:{settings.grpc_port}"  # IPv6 in brackets
        self.server.add_insecure_port(self.address)
        self.following: asyncio.Task | None = None
        self.stopping: asyncio.Future | None = None

    async def start(self) -> None:
        await self.server.start()
        self.following = asyncio.create_task(self._follow_readiness())
        log.info("gRPC (Open Inference Protocol) on %s", self.address)

    async def _follow_readiness(self) -> None:
        while True:
            await self.health.follow()
            await asyncio.sleep(HEALTH_REFRESH_S)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls and let those in flight finish, for up to ``grace_s`` seconds (a second
        call waits for the first one's drain)."""
        if self.stopping is None:
            if self.following is not None:
                self.following.cancel()
            self.stopping = asyncio.ensure_future(self._drain(grace_s))
        await self.stopping

    async def _drain(self, grace_s: float) -> None:
        await self.health.close()
        await self.server.stop(grace_s)


def check_port(host: str, port: int) -> None:
    """An ``OSError`` when ``port`` cannot be listened on at ``host`` (another server has it, say):
    checked before serving, since the gRPC server binds inside the app's start-up, where a failure
    could only stop it with a stack trace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds: a port in TIME_WAIT is free
        probe.bind((host, port))
