"""The reference decoder: one stream message in, the row to store or the reason it cannot be stored.

The sink's SQL batch decoder accepts a subset of what this accepts and leaves everything else here;
``logmesh tail`` shows messages as this decodes them.

Rules for messages that did not come through ingest (any NATS client, e.g. ``nats pub``):
- the topic is the subject less ``logs.``; a JSON body whose ``topic`` disagrees is invalid;
- a ``Nats-Msg-Id`` with a ``:`` names the topic before its first ``:`` (a topic holds none), which must
  be the subject's: JetStream's duplicate window spans every subject, and an id naming another topic
  would take that topic's id from its publishers; a bare id (no ``:``) names no topic;
- a body starting with ``{`` is a JSON event; a ``Nats-Msg-Id`` must be its ``event_id``,
  ``<topic>:<event_id>`` or ingest's keyed form ``<topic>:@<mac>`` (``model.MsgIdKey``, which the sink
  cannot check without the key); a missing ``event_id`` comes from ``Nats-Msg-Id`` (less the leading
  ``<topic>:``), a missing timestamp from the stream time, a missing source from the
  ``Logmesh-Source`` header or ``nats``;
- any other UTF-8 body is a plain log line stored as ``{"message": <text>}``, its id the
  ``Nats-Msg-Id`` or, without one, derived from the stream sequence;
- anything else (not UTF-8, empty, bad JSON, bad fields) is dead-lettered with the reason.

JSON is read strictly (RFC 8259, see ``strict_json``). The event's fields may each appear once: a
repeated field would leave the event ambiguous. The payload is stored as the text it was sent in,
so a reader gets exactly the value that was sent: integers of any size, floats as written, strings
with their escapes (an escaped lone surrogate included), names in their order and, as JSON allows,
a name repeated inside the payload kept as it came.

A receipt (``logmesh.receipts``, written by ``publisher.receipt_message``) is
``{"events": <batch size>, "window_duplicates": {<topic>: <count>}}``: every number is checked
against what it can truthfully be, so that no message can push a counter out of range.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from logmesh.common.jetstream import LOG_SUBJECT_PREFIX, MSG_ID_HEADER, SOURCE_HEADER
from logmesh.common.model import (
    SOURCE_MAX,
    StreamEvent,
    check_event_id,
    check_topic,
    field_errors,
    is_keyed_msg_id,
    msg_id_topic,
)
from logmesh.common.strict_json import JsonError, Member, Number, members
from logmesh.common.wire import Delivery

# Most events one receipt may speak for: far above any publish batch, far below what could make a
# counter overflow.
MAX_RECEIPT_EVENTS = 1_000_000

_SURROGATE = re.compile("[\ud800-\udfff]")
_FIELDS = frozenset(StreamEvent.model_fields)


@dataclass(slots=True)
class Row:
    topic: str
    event_id: str
    timestamp: datetime
    source: str
    payload: str  # a JSON object's text, exactly as it was sent
    seq: int


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_message(
    subject: str, headers: dict[str, str] | None, body: bytes, delivery: Delivery, stream_epoch: int
) -> Row:
    """Decodes one log message; raises ``Rejected`` with the reason when it cannot be stored."""
    if not subject.startswith(LOG_SUBJECT_PREFIX):
        raise Rejected(f"subject {subject!r} is not under {LOG_SUBJECT_PREFIX}")
    topic = subject[len(LOG_SUBJECT_PREFIX) :]
    try:
        check_topic(topic)
    except PydanticCustomError as exc:
        raise Rejected(f"subject topic {topic!r}: {exc.message()}") from None
    header_id = headers.get(MSG_ID_HEADER) if headers else None
    if header_id is not None:
        _check_id_topic(topic, header_id)
    text = _utf8(body)
    stripped = text.strip()
    if not stripped:
        raise Rejected("body is empty")
    if stripped[0] == "{":
        return _json_event(topic, header_id, headers, text, delivery)
    event_id = _id_from_header(topic, header_id) if header_id else f"nats-{stream_epoch}-{delivery.stream_seq}"
    return Row(
        topic=topic,
        event_id=event_id,
        timestamp=_stream_time(delivery),
        source=_source(headers),
        payload=json.dumps({"message": text}, ensure_ascii=False, separators=(",", ":")),
        seq=delivery.stream_seq,
    )


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"body is not UTF-8 (byte {exc.start})") from None


def _json_event(
    topic: str, header_id: str | None, headers: dict[str, str] | None, text: str, delivery: Delivery
) -> Row:
    try:
        fields = members(text)
    except JsonError as exc:
        raise Rejected(f"body starts with '{{' but is not valid JSON: {exc.reason}") from None
    event, payload = _validated(fields, text)
    if event.topic is not None and event.topic != topic:
        raise Rejected(f"topic {event.topic!r} in the body disagrees with the subject's topic {topic!r}")
    if event.event_id is not None:
        event_id = event.event_id
        if (
            header_id is not None
            and header_id not in (event_id, f"{topic}:{event_id}")
            and not is_keyed_msg_id(topic, header_id)
        ):
            raise Rejected(
                f"{MSG_ID_HEADER} {header_id!r} disagrees with event_id {event_id!r} (expected {topic}:{event_id})"
            )
    elif header_id is not None:
        event_id = _id_from_header(topic, header_id)
    else:
        raise Rejected(f"event_id: missing, and no {MSG_ID_HEADER} header to take it from")
    return Row(
        topic=topic,
        event_id=event_id,
        timestamp=event.timestamp or _stream_time(delivery),
        source=event.source or _source(headers),
        payload=payload,
        seq=delivery.stream_seq,
    )


def _validated(fields: list[Member], text: str) -> tuple[StreamEvent, str]:
    """The event's fields checked by the model, which holds their rules, and the payload's text. The
    model sees each string as it was written and a stand-in of the same type for anything else: a
    value it refuses by type is refused whatever it holds, and the payload was checked as JSON."""
    parts = []
    payload = "{}"
    for field in fields:
        name, value = field.name, field.value
        if name not in _FIELDS:
            # Refused as an unknown field, whatever it holds; a lone surrogate is shown as its escape.
            shown = name.encode("utf-8", "backslashreplace").decode() if _SURROGATE.search(name) else name
            parts.append(f"{json.dumps(shown)}:null")
            continue
        if isinstance(value, Number):
            stand_in = "0"
        elif isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise Rejected(f"{name}: holds an unpaired surrogate, which is not a character")
            stand_in = text[field.start : field.end]
        elif isinstance(value, dict):
            stand_in = "{}"
            if name == "payload":
                payload = text[field.start : field.end]
        elif isinstance(value, list):
            stand_in = "[]"
        else:
            stand_in = text[field.start : field.end]  # true, false, null
        parts.append(f'"{name}":{stand_in}')
    try:
        return StreamEvent.model_validate_json("{" + ",".join(parts) + "}"), payload
    except ValidationError as exc:
        errors = field_errors(exc, batch=False)
        raise Rejected("; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)) from None


def _check_id_topic(topic: str, header_id: str) -> None:
    named = msg_id_topic(header_id)
    if named is not None and named != topic:
        raise Rejected(
            f"{MSG_ID_HEADER} {_shown(header_id)} names topic {_shown(named)}, not the subject's topic {topic!r}"
        )


def _shown(text: str) -> str:
    # A header may be as long as a message: a reason quotes the start of it.
    return repr(text) if len(text) <= 300 else f"{text[:300]!r}... ({len(text)} characters)"


def _id_from_header(topic: str, header_id: str) -> str:
    # An id with a ':' names the subject's topic (checked first): the event id is what follows it.
    prefix = topic + ":"
    event_id = header_id[len(prefix) :] if header_id.startswith(prefix) else header_id
    try:
        return check_event_id(event_id)
    except PydanticCustomError as exc:
        raise Rejected(f"{MSG_ID_HEADER} {header_id!r}: {exc.message()}") from None


def _source(headers: dict[str, str] | None) -> str:
    source = headers.get(SOURCE_HEADER) if headers else None
    if source is None:
        return "nats"
    if not 1 <= len(source) <= SOURCE_MAX:
        raise Rejected(f"{SOURCE_HEADER} header must be 1-{SOURCE_MAX} characters")
    return source


def _stream_time(delivery: Delivery) -> datetime:
    seconds, ns = divmod(delivery.stream_time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)


def decode_receipt(body: bytes) -> Counter[str]:
    """The window duplicates per topic a receipt reports; raises ``Rejected`` with the reason."""
    try:
        fields = {f.name: f.value for f in members(_utf8(body), unique_names=True)}
    except JsonError as exc:
        raise Rejected(f"receipt: not valid JSON: {exc.reason}") from None
    except Rejected as exc:
        raise Rejected(f"receipt: {exc.reason}") from None
    unknown = sorted(fields.keys() - {"events", "window_duplicates"})
    if unknown:
        raise Rejected(f"receipt: {unknown[0]!a}: unknown field")
    for required in ("events", "window_duplicates"):
        if required not in fields:
            raise Rejected(f"receipt: {required}: field required")
    events = _count(fields["events"], "events", MAX_RECEIPT_EVENTS)
    duplicates = fields["window_duplicates"]
    if not isinstance(duplicates, dict):
        raise Rejected(f"receipt: window_duplicates: must be an object of counts by topic, not {_kind(duplicates)}")
    out: Counter[str] = Counter()
    for topic, count in duplicates.items():
        try:
            check_topic(topic)
        except PydanticCustomError as exc:
            raise Rejected(f"receipt: window_duplicates: {topic!a}: {exc.message()}") from None
        out[topic] = _count(count, f"window_duplicates.{topic}", events)
    if out.total() > events:
        raise Rejected(f"receipt: window_duplicates add up to {out.total()}, more than its {events} events")
    return out


def _count(value: object, field: str, most: int) -> int:
    # An integer written without sign, fraction or exponent; its length bounds it before int() runs.
    if isinstance(value, Number) and value.isdigit() and len(value) <= len(str(most)) and 1 <= int(value) <= most:
        return int(value)
    raise Rejected(f"receipt: {field}: must be an integer from 1 to {most}, not {_kind(value)}")


def _kind(value: object) -> str:
    if isinstance(value, Number):
        return value if len(value) <= 40 else f"a number of {len(value)} characters"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "an object" if isinstance(value, dict) else "an array"
