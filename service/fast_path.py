"""The prediction routes without Starlette's router: a POST whose path matches a route marked
``answered_by(codec)`` (the FastAPI route's own path pattern) goes straight to ``serve_http`` with
that codec, the function the route's endpoint calls too. FastAPI keeps every other route, the
OpenAPI description of these, and any request the fast path does not take (other methods, a
``root_path``). One dispatch, two ways in: on a hit this skips the router's scan of every route,
FastAPI's dependency solving and its exception middleware (Starlette and FastAPI went from 22% to 2%
of the serving samples on one-instance requests, docs/benchmarks.md). Errors are answered by
``error_response``, as FastAPI's handlers answer them."""
from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request

from service.api.common import error_response, serve_http


class PredictionRoutes:
    """The routes marked with ``answered_by`` that allow POST, matched against a request's path."""

    def __init__(self, routes: list[APIRoute]):
        self.routes = [(route, route.endpoint.codec) for route in routes if isinstance(route, APIRoute) and hasattr(route.endpoint, "codec") and "POST" in route.methods]

    def match(self, scope) -> tuple[APIRoute, object, dict] | None:
        """The route, its codec and the path's parameters of a POST to a prediction route; None
        for any other request (other methods, other paths, a ``root_path``)."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        for route, codec in self.routes:
            match = route.path_regex.match(scope["path"])
            if match is not None:
                return route, codec, {key: route.param_convertors[key].convert(value) for key, value in match.groupdict().items()}
        return None


class PredictionFastPath:
    def __init__(self, app, routes: PredictionRoutes):
        """``app``: the rest of the ASGI stack; ``routes``: the prediction routes, served here."""
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        matched = self.routes.match(scope)
        if matched is None:
            return await self.app(scope, receive, send)
        route, codec, parameters = matched
        scope["route"] = route  # the metrics label the route, as after FastAPI's routing
        try:
            response = await serve_http(Request(scope, receive, send), codec, **parameters)
        except Exception as error:  # noqa: BLE001 - every error becomes its JSON answer
            response = error_response(error, scope["path"])
        await response(scope, receive, send)
