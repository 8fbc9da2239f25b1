"""The OpenAPI description of the HTTP API, built from the pydantic models the services use, so that
it cannot drift from what they accept; ``GET /openapi.json`` serves it and the fuzz tests read it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from logmesh import __version__
from logmesh.common.model import TOPIC_SCHEMA, Event, FieldError

REF = "#/components/schemas/{model}"


class ErrorInfo(BaseModel):
    status: int
    code: str
    message: str
    details: list[FieldError]


class ErrorBody(BaseModel):
    """The one error shape of every service."""

    error: ErrorInfo


class PublishResult(BaseModel):
    accepted: int = Field(description="events in the request")
    duplicates: int = Field(description="events JetStream dropped as already seen inside its window")
    stored: int = Field(description="events new to the stream")


class StoredEvent(BaseModel):
    id: int = Field(description="insertion order; pass the last one as cursor")
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: dict[str, Any]
    seq: int = Field(description="stream sequence of the message that stored it")
    stored_at: str


class EventPage(BaseModel):
    events: list[StoredEvent]
    count: int
    next_cursor: str | None


class DeadLetter(BaseModel):
    id: int
    seq: int
    subject: str
    reason: str
    headers: dict[str, str] | None
    body: str = Field(description="the start of the body, as UTF-8 with replacement characters")
    body_bytes: int
    body_truncated: bool
    stored_at: str


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter]
    count: int
    next_cursor: str | None


class Duplicates(BaseModel):
    window: int
    store: int


class TopicStats(BaseModel):
    topic: str
    count: int
    duplicates: Duplicates


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    duplicates: Duplicates
    invalid: int
    arrived: int
    topics: list[TopicStats]
    uptime_seconds: float
    invariant_holds: bool
    as_of: float = Field(description="when the figures were read (Unix time); at most a second old")
    sink: dict[str, Any]
    stream: dict[str, Any] | None = None
    consumer: dict[str, Any] | None = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]]


MODELS: list[type[BaseModel]] = [Event, ErrorBody, PublishResult, StoredEvent, EventPage, DeadLetterPage, Stats]
MODELS += [Health, Ready]

_ERRORS = {
    "400": "malformed JSON",
    "404": "not found",
    "408": "the body did not arrive in time",
    "413": "body over the size limit",
    "415": "not application/json",
    "422": "invalid input; details name the index and field of every problem",
    "503": "a dependency is down; retry after Retry-After",
    "504": "the sink did not answer in time",
}


def _json(model: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _responses(ok: str, model: str, *errors: str) -> dict[str, Any]:
    out: dict[str, Any] = {ok: {"description": "OK", **_json(model)}}
    for code in errors:
        out[code] = {"description": _ERRORS[code], **_json("ErrorBody")}
    return out


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
    _query("cursor", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "next_cursor of the previous page"),
    _query("order", {"type": "string", "enum": ["asc", "desc"]}, "insertion order, or newest first"),
]
_TOPIC = TOPIC_SCHEMA

INGEST_PATHS: dict[str, Any] = {
    "/publish": {
        "post": {
            "summary": "Publish one event or an array of events",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": REF.format(model="Event")},
                                {"type": "array", "items": {"$ref": REF.format(model="Event")}, "minItems": 1},
                            ]
                        }
                    }
                },
            },
            "responses": _responses("202", "PublishResult", "400", "408", "413", "415", "422", "503"),
        }
    }
}

QUERY_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The live dashboard (HTML)",
            "responses": {
                "200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}},
                "304": {"description": "Not modified (If-None-Match)"},
            },
        }
    },
    # The dashboard's files; the page links each as <file>?v=<content hash>, which may be cached for good.
    **{
        path: {
            "get": {
                "summary": summary,
                "parameters": [_query("v", {"type": "string"}, "content hash; the current one makes it cacheable")],
                "responses": {
                    "200": {"description": "OK", "content": {media_type: {"schema": {"type": "string"}}}},
                    "304": {"description": "Not modified (If-None-Match)"},
                },
            }
        }
        for path, summary, media_type in [
            ("/dashboard.css", "The dashboard's stylesheet", "text/css"),
            ("/dashboard.js", "The dashboard's script", "text/javascript"),
            ("/favicon.ico", "The dashboard's icon (PNG)", "image/png"),
        ]
    },
    "/stats": {"get": {"summary": "Counters, topics, lag", "responses": _responses("200", "Stats", "503", "504")}},
    "/events": {
        "get": {
            "summary": "Stored events, in insertion order, a page at a time",
            "parameters": [_query("topic", _TOPIC, "only this topic"), *_PAGE],
            "responses": _responses("200", "EventPage", "422", "503", "504"),
        }
    },
    "/events/{topic}/{event_id}": {
        "get": {
            "summary": "One stored event",
            "parameters": [
                {"name": "topic", "in": "path", "required": True, "schema": _TOPIC},
                {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
            ],
            "responses": _responses("200", "StoredEvent", "404", "422", "503", "504"),
        }
    },
    "/dead-letters": {
        "get": {
            "summary": "Messages the sink could not store, newest first, with the reason",
            "parameters": _PAGE,
            "responses": _responses("200", "DeadLetterPage", "422", "503", "504"),
        }
    },
}

# ---- GET /stats/history: the rate history the dashboard draws (logmesh.query.rates) ---------------


class RatePoint(BaseModel):
    t: float = Field(description="end of the interval (Unix time)")
    seconds: float = Field(description="length of the interval")
    arrived: float = Field(description="events per second the sink counted as arrived (stored, duplicate or invalid)")
    committed: float = Field(description="events per second stored as new")
    duplicates_window: float = Field(description="events per second dropped by JetStream's duplicate window")
    duplicates_store: float = Field(description="events per second dropped by the store's primary key")
    invalid: float = Field(description="messages per second kept as dead letters")
    appended: float | None = Field(
        description="messages per second appended to the stream, as they arrive (before the sink reads them)"
    )
    pending: int | None = Field(description="consumer messages not yet delivered, at t")
    ack_pending: int | None = Field(description="consumer messages delivered, not yet acked, at t")


class RateHistory(BaseModel):
    interval_seconds: float = Field(description="how often the counters are read")
    window_seconds: float = Field(description="how far back the history goes")
    points: list[RatePoint] = Field(description="oldest first; a gap where the counters could not be read")


MODELS.append(RateHistory)
QUERY_PATHS["/stats/history"] = {
    "get": {
        "summary": "Rates per second over the last minutes, from the counters read every few seconds",
        "parameters": [
            _query(
                "since",
                {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,9})?$"},
                "only points after this Unix time (the t of the newest point already fetched)",
            )
        ],
        "responses": _responses("200", "RateHistory", "422"),
    }
}


HEALTH_PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "The process answers", "responses": _responses("200", "Health")}},
    "/readyz": {
        "get": {
            "summary": "Every dependency answers",
            "responses": {
                "200": {"description": "ready", **_json("Ready")},
                "503": {"description": "not ready", **_json("Ready")},
            },
        }
    },
}


def openapi(title: str, *path_groups: dict[str, Any]) -> dict[str, Any]:
    modes = [(m, "validation" if m is Event else "serialization") for m in MODELS]
    _, definitions = models_json_schema(modes, ref_template=REF)  # type: ignore[arg-type]
    paths: dict[str, Any] = {}
    for group in path_groups:
        paths.update(group)
    paths["/openapi.json"] = {"get": {"summary": "This description", "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": definitions["$defs"]},
    }
