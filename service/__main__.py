"""``python -m service``: load and verify a checkpoint, then serve it with uvicorn.

A checkpoint that does not load stops the start with its one-line error (exit 2)."""
from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from models.checkpoint import CheckpointError
from models.device import DeviceUnavailable
from service.app import create_app
from service.runtime import ModelRuntime
from service.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    defaults = ServiceSettings()
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a DIGLM checkpoint over HTTP (KServe v1 and Open Inference Protocol v2). "
        "Every option can also be set as an environment variable DIGLM_<OPTION>, e.g. DIGLM_MODEL_DIR.",
    )
    parser.add_argument("--model-dir", default=defaults.model_dir, help=f"checkpoint folder (default {defaults.model_dir})")
    parser.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port})")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=defaults.device, help="auto: CUDA when present")
    parser.add_argument("--backend", choices=["torch", "onnx", "auto"], default=defaults.backend, help="inference runtime: torch, onnx (needs model.onnx: python -m training export) or auto (the faster on a warm-up measurement)")
    args = parser.parse_args(argv)
    settings = defaults.model_copy(update={k: v for k, v in vars(args).items()})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime = ModelRuntime.load(settings.model_dir, settings.device, settings.backend, settings.inference_threads)
    except (CheckpointError, DeviceUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"to retrain: move {settings.model_dir} away, then run `make train` (or python -m training train ...)", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings, runtime), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
