"""The log event: one schema for HTTP requests, stream messages and stored rows, and the message ids.

Identity is ``(topic, event_id)``. JetStream's duplicate window is per stream, not per subject, so a
``Nats-Msg-Id`` carries the topic: a raw publisher writes ``<topic>:<event_id>`` (or a bare id without
``:``), ingest a keyed id no one else can compute (``MsgIdKey``).
"""

from __future__ import annotations

import binascii
import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

TOPIC_MAX = 128
EVENT_ID_MAX = 256
SOURCE_MAX = 128

# The topic rule, written once: Python, the OpenAPI description and the SQL batch decoder use these.
TOPIC_PATTERN = r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*"
TOPIC_RULE = (
    f"topic must be 1-{TOPIC_MAX} characters of letters, digits, '_' or '-', with '.' between non-empty segments"
)
TOPIC_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": TOPIC_MAX,
    "pattern": f"^{TOPIC_PATTERN}$",
}
_TOPIC_RE = re.compile(TOPIC_PATTERN)
_valid_topics: set[str] = set()


def check_topic(value: str) -> str:
    # A handful of topics carry almost all traffic: remember the good ones instead of matching again.
    if value in _valid_topics:
        return value
    if not 1 <= len(value) <= TOPIC_MAX or not _TOPIC_RE.fullmatch(value):
        raise PydanticCustomError("topic_invalid", TOPIC_RULE)
    if len(_valid_topics) < 100_000:
        _valid_topics.add(value)
    return value


def check_event_id(value: str) -> str:
    if not 1 <= len(value) <= EVENT_ID_MAX:
        raise PydanticCustomError("event_id_length", "event_id must be 1-256 characters")
    if not value.isprintable():
        raise PydanticCustomError("event_id_unprintable", "event_id must contain only printable characters")
    if value != value.strip():
        raise PydanticCustomError("event_id_whitespace", "event_id must not start or end with whitespace")
    return value


# The date-times accepted: YYYY-MM-DD, T (or a space, as RFC 3339 allows), HH:MM, optional :SS with
# up to 6 fractional digits ('.' or ','), then Z, ±HH:MM, ±HHMM or nothing (UTC); T and Z in either
# case. Checked before parsing: pydantic's own parser reads a string of digits as Unix time and drops
# digits past the sixth in silence.
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?", re.ASCII
)
_TOO_FINE = re.compile(r"\d{2}:\d{2}:\d{2}[.,]\d{7,}", re.ASCII)
_TIMESTAMP_RULE = (
    "timestamp must be an ISO-8601 date-time such as 2026-11-22T10:00:00.123456Z (offset Z, +HH:MM or none for UTC)"
)


def parse_timestamp(value: object) -> datetime:
    """An ISO-8601 date-time string as an aware UTC datetime; a naive one is taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _ISO_DATETIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as exc:  # month 13, hour 24, offset +24:00, ...
            raise PydanticCustomError(
                "timestamp_invalid", "timestamp is not a valid date-time: {reason}", {"reason": str(exc)}
            ) from None
    elif isinstance(value, str) and _TOO_FINE.search(value):
        raise PydanticCustomError(
            "timestamp_too_precise", "timestamp has more than 6 fractional digits; logmesh keeps microseconds"
        )
    else:
        raise PydanticCustomError("timestamp_format", _TIMESTAMP_RULE)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:30+01:00 is in year 0 in UTC
        raise PydanticCustomError("timestamp_range", "timestamp must fall within years 1-9999 in UTC") from None


# The JSON schema states the rules for the OpenAPI description; the validators enforce them (the
# topic rule is cheaper in Python with its cache; "printable" has no exact JSON-schema form).
Topic = Annotated[
    str,
    Field(
        strict=True,
        json_schema_extra={k: v for k, v in TOPIC_SCHEMA.items() if k != "type"},
    ),
    AfterValidator(check_topic),
]
EventId = Annotated[
    str,
    Field(strict=True, json_schema_extra={"minLength": 1, "maxLength": EVENT_ID_MAX, "pattern": r"^\S(.*\S)?$"}),
    AfterValidator(check_event_id),
]
Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]
Source = Annotated[str, Field(strict=True, min_length=1, max_length=SOURCE_MAX)]


def check_finite(value: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or Infinity; a stored payload must stay readable by any JSON parser."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("payload_not_finite", "payload numbers must be finite (no NaN or Infinity)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


Payload = Annotated[dict[str, Any], Field(strict=True), AfterValidator(check_finite)]


class Event(BaseModel):
    """An event as publishers send it over HTTP: every field but ``payload`` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: Topic
    event_id: EventId
    timestamp: Timestamp
    source: Source
    payload: Payload = Field(default_factory=dict)


class StreamEvent(BaseModel):
    """A JSON object read from the stream, where a raw NATS publisher may leave out what the message
    itself tells: the topic (subject), the id (``Nats-Msg-Id``), the time (stream time) and the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: Topic | None = None
    event_id: EventId | None = None
    timestamp: Timestamp | None = None
    source: Source | None = None
    payload: Payload = Field(default_factory=dict)


def msg_id(topic: str, event_id: str) -> str:
    """The id a raw publisher (``nats pub``, the load generator over NATS) gives an event."""
    return f"{topic}:{event_id}"


# Ingest's ids: <topic>:@<mac>, the mac 22 characters of unpadded base64url (128 bits).
KEYED_MARK = "@"
MAC_CHARS = 22
MAC_CHAR_CLASS = "[A-Za-z0-9_-]"  # base64url's alphabet, as a pattern (the SQL decoder uses it too)
_MAC = re.compile(f"{MAC_CHAR_CLASS}{{{MAC_CHARS}}}")
_URLSAFE = bytes.maketrans(b"+/", b"-_")


class MsgIdKey:
    """Ingest's message ids: ``<topic>:@<mac>``, the mac a keyed BLAKE2b of ``topic NUL event_id``.

    A raw publisher that may write into the stream could otherwise send ``<topic>:<event_id>`` first
    (on another subject, or with a body the sink dead-letters) and JetStream would drop ingest's real
    event as a duplicate of it: a 202 saying "duplicate" for an event never stored. Without the key no
    one can compute ingest's id, so only ingest's own earlier publish of the same ``(topic,
    event_id)``, which passed the same validation, can take it: when JetStream calls an HTTP event a
    duplicate, it is one. The cost: an HTTP copy and a raw copy (``<topic>:<event_id>``) of one event,
    or HTTP copies sent through ingests with different keys, no longer meet in JetStream's window; the
    sink's primary key drops and counts that repeat instead, so the counters stay exact. The topic
    holds no NUL, so ``topic NUL event_id`` names one pair only."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(key=key, digest_size=16)  # copied per id: the key is hashed once

    def msg_id(self, topic: str, event_id: str) -> str:
        mac = self._keyed.copy()
        # surrogatepass: total over any str (a validated event holds no surrogate).
        mac.update(f"{topic}\0{event_id}".encode("utf-8", "surrogatepass"))
        text = binascii.b2a_base64(mac.digest(), newline=False)[:MAC_CHARS].translate(_URLSAFE)
        return f"{topic}:{KEYED_MARK}{text.decode()}"


def msg_id_topic(value: str) -> str | None:
    """The topic a message id names: what comes before its first ``:`` (a topic holds none), or None
    for a bare id."""
    topic, colon, _ = value.partition(":")
    return topic if colon else None


def is_keyed_msg_id(topic: str, value: str) -> bool:
    """Whether ``value`` has the form of ingest's id for an event of ``topic``. The sink has no key, so
    it cannot check the mac; a raw publisher using this form can only collide with an id it cannot
    compute."""
    return (
        len(value) == len(topic) + 2 + MAC_CHARS
        and value.startswith(f"{topic}:{KEYED_MARK}")
        and _MAC.fullmatch(value, len(topic) + 2) is not None
    )


EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_LIST_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class FieldError(BaseModel):
    """One reason an input was rejected, and where: ``index`` in the batch (None for a single object)
    and the dotted ``field`` path (None when the whole value is wrong)."""

    index: int | None
    field: str | None
    message: str


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
}


def field_errors(error: ValidationError, *, batch: bool) -> list[FieldError]:
    """Turns pydantic's errors into (index, field, message) triples a publisher can act on."""
    out: list[FieldError] = []
    for item in error.errors(include_url=False, include_input=False):
        loc = list(item["loc"])
        index: int | None = None
        if batch and loc and isinstance(loc[0], int):
            index = int(loc.pop(0))
        # An empty key is shown as "" so that it still names something.
        field = ".".join(str(part) if part != "" else '""' for part in loc) or None
        message = _MESSAGES.get(item["type"], item["msg"])
        out.append(FieldError(index=index, field=field, message=message))
    return out
