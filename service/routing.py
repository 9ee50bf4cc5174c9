"""The routing table: which loaded versions serve each model, which one is its default, and the
versions draining before release. Reads (``lookup``) and switches (``switch``) happen on the event
loop, so a switch is one atomic step: a request that looked up a version before it is answered by
that version, one after by the new default."""
from __future__ import annotations

import asyncio

from inference.errors import NotFound
from service.serving import ServedVersion


def shown(name: str) -> str:
    """A client-given name for a message: quoted, cut at 64 characters."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


class RoutingTable:
    def __init__(self):
        self.routes: dict[str, dict[str, ServedVersion]] = {}  # name -> version -> ready version
        self.defaults: dict[str, str] = {}  # name -> the version unversioned routes use
        self.releasing: set[ServedVersion] = set()

    def lookup(self, name: str, version: str | None = None) -> ServedVersion:
        """The ready version (the default one when ``version`` is None); ``NotFound`` if
        there is none."""
        versions = self.routes.get(name)
        if not versions:
            raise NotFound(f"model {shown(name)} is not loaded; this server serves {sorted(self.routes) or 'no model yet'}")
        served = versions.get(self.defaults[name] if version is None else version)
        if served is None:
            raise NotFound(f"version {shown(version)} of model {shown(name)} is not loaded; loaded versions: {list(versions)}")
        return served

    def loaded(self) -> list[ServedVersion]:
        """Every version holding memory: serving, or draining before release."""
        return [*(served for versions in self.routes.values() for served in versions.values()), *self.releasing]

    def switch(self, name: str, versions: dict[str, ServedVersion], drain_timeout_s: float) -> None:
        """Route ``name`` to ``versions`` (oldest to newest; the newest is the default) and release
        the versions it no longer routes to once their requests are done (in the background)."""
        current = self.routes.get(name, {})
        retired = [served for version, served in current.items() if versions.get(version) is not served]
        self.routes[name] = versions
        self.defaults[name] = list(versions)[-1]
        for served in retired:
            self.releasing.add(served)
            task = asyncio.get_running_loop().create_task(served.release(drain_timeout_s))
            task.add_done_callback(lambda _, served=served: self.releasing.discard(served))

    async def remove(self, name: str, drain_timeout_s: float) -> list[str]:
        """Stop routing to every version of ``name`` and release them once their requests are done
        (returns then); the versions removed."""
        versions = self.routes.pop(name, {})
        self.defaults.pop(name, None)
        self.releasing.update(versions.values())
        await asyncio.gather(*(served.release(drain_timeout_s) for served in versions.values()))
        self.releasing.difference_update(versions.values())
        return list(versions)
