"""``python -m service``: load and verify the checkpoint (or the model repository's selected
versions), then serve them with uvicorn (REST) and, in the same event loop, gRPC.

A checkpoint that does not load stops the start with its one-line error (exit 2)."""
from __future__ import annotations

import asyncio
import logging
import sys
import threading

import uvicorn

from inference.errors import ServiceError
from models.checkpoint import CheckpointError
from models.device import DeviceUnavailable
from service.app import create_app
from service.auth import warn_if_open
from service.grpc_server import check_port
from service.http import with_header_timeout
from service.settings import SettingsProblem, parse_settings
from service.state import ServiceState

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn with a graceful drain. The first SIGTERM / SIGINT turns readiness to 503 while
    requests are still served for ``shutdown_delay_s`` (the pattern of a Kubernetes preStop delay),
    then uvicorn's shutdown and the gRPC server's beside it: listeners close, queued and in-flight
    requests and calls finish (up to ``timeout_graceful_shutdown``), and the process exits 0. A
    second signal skips the delay."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, shutdown_delay_s: float):
        super().__init__(config)
        self.state, self.shutdown_delay_s = state, shutdown_delay_s

    def handle_exit(self, sig, frame) -> None:  # not recorded, so uvicorn does not re-raise it at exit
        if self.state.draining:
            self.should_exit = True
            return
        self.state.begin_drain()
        log.info("signal %s: readiness is 503; serving %.1f s more, then draining", sig, self.shutdown_delay_s)
        timer = threading.Timer(self.shutdown_delay_s, setattr, (self, "should_exit", True))
        timer.daemon = True
        timer.start()

    async def shutdown(self, sockets=None) -> None:
        """uvicorn's shutdown (HTTP connections finish) and the gRPC server's drain, side by side."""
        grpc = getattr(self.config.app.state, "grpc", None)
        drains = [grpc.stop(self.config.timeout_graceful_shutdown)] if grpc is not None else []
        await asyncio.gather(super().shutdown(sockets), *drains)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except SettingsProblem as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except OSError as error:  # the decision log's folder
        print(f"error: cannot write the decision log in {settings.decision_log_dir}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        app.state.service.models.preload()
    except (CheckpointError, DeviceUnavailable, ServiceError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        if settings.model_repository is None:
            print(f"to retrain: move {settings.model_dir} away, then run `make train` (or python -m training train ...)", file=sys.stderr)
        return 2
    if settings.grpc_port:
        try:
            check_port(settings.host, settings.grpc_port)
        except OSError as error:
            print(f"error: cannot serve gRPC on {settings.host}:{settings.grpc_port}: {error.strerror or error} (set DIGLM_GRPC_PORT, 0 for no gRPC)", file=sys.stderr)
            return 2
    warn_if_open(settings.host, settings.all_api_keys())
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=settings.drain_timeout_s,
        timeout_keep_alive=settings.keep_alive_timeout_s, limit_concurrency=settings.max_connections, backlog=settings.backlog,
        http=with_header_timeout(settings.header_timeout_s),
    )
    DrainingServer(config, app.state.service, settings.shutdown_delay_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
