"""Nobody can make logmesh claim a duplicate that is not one.

JetStream's duplicate window spans the whole stream, so a message id is a claim on an identity. The
sink dead-letters a message whose ``Nats-Msg-Id`` names another topic than its subject, and ingest
publishes under a keyed id (``<topic>:@<mac>``) that no raw publisher can compute: a raw message can
no longer take the id of an event sent over HTTP, and a 202's ``duplicates`` counts only ingest's own
earlier publishes of the same event."""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from logmesh.cli.main import build_parser
from logmesh.common.model import MAC_CHARS, MsgIdKey, is_keyed_msg_id, msg_id, msg_id_topic
from logmesh.common.settings import SettingsError, settings_from_args
from logmesh.common.wire import WireMsg
from logmesh.ingest.app import Ingest
from logmesh.ingest.settings import IngestSettings
from logmesh.sink.decoding import DecodedBatch, ReferenceDecoder
from logmesh.sink.seqranges import SeqRanges
from logmesh.sink.sql_decoder import SqlDecoder
from tests.harness import Up, event, over_nats
from tests.stream_messages import reply

pytestmark = pytest.mark.timeout(120)

KEY = "a key of forty characters, for the tests"
IDS = MsgIdKey(KEY.encode())
EPOCH = 1_700_000_000


# ---- the id -------------------------------------------------------------------------------------------


def test_ingests_id_is_the_topic_and_a_keyed_blake2b_of_the_identity() -> None:
    mac = hashlib.blake2b(b"pay\0invoice-42", key=KEY.encode(), digest_size=16).digest()
    expected = "pay:@" + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert IDS.msg_id("pay", "invoice-42") == expected
    assert len(expected) == len("pay:@") + MAC_CHARS == len("pay:@") + 22


def test_the_id_is_the_same_for_one_key_and_differs_between_keys() -> None:
    assert IDS.msg_id("pay", "invoice-42") == MsgIdKey(KEY.encode()).msg_id("pay", "invoice-42")
    assert IDS.msg_id("pay", "invoice-42") != MsgIdKey(b"another key of at least thirty-two chars").msg_id(
        "pay", "invoice-42"
    )
    assert IDS.msg_id("pay", "invoice-42") != IDS.msg_id("pay", "invoice-43")
    assert IDS.msg_id("pay", "invoice-42") != msg_id("pay", "invoice-42")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("a.b", "c"), ("a", "b.c")),
        (("ab", "c"), ("a", "bc")),
        (("a", "b:c"), ("a:b", "c")),
        (("a", "@x"), ("a", "x")),
    ],
)
def test_pairs_that_read_alike_joined_get_different_macs(one: tuple[str, str], other: tuple[str, str]) -> None:
    # The mac alone (the part after the topic) must tell them apart: the NUL between topic and id.
    assert IDS.msg_id(*one).split(":@")[-1] != IDS.msg_id(*other).split(":@")[-1]


@pytest.mark.parametrize("event_id", ["e", "x y", "😀", "\u0661\u0662\u0663", "a" * 256, "a:b:c", "@" + "A" * 22])
def test_every_id_ingest_makes_has_the_keyed_form_the_sink_recognises(event_id: str) -> None:
    made = IDS.msg_id("pay.eu-1", event_id)
    assert is_keyed_msg_id("pay.eu-1", made)
    assert not is_keyed_msg_id("pay", made) and not is_keyed_msg_id("pay.eu", made)
    assert msg_id_topic(made) == "pay.eu-1"


@pytest.mark.parametrize(
    "value",
    [
        "pay:@" + "A" * 21,
        "pay:@" + "A" * 23,
        "pay:@" + "A" * 21 + "+",
        "pay:@" + "A" * 21 + "/",
        "pay:@" + "A" * 21 + "=",
        "pay:@" + "A" * 21 + "é",
        "pay:@" + "A" * 21 + "\u0663",
        "pay:@" + "A" * 21 + "\n",
        "pay:" + "A" * 23,
        "pay@" + "A" * 23,
        "payx:@" + "A" * 22,
        "other:@" + "A" * 22,
    ],
)
def test_what_is_not_the_keyed_form(value: str) -> None:
    assert not is_keyed_msg_id("pay", value)


@pytest.mark.parametrize(
    ("value", "topic"),
    [("pay:invoice-42", "pay"), ("invoice-42", None), ("a.b:c:d", "a.b"), (":x", ""), ("x:", "x"), ("", None)],
)
def test_an_id_names_the_topic_before_its_first_colon(value: str, topic: str | None) -> None:
    assert msg_id_topic(value) == topic


# ---- the sink's rule, in both decoders --------------------------------------------------------------------


def json_body(event_id: str | None) -> bytes:
    body: dict[str, Any] = {"timestamp": "2026-11-22T10:00:00Z", "source": "s", "payload": {"n": 1}}
    if event_id is not None:
        body = {"event_id": event_id, **body}
    return orjson.dumps(body)


TEXT = b"GET /index.html 200"
KEYED = IDS.msg_id("pay", "invoice-42")
MAC = KEYED.removeprefix("pay:@")
OTHER_TOPIC = "Nats-Msg-Id 'pay:invoice-42' names topic 'pay', not the subject's topic 'junk'"
DISAGREES = "disagrees with event_id"


def stored(event_id: str) -> tuple[str, str]:
    return ("stored", event_id)


def dead(reason: str) -> tuple[str, str]:
    """A dead letter whose reason holds ``reason``."""
    return ("dead", reason)


# (the subject's topic, the Nats-Msg-Id, the body, the verdict, whether the SQL path takes it itself)
CASES: list[tuple[str, str, bytes, tuple[str, str], bool]] = [
    # Another topic named, whatever the body.
    ("junk", "pay:invoice-42", json_body("pay:invoice-42"), dead(OTHER_TOPIC), False),
    ("junk", "pay:invoice-42", json_body("invoice-42"), dead(OTHER_TOPIC), False),
    ("junk", "pay:invoice-42", json_body(None), dead(OTHER_TOPIC), False),
    ("junk", "pay:invoice-42", TEXT, dead(OTHER_TOPIC), False),
    ("junk", KEYED, json_body("invoice-42"), dead(f"Nats-Msg-Id '{KEYED}' names topic 'pay', not"), False),
    ("pay", "x:pay:y", json_body("pay:y"), dead("names topic 'x', not the subject's topic 'pay'"), False),
    ("pay", "\u0661\u0662:invoice", json_body("invoice"), dead("names topic '\u0661\u0662', not"), False),
    ("pay.eu", "pay:x", json_body("x"), dead("names topic 'pay', not the subject's topic 'pay.eu'"), False),
    ("pay", "pay.eu:x", json_body("x"), dead("names topic 'pay.eu', not the subject's topic 'pay'"), False),
    ("pay", "payx:1", TEXT, dead("names topic 'payx', not"), False),
    ("pay", ":x", TEXT, dead("names topic '', not"), False),
    # A raw publisher's ids.
    ("pay", "pay:invoice-42", json_body("invoice-42"), stored("invoice-42"), True),
    ("pay", "invoice-42", json_body("invoice-42"), stored("invoice-42"), True),
    ("pay", "pay:invoice-42", json_body("pay:invoice-42"), stored("pay:invoice-42"), True),
    ("pay", "pay:x:y", json_body("x:y"), stored("x:y"), True),
    ("pay", "pay:x:y", json_body("y"), dead(DISAGREES), False),
    ("pay", "pay:invoice-42", TEXT, stored("invoice-42"), False),
    ("pay", "pay:\u0661\u0662\u0663", json_body("\u0661\u0662\u0663"), stored("\u0661\u0662\u0663"), False),
    ("pay", "\u0661\u0662\u0663", TEXT, stored("\u0661\u0662\u0663"), False),
    ("pay", "pay:" + "a" * 256, json_body("a" * 256), stored("a" * 256), True),
    ("pay", "pay:" + "a" * 5000, TEXT, dead("event_id must be 1-256 characters"), False),
    # Ingest's keyed ids: any JSON body of the topic; a body without an event_id takes the id's part.
    ("pay", KEYED, json_body("invoice-42"), stored("invoice-42"), True),
    ("pay", KEYED, json_body("anything else"), stored("anything else"), True),
    ("pay", KEYED, json_body(None), stored("@" + MAC), False),
    ("pay", KEYED, TEXT, stored("@" + MAC), False),
    ("a.b", IDS.msg_id("a.b", "c"), json_body("c"), stored("c"), True),
    # Spoiled keyed ids are ordinary ids, which this body's event_id does not match.
    ("pay", KEYED[:-1], json_body("invoice-42"), dead(DISAGREES), False),
    ("pay", KEYED + "A", json_body("invoice-42"), dead(DISAGREES), False),
    ("pay", KEYED[:-1] + "+", json_body("invoice-42"), dead(DISAGREES), False),
    ("pay", KEYED[:-1] + "é", json_body("invoice-42"), dead(DISAGREES), False),
    ("pay", KEYED[:-1] + "\u0663", json_body("invoice-42"), dead(DISAGREES), False),
]


def verdict(decoded: DecodedBatch) -> tuple[str, str]:
    """What became of the batch's one message: stored (its event_id) or dead (the reason)."""
    rows = decoded.candidates.to_pylist()
    if rows:
        assert len(rows) == 1 and not decoded.dead_letters
        return stored(str(rows[0]["event_id"]))
    [letter] = decoded.dead_letters.values()
    return dead(letter.reason)


@pytest.fixture(scope="module")
def sql() -> Iterator[SqlDecoder]:
    decoder = SqlDecoder(memory_limit="256MB", threads=1)
    yield decoder
    decoder.close()


@pytest.mark.parametrize(("topic", "header_id", "body", "expected", "fast"), CASES)
def test_both_decoders_apply_the_id_rule(
    sql: SqlDecoder, topic: str, header_id: str, body: bytes, expected: tuple[str, str], fast: bool
) -> None:
    block = f"NATS/1.0\r\nNats-Msg-Id: {header_id}\r\n\r\n".encode()
    msgs = [WireMsg(f"logs.{topic}".encode(), reply(1), block, body)]
    by_sql = verdict(sql.decode(msgs, SeqRanges(), EPOCH))
    by_reference = verdict(ReferenceDecoder().decode(msgs, SeqRanges(), EPOCH))
    assert by_sql == by_reference
    kind, said = by_sql
    assert kind == expected[0] and (said == expected[1] if kind == "stored" else expected[1] in said), by_sql
    if fast:
        assert sql.query(msgs)["fast"].to_pylist() == [True], "left to the reference decoder"


def test_the_reason_quotes_the_start_of_a_very_long_id(sql: SqlDecoder) -> None:
    header_id = "t" * 5000 + ":x"
    msgs = [WireMsg(b"logs.pay", reply(1), f"NATS/1.0\r\nNats-Msg-Id: {header_id}\r\n\r\n".encode(), TEXT)]
    kind, reason = verdict(sql.decode(msgs, SeqRanges(), EPOCH))
    assert (kind, reason) == verdict(ReferenceDecoder().decode(msgs, SeqRanges(), EPOCH))
    assert (
        kind == "dead"
        and reason.startswith("Nats-Msg-Id 'tttt")
        and "(5002 characters)" in reason
        and "'pay'" in reason
    )
    assert len(reason) < 1000


def test_a_keyed_id_beside_other_headers_is_stored_by_both(sql: SqlDecoder) -> None:
    block = f"NATS/1.0\r\nNats-Msg-Id: {KEYED}\r\nLogmesh-Source: edge\r\n\r\n".encode()
    msgs = [WireMsg(b"logs.pay", reply(1), block, json_body("invoice-42"))]
    assert verdict(sql.decode(msgs, SeqRanges(), EPOCH)) == stored("invoice-42")
    assert verdict(ReferenceDecoder().decode(msgs, SeqRanges(), EPOCH)) == stored("invoice-42")


# ---- the key ------------------------------------------------------------------------------------------


def refusal(*argv: str) -> str:
    """What ``logmesh *argv`` says of its settings, read as its handler reads them."""
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    with pytest.raises(SettingsError) as refused:
        settings_from_args(args.settings_cls, args)
    return str(refused.value)


def test_a_short_key_is_one_line_that_does_not_show_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert refusal("ingest", "--msg-id-key", "s3cret") == "--msg-id-key: must be at least 32 characters"
    monkeypatch.setenv("LOGMESH_MSG_ID_KEY", "x" * 31)
    assert refusal("ingest") == "LOGMESH_MSG_ID_KEY: must be at least 32 characters"


def test_a_key_from_the_environment_is_taken_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGMESH_MSG_ID_KEY", KEY)
    settings = IngestSettings()
    assert settings.msg_id_key is not None and settings.msg_id_key.get_secret_value() == KEY
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_without_a_key_each_ingest_draws_its_own_and_says_what_that_costs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("LOGMESH_MSG_ID_KEY", raising=False)
    with caplog.at_level(logging.INFO, logger="logmesh.ingest"):
        first, second = (Ingest(IngestSettings(), CollectorRegistry()) for _ in range(2))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "--msg-id-key" in r.getMessage()]
    assert len(said) == 2 and "caught by the sink's primary key instead of JetStream's window" in said[0]
    ids = [ingest._msg_ids.msg_id("pay", "invoice-42") for ingest in (first, second)]
    assert ids[0] != ids[1] and all(is_keyed_msg_id("pay", i) for i in ids)
    given = [Ingest(IngestSettings(msg_id_key=KEY), CollectorRegistry()) for _ in range(2)]
    assert {ingest._msg_ids.msg_id("pay", "invoice-42") for ingest in given} == {KEYED}


# ---- end to end, through logmesh up -------------------------------------------------------------------


def js_publish(url: str, subject: str, body: bytes, header_id: str) -> tuple[int, bool]:
    """An acked raw publish, as any client allowed to write into the stream may send it."""

    async def publish(nc: Client) -> tuple[int, bool]:
        ack = await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": header_id})
        return ack.seq, bool(ack.duplicate)

    return over_nats(url, publish)


def stream_messages(url: str) -> list[Any]:
    """Every message in the stream, read with JetStream's stream message get."""

    async def read(nc: Client) -> list[Any]:
        js = nc.jetstream()
        info = await js.stream_info("LOGS")
        return [await js.get_msg("LOGS", seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]

    return over_nats(url, read)


def dead_letters(up: Up) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = up.http.get("/dead-letters").json()["dead_letters"]
    return letters


@pytest.mark.usefixtures("nats_io")
def test_a_raw_message_naming_another_topic_is_dead_lettered_and_takes_no_id_from_ingest(make_up: Any) -> None:
    up: Up = make_up({"LOGMESH_MSG_ID_KEY": KEY})
    # The attack: an id of topic pay on logs.junk, in JetStream before the real event.
    body = orjson.dumps({"event_id": "pay:invoice-42", "source": "x", "payload": {"forged": True}})
    _, duplicate = js_publish(up.nats_url, "logs.junk", body, "pay:invoice-42")
    assert not duplicate
    up.settled_stats(arrived=1)
    [letter] = dead_letters(up)
    assert letter["subject"] == "logs.junk" and letter["reason"] == OTHER_TOPIC

    real = event("pay", "invoice-42")
    answer = up.publish(real)
    assert (answer.status_code, answer.json()) == (202, {"accepted": 1, "duplicates": 0, "stored": 1})
    stats = up.settled_stats(arrived=2)
    assert (stats["unique_processed"], stats["invalid"], stats["duplicates"]) == (1, 1, {"window": 0, "store": 0})
    stored = up.http.get("/events/pay/invoice-42")
    assert stored.status_code == 200 and stored.json()["payload"] == real["payload"]


@pytest.mark.usefixtures("nats_io")
def test_a_raw_preempt_of_the_raw_id_cannot_stop_the_real_event_and_a_repeat_is_a_true_duplicate(
    make_up: Any,
) -> None:
    up: Up = make_up({"LOGMESH_MSG_ID_KEY": KEY})
    # Allowed on logs.pay, and the id the old ingest used: with a body the sink dead-letters.
    bad = orjson.dumps({"event_id": "invoice-42", "timestamp": "yesterday", "source": "x"})
    js_publish(up.nats_url, "logs.pay", bad, "pay:invoice-42")
    real = event("pay", "invoice-42")
    first, again = up.publish(real), up.publish(real)
    assert (first.status_code, first.json()) == (202, {"accepted": 1, "duplicates": 0, "stored": 1})
    assert (again.status_code, again.json()) == (202, {"accepted": 1, "duplicates": 1, "stored": 0})
    stats = up.settled_stats(arrived=3)
    assert (stats["unique_processed"], stats["invalid"], stats["duplicates"]) == (1, 1, {"window": 1, "store": 0})
    assert up.http.get("/events/pay/invoice-42").status_code == 200
    [letter] = dead_letters(up)
    assert letter["subject"] == "logs.pay" and "timestamp" in letter["reason"]

    # The duplicate is true: the one message under ingest's id for (pay, invoice-42) is the event.
    held = [m for m in stream_messages(up.nats_url) if (m.headers or {}).get("Nats-Msg-Id") == KEYED]
    assert [(m.subject, m.data) for m in held] == [("logs.pay", orjson.dumps(real))]


def test_an_http_copy_and_a_raw_copy_of_one_event_are_stored_once_and_both_counted(up: Up) -> None:
    """The cost of keyed ids: the two copies no longer meet in JetStream's window (different ids);
    the store's primary key drops the second and counts it."""
    real = event("pay", "invoice-7")
    assert up.publish(real).json() == {"accepted": 1, "duplicates": 0, "stored": 1}
    _, duplicate = js_publish(up.nats_url, "logs.pay", orjson.dumps(real), msg_id("pay", "invoice-7"))
    assert not duplicate
    stats = up.settled_stats(arrived=2)
    assert (stats["unique_processed"], stats["duplicates"]) == (1, {"window": 0, "store": 1})
    assert stats["invariant_holds"]
