"""The prediction endpoints without Starlette's router: ``POST /v1/models/{name}:predict`` and
``POST /v2/models/{name}[/versions/{version}]/infer`` are matched here, with the FastAPI routes' own
path patterns, and their endpoint functions called directly. FastAPI keeps every other route, the
OpenAPI description of these two, and any request the fast path does not take (other methods, a
``root_path``). One implementation of predict, two ways in: on a hit this skips the router's scan
of every route, FastAPI's dependency solving and its exception middleware (Starlette and FastAPI
went from 22% to 2% of the serving samples on one-instance requests, docs/benchmarks.md). Errors
are answered by ``error_response``, as FastAPI's handlers answer them."""
from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request

from service.api.common import error_response


class PredictionFastPath:
    def __init__(self, app, routes: list[APIRoute]):
        """``app``: the rest of the ASGI stack; ``routes``: the POST routes to serve directly."""
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            for route in self.routes:
                match = route.path_regex.match(path)
                if match is not None:
                    scope["route"] = route  # the metrics label the route, as after FastAPI's routing
                    parameters = {key: route.param_convertors[key].convert(value) for key, value in match.groupdict().items()}
                    request = Request(scope, receive, send)
                    try:
                        response = await route.endpoint(request=request, **parameters)
                    except Exception as error:  # noqa: BLE001 - every error becomes its JSON answer
                        response = error_response(error, path)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


def hot_routes(routes, endpoints) -> list[APIRoute]:
    """The POST routes (of the routers given) whose endpoint is one of ``endpoints``, in order."""
    return [route for route in routes if isinstance(route, APIRoute) and route.endpoint in endpoints and "POST" in route.methods]
