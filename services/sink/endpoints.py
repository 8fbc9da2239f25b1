"""Queries answered by the sink over NATS, from its own DuckDB handle.

DuckDB lets one process open a database file for writing and no other process open it at all, so the
query service cannot read the file itself. The sink serves reads as a ``nats.micro`` service
(``nats micro ls`` shows it); reads run on their own cursors and never wait for the writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from logmesh.common.jetstream import QUERY_SUBJECT_PREFIX, SINK_SERVICE_NAME
from logmesh.common.model import EventId, Topic

log = logging.getLogger("logmesh.sink")

MAX_PAGE = 1000


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic | None = None
    after: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    newest_first: bool = False


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic
    event_id: EventId


class DeadLettersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    newest_first: bool = True


class QueryHandlers(Protocol):
    """What the endpoints call; the sink implements it."""

    def stats(self) -> dict[str, Any]: ...

    def list_events(self, q: EventsQuery) -> list[dict[str, Any]]: ...

    def get_event(self, q: EventQuery) -> dict[str, Any] | None: ...

    def list_dead_letters(self, q: DeadLettersQuery) -> list[dict[str, Any]]: ...


Handler = Callable[[Request], Awaitable[None]]


def _read_endpoint(model: type[BaseModel], read: Callable[[Any], Any], pending: set[asyncio.Task[None]]) -> Handler:
    """A handler that validates the request and runs the read on a worker thread. It answers from a task
    of its own so that one slow query does not hold up the next request on the same subject."""

    async def answer(request: Request) -> None:
        try:
            query = model.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            await request.respond_error("400", _first_error(exc))
            return
        try:
            result = await asyncio.to_thread(read, query)
        except Exception as exc:
            log.exception("query failed")
            await request.respond_error("500", f"query failed: {exc}")
            return
        if result is None:
            await request.respond_error("404", "not found")
            return
        await request.respond(orjson.dumps(result))

    async def handle(request: Request) -> None:
        task = asyncio.create_task(answer(request))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return handle


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


async def start_query_service(
    nc: Client, handlers: QueryHandlers, version: str
) -> tuple[Service, set[asyncio.Task[None]]]:
    pending: set[asyncio.Task[None]] = set()

    async def stats(request: Request) -> None:
        # Served from memory: the counters mirror the last commit, no database read needed.
        await request.respond(orjson.dumps(handlers.stats()))

    service = await add_service(
        nc,
        ServiceConfig(
            name=SINK_SERVICE_NAME,
            version=version,
            description="logmesh sink: counters, events and dead letters from DuckDB",
        ),
    )
    endpoints: list[tuple[str, Handler]] = [
        ("stats", stats),
        ("events", _read_endpoint(EventsQuery, handlers.list_events, pending)),
        ("event", _read_endpoint(EventQuery, handlers.get_event, pending)),
        ("dead_letters", _read_endpoint(DeadLettersQuery, handlers.list_dead_letters, pending)),
    ]
    for name, handler in endpoints:
        await service.add_endpoint(EndpointConfig(name=name, subject=f"{QUERY_SUBJECT_PREFIX}.{name}", handler=handler))
    return service, pending
