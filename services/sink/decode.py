"""Turns stream messages into rows to store, dead letters, or window-duplicate receipts.

Rules for messages that did not come through ingest (any NATS client, e.g. ``nats pub``):
- the topic is the subject less ``logs.``; a JSON body whose ``topic`` disagrees is invalid;
- a body starting with ``{`` is a JSON event; a missing ``event_id`` comes from ``Nats-Msg-Id`` (less a
  leading ``<topic>:``), a missing timestamp from the stream time, a missing source from the
  ``Logmesh-Source`` header or ``nats``;
- any other UTF-8 body is a plain log line stored as ``{"message": <text>}``, its id the
  ``Nats-Msg-Id`` or, without one, derived from the stream sequence;
- anything else (not UTF-8, empty, bad JSON, bad fields) is dead-lettered with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError
from pydantic_core import PydanticCustomError

from logmesh.common.jetstream import LOG_SUBJECT_PREFIX, MSG_ID_HEADER, RECEIPT_SUBJECT, SOURCE_HEADER
from logmesh.common.model import SOURCE_MAX, StreamEvent, Topic, check_event_id, check_topic, field_errors
from logmesh.common.wire import Delivery, WireMsg, parse_headers


@dataclass(slots=True)
class Row:
    topic: str
    event_id: str
    timestamp: datetime
    source: str
    payload: str
    seq: int


@dataclass(slots=True)
class DeadLetter:
    seq: int
    subject: str
    reason: str
    headers: dict[str, str] | None
    body: bytes


@dataclass(slots=True)
class SlowDecoded:
    """What the reference decoder made of the messages the fast path left to it."""

    rows: list[Row] = field(default_factory=list)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)  # by position in the batch
    window_duplicates: Counter[str] = field(default_factory=Counter)


class Receipt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window_duplicates: dict[Topic, PositiveInt]


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
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"body is not UTF-8 (byte {exc.start})") from None
    stripped = text.strip()
    if not stripped:
        raise Rejected("body is empty")
    if stripped[0] == "{":
        return _json_event(topic, header_id, headers, body, delivery)
    event_id = _id_from_header(topic, header_id) if header_id else f"nats-{stream_epoch}-{delivery.stream_seq}"
    return Row(
        topic=topic,
        event_id=event_id,
        timestamp=_stream_time(delivery),
        source=_source(headers),
        payload=_json({"message": text}),
        seq=delivery.stream_seq,
    )


def _json_event(
    topic: str, header_id: str | None, headers: dict[str, str] | None, body: bytes, delivery: Delivery
) -> Row:
    try:
        event = StreamEvent.model_validate_json(body)
    except ValidationError as exc:
        raise Rejected(_describe(exc)) from None
    if event.topic is not None and event.topic != topic:
        raise Rejected(f"topic {event.topic!r} in the body disagrees with the subject's topic {topic!r}")
    if event.event_id is not None:
        event_id = event.event_id
        if header_id is not None and header_id not in (event_id, f"{topic}:{event_id}"):
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
        payload=_json(event.payload),
        seq=delivery.stream_seq,
    )


def _describe(exc: ValidationError) -> str:
    errors = field_errors(exc, batch=False)
    if errors and errors[0].field is None and exc.errors()[0]["type"] == "json_invalid":
        return f"body starts with '{{' but is not valid JSON: {errors[0].message}"
    return "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)


def _id_from_header(topic: str, header_id: str) -> str:
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
    try:
        return Counter(Receipt.model_validate_json(body).window_duplicates)
    except ValidationError as exc:
        raise Rejected("receipt: " + _describe(exc)) from None


def _json(value: Any) -> str:
    # Any size of integer, never NaN (the model refuses those), UTF-8 as is.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_slow(msgs: Sequence[WireMsg], positions: Iterable[int], stream_epoch: int) -> SlowDecoded:
    """Runs the reference decoder on the messages at ``positions`` (first deliveries only)."""
    out = SlowDecoded()
    for i in positions:
        raw_subject, reply, block, body = msgs[i]
        subject = raw_subject.decode("utf-8", "replace")
        headers = parse_headers(block)
        delivery = Delivery.from_reply(reply)
        try:
            if subject == RECEIPT_SUBJECT:
                out.window_duplicates.update(decode_receipt(body))
            else:
                out.rows.append(decode_message(subject, headers, body, delivery, stream_epoch))
        except Rejected as exc:
            out.dead_letters[i] = DeadLetter(delivery.stream_seq, subject, exc.reason, headers, body)
        except Exception as exc:
            # A message must never stop the stream: whatever it is, it is kept as a dead letter.
            reason = f"could not be decoded: {type(exc).__name__}: {exc}"
            out.dead_letters[i] = DeadLetter(delivery.stream_seq, subject, reason, headers, body)
    return out


def refused(msgs: Sequence[WireMsg], positions: Iterable[int], reason: str) -> SlowDecoded:
    """Dead letters for messages the store refused although it takes writes."""
    out = SlowDecoded()
    for i in positions:
        raw_subject, reply, block, body = msgs[i]
        seq = Delivery.from_reply(reply).stream_seq
        out.dead_letters[i] = DeadLetter(
            seq, raw_subject.decode("utf-8", "replace"), reason, parse_headers(block), body
        )
    return out
