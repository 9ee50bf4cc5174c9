"""``python -m service``: load and verify a checkpoint, then serve it with uvicorn.

A checkpoint that does not load stops the start with its one-line error (exit 2)."""
from __future__ import annotations

import logging
import sys

import uvicorn

from models.checkpoint import CheckpointError
from models.device import DeviceUnavailable
from service.app import create_app
from service.auth import warn_if_open
from service.runtime import ModelRuntime
from service.settings import SettingsProblem, parse_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except SettingsProblem as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runtime = ModelRuntime.load(settings.model_dir, settings.device, settings.backend, settings.inference_threads)
    except (CheckpointError, DeviceUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"to retrain: move {settings.model_dir} away, then run `make train` (or python -m training train ...)", file=sys.stderr)
        return 2
    warn_if_open(settings.host, settings.all_api_keys())
    uvicorn.run(create_app(settings, runtime), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
