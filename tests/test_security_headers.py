"""Every HTTP answer of every logmesh app carries the security headers: each route of the ingest,
query and combined apps, and the answers no route makes (404, 405, 422, 500)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from logmesh.cli.stack import combined_app
from logmesh.common.http import build_app
from logmesh.ingest.app import create_app as ingest_app
from logmesh.ingest.settings import IngestSettings
from logmesh.query.app import create_app as query_app
from logmesh.query.settings import QuerySettings
from tests.harness import Up, event

pytestmark = pytest.mark.timeout(60)

# Without authentication, so that every route answers for itself; tests/test_http_auth.py checks
# the headers on the 401, 403 and 303 answers of authentication.
APPS: dict[str, Callable[[], Starlette]] = {
    "ingest": lambda: ingest_app(IngestSettings(no_auth=True)),
    "query": lambda: query_app(QuerySettings(no_auth=True)),
    "up": lambda: combined_app(IngestSettings(), QuerySettings()),
}
PUBLISH_BODY = orjson.dumps([event("headers", "h-1")])


def assert_secured(resp: httpx.Response) -> None:
    where = f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}"
    for name, value in {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }.items():
        assert resp.headers.get_list(name) == [value], f"{name} on {where}"
    policies = resp.headers.get_list("content-security-policy")
    assert len(policies) == 1, f"one Content-Security-Policy on {where}: {policies}"
    csp = {d.split()[0]: d.split()[1:] for d in policies[0].split(";") if d.strip()}
    assert csp["default-src"] == ["'none'"], where
    assert csp["script-src"] == ["'self'"], where  # no inline script, no eval
    assert csp["style-src"] == ["'self'"], where  # no inline style
    assert csp["frame-ancestors"] == ["'none'"], where
    assert csp["base-uri"] == ["'none'"], where


def route_requests(app: Starlette) -> Iterator[tuple[str, str]]:
    """(method, path) for every method of every route, path parameters filled in."""
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{event_id(:path)?\}", "h-1", route.path).replace("{topic}", "headers")
        assert "{" not in path, f"fill in the parameters of {route.path}"
        for method in sorted(route.methods or ()):
            yield method, path


def ask(client: httpx.Client | httpx.AsyncClient, method: str, path: str) -> Any:
    body = PUBLISH_BODY if method == "POST" else None
    return client.request(method, path, content=body, headers={"content-type": "application/json"})


# The answers no route makes itself, per app: a 404, a 405, a 422.
STRAYS = {
    "ingest": [("GET", "/no-such-path", 404), ("GET", "/publish", 405), ("POST", "/publish", 422)],
    "query": [("GET", "/no-such-path", 404), ("DELETE", "/stats", 405), ("GET", "/events?limit=0", 422)],
}
STRAYS["up"] = STRAYS["ingest"] + STRAYS["query"]


@pytest.mark.parametrize("name", APPS)
def test_every_answer_of_each_app_has_the_headers(name: str) -> None:
    """Straight through ASGI, without the lifespan (nothing connects to NATS): the routes that need
    NATS answer 503, which must carry the headers as well."""
    app = APPS[name]()

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            seen = set()
            for method, path in route_requests(app):
                resp = await ask(client, method, path)
                seen.add(resp.status_code)
                assert_secured(resp)
            assert {200, 503} <= seen
            for method, path, status in STRAYS[name]:
                resp = await client.request(method, path, content=b"[]", headers={"content-type": "application/json"})
                assert resp.status_code == status, (method, path, resp.text)
                assert_secured(resp)

    asyncio.run(run())


class _Failing:
    """A component whose one route fails unexpectedly."""

    def __init__(self) -> None:
        self.openapi_paths: dict[str, Any] = {}

    async def fail(self, request: Request) -> Response:
        raise RuntimeError("boom")

    def routes(self) -> list[Route]:
        return [Route("/fail", self.fail, methods=["GET"])]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def readiness(self) -> dict[str, Any]:
        return {"failing": {"ok": True}}


def test_an_unexpected_error_answers_500_with_the_headers() -> None:
    app = build_app("failing", [_Failing()], CollectorRegistry())

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/fail")

    resp = asyncio.run(run())
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert_secured(resp)


def test_every_route_of_logmesh_up_has_the_headers_over_http(up: Up) -> None:
    """The real server: `logmesh up` with NATS and the sink, every route answering for real."""
    statuses = {}
    for method, path in route_requests(APPS["up"]()):
        resp = ask(up.http, method, path)
        statuses[(method, path)] = resp.status_code
        assert_secured(resp)
    assert statuses[("POST", "/publish")] == 202
    assert statuses[("GET", "/")] == statuses[("GET", "/stats")] == statuses[("GET", "/favicon.ico")] == 200
    for method, path, status in STRAYS["up"]:
        resp = up.http.request(method, path, content=b"[]", headers={"content-type": "application/json"})
        assert resp.status_code == status, (method, path, resp.text)
        assert_secured(resp)
