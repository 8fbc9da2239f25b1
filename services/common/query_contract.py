"""The query contract, written once: what the query routes accept, how a page is cut and continued,
and what they answer. The query service parses HTTP parameters with it, the sink validates the same
request models on its NATS endpoints and builds pages in the same shape, and the OpenAPI description
is made from it.

A page is finished by the sink (the JSON the client gets, next_cursor included); the query service
forwards its bytes. Stored payloads are spliced into the page as stored, never parsed, so a number
or string comes back exactly as it was written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from logmesh.common.model import TOPIC_SCHEMA, EventId, Topic, check_event_id, check_topic
from logmesh.common.partitions import MAX_PARTITIONS

MAX_PAGE = 1000
DEFAULT_PAGE = 100
# A cursor is the id of the last item of a page, in decimal; ids are unsigned 64-bit integers.
CURSOR_DIGITS = 19
MAX_CURSOR = 10**CURSOR_DIGITS - 1
# A page also ends once the stored bytes of its items reach this (it always holds at least one item),
# so that the size of events bounds neither the sink's memory nor the time a page takes.
PAGE_BYTES = 512 * 1024
# Dead letters keep the whole body; pages show its start.
BODY_PREVIEW = 4096

M = TypeVar("M", bound=BaseModel)

# ---- requests (HTTP parameters become these; the sink's NATS endpoints validate the same) ---------


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic | None = None
    after: int = Field(0, ge=0, le=MAX_CURSOR, description="0: from the start in either order")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    newest_first: bool = False
    parts: bool = Field(False, description="answer as a partition's part of a merged page (parts())")


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic
    event_id: EventId


class DeadLettersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: int = Field(0, ge=0, le=MAX_CURSOR)
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    newest_first: bool = True
    parts: bool = Field(False, description="answer as a partition's part of a merged page (parts())")


class PageRequest(BaseModel):
    """A page asked over HTTP: ``cursor`` holds every partition's last id (see :func:`parse_cursor`);
    each partition is then asked with an :class:`EventsQuery` or :class:`DeadLettersQuery`."""

    model_config = ConfigDict(extra="forbid")
    cursor: tuple[int, ...] | None = None
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)


class EventsRequest(PageRequest):
    topic: Topic | None = None
    newest_first: bool = False

    def partition_query(self, after: int, parts: bool) -> EventsQuery:
        return EventsQuery(topic=self.topic, after=after, limit=self.limit, newest_first=self.newest_first, parts=parts)


class DeadLettersRequest(PageRequest):
    newest_first: bool = True

    def partition_query(self, after: int, parts: bool) -> DeadLettersQuery:
        return DeadLettersQuery(after=after, limit=self.limit, newest_first=self.newest_first, parts=parts)


class NoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CountersQuery(BaseModel):
    """The sink's counters, unless they are still the ones read at ``unless_as_of``: then the answer
    is ``null``. Either way COUNTERS_AS_OF_HEADER says when the sink read its current counters."""

    model_config = ConfigDict(extra="forbid")
    unless_as_of: float | None = None


COUNTERS_AS_OF_HEADER = "Logmesh-Counters-As-Of"


# ---- the one parameter parser --------------------------------------------------------------------


class ParamError(ValueError):
    """A parameter that cannot be used, by name, with what it must be."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a route: its name over HTTP, the request-model field it fills, its OpenAPI
    schema, and the parser of its text (which raises ValueError with the rule it breaks)."""

    name: str
    field: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]
    description: str
    where: Literal["query", "path"] = "query"

    def openapi(self) -> dict[str, Any]:
        required = self.where == "path"
        return {
            "name": self.name,
            "in": self.where,
            "required": required,
            "schema": self.schema,
            "description": self.description,
        }


def _integer(lo: int, hi: int, rule: str) -> Callable[[str], int]:
    digits = len(str(hi))

    def parse(raw: str) -> int:
        # isdigit() alone takes '²' and '①', which int() refuses; the length bound keeps int() cheap.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= digits) or not lo <= int(raw) <= hi:
            raise ValueError(rule)
        return int(raw)

    return parse


def _choice(values: Mapping[str, Any]) -> Callable[[str], Any]:
    rule = "must be " + " or ".join(repr(v) for v in values)

    def parse(raw: str) -> Any:
        if raw not in values:
            raise ValueError(rule)
        return values[raw]

    return parse


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        try:
            return check(raw)
        except PydanticCustomError as exc:
            raise ValueError(exc.message()) from None

    return parse


_TOPIC = _checked(check_topic)
_LIMIT = Param(
    "limit",
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    _integer(1, MAX_PAGE, f"must be an integer from 1 to {MAX_PAGE}, in digits 0-9"),
    f"page size (default {DEFAULT_PAGE}); a page also ends at about {PAGE_BYTES // 1024} KiB of stored data",
)
_CURSOR = Param(
    "cursor",
    "after",
    {"type": "string", "pattern": f"^[0-9]{{1,{CURSOR_DIGITS}}}$"},
    _integer(0, MAX_CURSOR, f"must be the next_cursor of a previous page (1-{CURSOR_DIGITS} digits 0-9)"),
    "next_cursor of the previous page",
)
# With P > 1 partitions a page goes on from every partition's last id: ``p<P>.<id 0>.<id 1>...`` (ids in
# partition order; 0: nothing taken from that partition yet). With P = 1 it is the one id in decimal,
# as it always was. Clients treat either as opaque.
_MERGED_CURSOR = re.compile(rf"p([0-9]{{1,2}})((?:\.[0-9]{{1,{CURSOR_DIGITS}}})+)")
_MERGED_CURSOR_CHARS = 4 + MAX_PARTITIONS * (CURSOR_DIGITS + 1)
_CURSOR_RULE = (
    f"must be the next_cursor of a previous page (1-{CURSOR_DIGITS} digits 0-9, or p<P>.<id>... for a stream of "
    "P partitions)"
)


def format_cursor(positions: Sequence[int]) -> str:
    """The cursor that goes on from each partition's last id."""
    if len(positions) == 1:
        return str(positions[0])
    return f"p{len(positions)}." + ".".join(str(p) for p in positions)


def parse_cursor(raw: str) -> tuple[int, ...]:
    """Every partition's last id, from a cursor :func:`format_cursor` made (for any P; the route
    checks it is the stream's)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= CURSOR_DIGITS:
        return (int(raw),)
    found = _MERGED_CURSOR.fullmatch(raw) if raw.isascii() and len(raw) <= _MERGED_CURSOR_CHARS else None
    if found is None:
        raise ValueError(_CURSOR_RULE)
    count = int(found.group(1))
    positions = tuple(int(p) for p in found.group(2)[1:].split("."))
    if not 2 <= count <= MAX_PARTITIONS or len(positions) != count:
        raise ValueError(f"{_CURSOR_RULE}; this one is damaged: it says p{count} and holds {len(positions)} ids")
    return positions


_PAGE_CURSOR = Param(
    "cursor",
    "cursor",
    {
        "type": "string",
        "pattern": f"^([0-9]{{1,{CURSOR_DIGITS}}}|p[0-9]{{1,2}}(\\.[0-9]{{1,{CURSOR_DIGITS}}}){{2,{MAX_PARTITIONS}}})$",
    },
    parse_cursor,
    "next_cursor of the previous page (opaque)",
)
_ORDER = Param(
    "order",
    "newest_first",
    {"type": "string", "enum": ["asc", "desc"]},
    _choice({"asc": False, "desc": True}),
    "insertion order, or newest first",
)

STATS_PARAMS: tuple[Param, ...] = ()
EVENTS_PARAMS = (Param("topic", "topic", TOPIC_SCHEMA, _TOPIC, "only this topic"), _LIMIT, _CURSOR, _ORDER)
EVENT_PARAMS = (
    Param("topic", "topic", TOPIC_SCHEMA, _TOPIC, "the event's topic", where="path"),
    Param(
        "event_id",
        "event_id",
        {"type": "string", "minLength": 1},
        _checked(check_event_id),
        "the event's id",
        where="path",
    ),
)
DEAD_LETTERS_PARAMS = (_LIMIT, _CURSOR, _ORDER)
# What the HTTP routes take: the same, with a cursor for any number of partitions.
EVENTS_ROUTE_PARAMS = (EVENTS_PARAMS[0], _LIMIT, _PAGE_CURSOR, _ORDER)
DEAD_LETTERS_ROUTE_PARAMS = (_LIMIT, _PAGE_CURSOR, _ORDER)


def parse_params(
    model: type[M],
    params: Sequence[Param],
    query: Iterable[tuple[str, str]],
    path: Mapping[str, str] | None = None,
) -> M:
    """The request a route's parameters ask for. Every value is checked against its parameter's rule;
    an unknown or repeated parameter is refused rather than ignored, since whichever value won would
    be a guess."""
    known = {p.name: p for p in params if p.where == "query"}
    given: dict[str, str] = {}
    for name, raw in query:
        if name not in known:
            takes = ", ".join(known) or "no parameters"
            raise ParamError(_shown(name), f"unknown parameter; this route takes {takes}")
        if name in given:
            raise ParamError(name, "given more than once")
        given[name] = raw
    given.update({p.name: (path or {})[p.name] for p in params if p.where == "path"})
    values: dict[str, Any] = {}
    for p in params:
        if p.name in given:
            try:
                values[p.field] = p.parse(given[p.name])
            except ValueError as exc:
                raise ParamError(p.name, str(exc)) from None
    try:
        return model.model_validate(values)
    except ValidationError as exc:  # the parsers hold every rule the models do; this names the parameter anyway
        field = str(exc.errors()[0]["loc"][0])
        name = next((p.name for p in params if p.field == field), field)
        raise ParamError(name, exc.errors()[0]["msg"]) from None


def _shown(name: str) -> str:
    """A parameter name fit for a message: an empty one still names something; a long one is cut."""
    if not name:
        return '""'
    return name if len(name) <= 64 else name[:61] + "..."
