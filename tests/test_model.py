"""The event model: what is accepted, what is rejected, and that every rejection names its field."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from logmesh.common.model import EVENT_LIST_ADAPTER, Event, field_errors, msg_id

GOOD = {
    "topic": "payments.eu-west_1",
    "event_id": "evt-001",
    "timestamp": "2026-11-22T10:00:00+02:00",
    "source": "billing",
    "payload": {"amount": 12},
}


def _json(body: object) -> bytes:
    return orjson.dumps(body)


def errors_for(**changes: object) -> list[tuple[str | None, str]]:
    """The (field, message) pairs for GOOD with ``changes`` applied (``...`` removes a field)."""
    body = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}
    with pytest.raises(ValidationError) as info:
        Event.model_validate_json(_json(body))
    return [(e.field, e.message) for e in field_errors(info.value, batch=False)]


def test_a_valid_event_is_normalised_to_utc() -> None:
    event = Event.model_validate_json(_json(GOOD))
    assert event.timestamp == datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    assert msg_id(event.topic, event.event_id) == "payments.eu-west_1:evt-001"  # as a raw publisher writes it


def test_a_naive_timestamp_is_taken_as_utc() -> None:
    event = Event.model_validate_json(_json({**GOOD, "timestamp": "2026-11-22T10:00:00"}))
    assert event.timestamp == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def test_payload_defaults_to_an_empty_object() -> None:
    body = {k: v for k, v in GOOD.items() if k != "payload"}
    assert Event.model_validate_json(_json(body)).payload == {}


@pytest.mark.parametrize(
    "topic",
    ["", "a" * 129, "has space", "trailing.", ".leading", "double..dot", "colon:x", "star*", "gt>", "ünïcode"],
)
def test_bad_topics_are_rejected_with_the_rule(topic: str) -> None:
    [(field, message)] = errors_for(topic=topic)
    assert field == "topic"
    assert "letters, digits" in message


@pytest.mark.parametrize(
    ("event_id", "expected"),
    [
        ("", "1-256"),
        ("x" * 257, "1-256"),
        (" padded", "whitespace"),
        ("padded\t", "printable"),
        ("bell\x07", "printable"),
    ],
)
def test_bad_event_ids_are_rejected_with_the_reason(event_id: str, expected: str) -> None:
    [(field, message)] = errors_for(event_id=event_id)
    assert field == "event_id"
    assert expected in message


def test_unknown_and_missing_fields_are_named() -> None:
    found = errors_for(source=..., colour="red")
    assert ("source", "field required") in found
    assert ("colour", "unknown field") in found


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1732269600, "ISO-8601"),
        (1732269600.5, "ISO-8601"),
        (None, "ISO-8601"),
        ("yesterday", "ISO-8601"),
        ("1700000000", "ISO-8601"),  # pydantic alone reads this as Unix time
        ("1700000000.5", "ISO-8601"),
        ("2026-11-22", "ISO-8601"),
        ("20261122T100000Z", "ISO-8601"),
        ("2026-11-22_10:00:00Z", "ISO-8601"),
        ("2026-11-22T10:00:00+01", "ISO-8601"),
        ("2026-11-22T10:00:00+24:00", "ISO-8601"),
        ("\uff12\uff10\uff12\uff16-11-22T10:00:00Z", "ISO-8601"),  # fullwidth digits
        (" 2026-11-22T10:00:00Z", "ISO-8601"),
        ("2026-13-01T00:00:00Z", "month must be in 1..12"),
        ("2026-02-30T00:00:00Z", "day is out of range"),
        ("2026-11-22T24:00:00Z", "hour must be in 0..23"),
        ("2026-11-22T10:00:60Z", "second must be in 0..59"),
        ("0000-01-01T00:00:00Z", "year 0 is out of range"),
        ("2026-11-22T10:00:00.123456789Z", "more than 6 fractional digits; logmesh keeps microseconds"),
        ("2026-11-22T10:00:00.1234567", "more than 6 fractional digits; logmesh keeps microseconds"),
        ("0001-01-01T00:30:00+01:00", "within years 1-9999 in UTC"),
        ("9999-12-31T23:30:00-01:00", "within years 1-9999 in UTC"),
    ],
)
def test_timestamps_must_be_iso_8601_date_times(timestamp: object, expected: str) -> None:
    [(field, message)] = errors_for(timestamp=timestamp)
    assert field == "timestamp"
    assert expected in message


@pytest.mark.parametrize(
    ("timestamp", "utc"),
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22 10:00:00Z", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T10:00Z", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        ("2026-11-22T10:00:00,5Z", datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-22T10:00:00.000001-00:00", datetime(2026, 11, 22, 10, 0, 0, 1, tzinfo=UTC)),
        ("2026-11-22T10:00:00+0130", datetime(2026, 11, 22, 8, 30, tzinfo=UTC)),
        ("2026-11-22T10:00:00.123456-23:59", datetime(2026, 11, 23, 9, 59, 0, 123456, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_accepted_timestamps_keep_their_instant(timestamp: str, utc: datetime) -> None:
    assert Event.model_validate_json(_json({**GOOD, "timestamp": timestamp})).timestamp == utc


def test_payload_must_be_an_object() -> None:
    [(field, _)] = errors_for(payload=[1, 2])
    assert field == "payload"


def test_batch_errors_carry_the_index_and_nested_field() -> None:
    batch = [GOOD, {**GOOD, "topic": "bad topic"}, GOOD, {**GOOD, "source": "", "extra": 1}]
    with pytest.raises(ValidationError) as info:
        EVENT_LIST_ADAPTER.validate_json(_json(batch))
    found = {(e.index, e.field) for e in field_errors(info.value, batch=True)}
    assert found == {(1, "topic"), (3, "source"), (3, "extra")}
