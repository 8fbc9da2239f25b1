"""The query service: stats, events and dead letters over HTTP.

It never opens the DuckDB file (DuckDB allows one process per file): it asks the sink over NATS
request/reply and reads lag and size straight from JetStream. With P > 1 partitions it asks the sink
of every partition and shows one view (scatter.py, pages.py, gathered.py); a partition that does not
answer is named in ``missing_partitions``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import orjson
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from logmesh.common.auth import READ, Authenticator
from logmesh.common.flags import SettingsError
from logmesh.common.http import ApiError, FastJSONResponse, build_app
from logmesh.common.jetstream import NatsLink
from logmesh.common.nats_answers import Answer
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.openapi import parameters, responses
from logmesh.common.partitions import partition_of
from logmesh.common.query_answers import (
    DeadLetterPage,
    EventPage,
    Stats,
    StoredEvent,
    in_partition,
    merged_page,
    with_missing,
)
from logmesh.common.query_contract import (
    DEAD_LETTERS_ROUTE_PARAMS,
    EVENT_PARAMS,
    EVENTS_ROUTE_PARAMS,
    STATS_PARAMS,
    DeadLettersRequest,
    EventQuery,
    EventsRequest,
    NoQuery,
    PageRequest,
    Param,
    ParamError,
    parse_params,
)
from logmesh.query.cluster import parse_cluster_nodes
from logmesh.query.dashboard import DASHBOARD_PATHS, dashboard_routes
from logmesh.query.pages import merge, read_answers
from logmesh.query.rates import HISTORY_PARAMS, HISTORY_PATHS, HistoryQuery, RateRecorder
from logmesh.query.scatter import Asker, Topology, none_answered
from logmesh.query.settings import QuerySettings
from logmesh.query.stats import StatsView

log = logging.getLogger("logmesh.query")

# /readyz asks each partition's sink its state with this much patience.
_READY_TIMEOUT = 1.0
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
            "summary": "Stored events, in stream order, a page at a time",
            "parameters": parameters(EVENTS_ROUTE_PARAMS),
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
            "parameters": parameters(DEAD_LETTERS_ROUTE_PARAMS),
            "responses": responses("200", DeadLetterPage, "422", *_SINK_ERRORS),
        }
    },
}

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", EventsRequest, DeadLettersRequest)


class Query:
    openapi_paths = QUERY_PATHS

    def __init__(self, settings: QuerySettings, *, signed_in: bool = False) -> None:
        """``signed_in``: people sign in to the dashboard (authentication is on), which then offers
        to sign out."""
        self.settings = settings
        self._signed_in = signed_in
        self.started = time.time()
        try:
            nodes = parse_cluster_nodes(settings.cluster_nodes)
        except ValueError as exc:
            raise SettingsError(f"cluster_nodes: {exc}") from None
        self.link = NatsLink(
            settings.nats_url,
            "logmesh-query",
            io=settings.nats_io,
            credentials=NatsCredentials.from_settings(settings, "query"),
        )
        self.topology = Topology(self.link.client, settings.stream)
        self.asker = Asker(self.link.client, settings.query_timeout)
        self.view = StatsView(self.asker, self.link.client, self.topology, settings.stream, settings.consumer, nodes)
        self.history = RateRecorder(self.view.summary)

    def known_nodes(self, cluster_nodes: str) -> None:
        """The nodes again, when their process ids changed (``logmesh up`` restarted one)."""
        self.view.nodes = parse_cluster_nodes(cluster_nodes)

    async def start(self) -> None:
        await self.link.start()
        self.history.start()

    async def stop(self) -> None:
        await self.history.stop()
        await self.view.stop()
        await self.link.stop()

    async def ask_sink(self, endpoint: str, query: BaseModel, timeout: float | None = None) -> Answer:
        """The whole answer of the sink of a stream of one partition (JSON, and the headers it came
        with)."""
        return await self.asker.ask(0, 1, endpoint, query, timeout)

    # ---- routes ------------------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        _parsed(NoQuery, STATS_PARAMS, request)
        return _json(await self.view.body(uptime_seconds=round(time.time() - self.started, 3)))

    async def stats_history(self, request: Request) -> Response:
        query = _parsed(HistoryQuery, HISTORY_PARAMS, request)
        return FastJSONResponse(self.history.answer(query.since))

    async def list_events(self, request: Request) -> Response:
        query = _parsed(EventsRequest, EVENTS_ROUTE_PARAMS, request)
        count = await self.topology.partitions()
        # A topic lives in one partition: only its sink can have its events.
        asked = [partition_of(query.topic, count)] if query.topic is not None else range(count)
        return _json(await self._page("events", query, count, asked))

    async def get_event(self, request: Request) -> Response:
        query = _parsed(EventQuery, EVENT_PARAMS, request)
        count = await self.topology.partitions()
        k = partition_of(query.topic, count)
        try:
            found = (await self.asker.ask(k, count, "event", query)).data
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(404, "not_found", f"no event {query.event_id!r} in topic {query.topic!r}") from None
            raise
        return _json(found if count == 1 else _in_partition(found, k))

    async def list_dead_letters(self, request: Request) -> Response:
        query = _parsed(DeadLettersRequest, DEAD_LETTERS_ROUTE_PARAMS, request)
        count = await self.topology.partitions()
        return _json(await self._page("dead_letters", query, count, range(count)))

    async def _page(self, key: Literal["events", "dead_letters"], query: R, count: int, asked: Sequence[int]) -> bytes:
        positions = _positions(query, count)
        if count == 1:
            return with_missing((await self.asker.ask(0, 1, key, query.partition_query(positions[0], False))).data)
        answers, missing = await self.asker.ask_each(
            asked, count, key, lambda k: query.partition_query(positions[k], True)
        )
        parts = read_answers({k: a.data for k, a in answers.items()}, missing)
        if not parts:
            raise none_answered(missing)
        page = merge(parts, positions, query.limit, query.newest_first, incomplete=bool(missing))
        return merged_page(key, page.items, page.next_cursor, sorted(missing))

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
                count = await self.topology.partitions()
            except ApiError as exc:
                return {"nats": {"ok": nats_ok}, "sink": {"ok": False, "error": exc.message}}
            # The sinks' own state only: the stats answer grows with the number of topics.
            if count == 1:
                try:
                    status = orjson.loads((await self.ask_sink("status", NoQuery(), timeout=_READY_TIMEOUT)).data)
                    sink = {"ok": bool(status["ready"]), "last_error": status["last_error"]}
                except ApiError as exc:
                    sink["error"] = exc.message
            else:
                sink = await self._partitions_ready(count)
        return {"nats": {"ok": nats_ok}, "sink": sink}

    async def _partitions_ready(self, count: int) -> dict[str, Any]:
        """Ready when every partition's sink answers and is ready; names those that are not."""
        answers, missing = await self.asker.ask_each(range(count), count, "status", lambda k: NoQuery(), _READY_TIMEOUT)
        not_ready: dict[int, str] = {}
        for k, answer in answers.items():
            try:
                status = orjson.loads(answer.data)
                if not status["ready"]:
                    not_ready[k] = status.get("last_error") or "not ready"
            except (ValueError, KeyError, TypeError) as exc:
                missing[k] = f"its status could not be read: {exc}"
        problems = {**not_ready, **missing}
        first = min(problems, default=None)
        return {
            "ok": not problems,
            "partitions": count,
            "missing_partitions": sorted(missing),
            "not_ready_partitions": sorted(not_ready),
            "last_error": None if first is None else f"partition {first}: {problems[first]}",
        }


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _parsed(model: type[Q], params: Sequence[Param], request: Request) -> Q:
    try:
        return parse_params(model, params, request.query_params.multi_items(), request.path_params)
    except ParamError as exc:
        raise _refused(exc) from None


def _refused(exc: ParamError) -> ApiError:
    detail = {"index": None, "field": exc.name, "message": exc.message}
    return ApiError(422, "validation_error", str(exc), details=[detail])


def _positions(query: PageRequest, count: int) -> tuple[int, ...]:
    """Each partition's last id from the cursor, which must have been made for this stream's P."""
    if query.cursor is None:
        return (0,) * count
    if len(query.cursor) != count:
        made = "1 partition" if len(query.cursor) == 1 else f"{len(query.cursor)} partitions"
        raise _refused(
            ParamError(
                "cursor",
                f"this cursor was made for a stream of {made}; the stream now has {count}: start again without one",
            )
        )
    return query.cursor


def _in_partition(found: bytes, k: int) -> bytes:
    try:
        return in_partition(found, k)
    except ValueError as exc:
        raise ApiError(502, "sink_error", f"the sink of partition {k} answered what is not an event: {exc}") from None


def create_app(settings: QuerySettings, registry: CollectorRegistry | None = None) -> Starlette:
    """The query app. It needs a read token unless ``--no-auth`` (else ``SettingsError``)."""
    auth = Authenticator.from_settings(settings, needs=[READ])
    registry = registry or CollectorRegistry()
    return build_app("logmesh query", [Query(settings, signed_in=auth is not None)], registry, auth=auth)
