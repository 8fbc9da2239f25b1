"""Each NATS user of ``logmesh up`` tries what it must not do, and the server refuses it (a
permissions violation, no effect); what it may do still works. The attacks are the ones that worked
against an open server: forged receipts, a forged query responder, deleting the consumer, purging
or deleting the stream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from logmesh.common.leases_bucket import LEASE_BUCKET, ensure_lease_bucket, lease_key
from logmesh.common.nats_roles import Role, inbox_prefix, password_secret
from logmesh.common.partitions import consumer_filters
from logmesh.common.processes import children
from logmesh.common.waiting import WaitTimeout, wait_until_async
from tests.harness import Up, event, jetstream_info, wait_for

pytestmark = pytest.mark.timeout(120)

Action = Callable[[Client], Awaitable[Any]]
RECEIPT = orjson.dumps({"duplicates": 1_000_777, "events": 1_000_777})


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    stack = Up(tmp_path_factory.mktemp("roles") / "data").start()
    yield stack
    stack.close()


def _url(up: Up) -> str:
    return f"nats://127.0.0.1:{up.nats_port}"


async def _connect(up: Up, role: Role, errors: list[str], password: str | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        _url(up),
        user=role,
        password=password if password is not None else up.secret(password_secret(role)) or "",
        inbox_prefix=inbox_prefix(role),
        error_cb=on_error,
        allow_reconnect=False,
    )


def refused(up: Up, role: Role, action: Action, subject: str) -> None:
    """``action`` as ``role`` draws the server's permissions violation naming ``subject``."""

    errors: list[str] = []

    async def seen() -> bool:
        return _violation(errors, subject)

    async def attempt() -> list[str]:
        nc = await _connect(up, role, errors)
        try:
            # A denied request gets no answer: its time-out is expected, the violation is the proof.
            with contextlib.suppress(TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await action(nc)
            await nc.flush()
            with contextlib.suppress(WaitTimeout):  # the assertion below says what was seen instead
                await wait_until_async(seen, 5, "the permissions violation")
        finally:
            await nc.close()
        return errors

    errors = asyncio.run(attempt())
    assert _violation(errors, subject), (role, subject, errors)


def _violation(errors: list[str], subject: str) -> bool:
    # nats-py reports the server's -ERR in lower case
    return any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in errors) or any(
        f'permissions violation for subscription to "{subject.lower()}"' in e.lower() for e in errors
    )


def allowed(up: Up, role: Role, action: Action) -> Any:
    async def attempt() -> Any:
        errors: list[str] = []
        nc = await _connect(up, role, errors)
        try:
            result = await action(nc)
            await nc.flush()
        finally:
            await nc.close()
        assert not errors, errors
        return result

    return asyncio.run(attempt())


def publish(subject: str, data: bytes = b"x") -> Action:
    return lambda nc: nc.publish(subject, data)


def request(subject: str, data: bytes = b"{}") -> Action:
    return lambda nc: nc.request(subject, data, timeout=0.5)


def subscribe(subject: str, queue: str = "") -> Action:
    return lambda nc: nc.subscribe(subject, queue=queue)


PURGE = "$JS.API.STREAM.PURGE.LOGS"
DELETE_STREAM = "$JS.API.STREAM.DELETE.LOGS"
UPDATE_STREAM = "$JS.API.STREAM.UPDATE.LOGS"
DELETE_CONSUMER = "$JS.API.CONSUMER.DELETE.LOGS.sink"
NEXT = "$JS.API.CONSUMER.MSG.NEXT.LOGS.sink"
DESTRUCTIVE = [PURGE, DELETE_STREAM, UPDATE_STREAM, DELETE_CONSUMER]

SNOOPING: list[tuple[Role, Role]] = [
    ("publisher", "ingest"),
    ("publisher", "sink"),
    ("query", "sink"),
    ("ingest", "query"),
]
FORBIDDEN: list[tuple[Role, str, Action]] = [
    # Forged receipts moved the duplicate counter by a million.
    *((role, "logmesh.receipts", publish("logmesh.receipts", RECEIPT)) for role in ("publisher", "sink", "query")),
    # A responder in the sink's queue group answered half the queries with forged data.
    *((role, "logmesh.query.>", subscribe("logmesh.query.>", "q")) for role in ("publisher", "ingest", "query")),
    *(
        (role, subject, request(subject))
        for role in ("publisher", "ingest", "sink", "query")
        for subject in DESTRUCTIVE
    ),
    *((role, NEXT, request(NEXT)) for role in ("publisher", "ingest", "query")),
    ("publisher", "logmesh.query.stats", request("logmesh.query.stats")),
    ("publisher", "$JS.API.STREAM.INFO.LOGS", request("$JS.API.STREAM.INFO.LOGS")),
    ("publisher", "$JS.API.STREAM.CREATE.other", request("$JS.API.STREAM.CREATE.other")),
    # Nobody reads another role's replies (PubAcks, query answers, pulled messages).
    *((role, f"{inbox_prefix(other)}.>", subscribe(f"{inbox_prefix(other)}.>")) for role, other in SNOOPING),
    ("sink", "logs.orders", publish("logs.orders")),
    ("query", "logs.orders", publish("logs.orders")),
    ("ingest", "$JS.API.CONSUMER.CREATE.LOGS.spy", request("$JS.API.CONSUMER.CREATE.LOGS.spy")),
    ("query", "$JS.API.STREAM.MSG.GET.LOGS", request("$JS.API.STREAM.MSG.GET.LOGS", b'{"seq":1}')),
    # A partition's receipts move its counters as the single receipt subject does.
    *((role, "logmesh.receipts.1", publish("logmesh.receipts.1", RECEIPT)) for role in ("publisher", "sink", "query")),
    # The sink's consumers are the stream's and no other's; the leases are the sinks' to write.
    ("sink", "$JS.API.CONSUMER.CREATE.OTHER.sink-p0-x", request("$JS.API.CONSUMER.CREATE.OTHER.sink-p0-x")),
    *((role, "$KV.LOGMESH_LEASES.p0", publish("$KV.LOGMESH_LEASES.p0")) for role in ("publisher", "ingest", "query")),
    *(
        (role, "$JS.API.STREAM.DELETE.KV_LOGMESH_LEASES", request("$JS.API.STREAM.DELETE.KV_LOGMESH_LEASES"))
        for role in ("ingest", "sink", "query")
    ),
]


@pytest.mark.parametrize(("role", "subject", "action"), FORBIDDEN, ids=[f"{r}-{s}" for r, s, _ in FORBIDDEN])
def test_a_role_is_refused_what_it_must_not_do(up: Up, role: Role, subject: str, action: Action) -> None:
    refused(up, role, action, subject)


def test_anonymous_and_wrong_passwords_are_turned_away(up: Up) -> None:
    async def connect(**auth: str) -> str:
        nc = Client()
        try:
            await nc.connect(_url(up), allow_reconnect=False, max_reconnect_attempts=0, **auth)  # type: ignore[arg-type]
        except nats.errors.Error as exc:
            return str(exc)
        finally:
            await nc.close()  # also after a refusal: the socket is closed here, not by the collector
        return "connected"

    assert "Authorization Violation" in asyncio.run(connect())
    assert "Authorization Violation" in asyncio.run(connect(user="publisher", password="guess"))
    assert "Authorization Violation" in asyncio.run(
        connect(user="admin", password=up.secret("publisher-password") or "")
    )


def test_each_role_may_do_its_own_work(up: Up) -> None:
    # The publisher: a JetStream publish and its PubAck, as `nats pub --jetstream` does.
    body = orjson.dumps(event("orders", "roles-1"))
    ack = allowed(
        up,
        "publisher",
        lambda nc: nc.jetstream().publish("logs.orders", body, headers={"Nats-Msg-Id": "orders:roles-1"}),
    )
    assert ack.seq >= 1 and not ack.duplicate
    # Ingest: the stream's info (and, through HTTP, publishes with receipts: the suite at large).
    info = allowed(up, "ingest", lambda nc: nc.jetstream().stream_info("LOGS"))
    assert info.config.name == "LOGS"
    # Query asks the sink; the sink answers it (only the sink may).
    up.settled_stats()
    asked = orjson.dumps({"topic": "orders", "event_id": "roles-1"})
    answer = allowed(up, "query", lambda nc: nc.request("logmesh.query.event", asked, timeout=5))
    assert orjson.loads(answer.data)["event_id"] == "roles-1", answer.data
    consumer = allowed(up, "sink", lambda nc: nc.jetstream().consumer_info("LOGS", "sink"))
    assert consumer.name == "sink"


# The attacks that worked against an open server, each as the role most likely to try it.
WORST: list[tuple[Role, str, Action]] = [
    ("publisher", "logmesh.receipts", publish("logmesh.receipts", RECEIPT)),
    ("query", "logmesh.query.>", subscribe("logmesh.query.>", "q")),
    ("ingest", DELETE_CONSUMER, request(DELETE_CONSUMER)),
    ("publisher", PURGE, request(PURGE)),
    ("sink", DELETE_STREAM, request(DELETE_STREAM)),
]


def test_after_the_worst_attacks_nothing_was_lost_or_forged(up: Up) -> None:
    assert up.publish([event("orders", "before-attacks")]).status_code == 202
    before = up.settled_stats()
    for role, subject, action in WORST:
        refused(up, role, action, subject)
    assert up.publish([event("orders", "after-attacks")]).status_code == 202
    after = up.settled_stats()
    stream, consumer = jetstream_info(up.nats_url)
    assert consumer.config.durable_name == "sink" and after["sink"]["ready"]
    assert after["unique_processed"] == before["unique_processed"] + 1
    assert after["duplicates"] == before["duplicates"]  # the forged receipt's million never counted
    assert stream.state.messages == after["received"] + after["stream"]["receipt_messages"]
    assert stream.state.first_seq == 1  # nothing purged
    assert up.http.get("/events/orders/before-attacks").status_code == 200
    assert after["invariant_holds"]


def test_the_secrets_are_only_for_their_owner(up: Up) -> None:
    directory = Path(up.data_dir) / "secrets"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    for path in directory.iterdir():
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_no_secret_is_on_a_command_line_or_in_a_config_file(up: Up) -> None:
    """``ps`` shows every user's command lines, and the config file may be shown: the passwords go by
    environment (the server reads them as variables, the sink as its settings)."""
    assert up.service.proc is not None
    secrets = [p.read_text().strip() for p in (Path(up.data_dir) / "secrets").iterdir()]
    pids = children(up.service.proc.pid)
    assert len(pids) == 2  # nats-server and the sink
    for pid in [up.service.proc.pid, *pids]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert not [s for s in secrets if s in cmdline], cmdline
    config = (Path(up.data_dir) / "nats" / "nats-server.conf").read_text()
    assert "authorization" in config and not [s for s in secrets if s in config]


REPLIES_INTO = ["$JS.API.STREAM.DELETE.LOGS", "$JS.API.STREAM.PURGE.LOGS", "$JS.API.CONSUMER.DELETE.LOGS.sink"]
REPLIES_INTO += ["logs.forged", "logmesh.receipts"]


def test_query_cannot_make_the_sink_answer_into_the_jetstream_api_or_the_stream(up: Up) -> None:
    """A request's reply subject is the requester's choice: a query asking with the reply subject
    ``$JS.API.STREAM.DELETE.LOGS`` would have the sink delete the stream if it could answer anywhere.
    It answers only into the inboxes of query and admin: the server refuses the rest."""
    assert up.publish([event("orders", "before-replies")]).status_code == 202
    before = up.settled_stats()
    stream_before, consumer_before = jetstream_info(up.nats_url)

    async def ask_with_bad_replies(nc: Client) -> None:
        for reply in REPLIES_INTO:
            for endpoint in ("stats", "counters", "event"):
                await nc.publish(f"logmesh.query.{endpoint}", b"x", reply=reply)
        await nc.flush()

    allowed(up, "query", ask_with_bad_replies)
    # The sink tried to answer and was refused: its connection says so (the sink logs to up's log).
    for reply in REPLIES_INTO:
        said = f'permissions violation for publish to "{reply.lower()}"'
        wait_for(functools.partial(_in_log, up, said), 10, said)
    stream, consumer = jetstream_info(up.nats_url)
    assert consumer.created == consumer_before.created  # not deleted and made again
    kept = (stream_before.state.first_seq, stream_before.state.messages)
    assert (stream.state.first_seq, stream.state.messages) == kept
    after = up.settled_stats()
    for figure in ("received", "invalid", "duplicates"):
        assert after[figure] == before[figure], figure
    assert up.publish([event("orders", "after-replies")]).status_code == 202  # and it still works


def _in_log(up: Up, text: str) -> bool:
    return text in up.service.log().lower()


def test_the_data_directory_is_its_owners_alone(up: Up) -> None:
    data = Path(up.data_dir)
    assert data.stat().st_mode & 0o777 == 0o700
    for path in [data / "logmesh.duckdb", *(data / "nats").rglob("*")]:
        if path.is_file() and path.name != "nats-server.conf":
            assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_a_puback_sent_to_the_query_subject_is_not_a_query(up: Up) -> None:
    """A publisher may give its publish any reply subject: JetStream then sends the PubAck there.
    Sent to the sink's query subject, it is a message with nowhere to answer, and ignored."""
    body = orjson.dumps(event("orders", "reflected"))
    allowed(up, "publisher", lambda nc: nc.publish("logs.orders", body, reply="logmesh.query.stats"))
    up.settled_stats()
    assert up.http.get("/events/orders/reflected").status_code == 200
    assert "no reply subject" not in up.service.log() and "Traceback" not in up.service.log()


def test_a_puback_stored_on_the_receipt_subject_is_a_dead_letter_not_a_count(up: Up) -> None:
    """The publisher may not publish receipts, but its reply subject can have JetStream store its
    PubAck on ``logmesh.receipts``: that is never a valid receipt, so it moves no counter."""
    before = up.settled_stats()
    body = orjson.dumps(event("orders", "reply-to-receipts"))
    allowed(up, "publisher", lambda nc: nc.publish("logs.orders", body, reply="logmesh.receipts"))
    after = wait_for(
        lambda: (s := up.settled_stats())["invalid"] == before["invalid"] + 1 and s, 20, "the reflected PubAck"
    )
    assert after["duplicates"] == before["duplicates"]
    letters = up.http.get("/dead-letters").json()["dead_letters"]
    assert letters[0]["subject"] == "logmesh.receipts"


def test_a_partition_sink_may_use_its_consumer_and_the_leases_and_query_only_its_lag(up: Up) -> None:
    async def as_sink(nc: Client) -> int:
        js = nc.jetstream()
        kv = await ensure_lease_bucket(js, 3.0, 1)
        revision = await kv.create(lease_key(1), b'{"owner": "sink-0"}')
        await kv.update(lease_key(1), b'{"owner": "sink-0"}', last=revision)
        config = ConsumerConfig(
            name="sink-p1-abc",
            durable_name="sink-p1-abc",
            filter_subjects=consumer_filters(1, 4),
            ack_policy=AckPolicy.EXPLICIT,
            inactive_threshold=60,
        )
        await js.add_consumer("LOGS", config)
        pending: int = (await js.consumer_info("LOGS", "sink-p1-abc")).num_pending
        return pending

    assert allowed(up, "sink", as_sink) == 0

    async def lag(nc: Client) -> int:
        pending: int = (await nc.jetstream().consumer_info("LOGS", "sink-p1-abc")).num_pending
        return pending

    assert allowed(up, "query", lag) == 0

    async def leases(nc: Client) -> None:
        await nc.jetstream().key_value(LEASE_BUCKET)

    # The owners come from the sinks' own answers: query has no business in the bucket.
    refused(up, "query", leases, f"$JS.API.STREAM.INFO.KV_{LEASE_BUCKET}")
