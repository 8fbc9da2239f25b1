"""The query contract, written once: what the query routes accept, how a page is cut and continued,
and what they answer. The query service parses HTTP parameters with it, the sink validates the same
request models on its NATS endpoints and builds pages in the same shape, and the OpenAPI description
is made from it.

A page is finished by the sink (the JSON the client gets, next_cursor included); the query service
forwards its bytes. Stored payloads are spliced into the page as stored, never parsed, so a number
or string comes back exactly as it was written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from logmesh.common.model import TOPIC_SCHEMA, EventId, Topic, check_event_id, check_topic

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


# ---- answers --------------------------------------------------------------------------------------


def page(key: Literal["events", "dead_letters"], items: Sequence[bytes], next_cursor: int | None) -> bytes:
    """A finished page: items already in JSON, next_cursor a string (or null on the last page)."""
    cursor = b"null" if next_cursor is None else b'"%d"' % next_cursor
    return b'{"%s":[%s],"count":%d,"next_cursor":%s}' % (key.encode(), b",".join(items), len(items), cursor)


# ---- a partition's part of a merged page ---------------------------------------------------------
# With P > 1 the query service asks every partition for a page (``parts=True``) and merges them by
# stream sequence. A part is ``1\n`` (more items follow in this partition) or ``0\n``, then per item
# ``<id> <seq> <length>\n`` and the item's JSON: the query service cuts it without parsing payloads.


def parts(items: Sequence[tuple[int, int, bytes]], more: bool) -> bytes:
    out = [b"1\n" if more else b"0\n"]
    for id_, seq, item in items:
        out.append(b"%d %d %d\n" % (id_, seq, len(item)))
        out.append(item)
    return b"".join(out)


def read_parts(data: bytes) -> tuple[list[tuple[int, int, bytes]], bool]:
    """What :func:`parts` wrote; ValueError when ``data`` is not that."""
    view = memoryview(data)
    end = data.index(b"\n")
    more = data[:end] == b"1"
    items: list[tuple[int, int, bytes]] = []
    at = end + 1
    while at < len(data):
        end = data.index(b"\n", at)
        id_, seq, length = (int(x) for x in data[at:end].split(b" "))
        at = end + 1 + length
        if at > len(data):
            raise ValueError("a part ends inside an item")
        items.append((id_, seq, bytes(view[end + 1 : at])))
    return items, more


class StoredEvent(BaseModel):
    id: int = Field(description="insertion order; the last one of a page is its next_cursor")
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: dict[str, Any] = Field(description="as stored: numbers and strings exactly as they were written")
    seq: int = Field(description="stream sequence of the message that stored it")
    stored_at: str


_NEXT = "pass it back as cursor for the next page; null on the last page"


class EventPage(BaseModel):
    events: list[StoredEvent]
    count: int
    next_cursor: str | None = Field(description=_NEXT)


class DeadLetter(BaseModel):
    id: int
    seq: int
    subject: str
    reason: str
    headers: dict[str, Any] | None = Field(description="the message's headers, as stored")
    body: str = Field(description=f"the first {BODY_PREVIEW} bytes of the body, as UTF-8 with replacement characters")
    body_bytes: int
    body_truncated: bool
    stored_at: str


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter]
    count: int
    next_cursor: str | None = Field(description=_NEXT)


class Duplicates(BaseModel):
    window: int
    store: int


class TopicStats(BaseModel):
    topic: str
    count: int
    duplicates: Duplicates


class SinkStatus(BaseModel):
    """The sink's own state; the sink's ``status`` endpoint answers this alone."""

    ready: bool
    last_error: str | None
    uptime_seconds: float
    last_commit_at: float | None
    batches_committed: int
    buffered: int
    metrics_port: int | None
    store_bytes: int | None


class StreamState(BaseModel):
    name: str
    messages: int = Field(description="every message in the stream, the receipts included")
    receipt_messages: int = Field(description="the receipts ingest wrote beside the events")
    bytes: int
    first_seq: int
    last_seq: int


class ConsumerState(BaseModel):
    name: str
    pending: int
    ack_pending: int
    redelivered: int


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    duplicates: Duplicates
    invalid: int
    arrived: int
    topics: list[TopicStats]
    invariant_holds: bool
    as_of: float = Field(description="when the sink read these counters (Unix time)")
    sink: SinkStatus
    uptime_seconds: float
    stream: StreamState | None = Field(None, description="from JetStream; absent when it did not answer")
    consumer: ConsumerState | None = Field(None, description="from JetStream; absent when it did not answer")
