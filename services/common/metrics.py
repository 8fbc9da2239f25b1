"""Prometheus metrics (prometheus_client): ``GET /metrics`` on the HTTP services, request latency by
route and status for each of them, and under ``logmesh up`` the sink's metrics too."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


# Another process's exposition, appended to this one's: one scrape target for a whole ``logmesh up``.
Exposition = Callable[[], Awaitable[bytes]]


def metrics_route(registry: CollectorRegistry, also: Sequence[Exposition] = ()) -> Route:
    async def metrics(request: Request) -> Response:
        # The others first: fetching them sets this registry's gauges that say what is missing.
        others = [await source() for source in also]
        return Response(b"".join([generate_latest(registry), *others]), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])


class RequestMetrics:
    """ASGI middleware: one histogram of request latency, labelled by route template (not the raw
    path, which would make a series per event id) and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, routes: list[Route]) -> None:
        self.app = app
        self.routes = routes
        self.latency = Histogram(
            "logmesh_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            self.latency.labels(scope["method"], self._route(scope), str(status)).observe(time.perf_counter() - started)
