"""Shedding at the door: a prediction call that admission would refuse (``ServedVersion.admit``: the
event loop's lag, ``service.loop_lag``, plus the batcher's expected wait, past
``DIGLM_MAX_QUEUE_WAIT_S``) is answered 503 with Retry-After here, before the key check, the body and
the dispatch: the cheapest answer the app can give, so that an overloaded service spends its cycles
on the calls it admits. Refused on the full path, under 4x open-loop load the refusals took nearly
every cycle of the event loop (docs/operations.md, "Open-loop overload"). The answer is the one
``dispatch`` would give, with the call's X-Request-ID; the metrics count it with its model and
version (this layer runs inside theirs). Anything else (an unknown model, a version not ready) goes
on to the full path and its usual answer."""
from __future__ import annotations

from inference.errors import Overloaded, ServiceError
from service.api.common import SERVED_BY, error_response
from service.dispatch import REQUEST_ID
from service.fast_path import PredictionRoutes
from service.loader import ModelLoader
from service.loop_lag import LoopLag


class ShedAtTheDoor:
    def __init__(self, app, routes: PredictionRoutes, models: ModelLoader, loop_lag: LoopLag):
        self.app, self.routes, self.models, self.loop_lag = app, routes, models, loop_lag

    async def __call__(self, scope, receive, send):
        matched = self.routes.match(scope)
        if matched is None:
            return await self.app(scope, receive, send)
        route, _, parameters = matched
        try:
            served = self.models.lookup(parameters["name"], parameters.get("version"))
            served.admit(self.loop_lag.seconds)
        except Overloaded as error:
            scope["route"] = route  # the metrics label the route and the version
            if SERVED_BY in scope:
                scope[SERVED_BY].record(served)
            response = error_response(error, scope["path"])
            call = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
            if REQUEST_ID.fullmatch(call):
                response.headers["x-request-id"] = call
            return await response(scope, receive, send)
        except ServiceError:
            pass
        await self.app(scope, receive, send)
