"""Hypothesis strategies for stream messages as publishers write them: any JSON layout, numbers and
escapes as written, events with fields changed in the ways that trip decoders up, malformed JSON,
receipts with numbers that cannot be true, and redeliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from logmesh.common.jetstream import MSG_ID_HEADER
from logmesh.common.model import KEYED_MARK, MAC_CHAR_CLASS, MAC_CHARS
from logmesh.common.wire import WireMsg
from logmesh.sink.seqranges import SeqRanges


def reply(seq: int) -> bytes:
    return b"$JS.ACK.LOGS.sink.1.%d.%d.1763805600000000000.0" % (seq, seq)


NUMBERS = [
    "0",
    "-0",
    "-0.0",
    "0.1",
    "1e308",
    "5e-324",
    "1E5",
    "1.50",
    "2.5e+3",
    "1e-400",
    "18446744073709551616",
    str(10**30),
    str(-(2**63) - 1),
    "9" * 400,
    "123456789012345678901234567890.5",
]
STRINGS = [
    '""',
    '"plain"',
    '"nul \\u0000 in it"',
    '"emoji 😀"',
    '"combining e\u0301"',
    '"\\ud800"',
    '"\\udc00 low"',
    '"\\ud83d\\ude00"',
    '"\\u00e9 and \\/ and \\" and \\\\"',
    '"tab\\tand\\nnewline"',
    '"\u2028"',
    '"\u0661\u0662\u0663"',
]


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """A JSON text as a publisher may write it: any layout, numbers and escapes as written."""
    kind = draw(st.sampled_from(["number", "string", "literal", "array", "object"] if depth < 3 else ["number"]))
    if kind == "number":
        return draw(
            st.sampled_from(NUMBERS)
            | st.integers(-(2**70), 2**70).map(str)
            | st.floats(allow_nan=False, allow_infinity=False).map(repr)
        )
    if kind == "string":
        return draw(st.sampled_from(STRINGS) | st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False)))
    if kind == "literal":
        return draw(st.sampled_from(["true", "false", "null"]))
    items = draw(st.lists(json_texts(depth + 1), max_size=3))
    if kind == "array":
        return "[" + draw(SEPARATORS).join(items) + "]"
    return object_text(draw, items)


SEPARATORS = st.sampled_from([",", ", ", " ,\n  "])


def object_text(draw: st.DrawFn, values: list[str]) -> str:
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "é", "", "a"]) | st.text(max_size=4), min_size=len(values), max_size=len(values)
        )
    )
    colon = draw(st.sampled_from([":", ": ", " : "]))
    pairs = [json.dumps(n, ensure_ascii=draw(st.booleans())) + colon + v for n, v in zip(names, values, strict=True)]
    return "{" + draw(SEPARATORS).join(pairs) + "}"


# Each makes the body something the strict grammar refuses: both decoders must refuse it.
MALFORMED = [
    "trailing comma",
    "comment",
    "truncated",
    "single quotes",
    "text after",
    "not utf-8",
    "encoded surrogate",
    "payload trailing comma",
    "nan",
    "infinity",
    "leading zero",
    "plus",
    "huge float",
    "unicode digits",
    "bad escape",
    "control character",
]


@dataclass
class Generated:
    msg: WireMsg
    payload: str | None  # the payload's text, if the event is stored
    malformed: bool  # JSON the strict grammar refuses: never stored
    valid: bool  # an event with nothing changed: always stored


@st.composite
def log_messages(draw: st.DrawFn, seq: int) -> Generated:
    """Mostly valid events, each with a chance of changes of the kinds that trip decoders up."""
    topic = draw(st.sampled_from(["orders", "a.b", "ok-1_x"]))
    fields: dict[str, str] = {
        "topic": json.dumps(topic),
        "event_id": json.dumps(
            draw(
                st.sampled_from(["e1", "abc-123", "x y", "a" * 256, 'q"uote', "back\\slash"])
                | st.sampled_from(["orders:e1", "a.b:x:y", "other:z", ":lead", "@" + "A" * MAC_CHARS])
                | st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True)
            )
        ),
        "timestamp": json.dumps(
            draw(st.sampled_from(["2026-11-22T10:00:00Z", "2026-11-22T10:00:00.5Z", "1999-01-31T23:59:59.999999Z"]))
        ),
        "source": json.dumps(draw(st.sampled_from(["svc", "s" * 128, "edge node"]))),
        "payload": object_text(draw, draw(st.lists(json_texts(), max_size=4))),
    }
    header_kind = draw(GOOD_IDS)
    changes = draw(st.lists(st.sampled_from(CHANGES), min_size=1, max_size=2)) if draw(st.booleans()) else []
    for change in changes:
        if change == "subject":
            topic = draw(st.sampled_from(["bad topic", "x" * 129, "dot.", "ünï", "a..b"]))
        elif change == "drop":
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif change == "extra":
            fields["extra"] = draw(json_texts())
        elif change == "header":
            header_kind = draw(st.sampled_from(["other", "", "spaced", "twice", "not utf-8", *BAD_IDS]))
        else:
            fields[change] = draw(FIELD_VALUES[change])
    if header_kind == "same" and fields.get("event_id", "").startswith('"') and draw(st.booleans()):
        fields["event_id"] = json.dumps(draw(_colon_ids(topic)))
    malformed = draw(st.sampled_from(MALFORMED)) if draw(st.integers(0, 2)) == 0 else None
    if malformed in BAD_PAYLOADS:
        fields["payload"] = draw(st.sampled_from(BAD_PAYLOADS[malformed]))
    members = [f"{json.dumps(name)}:{value}" for name, value in draw(st.permutations(list(fields.items())))]
    text = "{" + draw(st.sampled_from([",", ",", ", ", ",\n  "])).join(members) + "}"
    broken = _break(text, malformed, draw) if malformed else text
    data = broken if isinstance(broken, bytes) else broken.encode()
    event_id = json.loads(fields["event_id"]) if "event_id" in fields and fields["event_id"].startswith('"') else "x"
    header = message_id_header(draw, header_kind, topic, event_id)
    block = f"NATS/1.0\r\n{header}\r\n\r\n".encode("utf-8", "surrogatepass") if header is not None else None
    payload = None if malformed else fields.get("payload", "{}")
    if draw(st.integers(0, 9)) == 0:  # a plain log line
        line = draw(st.sampled_from(["GET /index.html 200", "\u0661\u0662\u0663 digits", "emoji 😀", " padded "]))
        data, malformed = line.encode(), None
        payload = json.dumps({"message": line}, ensure_ascii=False, separators=(",", ":"))
        changes.append("plain")
    valid = not changes and not malformed and not _names_another_topic(header_kind, topic, event_id)
    msg = WireMsg(f"logs.{topic}".encode(), reply(seq), block, data)
    return Generated(msg, payload, malformed is not None, valid)


EVENT_IDS = st.sampled_from(["e1", "x y", "a" * 256, "\u0661\u0662", "@" + "A" * MAC_CHARS, ":lead", "other:z"]) | (
    st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True)
)


@st.composite
def compact_events(draw: st.DrawFn, seq: int) -> Generated:
    """Events as ingest and most clients write them (compact JSON, UTC times), which the SQL path takes
    when their id allows, with every kind of message id: most the decoders' rules turn on the id alone."""
    topic = draw(st.sampled_from(["orders", "a.b", "ok-1_x"]))
    kind = draw(st.one_of(GOOD_IDS, st.sampled_from(BAD_IDS)))
    event_id = draw(_colon_ids(topic) if kind == "same" and draw(st.booleans()) else EVENT_IDS)
    body = {"topic": topic, "event_id": event_id, "timestamp": "2026-11-22T10:00:00Z", "source": "s", "payload": {}}
    if draw(st.booleans()):
        del body["topic"]
    header = message_id_header(draw, kind, topic, event_id)
    block = f"NATS/1.0\r\n{header}\r\n\r\n".encode() if header is not None else None
    valid = kind not in BAD_IDS and not _names_another_topic(kind, topic, event_id)
    return Generated(WireMsg(f"logs.{topic}".encode(), reply(seq), block, orjson.dumps(body)), "{}", False, valid)


def _colon_ids(topic: str) -> st.SearchStrategy[str]:
    """Event ids with a ':': as a bare id, each names a topic, the subject's or another."""
    return st.sampled_from([f"{topic}:e1", f"{topic}:x:y", "other:z", f"{topic}.x:y", f"{topic[:-1]}:y", ":lead"])


def _names_another_topic(kind: str | None, topic: str, event_id: str) -> bool:
    # The sink's rule, stated again: a bare id (the event_id itself) with a ':' names the topic before it.
    return kind == "same" and ":" in event_id and event_id.partition(":")[0] != topic


# Message ids the sink refuses for a body with an event_id: another topic named, ingest's keyed form spoiled.
BAD_IDS = [
    "other topic",
    "topic's prefix",
    "nested topic",
    "several colons",
    "unicode digit topic",
    "long topic",
    "keyed, short",
    "keyed, long",
    "keyed, not base64url",
    "keyed, another topic",
    "unicode digits",
    "long",
]
GOOD_IDS = st.sampled_from([None, "same", "prefixed", "keyed"])
MACS = st.from_regex(f"{MAC_CHAR_CLASS}{{{MAC_CHARS}}}", fullmatch=True)


def message_id_header(draw: st.DrawFn, kind: str | None, topic: str, event_id: str) -> str | None:
    """The ``Nats-Msg-Id`` header line of a kind (None: no header)."""
    if kind is None:
        return None
    mac = draw(MACS)
    ids = {
        "same": event_id,
        "prefixed": f"{topic}:{event_id}",
        "keyed": f"{topic}:{KEYED_MARK}{mac}",
        "other": "something-else",
        "": "",
        "other topic": f"other:{event_id}",
        "topic's prefix": f"{topic[:-1]}:{event_id}",
        "nested topic": f"{topic}.x:{event_id}",
        "several colons": f"{topic}:{event_id}:{event_id}",
        "unicode digit topic": f"\u0661\u0662:{event_id}",
        "long topic": "t" * 5000 + f":{event_id}",
        "keyed, short": f"{topic}:{KEYED_MARK}{mac[:-1]}",
        "keyed, long": f"{topic}:{KEYED_MARK}{mac}A",
        "keyed, not base64url": f"{topic}:{KEYED_MARK}{mac[:-1]}{draw(st.sampled_from('+/=é~٣'))}",
        "keyed, another topic": f"other:{KEYED_MARK}{mac}",
        "unicode digits": f"{topic}:\u0661\u0662\u0663",
        "long": f"{topic}:" + "a" * 5000,
    }
    if kind in ids:
        return f"{MSG_ID_HEADER}: {ids[kind]}"
    return {
        "spaced": f"Nats-Msg-Id:   {event_id}  ",
        "twice": f"Nats-Msg-Id: {event_id}\r\nNats-Msg-Id: {topic}:{event_id}",
        "not utf-8": f"Nats-Msg-Id: {event_id}\udcff",
    }[kind]


# Payloads RFC 8259 does not allow, or (a float beyond 1.8e308) no reader can hold.
BAD_PAYLOADS = {
    "payload trailing comma": ['{"a":[1,2,]}', '{"a":1,}', '{"a":{"b":1,},"c":2}'],
    "nan": ['{"n":NaN}', '{"n":[NaN]}'],
    "infinity": ['{"n":Infinity}', '{"n":-Infinity}'],
    "leading zero": ['{"n":01}', '{"n":-01}', '{"n":00}'],
    "plus": ['{"n":+1}', '{"n":.5}', '{"n":5.}'],
    "huge float": ['{"n":1e999}', '{"n":-1e999}', '{"n":' + "9" * 400 + ".5}", '{"n":1' + "0" * 21 + "e290}"],
    "unicode digits": ['{"n":\u0661\u0662}', '{"n":1\u0661}'],
    "bad escape": ['{"s":"\\x41"}', '{"s":"\\u12"}', '{"s":"\\U0001F600"}', '{"s":"\\\'"}'],
    "control character": ['{"s":"a\x01b"}', '{"s":"a\nb"}', '{"s":"\x00"}'],
}


def _break(text: str, how: str, draw: st.DrawFn) -> str | bytes:
    if how == "trailing comma":
        return text[:-1] + ",}"
    if how == "comment":
        return draw(st.sampled_from(["{/* note */", "{// note\n"])) + text[1:]
    if how == "truncated":
        return text[: draw(st.integers(1, len(text) - 1))]
    if how == "single quotes":
        return text[:-1] + ",'extra':1}"
    if how == "text after":
        return text + draw(st.sampled_from([" x", "{}", "\x00", ","]))
    if how == "not utf-8":
        return text.encode().replace(b"{", b"{\xff", 1)
    if how == "encoded surrogate":
        return text.encode()[:-1] + b',"\xed\xa0\x80":1}'
    return text  # the payload's own


FIELD_VALUES: dict[str, Any] = {
    "topic": st.sampled_from(['"other"', "5", "null", '"ok-1_x"']),
    "event_id": st.sampled_from(
        ['""', '" lead"', '"tab\\tid"', '"\\ud800"', '"ünï"', '"a\\u0062c"', "12", '"' + "a" * 257 + '"']
    )
    | json_texts(),
    "timestamp": st.sampled_from(
        [
            '"2026-11-22T10:00:00.1234567Z"',
            '"2026-11-22T10:00:00+02:00"',
            '"2026-11-22"',
            '"2026-02-30T00:00:00Z"',
            '"2026-11-22T24:00:00Z"',
            '"\uff12\uff10\uff12\uff16-11-22T10:00:00Z"',
            '"2026-11-22T10:00:00\\u005a"',
            "1763805600",
        ]
    ),
    "source": st.sampled_from(['"\\ud800"', '"s\\u0000"', '"' + "é" * 100 + '"', '""', "null", "7"]) | json_texts(),
    "payload": st.sampled_from(["[]", "null", '"text"', "{}", '{"a":1,"a":2}', "{ }", '{"n":-0}']) | json_texts(),
}
CHANGES = ["subject", "drop", "extra", "header", "topic", "event_id", "timestamp", "source", "payload"]

RECEIPTS = st.sampled_from(
    [
        b'{"events":3,"window_duplicates":{"orders":2}}',
        b'{"events":3,"window_duplicates":{"orders":2,"a.b":2}}',
        b'{"events":1000000,"window_duplicates":{"orders":18446744073709551615}}',
        b'{"events":18446744073709551615,"window_duplicates":{"orders":1}}',
        b'{"window_duplicates":{"orders":1}}',
        b'{"events":2,"window_duplicates":{"orders":1},}',
        b'{"events":2,"window_duplicates":{"orders":1,"orders":1}}',
        b'{"events":2,"window_duplicates":{"bad topic":1}}',
        b'{"events":2.0,"window_duplicates":{"orders":1}}',
    ]
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Generated], SeqRanges]:
    """A batch, always with one canonical event first (so the SQL path has something to store),
    receipts, redeliveries, and some sequences committed already."""
    canonical = {
        "topic": "orders",
        "event_id": "canonical",
        "timestamp": "2026-11-22T10:00:00Z",
        "source": "s",
        "payload": {"n": 1},
    }
    # As ingest (its keyed id) or a raw publisher writes it: the SQL path must take it either way.
    header = message_id_header(draw, draw(st.sampled_from([None, "prefixed", "keyed"])), "orders", "canonical")
    block = f"NATS/1.0\r\n{header}\r\n\r\n".encode() if header else None
    out = [Generated(WireMsg(b"logs.orders", reply(1), block, orjson.dumps(canonical)), '{"n":1}', False, True)]
    for _ in range(draw(st.integers(0, 10))):
        seq = len(out) + 1
        if draw(st.integers(0, 9)) == 0:
            receipt = WireMsg(b"logmesh.receipts", reply(seq), None, draw(RECEIPTS))
            out.append(Generated(receipt, None, False, False))
        else:
            out.append(draw(compact_events(seq) if draw(st.integers(0, 2)) == 0 else log_messages(seq)))
    if len(out) > 2 and draw(st.booleans()):
        out.append(draw(st.sampled_from(out[1:])))  # redelivered while its first copy is in the batch
    committed = SeqRanges((s, s) for s in draw(st.sets(st.integers(2, len(out) + 1), max_size=2)))
    return out, committed
