"""Loading, unloading and hot-swapping model versions at run time (the model repository extension of
the Open Inference Protocol), into the routing table (``service.routing``).

A load verifies each new version (``ModelRuntime.load``: hashes, manifest schema, signature), warms
it up in the shared inference thread, and only then switches the model's routing to the versions its
policy selects (``RoutingTable.switch``). Versions no longer selected are released once the requests
using them are done. A version that fails to load or warm up never receives traffic and the versions
serving keep serving. ``service.poller`` loads and unloads whenever the folders change. What cannot
be done is a domain error (``inference.errors``) whose message says why and what still serves.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from inference.errors import BadInput, Conflict, NotFound, NotReady, ServiceError
from inference.runtime import ModelRuntime
from models.checkpoint import CheckpointError
from models.device import DeviceUnavailable
from service.repository import ModelSource, VersionFolder, check_name, parse_policies
from service.routing import RoutingTable, shown
from service.serving import READY, UNAVAILABLE, ServedVersion, settle_heap
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a version on disk or loaded, its state and why (if not ready)."""

    name: str
    version: str
    state: str
    reason: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "state": self.state, **({"reason": self.reason} if self.reason else {})}


class ModelLoader:
    def __init__(self, source: ModelSource, settings: ServiceSettings, executor: Executor):
        self.source, self.settings, self.executor = source, settings, executor
        self.default_policy, self.policies = parse_policies(settings.version_policy)
        self.table = RoutingTable()
        self.failures: dict[tuple[str, str], str] = {}  # (name, version) -> why it did not load
        self.lock = asyncio.Lock()  # one load or unload at a time (the limit on loaded versions holds)
        self.unloaded: set[str] = set()  # unloaded through the API: the poller leaves them until a load
        self.preloaded: dict[tuple[str, str], ModelRuntime] = {}  # see preload
        self.failed_serving: dict[tuple[str, str], tuple] = {}  # (name, version) -> its folder's fingerprint when its runtime failed
        self.tasks: set[asyncio.Task] = set()  # _fail tasks running (held, so they are not collected)
        self.started = False  # the start-up load is done and every model serves
        self.load_error: str | None = None  # why the start-up load failed

    def lookup(self, name: str, version: str | None = None) -> ServedVersion:
        """``RoutingTable.lookup``, and ``NotReady`` for a model not yet routed while the
        start-up load is not done."""
        if name not in self.table.routes and not self.started:
            raise NotReady("models are not ready yet" + (f": {self.load_error}" if self.load_error else ""))
        return self.table.lookup(name, version)

    def policy(self, name: str):
        return self.policies.get(name, self.default_policy)

    def scan(self) -> dict[str, list[VersionFolder]]:
        """``source.scan``, its failures as ``NotReady``."""
        try:
            return self.source.scan()
        except (OSError, CheckpointError) as error:
            raise NotReady(f"cannot read the {self.source.describe()}: {error}") from None

    def _scan_for_start(self) -> dict[str, list[VersionFolder]]:
        found = self.scan()
        if not found:
            raise NotReady(f"the {self.source.describe()} holds no model folders with versions")
        return found

    def selected(self, name: str, folders: list[VersionFolder]) -> list[VersionFolder]:
        """The version folders the model's policy serves, oldest to newest."""
        by_version = {folder.version: folder for folder in folders}
        return [by_version[version] for version in self.policy(name).select(list(by_version))]

    def preload(self) -> None:
        """Load (verify) what the start-up will serve before the server starts, so that ``python -m
        service`` stops with the loader's one-line error (``CheckpointError``, ``DeviceUnavailable``,
        ``ServiceError``) instead of serving nothing; ``start`` then uses these. In a repository a
        version that does not verify is left out and the policy chooses among the others
        (``failures`` says why), unless that leaves nothing to serve."""
        for name, folders in self._scan_for_start().items():
            usable = list(folders)
            pending = self.selected(name, usable)
            while pending:
                folder = pending.pop()
                try:
                    self.preloaded[name, folder.version] = self._load_runtime(folder)
                except CheckpointError as error:
                    usable.remove(folder)
                    if not self.source.is_repository or not self.selected(name, usable):
                        raise
                    self.failures[name, folder.version] = str(error)
                    log.error("%s version %s is left out: %s", name, folder.version, error)
                    pending = [other for other in self.selected(name, usable) if (name, other.version) not in self.preloaded]

    def _load_runtime(self, folder: VersionFolder) -> ModelRuntime:
        settings = self.settings
        return ModelRuntime.load(
            folder.path, settings.device, settings.backend, settings.inference_threads, settings.signing_key(),
            name=folder.name if self.source.is_repository else None, version=folder.version,
        )

    async def start(self) -> None:
        """Start-up: load every model of the source; on the first failure ``load_error`` says why and
        the server never reports ready."""
        try:
            for name in await asyncio.to_thread(self._scan_for_start):
                await self._start_model(name)
        except ServiceError as error:
            self.load_error = str(error)
            log.error("not ready: %s", error)
            return
        finally:
            self.preloaded.clear()
        self.started = True

    async def _start_model(self, name: str) -> None:
        """The start-up load of one model. In a repository, versions that fail are left out and the
        policy chooses among the others: a damaged newest version (a copy cut short by a crash)
        leaves the one before it serving, as a failed hot swap does."""
        excluded = {version for model, version in self.failures if model == name}
        while True:
            try:
                return await self.load(name, excluded)
            except BadInput:
                failed = {version for model, version in self.failures if model == name} - excluded
                if not self.source.is_repository or not failed:
                    raise
                excluded |= failed

    async def load(self, name: str, excluded: set[str] = frozenset()) -> None:
        """Load (or reload) ``name`` from the source by its version policy (among its versions but
        ``excluded``) and switch its routing to the result. The versions serving keep serving when
        it fails: ``NotFound`` (no such model or no versions), ``BadInput`` (a version does not
        verify or warm up, or the policy selects nothing), ``Conflict`` (the limit on loaded
        versions is reached)."""
        check_name(name)
        async with self.lock:
            self.unloaded.discard(name)
            self.failed_serving = {key: fingerprint for key, fingerprint in self.failed_serving.items() if key[0] != name}
            found = await asyncio.to_thread(self.scan)
            if name not in found:
                raise NotFound(f"model {shown(name)} is not in the {self.source.describe()}")
            if not found[name]:
                raise NotFound(f"model {shown(name)} has no version folders with a manifest in the {self.source.describe()}")
            folders = {folder.version: folder for folder in self.selected(name, [folder for folder in found[name] if folder.version not in excluded])}
            wanted = list(folders)
            if not wanted:
                available = [folder.version for folder in found[name] if folder.version not in excluded]
                left_out = f" (left out as they failed: {sorted(excluded)})" if excluded else ""
                raise BadInput(f"the version policy of {shown(name)} selects none of its versions {available}{left_out}")
            current = self.table.routes.get(name, {})
            changed = [version for version in wanted if version not in current or current[version].digest != folders[version].digest()]
            if not changed and set(current) == set(wanted):
                return
            others = sum(len(versions) for model, versions in self.table.routes.items() if model != name)
            if others + len(wanted) > self.settings.max_loaded_versions:
                raise Conflict(
                    f"loading {len(wanted)} version(s) of {shown(name)} would make {others + len(wanted)} loaded versions, over the limit of "
                    f"{self.settings.max_loaded_versions} (DIGLM_MAX_LOADED_VERSIONS); unload a model first"
                )
            fresh: dict[str, ServedVersion] = {}
            for version in changed:
                try:
                    fresh[version] = await self._start(folders[version])
                except BadInput:
                    for served in fresh.values():
                        await served.release(0)
                    raise
            self.table.switch(name, {version: fresh.get(version) or current[version] for version in wanted}, self.settings.drain_timeout_s)
            settle_heap()
            log.info("%s now serves versions %s (default %s)", name, wanted, wanted[-1])

    async def _start(self, folder: VersionFolder) -> ServedVersion:
        """Verify, load and warm up one version folder; ``BadInput`` (with the reason) if any step fails."""
        settings = self.settings
        key = (folder.name, folder.version)
        try:
            runtime = self.preloaded.pop(key, None) or await asyncio.to_thread(self._load_runtime, folder)
            served = ServedVersion(runtime, settings, self.executor, folder.digest())
            seconds = await served.warm_up()
        except (CheckpointError, DeviceUnavailable) as error:
            return self._refuse(folder, str(error))
        except Exception as error:  # a model that loads but fails on its warm-up batch
            log.exception("warm-up of %s version %s failed", *key)
            return self._refuse(folder, f"warm-up failed: {type(error).__name__}: {error}")
        served.on_failure = self._on_failure
        served.start()
        self.failures.pop(key, None)
        log.info("warmed up %s version %s (batch of %d in %.3f s)", folder.name, folder.version, settings.warmup_batch, seconds)
        return served

    def _on_failure(self, served: ServedVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._fail(served))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fail(self, served: ServedVersion) -> None:
        """A version whose runtime failed while serving: routed no more, while its model's other
        versions and the other models keep serving; the index shows it UNAVAILABLE with the
        reason, and the poller leaves it until its folder changes or a load through the API."""
        async with self.lock:
            versions = self.table.routes.get(served.name, {})
            if versions.get(served.version) is not served:
                return  # swapped out meanwhile
            key = (served.name, served.version)
            self.failures[key] = f"failed while serving: {served.failure}"
            try:
                folders = (await asyncio.to_thread(self.scan)).get(served.name, [])
            except NotReady:
                folders = []
            self.failed_serving[key] = next((folder.fingerprint() for folder in folders if folder.version == served.version), ())
            remaining = {version: other for version, other in versions.items() if other is not served}
            if remaining:
                self.table.switch(served.name, remaining, self.settings.drain_timeout_s)
            else:
                await self.table.remove(served.name, self.settings.drain_timeout_s)
            log.error("%s version %s failed while serving and no longer serves (%s); serving: %s", *key, served.failure, list(remaining) or "no version of it")

    def _refuse(self, folder: VersionFolder, reason: str):
        self.failures[(folder.name, folder.version)] = reason
        serving = list(self.table.routes.get(folder.name, {}))
        still = f"versions {serving} keep serving" if serving else "no version of it is serving"
        raise BadInput(f"version {folder.version} of {shown(folder.name)} was not loaded ({still}): {reason}")

    async def unload(self, name: str, by_request: bool = True) -> None:
        """Stop routing to every version of ``name`` and release them once their requests are done
        (returns then). Unloading a model that is not loaded does nothing; one the server has never
        heard of is ``NotFound``. ``by_request``: the poller leaves the model unloaded until the next load."""
        check_name(name)
        async with self.lock:
            if name not in self.table.routes and name not in await asyncio.to_thread(self._known_names):
                raise NotFound(f"model {shown(name)} is not in the {self.source.describe()}")
            if by_request:
                self.unloaded.add(name)
            removed = await self.table.remove(name, self.settings.drain_timeout_s)
            if removed:
                log.info("unloaded %s (versions %s)", name, removed)

    def _known_names(self) -> set[str]:
        try:
            return set(self.scan())
        except NotReady:
            return set()

    def index(self, found: dict[str, list[VersionFolder]], ready_only: bool = False) -> list[IndexEntry]:
        """Every version on disk (``found``, from ``source.scan``) or loaded, with its state."""
        entries = {}
        for name, folders in found.items():
            for folder in folders:
                reason = self.failures.get((name, folder.version)) or "not loaded"
                entries[name, folder.version] = IndexEntry(name, folder.version, UNAVAILABLE, reason)
        for served in self.table.releasing:
            entries[served.name, served.version] = IndexEntry(served.name, served.version, served.state)
        for name, versions in self.table.routes.items():
            for version in versions:
                entries[name, version] = IndexEntry(name, version, READY)
        rows = sorted(entries.values(), key=lambda entry: (entry.name, int(entry.version) if entry.version.isdigit() else 0, entry.version))
        return [entry for entry in rows if entry.state == READY] if ready_only else rows

    async def close(self) -> None:
        """Stop every batcher (shutdown; no drain: the server drained before this)."""
        for served in self.table.loaded():
            if served.batcher is not None:
                await served.batcher.stop()
