"""Timestamp strings through the same code as POST /publish: each is either stored as exactly the
instant it names, or refused with a 422 that names the field. Never a 500, never a silent change."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logmesh.common.http import ApiError
from logmesh.ingest.body import parse_events

# An independent reading of the accepted shape, with any number of fractional digits so that it can
# tell what a silent truncation would have dropped.
ORACLE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?(?:[Zz]|([+-])(\d\d):?(\d\d))?", re.ASCII
)


def instant(text: str) -> datetime:
    """The UTC instant ``text`` names, per ORACLE; fails if it has more than microseconds."""
    match = ORACLE.fullmatch(text)
    assert match, f"accepted {text!r}, which is not an ISO-8601 date-time"
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    assert len(fraction or "") <= 6, f"accepted {text!r} although it has more than microseconds"
    local = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second or 0), int((fraction or "0").ljust(6, "0"))
    )
    offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0)) * (-1 if sign == "-" else 1)
    return (local - offset).replace(tzinfo=UTC)


def publish(timestamp: Any) -> datetime | ApiError:
    body = orjson.dumps({"topic": "t", "event_id": "e", "timestamp": timestamp, "source": "s"})
    try:
        [event] = parse_events(body, max_batch=10).events
    except ApiError as exc:
        return exc
    return event.timestamp


@st.composite
def near_iso(draw: st.DrawFn) -> str:
    """Date-times right and wrong in every part: digits, ranges, separators, fractions, offsets."""

    def two(low: int, high: int) -> str:
        return f"{draw(st.integers(low, high)):02d}"

    text = (
        f"{draw(st.sampled_from(['0000', '0001', '1970', '2026', '9999', '10000', '٢٠٢٦']))}-{two(0, 13)}-{two(0, 32)}"
    )
    text += f"{draw(st.sampled_from(['T', 't', ' ', '_', '', 'TT']))}{two(0, 25)}:{two(0, 60)}"
    if draw(st.booleans()):
        text += f":{two(0, 61)}"
        if digits := draw(st.text("0123456789", max_size=12)):
            text += draw(st.sampled_from(".,")) + digits
    if draw(st.booleans()):
        text += draw(st.sampled_from(["Z", "z", "-00:00", "+00", "Zulu", "+01:00:30"]))
    elif draw(st.booleans()):
        text += f"{draw(st.sampled_from('+-'))}{two(0, 25)}{draw(st.sampled_from([':', '']))}{two(0, 61)}"
    return text


numbers_as_text = st.from_regex(r"\A-?[0-9]{1,12}(\.[0-9]{1,9})?\Z")
timestamps = st.one_of(near_iso(), numbers_as_text, st.text(max_size=40), st.text("0123456789-:.,+TZ ", max_size=35))


@settings(max_examples=600, deadline=None)
@given(timestamps)
@example("2026-11-22T10:00:00.123456789Z")
@example("1700000000")
@example("0001-01-01T00:30:00+01:00")
@example("9999-12-31T23:30:00-01:00")
def test_a_timestamp_is_stored_as_the_instant_it_names_or_refused_naming_the_field(text: str) -> None:
    result = publish(text)
    if isinstance(result, ApiError):
        assert result.status == 422, result.message
        assert [d["field"] for d in result.details] == ["timestamp"] and result.details[0]["message"]
    else:
        assert result == instant(text) and result.tzinfo is UTC


minute_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
SHOWN = {  # the part of a time that isoformat writes, by timespec
    "minutes": lambda t: t.replace(second=0, microsecond=0),
    "seconds": lambda t: t.replace(microsecond=0),
    "milliseconds": lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000),
    "microseconds": lambda t: t,
}


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.none() | minute_offsets), st.sampled_from(sorted(SHOWN)), st.sampled_from("T "))
def test_every_date_time_python_writes_is_accepted_unless_outside_the_utc_years(
    moment: datetime, timespec: str, sep: str
) -> None:
    text = moment.isoformat(sep, timespec)
    shown = SHOWN[timespec](moment)
    try:
        expected = shown.replace(tzinfo=shown.tzinfo or UTC).astimezone(UTC)
    except OverflowError:
        result = publish(text)
        assert isinstance(result, ApiError) and "within years 1-9999 in UTC" in result.details[0]["message"]
    else:
        assert publish(text) == expected


def test_a_number_is_refused_not_read_as_unix_time() -> None:
    for value in (1700000000, 1700000000.5, "1700000000", True):
        result = publish(value)
        assert isinstance(result, ApiError) and result.details[0]["field"] == "timestamp"
