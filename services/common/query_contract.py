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


# ---- answers --------------------------------------------------------------------------------------


def page(key: Literal["events", "dead_letters"], items: Sequence[bytes], next_cursor: int | None) -> bytes:
    """A finished page: items already in JSON, next_cursor a string (or null on the last page)."""
    cursor = b"null" if next_cursor is None else b'"%d"' % next_cursor
    return b'{"%s":[%s],"count":%d,"next_cursor":%s}' % (key.encode(), b",".join(items), len(items), cursor)


def merged_page(
    key: Literal["events", "dead_letters"], items: Sequence[bytes], next_cursor: str | None, missing: Sequence[int]
) -> bytes:
    """A page made of every partition's part, naming the partitions that did not answer."""
    cursor = b"null" if next_cursor is None else b'"%s"' % next_cursor.encode()
    return b'{"%s":[%s],"count":%d,"next_cursor":%s,"missing_partitions":[%s]}' % (
        key.encode(),
        b",".join(items),
        len(items),
        cursor,
        b",".join(b"%d" % k for k in missing),
    )


def with_missing(page_json: bytes, missing: Sequence[int] = ()) -> bytes:
    """A finished page (or event) with ``missing_partitions`` added."""
    if not page_json.endswith(b"}"):
        raise ValueError("not a JSON object")
    return page_json[:-1] + b',"missing_partitions":[%s]}' % b",".join(b"%d" % k for k in missing)


def in_partition(item_json: bytes, partition: int) -> bytes:
    """An item (event, dead letter) with the partition that stored it: ids are unique within one."""
    if not (item_json.startswith(b"{") and item_json.endswith(b"}") and len(item_json) > 2):
        raise ValueError("not a JSON object with fields")
    return b'{"partition":%d,%s' % (partition, item_json[1:])


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
    if data[:end] not in (b"0", b"1"):
        raise ValueError(f"a part begins with {bytes(data[:end][:64])!r}, not 0 or 1")
    more = data[:end] == b"1"
    items: list[tuple[int, int, bytes]] = []
    at = end + 1
    while at < len(data):
        end = data.index(b"\n", at)
        fields = data[at:end].split(b" ")
        # Digits only: a negative length would send the reader back over what it read, for ever.
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise ValueError(f"a part's item header is {bytes(data[at:end][:64])!r}, not '<id> <seq> <length>'")
        id_, seq, length = (int(f) for f in fields)
        at = end + 1 + length
        if at > len(data):
            raise ValueError("a part ends inside an item")
        items.append((id_, seq, bytes(view[end + 1 : at])))
    return items, more


_PARTITION = "with more than one partition: the partition that stored it (ids are unique within a partition)"
_MISSING = (
    "partitions that did not answer: their items are not in this page, and the cursor goes on from where they were"
)


class StoredEvent(BaseModel):
    id: int = Field(description="insertion order; the last one of a page is its next_cursor")
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: dict[str, Any] = Field(description="as stored: numbers and strings exactly as they were written")
    seq: int = Field(description="stream sequence of the message that stored it")
    stored_at: str
    partition: int | None = Field(None, description=_PARTITION)


_NEXT = "pass it back as cursor for the next page; null on the last page"


class EventPage(BaseModel):
    events: list[StoredEvent]
    count: int
    next_cursor: str | None = Field(description=_NEXT)
    missing_partitions: list[int] = Field(description=_MISSING)


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
    partition: int | None = Field(None, description=_PARTITION)


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter]
    count: int
    next_cursor: str | None = Field(description=_NEXT)
    missing_partitions: list[int] = Field(description=_MISSING)


class Duplicates(BaseModel):
    window: int
    store: int


class TopicStats(BaseModel):
    topic: str
    count: int
    duplicates: Duplicates


class SinkStatus(BaseModel):
    """The sink's own state; the sink's ``status`` endpoint answers this alone (with P > 1 the owner
    of each partition answers for it, naming the partition). In ``/stats`` with P > 1: every
    partition together (ready when all are; the first error; sums; the oldest uptime and the latest
    commit)."""

    ready: bool
    last_error: str | None
    uptime_seconds: float
    last_commit_at: float | None
    batches_committed: int
    buffered: int
    metrics_port: int | None
    store_bytes: int | None
    partition: int | None = Field(None, description="the partition this answer is about (a partition's status)")
    partitions: int | None = Field(None, description="the stream's number of partitions P")
    owner: str | None = Field(None, description="the name of the sink that owns the partition")
    pid: int | None = Field(None, description="that sink's process id")
    consumer: str | None = Field(None, description="the partition's durable consumer")
    file_id: str | None = Field(None, description="the id of the partition's store file")


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


class PartitionConsumer(BaseModel):
    name: str | None = Field(description="the durable consumer the partition's owner reads through")
    pending: int | None = Field(description="messages not yet delivered; null when JetStream did not answer")
    ack_pending: int | None = Field(description="delivered, not yet acknowledged; null when JetStream did not answer")


class PartitionStats(BaseModel):
    partition: int
    owner: str | None = Field(description="the sink that answered for it (null: never answered)")
    pid: int | None
    ready: bool = Field(description="answered, and its sink is ready")
    received: int = Field(description="counters as last answered (kept while the partition is missing)")
    unique_processed: int
    duplicates: Duplicates
    invalid: int
    consumer: PartitionConsumer


class ClusterNode(BaseModel):
    name: str
    url: str | None = Field(description="from the cluster_nodes setting (credentials hidden)")
    ok: bool = Field(description="holds a current copy of the stream: its leader, or a replica current and online")
    pid: int | None = Field(description="the nats-server's process id, when the one who started it said")


class ClusterState(BaseModel):
    nodes: list[ClusterNode]
    stream_leader: str | None = Field(description="the server leading the stream; null when JetStream did not answer")
    replicas: int | None = Field(description="the stream's configured number of replicas")


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
    consumer: ConsumerState | None = Field(
        None,
        description="from JetStream; absent when it did not answer. With P > 1: every partition's consumer "
        "together, named 'sink-p*', absent unless each one answered",
    )
    partitions: list[PartitionStats] = Field(description="each partition, in order (one with P = 1)")
    cluster: ClusterState
    missing_partitions: list[int] = Field(
        description="partitions whose sink did not answer; their counters are the last they answered"
    )
