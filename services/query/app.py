"""The query service: stats, events and dead letters over HTTP.

It never opens the DuckDB file (DuckDB allows one process per file): it asks the sink over NATS
request/reply and reads lag and size straight from JetStream.
"""

from __future__ import annotations

import functools
import logging
import time
from importlib import resources
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from logmesh.common.http import ApiError, FastJSONResponse, build_app
from logmesh.common.jetstream import QUERY_SUBJECT_PREFIX, NatsLink
from logmesh.common.model import check_event_id, check_topic
from logmesh.common.openapi import QUERY_PATHS
from logmesh.query.settings import QuerySettings
from logmesh.query.stats import StatsView

log = logging.getLogger("logmesh.query")

RETRY_AFTER = {"Retry-After": "1"}
MAX_LIMIT = 1000


class Query:
    openapi_paths = QUERY_PATHS

    def __init__(self, settings: QuerySettings) -> None:
        self.settings = settings
        self.started = time.time()
        self.link = NatsLink(settings.nats_url, "logmesh-query", io=settings.nats_io)
        self.view = StatsView(self.ask_sink, self._client, settings.stream, settings.consumer)

    async def start(self) -> None:
        await self.link.start()

    async def stop(self) -> None:
        await self.view.stop()
        await self.link.stop()

    def _client(self) -> Client:
        nc = self.link.client()
        if nc is None:
            raise ApiError(503, "unavailable", "NATS is not reachable; retry later", headers=RETRY_AFTER)
        return nc

    async def ask_sink(self, endpoint: str, query: dict[str, Any], timeout: float | None = None) -> Any:
        nc = self._client()
        try:
            reply = await nc.request(
                f"{QUERY_SUBJECT_PREFIX}.{endpoint}",
                orjson.dumps(query),
                timeout=timeout or self.settings.query_timeout,
            )
        except NoRespondersError:
            raise ApiError(503, "sink_unavailable", "the sink is not running", headers=RETRY_AFTER) from None
        except (NatsTimeoutError, TimeoutError):
            raise ApiError(504, "timeout", "the sink did not answer in time", headers=RETRY_AFTER) from None
        code = reply.headers.get("Nats-Service-Error-Code") if reply.headers else None
        if code:
            message = (reply.headers or {}).get("Nats-Service-Error", "")
            status = int(code) if code in ("400", "404") else 502
            kind = {400: "bad_request", 404: "not_found"}.get(status, "sink_error")
            raise ApiError(status, kind, message or "the sink could not answer")
        return orjson.loads(reply.data)

    # ---- routes ------------------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        out = dict(await self.view.get())
        out["uptime_seconds"] = round(time.time() - self.started, 3)
        return FastJSONResponse(out)

    async def list_events(self, request: Request) -> Response:
        params = request.query_params
        query: dict[str, Any] = {
            "limit": _limit(params.get("limit")),
            "after": _cursor(params.get("cursor")),
            "newest_first": _order(params.get("order")),
        }
        if params.get("topic"):
            query["topic"] = _checked("topic", params["topic"], check_topic)
        events = await self.ask_sink("events", query)
        next_cursor = str(events[-1]["id"]) if len(events) == query["limit"] else None
        return FastJSONResponse({"events": events, "count": len(events), "next_cursor": next_cursor})

    async def get_event(self, request: Request) -> Response:
        topic = _checked("topic", request.path_params["topic"], check_topic)
        event_id = _checked("event_id", request.path_params["event_id"], check_event_id)
        try:
            event = await self.ask_sink("event", {"topic": topic, "event_id": event_id})
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(404, "not_found", f"no event {event_id!r} in topic {topic!r}") from None
            raise
        return FastJSONResponse(event)

    async def list_dead_letters(self, request: Request) -> Response:
        params = request.query_params
        query = {
            "limit": _limit(params.get("limit")),
            "after": _cursor(params.get("cursor")),
            "newest_first": _order(params.get("order"), default=True),
        }
        letters = await self.ask_sink("dead_letters", query)
        next_cursor = str(letters[-1]["id"]) if len(letters) == query["limit"] else None
        return FastJSONResponse({"dead_letters": letters, "count": len(letters), "next_cursor": next_cursor})

    async def dashboard(self, request: Request) -> Response:
        return HTMLResponse(_dashboard())

    def routes(self) -> list[Route]:
        return [
            Route("/", self.dashboard, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
            Route("/events", self.list_events, methods=["GET"]),
            Route("/events/{topic}/{event_id:path}", self.get_event, methods=["GET"]),
            Route("/dead-letters", self.list_dead_letters, methods=["GET"]),
        ]

    async def readiness(self) -> dict[str, Any]:
        nats_ok = self.link.client() is not None
        sink: dict[str, Any] = {"ok": False}
        if nats_ok:
            try:
                stats = await self.ask_sink("stats", {}, timeout=1.0)
                sink = {"ok": bool(stats["sink"]["ready"]), "last_error": stats["sink"]["last_error"]}
            except ApiError as exc:
                sink["error"] = exc.message
        return {"nats": {"ok": nats_ok}, "sink": sink}


@functools.cache
def _dashboard() -> str:
    """The live dashboard: one page, no build step; it polls /stats, /events and /dead-letters."""
    return resources.files("logmesh.query").joinpath("dashboard.html").read_text(encoding="utf-8")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"{field}: {message}", details=[{"index": None, "field": field, "message": message}]
    )


def _checked(field: str, value: str, check: Any) -> str:
    try:
        return str(check(value))
    except (PydanticCustomError, ValidationError) as exc:
        raise _invalid(field, exc.message() if isinstance(exc, PydanticCustomError) else str(exc)) from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _cursor(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 19:
        raise _invalid("cursor", "must be a next_cursor value from a previous page")
    return int(raw)


def _order(raw: str | None, default: bool = False) -> bool:
    if raw is None:
        return default
    if raw not in ("asc", "desc"):
        raise _invalid("order", "must be 'asc' or 'desc'")
    return raw == "desc"


def create_app(settings: QuerySettings, registry: CollectorRegistry | None = None) -> Starlette:
    registry = registry or CollectorRegistry()
    return build_app("logmesh query", [Query(settings)], registry)
