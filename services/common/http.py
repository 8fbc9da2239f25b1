"""HTTP pieces shared by ingest and query: one JSON error shape everywhere (``errors``), health
routes, authentication (``auth``) and the dashboard's login (``login``) wired in, serving over HTTP
or HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from logmesh.common.auth import MAY_READ, Authenticator, AuthMiddleware, secured_openapi
from logmesh.common.errors import ApiError, FastJSONResponse, error_response
from logmesh.common.login import LOGIN_PATHS, Login, describe_token_in_url
from logmesh.common.metrics import Exposition, RequestMetrics, metrics_route
from logmesh.common.openapi import Health, Ready, json_content, openapi, responses
from logmesh.common.security_headers import SecurityHeaders
from logmesh.common.settings import HttpTls

__all__ = ["ApiError", "FastJSONResponse", "error_response"]

log = logging.getLogger("logmesh.http")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, None, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, None, "internal error; see the service log")


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}

ReadinessCheck = Callable[[], Awaitable[dict[str, Any]]]


def health_routes(checks: Sequence[ReadinessCheck]) -> list[Route]:
    """``/healthz``: the process answers. ``/readyz``: every dependency answers (each check returns
    ``{"name": {"ok": bool, ...}}``); 503 when one does not. Both are open; with authentication on,
    only a caller who may read gets each check's details."""

    async def healthz(request: Request) -> Response:
        return FastJSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        parts: dict[str, Any] = {}
        for part in await asyncio.gather(*(check() for check in checks)):
            parts.update(part)
        ready = all(p.get("ok") for p in parts.values())
        if not request.scope.get(MAY_READ, True):
            # An anonymous caller learns whether each part is ready, not what its errors say (paths,
            # stream names, sizes).
            parts = {name: {"ok": bool(part.get("ok"))} for name, part in parts.items()}
        return FastJSONResponse({"ready": ready, "checks": parts}, status_code=200 if ready else 503)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


HEALTH_PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "The process answers", "responses": responses("200", Health)}},
    "/readyz": {
        "get": {
            "summary": "Every dependency answers",
            "responses": {
                "200": {"description": "ready", **json_content(Ready)},
                "503": {"description": "not ready", **json_content(Ready)},
            },
        }
    },
}


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the command owning the process, which stops every
    part in order (HTTP first, then the sink, then NATS) by setting ``should_exit``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def openapi_route(spec: dict[str, Any]) -> Route:
    body = orjson.dumps(spec)

    async def serve(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"])


class Component(Protocol):
    """A service's part of an HTTP app: its routes and their OpenAPI paths, what it needs started
    and stopped, and whether it is ready."""

    openapi_paths: dict[str, Any]

    def routes(self) -> list[Route]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def readiness(self) -> dict[str, Any]: ...


class _SecuredApp(Starlette):
    """Starlette with :class:`SecurityHeaders` around its whole middleware stack: a middleware
    passed to Starlette sits inside ``ServerErrorMiddleware`` and would miss its 500 answers."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def build_app(
    title: str,
    components: Sequence[Component],
    registry: CollectorRegistry,
    also_metrics: Sequence[Exposition] = (),
    auth: Authenticator | None = None,
) -> Starlette:
    """One Starlette app serving the components' routes, with ``/healthz``, ``/readyz``,
    ``/openapi.json`` and ``/metrics`` (``registry``, then ``also_metrics``), the one error shape,
    request metrics, and the security headers on every answer.

    ``auth``: the tokens every route but the health routes is checked against, with the login page
    when a component serves the dashboard (``/``); None serves without authentication, which is
    logged as a warning."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for component in components:
            await component.start()
        yield
        for component in reversed(components):
            await component.stop()

    routes = [route for c in components for route in c.routes()]
    login = Login(auth) if auth is not None and any(r.path == "/" for r in routes) else None
    paths = [c.openapi_paths for c in components]
    if login is not None:
        paths.append(LOGIN_PATHS)
        routes += login.routes()
    spec = openapi(title, *paths, HEALTH_PATHS)
    if auth is not None:
        spec = secured_openapi(spec, login=login is not None)
    if login is not None:
        spec = describe_token_in_url(spec)
    routes += [
        *health_routes([c.readiness for c in components]),
        openapi_route(spec),
        metrics_route(registry, also_metrics),
    ]
    middleware = [Middleware(RequestMetrics, registry=registry, routes=routes)]
    if auth is None:
        log.warning("HTTP authentication is off: anyone who can reach this port can publish events and read everything")
    else:
        token_login = login.token_in_url if login is not None else None
        middleware.append(Middleware(AuthMiddleware, auth=auth, token_login=token_login))
    return _SecuredApp(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
        middleware=middleware,
    )


def make_server(app: Starlette, host: str, port: int, tls: HttpTls | None = None) -> EmbeddedServer:
    """A server for ``app``; HTTPS when ``tls`` names a certificate and its key."""
    certificate, key = (tls.tls_cert, tls.tls_key) if tls is not None else (None, None)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        ssl_certfile=certificate,
        ssl_keyfile=key,
    )
    return EmbeddedServer(config)


def bound_port(server: uvicorn.Server) -> int:
    """The port actually bound (for ``--http-port 0``)."""
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
