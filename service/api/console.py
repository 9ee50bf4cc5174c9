"""The operator console: ``GET /console``, one static page (``service/console/``: HTML, CSS and plain
JavaScript, shipped in the package; no build step, no library) that reads the service's own JSON
routes. The page and its two files are open like the health routes: they hold no data, and every
call the page makes goes through the API key check like any other client's (a 401 makes it ask for
a key). A Content-Security-Policy keeps every request of the page on this service."""
from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.exceptions import HTTPException
from starlette.responses import Response

router = APIRouter(tags=["console"])

ASSETS = {  # file name -> media type: the only files served, read once
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
CONTENT = {name: (files("service") / "console" / name).read_bytes() for name in ASSETS}
# Scripts and styles from this origin only, images drawn from data and blob URLs (dropped files,
# canvases), connections to this origin only: nothing the page loads or sends leaves the service.
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
}


@router.get("/console", include_in_schema=False)
async def console() -> Response:
    return _asset("index.html")


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"the console has no file {name[:80]!r}")
    return _asset(name)


def _asset(name: str) -> Response:
    return Response(CONTENT[name], media_type=ASSETS[name], headers=HEADERS)
