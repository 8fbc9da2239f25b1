"""The query service: stats, events and dead letters over HTTP.

It never opens the DuckDB file (DuckDB allows one process per file): it asks the sink over NATS
request/reply and reads lag and size straight from JetStream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from logmesh.common.auth import READ, Authenticator
from logmesh.common.http import ApiError, FastJSONResponse, build_app
from logmesh.common.jetstream import QUERY_SUBJECT_PREFIX, NatsLink
from logmesh.common.nats_answers import Answer, ErrorAnswer, ask
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.openapi import parameters, responses
from logmesh.common.query_contract import (
    DEAD_LETTERS_PARAMS,
    EVENT_PARAMS,
    EVENTS_PARAMS,
    STATS_PARAMS,
    DeadLetterPage,
    DeadLettersQuery,
    EventPage,
    EventQuery,
    EventsQuery,
    NoQuery,
    Param,
    ParamError,
    Stats,
    StoredEvent,
    parse_params,
)
from logmesh.query.dashboard import DASHBOARD_PATHS, dashboard_routes
from logmesh.query.rates import HISTORY_PARAMS, HISTORY_PATHS, HistoryQuery, RateRecorder
from logmesh.query.settings import QuerySettings
from logmesh.query.stats import StatsView

log = logging.getLogger("logmesh.query")

RETRY_AFTER = {"Retry-After": "1"}
_SINK_ERRORS = ("502", "503", "504")

QUERY_PATHS: dict[str, Any] = {
    **DASHBOARD_PATHS,
    **HISTORY_PATHS,
    "/stats": {
        "get": {
            "summary": "Counters, topics, lag",
            "parameters": parameters(STATS_PARAMS),
            "responses": responses("200", Stats, "422", *_SINK_ERRORS),
        }
    },
    "/events": {
        "get": {
            "summary": "Stored events, in insertion order, a page at a time",
            "parameters": parameters(EVENTS_PARAMS),
            "responses": responses("200", EventPage, "422", *_SINK_ERRORS),
        }
    },
    "/events/{topic}/{event_id}": {
        "get": {
            "summary": "One stored event",
            "parameters": parameters(EVENT_PARAMS),
            "responses": responses("200", StoredEvent, "404", "422", *_SINK_ERRORS),
        }
    },
    "/dead-letters": {
        "get": {
            "summary": "Messages the sink could not store, newest first, with the reason",
            "parameters": parameters(DEAD_LETTERS_PARAMS),
            "responses": responses("200", DeadLetterPage, "422", *_SINK_ERRORS),
        }
    },
}

Q = TypeVar("Q", bound=BaseModel)


class Query:
    openapi_paths = QUERY_PATHS

    def __init__(self, settings: QuerySettings, *, signed_in: bool = False) -> None:
        """``signed_in``: people sign in to the dashboard (authentication is on), which then offers
        to sign out."""
        self.settings = settings
        self._signed_in = signed_in
        self.started = time.time()
        self.link = NatsLink(
            settings.nats_url,
            "logmesh-query",
            io=settings.nats_io,
            credentials=NatsCredentials.from_settings(settings, "query"),
        )
        self.view = StatsView(self.ask_sink, self.link.client, settings.stream, settings.consumer)
        self.history = RateRecorder(self.view.summary)

    async def start(self) -> None:
        await self.link.start()
        self.history.start()

    async def stop(self) -> None:
        await self.history.stop()
        await self.view.stop()
        await self.link.stop()

    async def ask_sink(self, endpoint: str, query: BaseModel, timeout: float | None = None) -> Answer:
        """The sink's whole answer: JSON, and the headers it came with."""
        nc = self.link.client()
        if nc is None:
            raise ApiError(503, "unavailable", "NATS is not reachable; retry later", headers=RETRY_AFTER)
        subject = f"{QUERY_SUBJECT_PREFIX}.{endpoint}"
        try:
            return await ask(nc, subject, query.model_dump_json().encode(), timeout or self.settings.query_timeout)
        except NoRespondersError:
            raise ApiError(503, "sink_unavailable", "the sink is not running", headers=RETRY_AFTER) from None
        except (NatsTimeoutError, TimeoutError):
            raise ApiError(504, "timeout", "the sink did not answer in time", headers=RETRY_AFTER) from None
        except ErrorAnswer as exc:
            if exc.code == "404":
                raise ApiError(404, "not_found", exc.message or "not found") from None
            raise ApiError(502, "sink_error", exc.message or "the sink could not answer") from None

    # ---- routes ------------------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        _parsed(NoQuery, STATS_PARAMS, request)
        return _json(await self.view.body(uptime_seconds=round(time.time() - self.started, 3)))

    async def stats_history(self, request: Request) -> Response:
        query = _parsed(HistoryQuery, HISTORY_PARAMS, request)
        return FastJSONResponse(self.history.answer(query.since))

    async def list_events(self, request: Request) -> Response:
        query = _parsed(EventsQuery, EVENTS_PARAMS, request)
        return _json((await self.ask_sink("events", query)).data)

    async def get_event(self, request: Request) -> Response:
        query = _parsed(EventQuery, EVENT_PARAMS, request)
        try:
            return _json((await self.ask_sink("event", query)).data)
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(404, "not_found", f"no event {query.event_id!r} in topic {query.topic!r}") from None
            raise

    async def list_dead_letters(self, request: Request) -> Response:
        query = _parsed(DeadLettersQuery, DEAD_LETTERS_PARAMS, request)
        return _json((await self.ask_sink("dead_letters", query)).data)

    def routes(self) -> list[Route]:
        return [
            *dashboard_routes(sign_out=self._signed_in),
            Route("/stats", self.stats, methods=["GET"]),
            Route("/stats/history", self.stats_history, methods=["GET"]),
            Route("/events", self.list_events, methods=["GET"]),
            Route("/events/{topic}/{event_id:path}", self.get_event, methods=["GET"]),
            Route("/dead-letters", self.list_dead_letters, methods=["GET"]),
        ]

    async def readiness(self) -> dict[str, Any]:
        nats_ok = self.link.client() is not None
        sink: dict[str, Any] = {"ok": False}
        if nats_ok:
            try:
                # The sink's own state only: the stats answer grows with the number of topics.
                status = orjson.loads((await self.ask_sink("status", NoQuery(), timeout=1.0)).data)
                sink = {"ok": bool(status["ready"]), "last_error": status["last_error"]}
            except ApiError as exc:
                sink["error"] = exc.message
        return {"nats": {"ok": nats_ok}, "sink": sink}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _parsed(model: type[Q], params: Sequence[Param], request: Request) -> Q:
    try:
        return parse_params(model, params, request.query_params.multi_items(), request.path_params)
    except ParamError as exc:
        detail = {"index": None, "field": exc.name, "message": exc.message}
        raise ApiError(422, "validation_error", str(exc), details=[detail]) from None


def create_app(settings: QuerySettings, registry: CollectorRegistry | None = None) -> Starlette:
    """The query app. It needs a read token unless ``--no-auth`` (else ``SettingsError``)."""
    auth = Authenticator.from_settings(settings, needs=[READ])
    registry = registry or CollectorRegistry()
    return build_app("logmesh query", [Query(settings, signed_in=auth is not None)], registry, auth=auth)
