"""Queries answered by the sink over NATS, from its own DuckDB handle.

DuckDB lets one process open a database file for writing and no other process open it at all, so the
query service cannot read the file itself. The sink serves reads as a ``nats.micro`` service
(``nats micro ls`` shows it); reads run on their own cursors and never wait for the writer. Every
answer is finished JSON, sent in parts when it outgrows a NATS message (nats_answers.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import BaseModel, ValidationError

from logmesh.common.jetstream import QUERY_SUBJECT_PREFIX, SINK_SERVICE_NAME
from logmesh.common.nats_answers import respond
from logmesh.common.query_contract import (
    COUNTERS_AS_OF_HEADER,
    CountersQuery,
    DeadLettersQuery,
    EventQuery,
    EventsQuery,
    NoQuery,
)
from logmesh.sink.counters import Counters

log = logging.getLogger("logmesh.sink")

# The counters' JSON is rebuilt when they change, but with many topics (0.3 s for 100,000 here) not
# more often than this many times its own cost: stats then take at most a tenth of the sink's time.
REBUILD_PAUSE_FACTOR = 10
# Up to this many topics the JSON takes well under a millisecond: built at once, on the loop, so an
# answer always holds the latest commit.
INLINE_TOPICS = 1000


class QueryHandlers(Protocol):
    """What the endpoints call; the sink implements it."""

    def counters(self) -> Counters: ...

    def status(self) -> dict[str, Any]: ...

    def list_events(self, q: EventsQuery) -> bytes: ...

    def get_event(self, q: EventQuery) -> bytes | None: ...

    def list_dead_letters(self, q: DeadLettersQuery) -> bytes: ...


Handler = Callable[[Request], Awaitable[None]]


Reply = bytes | tuple[bytes, dict[str, str]] | None  # JSON, with headers; None: not found


class _CountersJson:
    """The counters as JSON, rebuilt off the event loop for the latest commit, or served as last
    built while a rebuild would take more than its share of the sink's time."""

    def __init__(self) -> None:
        self._counters: Counters | None = None
        self.json = b""
        self.as_of = 0.0
        self._built_at = 0.0
        self._cost = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, counters: Counters) -> None:
        async with self._lock:
            stale = counters is not self._counters
            if stale and len(counters.topics) <= INLINE_TOPICS:
                self.json, self._counters, self.as_of = _counters_json(counters), counters, time.time()
            elif stale and time.monotonic() - self._built_at >= REBUILD_PAUSE_FACTOR * self._cost:
                started = time.monotonic()
                as_of = time.time()
                self.json = await asyncio.to_thread(_counters_json, counters)
                self._counters, self.as_of, self._built_at = counters, as_of, time.monotonic()
                self._cost = self._built_at - started


def _counters_json(counters: Counters) -> bytes:
    fields = counters.as_json()
    fields["invariant_holds"] = counters.invariant_holds
    return orjson.dumps(fields)


def _endpoint(
    nc: Client, model: type[BaseModel], answer: Callable[[Any], Awaitable[Reply]], pending: set[asyncio.Task[None]]
) -> Handler:
    """A handler that validates the request and answers it from a task of its own, so that one slow
    query does not hold up the next request on the same subject."""

    async def run(request: Request) -> None:
        try:
            query = model.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            await request.respond_error("400", _first_error(exc))
            return
        try:
            result = await answer(query)
        except Exception as exc:
            log.exception("query failed")
            await request.respond_error("500", f"query failed: {exc}")
            return
        if result is None:
            await request.respond_error("404", "not found")
        elif isinstance(result, tuple):
            await respond(request, nc, *result)
        else:
            await respond(request, nc, result)

    async def handle(request: Request) -> None:
        if not request._msg.reply:  # a message with nowhere to answer (a PubAck sent here, say): not a query
            log.debug("ignored a message on %s without a reply subject", request.subject)
            return
        task = asyncio.create_task(run(request))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return handle


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


async def start_query_service(
    nc: Client,
    handlers: QueryHandlers,
    version: str,
    prefix: str = QUERY_SUBJECT_PREFIX,
    metadata: dict[str, str] | None = None,
) -> tuple[Service, set[asyncio.Task[None]]]:
    """Serves ``handlers`` on ``<prefix>.<endpoint>``: one instance per partition, ``metadata`` naming it."""
    pending: set[asyncio.Task[None]] = set()
    latest = _CountersJson()

    # The counters mirror the last commit in memory: no database read.
    async def stats(_: NoQuery) -> Reply:
        """Everything the sink knows, for people and scripts (``nats req logmesh.query.stats ''``)."""
        await latest.refresh(handlers.counters())
        return b"".join((b'{"sink":', orjson.dumps(handlers.status()), b",", memoryview(latest.json)[1:]))

    async def counters(query: CountersQuery) -> Reply:
        """What the query service polls: the counters only when they changed, since with many topics
        they are megabytes."""
        await latest.refresh(handlers.counters())
        unchanged = query.unless_as_of == latest.as_of
        return (b"null" if unchanged else latest.json), {COUNTERS_AS_OF_HEADER: repr(latest.as_of)}

    async def status(_: NoQuery) -> Reply:
        return orjson.dumps(handlers.status())

    def read(method: Callable[[Any], bytes | None]) -> Callable[[Any], Awaitable[Reply]]:
        return lambda query: asyncio.to_thread(method, query)

    service = await add_service(
        nc,
        ServiceConfig(
            name=SINK_SERVICE_NAME,
            version=version,
            description="logmesh sink: counters, events and dead letters from DuckDB",
            metadata=metadata,
        ),
    )
    endpoints: list[tuple[str, Handler]] = [
        ("stats", _endpoint(nc, NoQuery, stats, pending)),
        ("status", _endpoint(nc, NoQuery, status, pending)),
        ("counters", _endpoint(nc, CountersQuery, counters, pending)),
        ("events", _endpoint(nc, EventsQuery, read(handlers.list_events), pending)),
        ("event", _endpoint(nc, EventQuery, read(handlers.get_event), pending)),
        ("dead_letters", _endpoint(nc, DeadLettersQuery, read(handlers.list_dead_letters), pending)),
    ]
    for name, handler in endpoints:
        await service.add_endpoint(EndpointConfig(name=name, subject=f"{prefix}.{name}", handler=handler))
    return service, pending
