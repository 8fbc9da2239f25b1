"""One verdict per event: what ``POST /publish`` accepts the sink stores exactly as it was sent, and
what the sink would refuse ingest refuses (400 or 422, saying where), so that no acknowledged event
is dead-lettered. Pure functions: ingest's ``parse_events`` against the reference decoder, fed each
event's text as the NATS message ingest publishes (subject ``logs.<topic>``, ingest's keyed
``Nats-Msg-Id``)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logmesh.common.http import ApiError
from logmesh.common.jetstream import log_subject
from logmesh.common.model import MsgIdKey
from logmesh.common.reference_decoder import Rejected, Row, decode_message
from logmesh.common.strict_json import MAX_DEPTH
from logmesh.common.wire import Delivery, parse_headers
from logmesh.ingest.body import parse_events
from tests.stream_messages import BAD_PAYLOADS, FIELD_VALUES, json_texts, object_text

DELIVERY = Delivery(stream_seq=7, delivered=1, stream_time_ns=1_763_805_600_000_000_000)
INGEST_IDS = MsgIdKey(b"k" * 32)  # the ids ingest publishes under
REQUIRED = ("topic", "event_id", "timestamp", "source")

# Numbers at the edges that RFC 8259 and a binary64 float allow: the largest float, a float that rounds
# to zero, integers past Python's int() digit limit (and the validating parser's), negative zero.
EDGE_NUMBERS = [
    "1.7976931348623157e308",
    "1" * 309 + ".5",
    "1e-99999999999999999999",
    "0e99999999999999999999",
    "9" * 4400,
    "-" + "9" * 4301,
    "-0",
    "-0.0",
]
# And past them: beyond the range of a float, spellings RFC 8259 refuses, Unicode digits.
BAD_NUMBERS = [
    "1e400",
    "-1e400",
    "1E+400",
    "1.7976931348623159e308",
    "-1.7976931348623159e308",
    "NaN",
    "Infinity",
    "-Infinity",
    "01",
    "+1",
    ".5",
    "1.",
    "-",
    "\u0661",
    "1\u0662",
    "\uff11",
]
EDGE_STRINGS = ['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\u0000"', '"del\x7f"', '"\u2028"']
BAD_STRINGS = ['"raw\ttab"', '"nul\x00"', '"\\x41"', '"\\u12"']
# Nesting inside the payload's first member: an event nests two levels more (itself, the payload).
DEPTHS = [MAX_DEPTH - 4, MAX_DEPTH - 3, MAX_DEPTH - 2]
TOO_DEEP = [MAX_DEPTH - 1, MAX_DEPTH, 150, 199, 200, 201, 260, 1100]
JSON_SPACE = ["", " ", "\n  ", "\t", "\r\n"]
# Not whitespace to RFC 8259: between tokens each makes the text malformed.
OTHER_SPACE = ["\u00a0", "\x0b", "\x0c", "\ufeff", "\u2028", "\x85", "\u3000"]
# What can break a body outside any event's text.
BODY_DAMAGE = [
    "trailing comma",
    "byte order mark",
    "utf-16",
    "not utf-8",
    "truncated",
    "comment",
    "other space",
    "text after",
    "no comma",
]

VALID_VALUES = {
    "topic": st.sampled_from(['"orders"', '"a.b-c_d"', '"' + "x" * 128 + '"', '"ord\\u0065rs"']),
    "event_id": st.sampled_from(['"e1"', '"x y"', '"ü id"', '"a\\u0062c"', '"' + "a" * 256 + '"', '"😀"'])
    | st.from_regex(r"[!-~]([ -~]{0,12}[!-~])?", fullmatch=True).map(json.dumps),
    "timestamp": st.sampled_from(
        [
            '"2026-11-22T10:00:00Z"',
            '"2026-11-22 10:00:00,5+01:30"',
            '"0001-01-01T00:00:00"',
            '"2026-11-22t10:00z"',
            '"2026-11-22T10:00:00\\u002e123456Z"',
        ]
    ),
    "source": st.sampled_from(['"svc"', '"' + "s" * 128 + '"', '"😀"', '"s\\u0000"', '"\\uffff"'])
    | st.text(min_size=1, max_size=6).map(lambda t: json.dumps(t, ensure_ascii=False)),
}
INVALID_VALUES = {
    "topic": FIELD_VALUES["topic"] | st.sampled_from(['"bad topic"', '"' + "x" * 129 + '"', '"a..b"', "null"]),
    "event_id": FIELD_VALUES["event_id"] | st.just("null"),
    "timestamp": FIELD_VALUES["timestamp"] | st.sampled_from(["null", '"\\ud800"']),
    "source": FIELD_VALUES["source"] | st.just('"' + "s" * 129 + '"'),
}


@dataclass
class SentEvent:
    text: str  # the event as the publisher wrote it
    topic: str  # the subject's topic: what the last "topic" in the text says, as ingest reads it
    event_id: str  # likewise, for the Nats-Msg-Id
    payload: str  # the payload's text, "{}" when there is none
    complete: bool  # each of topic, event_id, timestamp and source once and not null: HTTP needs them
    tags: set[str] = field(default_factory=set)


@dataclass
class SentBody:
    body: bytes
    events: list[SentEvent]
    damage: str | None


def _string(value: str, otherwise: str) -> str:
    """What a JSON string value says (an invalid one is refused anyway: any stand-in will do)."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return otherwise
    return decoded if isinstance(decoded, str) else otherwise


# Strategies are built once: building one per draw is most of the cost of generating.
VALUES = st.lists(json_texts() | st.sampled_from(EDGE_NUMBERS + EDGE_STRINGS), max_size=4)
BAD_VALUE = st.sampled_from(BAD_NUMBERS + BAD_STRINGS + [v for bad in BAD_PAYLOADS.values() for v in bad])
# What a lenient parser reads (as NaN or infinity) and the strict one refuses.
LENIENT_ONLY = st.sampled_from(BAD_NUMBERS[:8])
NOT_OBJECTS = st.sampled_from(["[]", "null", '"text"', "1", "true"])
# How an event can be broken; what the validating parser alone let through comes twice as often.
BROKEN = [*REQUIRED, "payload", "not an object", "drop", "extra", "space"] + 2 * [
    "too deep",
    "twice",
    "twice escaped",
    "hidden",
]
KIND = st.sampled_from(BROKEN)
EXTRA_NAMES = st.sampled_from(["extra", "", "Topic"])
SPACE = st.sampled_from(JSON_SPACE)
NOT_SPACE = st.sampled_from(OTHER_SPACE)
NESTING = st.sampled_from(["[", '{"d":'])
PAST_THE_END = st.sampled_from([" x", "{}", ",", "\x00", "]"])


def payload(draw: st.DrawFn, tags: set[str], broken: str | None) -> str:
    values = draw(VALUES)
    if broken == "payload":
        values.insert(draw(st.integers(0, len(values))), draw(BAD_VALUE))
    elif broken == "hidden":  # from a parser that keeps only the last value of a name
        values.insert(draw(st.integers(0, len(values))), '{"h":' + draw(LENIENT_ONLY) + ',"h":0}')
        tags.add("hidden")
    if broken == "too deep" or draw(st.integers(0, 3)) == 0:
        depth = draw(st.sampled_from(TOO_DEEP if broken == "too deep" else DEPTHS))
        opens = draw(NESTING)
        values.insert(0, opens * depth + "1" + ("]" if opens == "[" else "}") * depth)
        tags.add("too deep" if depth + 2 > MAX_DEPTH else "deep")
    for value in values:
        if value in ("9" * 4400, "-" + "9" * 4301):
            tags.add("integer past int()")
        if "\\ud800" in value or "\\udfff" in value:
            tags.add("lone surrogate")
    return object_text(draw, values)  # names repeat in it now and then, as JSON allows


def an_event(draw: st.DrawFn, broken: str | None) -> SentEvent:
    """An event full of what trips parsers up, which the sink stores unless it is ``broken``."""
    tags: set[str] = set()
    fields: list[tuple[str, str]] = [
        (name, draw(INVALID_VALUES[name] if broken == name else VALID_VALUES[name])) for name in REQUIRED
    ]
    if broken == "not an object":
        fields.append(("payload", draw(NOT_OBJECTS)))
    elif broken in ("payload", "hidden", "too deep") or draw(st.integers(0, 4)):
        fields.append(("payload", payload(draw, tags, broken)))
    escaped = draw(st.integers(0, len(fields) - 1)) if draw(st.booleans()) else None
    if broken == "drop":
        fields.pop(draw(st.integers(0, len(fields) - 1)))
        escaped = None
    elif broken == "extra":
        fields.insert(draw(st.integers(0, len(fields))), (draw(EXTRA_NAMES), "1"))
        escaped = None
    elif broken in ("twice", "twice escaped"):
        name, value = fields[draw(st.integers(0, len(fields) - 1))]
        again = value if draw(st.booleans()) else draw(VALID_VALUES.get(name, st.just("{}")))
        position = draw(st.integers(0, len(fields)))
        fields.insert(position, (name, again))
        escaped = position if broken == "twice escaped" else None
        tags.add("named twice, escaped" if broken == "twice escaped" else "named twice")
    written = [json.dumps(name) for name, _ in fields]
    if escaped is not None:
        # Only \\u can escape a letter: the name reads the same, its text differs.
        written[escaped] = '"' + "".join(f"\\u{ord(c):04x}" if c in "aeiou" else c for c in fields[escaped][0]) + '"'
    spaces = [draw(SPACE) for _ in range(2 * len(fields) + 2)]
    if broken == "space":
        spaces[draw(st.integers(0, len(spaces) - 1))] = draw(NOT_SPACE)
    members = [
        f"{w}{spaces[2 * n]}:{spaces[2 * n + 1]}{value}"
        for n, (w, (_, value)) in enumerate(zip(written, fields, strict=True))
    ]
    text = "{" + spaces[-2] + ",".join(members) + spaces[-1] + "}"
    values = dict(fields)  # the last of a repeated name, as ingest's parser keeps it
    counts = Counter(name for name, _ in fields)
    return SentEvent(
        text=text,
        topic=_string(values.get("topic", '"orders"'), "orders"),
        event_id=_string(values.get("event_id", '"e1"'), "e1"),
        payload=values.get("payload", "{}"),
        complete=all(counts[name] == 1 and values[name] != "null" for name in REQUIRED),
        tags=tags,
    )


DAMAGE = st.sampled_from(BODY_DAMAGE)


@st.composite
def bodies(draw: st.DrawFn) -> SentBody:
    """One to four events; in half the bodies one of them is broken, in one in eight the body is."""
    count = draw(st.integers(1, 4))
    broken = draw(st.integers(0, count - 1)) if draw(st.booleans()) else None
    sent = [an_event(draw, draw(KIND) if n == broken else None) for n in range(count)]
    texts = [e.text for e in sent]
    damage = draw(DAMAGE) if draw(st.integers(0, 7)) == 0 else None
    outer = draw(SPACE)
    if len(sent) == 1 and draw(st.booleans()):
        text = outer + texts[0] + outer
        if damage == "other space":
            text = draw(NOT_SPACE) + text
        elif damage in ("trailing comma", "no comma", "comment"):
            damage = "text after"
    else:
        separator = f"{draw(SPACE)},{draw(SPACE)}"
        if damage == "no comma" and len(texts) > 1:
            separator = " "
        elif damage == "comment" and len(texts) > 1:
            separator = ", /* next */ "
        elif damage == "other space" and len(texts) > 1:
            separator = "," + draw(NOT_SPACE)
        elif damage in ("no comma", "comment", "other space"):
            damage = "trailing comma"
        text = outer + "[" + outer + separator.join(texts) + ("," if damage == "trailing comma" else "") + "]"
    if damage == "text after":
        text += draw(PAST_THE_END)
    elif damage == "byte order mark":
        text = "\ufeff" + text
    elif damage == "truncated":
        text = text[: draw(st.integers(0, len(text.rstrip()) - 1))]
    body = text.encode("utf-16-le") if damage == "utf-16" else text.encode("utf-8", "surrogatepass")
    if damage == "not utf-8":
        body = body.replace(b"{", b"{\xff", 1) if draw(st.booleans()) else body + b"\xed\xa0\x80"
    return SentBody(body, sent, damage)


def sink_verdict(event: SentEvent) -> Row | Rejected:
    """The row the sink stores for the message ingest would publish for this event, or why not."""
    block = (
        b"NATS/1.0\r\nNats-Msg-Id: "
        + INGEST_IDS.msg_id(event.topic, event.event_id).encode("utf-8", "surrogatepass")
        + b"\r\n\r\n"
    )
    try:
        return decode_message(
            log_subject(event.topic), parse_headers(block), event.text.encode("utf-8", "surrogatepass"), DELIVERY, 1
        )
    except Rejected as exc:
        return exc


seen: Counter[str] = Counter()


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies())
def _one_verdict(sent: SentBody) -> None:
    verdicts = [sink_verdict(e) for e in sent.events]
    sink_stores_all = all(isinstance(v, Row) for v in verdicts)
    try:
        accepted = parse_events(sent.body, max_batch=10)
    except ApiError as exc:
        assert exc.status in (400, 422) and exc.message, exc
        for detail in exc.details:
            assert detail["message"]
            assert detail["index"] is None or 0 <= detail["index"] < len(sent.events), detail
        # Ingest refuses only what it must: a broken body, an event without what HTTP requires, or
        # an event the sink would not store.
        assert sent.damage or not sink_stores_all or not all(e.complete for e in sent.events), (
            f"ingest refused what the sink stores: {exc.message} {exc.details}"
        )
        seen["refused"] += 1
        if not sink_stores_all:
            seen["refused, as the sink would"] += 1
        for sent_event, verdict in zip(sent.events, verdicts, strict=True):
            if not isinstance(verdict, Row):
                seen.update(f"refused: {tag}" for tag in sent_event.tags)
        return
    assert sent.damage is None, sent.damage
    assert accepted.texts == [e.text.encode() for e in sent.events]  # each exactly as sent
    for sent_event, published, verdict in zip(sent.events, accepted.events, verdicts, strict=True):
        assert (published.topic, published.event_id) == (sent_event.topic, sent_event.event_id)
        assert isinstance(verdict, Row), f"ingest accepted an event the sink refuses: {verdict.reason}"
        assert (verdict.topic, verdict.event_id, verdict.timestamp, verdict.source) == (
            published.topic,
            published.event_id,
            published.timestamp,
            published.source,
        )
        assert verdict.payload == sent_event.payload
        assert json.loads(verdict.payload, parse_int=Decimal) == published.payload
        seen["stored"] += 1
        seen.update(f"stored: {tag}" for tag in sent_event.tags)


def test_ingest_accepts_exactly_what_the_sink_stores() -> None:
    seen.clear()
    _one_verdict()
    # Enough of each kind on both sides that the test cannot pass without comparing.
    assert seen["stored"] >= 100 and seen["refused, as the sink would"] >= 50, seen
    # Among them, what the validating parser alone accepts and the sink refuses, and the nasty
    # events the sink stores.
    known = ("too deep", "named twice", "named twice, escaped", "hidden")
    assert sum(seen[f"refused: {kind}"] for kind in known) >= 15, seen
    assert sum(seen[f"stored: {kind}"] for kind in ("deep", "lone surrogate", "integer past int()")) >= 20, seen


TEMPLATE = '{"topic":"t","event_id":"e%d","timestamp":"2026-11-22T10:00:00Z","source":"s","payload":{}%s}'


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        (',"topic":"t"', "topic", "name 'topic' appears twice"),
        (',"top\\u0069c":"t"', "topic", "name 'topic' appears twice"),
        (',"payload":{"a":1}', "payload", "name 'payload' appears twice"),
        (',"source":"s","source":"s"', "source", "name 'source' appears twice"),
    ],
)
def test_a_field_named_twice_is_a_422_naming_the_event_and_field(extra: str, field: str, reason: str) -> None:
    body = ("[" + TEMPLATE % (0, "") + "," + TEMPLATE % (1, extra) + "]").encode()
    with pytest.raises(ApiError) as caught:
        parse_events(body, max_batch=10)
    assert caught.value.status == 422
    [detail] = caught.value.details
    assert (detail["index"], detail["field"]) == (1, field) and reason in detail["message"], detail


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, 199, 300])
def test_nesting_past_the_sinks_limit_is_a_422_naming_the_payload(depth: int) -> None:
    """The event, its payload and ``depth`` arrays nest ``depth + 2`` levels: one past MAX_DEPTH and
    more, on both sides of the validating parser's own limit."""
    payload = '{"a":' + "[" * depth + "]" * depth + "}"
    body = TEMPLATE.replace('"payload":{}', '"payload":' + payload) % (0, "")
    with pytest.raises(ApiError) as caught:
        parse_events(body.encode(), max_batch=10)
    assert caught.value.status == 422
    [detail] = caught.value.details
    assert (detail["index"], detail["field"]) == (None, "payload")
    assert f"nested deeper than {MAX_DEPTH} levels" in detail["message"], detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"a":1e400,"a":1}', "number 1e400 is beyond the range of a 64-bit float"),
        ('{"o":{"x":-1.8e308,"x":0}}', "number -1.8e308 is beyond the range of a 64-bit float"),
        ('{"a":NaN,"a":1}', "NaN is not a JSON value"),
        ('{"a":[1],"b":{"c":Infinity,"c":null}}', "Infinity is not a JSON value"),
    ],
)
def test_a_value_json_refuses_is_refused_when_a_repeated_name_hides_it(payload: str, reason: str) -> None:
    """The validating parser keeps the last value of a name (and so never checks the first); the
    sink's strict reader reads every value."""
    body = "[" + TEMPLATE % (0, "") + "," + TEMPLATE.replace('"payload":{}', '"payload":' + payload) % (1, "") + "]"
    with pytest.raises(ApiError) as caught:
        parse_events(body.encode(), max_batch=10)
    assert caught.value.status == 422
    [detail] = caught.value.details
    assert (detail["index"], detail["field"]) == (1, "payload") and reason in detail["message"], detail


def test_an_event_at_the_sinks_nesting_limit_is_accepted_and_stored() -> None:
    depth = MAX_DEPTH - 2
    body = TEMPLATE.replace('"payload":{}', '"payload":{"a":' + "[" * depth + "]" * depth + "}") % (0, "")
    [event], [text] = parse_events(body.encode(), max_batch=10)
    row = decode_message("logs.t", {"Nats-Msg-Id": INGEST_IDS.msg_id(event.topic, event.event_id)}, text, DELIVERY, 1)
    assert row.payload == '{"a":' + "[" * depth + "]" * depth + "}"


def test_an_integer_of_any_length_is_accepted_and_stored_as_written() -> None:
    digits = "9" * 5000  # past int()'s limit and the validating parser's
    payload = '{"n":' + digits + "}"
    body = (TEMPLATE.replace('"payload":{}', '"payload":' + payload) % (0, "")).encode()
    [event], [text] = parse_events(body, max_batch=10)
    assert text == body and event.payload == {"n": Decimal(digits)}
    assert (
        decode_message(
            "logs.t", {"Nats-Msg-Id": INGEST_IDS.msg_id(event.topic, event.event_id)}, text, DELIVERY, 1
        ).payload
        == payload
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ((TEMPLATE % (0, "")).encode("utf-16-le"), "not valid JSON"),
        (("[" + TEMPLATE % (0, "") + "]").encode("utf-32-le"), "not valid JSON"),
        ((TEMPLATE % (0, "")).encode().replace(b"{}", b'{"a":"\xed\xa0\x80"}'), "not UTF-8"),
        ((TEMPLATE % (0, "")).encode().replace(b"{}", b'{"a":"\\ud800\xff"}'), "not UTF-8"),
    ],
)
def test_a_body_that_is_not_utf8_is_a_400(body: bytes, reason: str) -> None:
    """The standard library would take UTF-16, UTF-32 and encoded surrogates; the sink takes none."""
    with pytest.raises(ApiError) as caught:
        parse_events(body, max_batch=10)
    assert caught.value.status == 400 and reason in caught.value.message, caught.value.message
