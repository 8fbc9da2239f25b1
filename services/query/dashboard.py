"""The live dashboard: one HTML page that polls /stats, /stats/history, /events and /dead-letters, with its
stylesheet, script and icon beside it as files (the Content-Security-Policy allows no inline script
or style). No build step: they are package data, read once and served from memory.

Caching: the page is revalidated on every load (``no-cache`` and an ETag) and links each file with
its content hash (``dashboard.js?v=<hash>``), so a browser keeps the files for a year yet fetches a
changed one right after an upgrade. A request without the current hash (a page from before an
upgrade, the browser's own ``/favicon.ico``) gets the file with ``no-cache``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_PAGE = "dashboard.html"
# URL path (under the page's own path, so it also works behind a prefix) -> package file, media type.
_FILES = {
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "favicon.ico": ("favicon.png", "image/png"),
}
# The sign-out form, cut from the page when nobody signs in (authentication off).
_SIGN_OUT = ("<!-- sign-out", "<!-- /sign-out -->")
_REVALIDATE = "no-cache"
_KEEP = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    version: str  # a hash of the body

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _asset(body: bytes, media_type: str) -> _Asset:
    return _Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])


def _read(name: str) -> bytes:
    return resources.files("logmesh.query").joinpath(name).read_bytes()


def _with_sign_out(page: str, sign_out: bool) -> str:
    start, end = _SIGN_OUT
    head, found, rest = page.partition(start)
    block, closed, tail = rest.partition(end)
    if not (found and closed):
        raise RuntimeError(f"{_PAGE} must hold the sign-out form between {start!r} and {end!r}")
    return head + (start + block + end if sign_out else "") + tail


@functools.cache
def _assets(sign_out: bool) -> tuple[_Asset, dict[str, _Asset]]:
    """The page, with each link carrying its file's version, and the files by URL path."""
    files = {url: _asset(_read(name), media_type) for url, (name, media_type) in _FILES.items()}
    page = _with_sign_out(_read(_PAGE).decode("utf-8"), sign_out)
    for url, file in files.items():
        link = f'"{url}"'
        if page.count(link) != 1:
            raise RuntimeError(f"{_PAGE} must link {url} exactly once, as {link}")
        page = page.replace(link, f'"{url}?v={file.version}"')
    return _asset(page.encode("utf-8"), "text/html; charset=utf-8"), files


def _unchanged(request: Request, asset: _Asset) -> bool:
    """Whether the browser's copy is this version (RFC 9110 If-None-Match, weak comparison)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or asset.etag in tags


def _serve(request: Request, asset: _Asset, cache_control: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control}
    if _unchanged(request, asset):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _file_endpoint(file: _Asset) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        current = request.query_params.get("v") == file.version
        return _serve(request, file, _KEEP if current else _REVALIDATE)

    return serve


def dashboard_routes(*, sign_out: bool = False) -> list[Route]:
    """``GET /`` (the page) and ``GET /<file>`` for each file it links. ``sign_out``: the page offers
    to sign out (``POST /logout``), for when people sign in to see it."""
    page, files = _assets(sign_out)

    async def serve_page(request: Request) -> Response:
        return _serve(request, page, _REVALIDATE)

    routes = [Route("/", serve_page, methods=["GET"])]
    routes += [Route(f"/{url}", _file_endpoint(file), methods=["GET"]) for url, file in files.items()]
    return routes


_FILE_SUMMARIES = {
    "dashboard.css": "The dashboard's stylesheet",
    "dashboard.js": "The dashboard's script",
    "favicon.ico": "The dashboard's icon (PNG)",
}
_NOT_MODIFIED = {"304": {"description": "Not modified (If-None-Match)"}}

DASHBOARD_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The live dashboard (HTML)",
            "responses": {
                "200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}},
                **_NOT_MODIFIED,
            },
        }
    },
    # The page links each file as <file>?v=<content hash>, which may be cached for good.
    **{
        f"/{url}": {
            "get": {
                "summary": _FILE_SUMMARIES[url],
                "parameters": [
                    {
                        "name": "v",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "content hash; the current one makes it cacheable",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {media_type.split(";")[0]: {"schema": {"type": "string"}}},
                    },
                    **_NOT_MODIFIED,
                },
            }
        }
        for url, (_, media_type) in _FILES.items()
    },
}
