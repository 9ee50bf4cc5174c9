"""Polling the model repository: every few seconds (``DIGLM_REPOSITORY_POLL_S``) load the models
whose selected versions changed on disk and unload those whose folders are gone, through the loader
(``service.loader.ModelLoader``), so a poll swaps versions exactly as the load API does."""
from __future__ import annotations

import asyncio
import logging

from inference.errors import ServiceError
from service.loader import ModelLoader
from service.repository import VersionFolder

log = logging.getLogger(__name__)


class RepositoryPoller:
    def __init__(self, loader: ModelLoader):
        self.loader = loader
        self.failed: dict[str, tuple] = {}  # name -> folder fingerprints whose load failed

    async def run(self, interval_s: float) -> None:
        """Every ``interval_s``: load models whose selected versions changed on disk (new, removed or
        rewritten folders) and unload models whose folders are gone. A failed load, or a version
        that failed while serving, is not retried until those folders change again; a model
        unloaded through the API stays unloaded until it is loaded through the API."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                found = await asyncio.to_thread(self.loader.scan)
            except ServiceError as error:
                log.warning("model repository poll: %s", error)
                continue
            for name in sorted(set(found) | set(self.loader.table.routes)):
                await self._poll_model(name, found.get(name, []))

    async def _poll_model(self, name: str, folders: list[VersionFolder]) -> None:
        loader = self.loader
        if name in loader.unloaded:
            return
        if not folders:
            await loader.unload(name, by_request=False)
            return
        wanted = loader.selected(name, folders)
        current = loader.table.routes.get(name, {})
        if {folder.version for folder in wanted} == set(current) and all(current[folder.version].digest == folder.digest() for folder in wanted):
            return
        fingerprint = tuple(folder.fingerprint() for folder in wanted)
        if self.failed.get(name) == fingerprint:
            return
        if any(loader.failed_serving.get((name, folder.version)) == folder.fingerprint() for folder in wanted):
            return  # its runtime failed while serving: not again until its folder changes
        try:
            await loader.load(name)
            self.failed.pop(name, None)
        except ServiceError as error:
            self.failed[name] = fingerprint
            log.error("model repository poll: %s", error)
