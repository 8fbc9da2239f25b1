"""The partitioned sink on a real nats-server and real DuckDB files: a stream partitioned by topic
(P > 1), events published natively (``logs.<topic>`` with ``Nats-Msg-Id``), sink processes serving
the partitions. Each event lands in its partition's file only, counters stay exact through duplicates
and redelivery, a deleted file is rebuilt from the stream, and a new file is refused once the stream
no longer starts at sequence 1.

The nats-server here runs without authorization: the sink's permissions for its partition consumers
and the lease bucket come with the cluster roles (``nats_roles``), not with this part."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from logmesh.common import partitions
from logmesh.common.query_answers import read_parts
from logmesh.sink.place import Place
from tests.harness import NatsServer, Service, over_nats, wait_for

pytestmark = pytest.mark.timeout(120)

P = 4
# Three topics in each of the four partitions.
TOPICS = sorted((t for t in (f"topic-{i}" for i in range(200))), key=lambda t: partitions.partition_of(t, P))
BY_PARTITION = {k: [t for t in TOPICS if partitions.partition_of(t, P) == k][:3] for k in range(P)}
ALL_TOPICS = [t for k in range(P) for t in BY_PARTITION[k]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    nats = NatsServer(tmp_path / "nats").start()
    yield nats
    nats.stop()


def create_partitioned_stream(url: str, count: int = P, **limits: Any) -> None:
    """As ``up --partitions <count>`` creates it: the public subjects, the partition transform."""

    async def create(nc: Client) -> None:
        await nc.jetstream().add_stream(
            StreamConfig(
                name="LOGS",
                subjects=["logs.>", "logmesh.receipts", "logmesh.receipts.*"],
                subject_transform=partitions.stream_transform(count),
                storage=StorageType.FILE,
                duplicate_window=120,
                **limits,
            )
        )

    over_nats(url, create)


def event(topic: str, event_id: str) -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2025-06-01T12:00:00Z", "source": "test", "payload": {}}


Message = tuple[str, bytes, dict[str, str] | None]


def publish(url: str, messages: list[Message]) -> int:
    """Acked JetStream publishes; returns how many were stored (not window duplicates)."""

    async def send(nc: Client) -> int:
        js = nc.jetstream()
        stored = 0
        for subject, body, headers in messages:
            ack = await js.publish(subject, body, headers=headers)
            stored += not ack.duplicate
        return stored

    return over_nats(url, send)


def natively(events: list[dict[str, Any]], *, msg_id: bool = True) -> list[Message]:
    return [
        (
            f"logs.{e['topic']}",
            orjson.dumps(e),
            {"Nats-Msg-Id": f"{e['topic']}:{e['event_id']}"} if msg_id else None,
        )
        for e in events
    ]


def ask(url: str, partition: int, endpoint: str, query: dict[str, Any] | None = None, count: int = P) -> Any:
    async def request(nc: Client) -> bytes:
        subject = f"{partitions.query_prefix(partition, count)}.{endpoint}"
        reply = await nc.request(subject, orjson.dumps(query or {}), timeout=5)
        return reply.data

    data = over_nats(url, request)
    return data if query and query.get("parts") else orjson.loads(data)


def sink_args(url: str, data_dir: Path, *extra: str) -> list[str]:
    return ["sink", "--nats-url", url, "--data-dir", str(data_dir), "--lease-ttl", "1", *extra]


def counters_of(url: str, count: int = P) -> dict[int, dict[str, Any]]:
    return {k: ask(url, k, "stats") for k in range(count)}


def settled(url: str, received: int, count: int = P) -> dict[int, dict[str, Any]] | None:
    """Every partition's stats once they add up to ``received`` messages processed."""
    stats = counters_of(url, count)
    return stats if sum(s["received"] for s in stats.values()) == received else None


def counts(stats: dict[int, dict[str, Any]] | None) -> dict[int, dict[str, Any]]:
    """The counters in every partition's stats, without the sink's status."""
    assert stats is not None
    return {k: {name: v for name, v in s.items() if name != "sink"} for k, s in stats.items()}


def file_rows(path: Path) -> dict[str, Any]:
    with duckdb.connect(str(path), read_only=True) as db:
        events = db.execute("SELECT topic, event_id FROM events ORDER BY topic, event_id").fetchall()
        dead = db.execute("SELECT subject FROM dead_letters").fetchall()
        [counters] = db.execute(
            "SELECT received, unique_processed, window_duplicates, store_duplicates, invalid FROM counters"
        ).fetchall()
        [(file_id,)] = db.execute("SELECT value FROM meta WHERE key = 'file_id'").fetchall()
    return {"events": events, "dead": [s for (s,) in dead], "counters": counters, "file_id": file_id}


def test_each_event_lands_in_its_partitions_file_with_exact_counters(
    tmp_path: Path, server: NatsServer, service: Callable[..., Service]
) -> None:
    url = server.url
    create_partitioned_stream(url)
    events = [event(t, f"e{i}") for i, t in enumerate(ALL_TOPICS * 25)]  # 300 distinct
    stored = publish(url, natively(events))
    # The same identities again: the duplicate window drops these, the store never sees them.
    assert publish(url, natively(events[:50])) == 0
    # Without Nats-Msg-Id the window cannot tell: the store recognises the 40 copies.
    stored += publish(url, natively(events[100:140], msg_id=False))
    # A receipt speaks for one partition's window duplicates; a body no decoder takes.
    receipt_topic = BY_PARTITION[2][0]
    receipt = {"events": 10, "window_duplicates": {receipt_topic: 7}}
    stored += publish(url, [(partitions.receipt_subject(2, P), orjson.dumps(receipt), None)])
    bad_topic = BY_PARTITION[1][1]
    stored += publish(url, [(f"logs.{bad_topic}", b'{"topic": "x", broken', None)])
    assert stored == 300 + 40 + 1 + 1
    messages = 300 + 40 + 1  # the receipt is no event

    data = tmp_path / "sink"
    # The first sink commits one batch and dies before acking it: redelivered to the next (ack_wait
    # later), and only acked.
    crash = {"LOGMESH_FAILPOINTS": "sink.after_commit=kill", "LOGMESH_ACK_WAIT": "2"}
    crashing = service(sink_args(url, data), crash, name="crashing")
    assert crashing.proc is not None
    wait_for(lambda: crashing.proc is not None and crashing.proc.poll() is not None, 60, "the failpoint's kill")
    sink = service(sink_args(url, data, "--sink-name", "only", "--ack-wait", "2"), name="sink")
    stats = wait_for(lambda: settled(url, messages), 60, "every partition to commit its share")
    # What the first committed comes again (the counters may add up before it does), and is only acked.
    redelivered = re.compile(r"committed \d+ messages: \d+ new events, [1-9]\d* redelivered")
    wait_for(lambda: redelivered.search(sink.log()), 30, "the first sink's batch to come again")
    assert counts(settled(url, messages)) == counts(stats)

    assert sum(s["unique_processed"] for s in stats.values()) == 300
    assert sum(s["duplicates"]["store"] for s in stats.values()) == 40
    assert sum(s["duplicates"]["window"] for s in stats.values()) == 7
    assert stats[2]["duplicates"]["window"] == 7
    assert sum(s["invalid"] for s in stats.values()) == 1 == stats[1]["invalid"]
    for k, s in stats.items():
        assert sorted(t["topic"] for t in s["topics"]) == sorted(BY_PARTITION[k]), k
        status = s["sink"]
        assert status["ready"] and status["partition"] == k and status["partitions"] == P
        assert status["owner"] == "only" and status["pid"] == sink.proc.pid  # type: ignore[union-attr]
        assert re.fullmatch(rf"sink-p{k}-[0-9a-f]{{12}}", status["consumer"])
        assert status["consumer"] == f"sink-p{k}-{status['file_id']}"

    # A page's part for the merged view: items with their stream seq, and whether more follow.
    items, more = read_parts(ask(url, 0, "events", {"limit": 10, "parts": True}))
    assert len(items) == 10 and more
    assert [seq for _, seq, _ in items] == sorted(seq for _, seq, _ in items)
    rest, more = read_parts(ask(url, 0, "events", {"limit": 1000, "parts": True, "after": items[-1][0]}))
    assert len(items) + len(rest) == stats[0]["unique_processed"] and not more
    [(_, _, letter)], more = read_parts(ask(url, 1, "dead_letters", {"parts": True}))
    assert orjson.loads(letter)["subject"] == f"logs.{bad_topic}" and not more

    assert sink.stop() == 0
    for k in range(P):
        rows = file_rows(partitions.store_file(data, k, P))
        assert {topic for topic, _ in rows["events"]} == set(BY_PARTITION[k])
        assert len(rows["events"]) == len(set(rows["events"])) == stats[k]["unique_processed"]
        assert rows["counters"][0] == stats[k]["received"]
    assert file_rows(partitions.store_file(data, 1, P))["dead"] == [f"logs.{bad_topic}"]
    assert not (data / "logmesh.duckdb").exists()


def test_a_deleted_partition_file_is_rebuilt_from_the_stream_to_identical_counters(
    tmp_path: Path, server: NatsServer, service: Callable[..., Service]
) -> None:
    url = server.url
    create_partitioned_stream(url)
    events = [event(t, f"r{i}") for i, t in enumerate(ALL_TOPICS * 20)]
    publish(url, natively(events) + natively(events[:30], msg_id=False))
    data = tmp_path / "sink"
    first = service(sink_args(url, data), name="first")
    before = wait_for(lambda: settled(url, 270), 60, "the first build")
    assert first.stop() == 0
    kept = file_rows(partitions.store_file(data, 3, P))

    partitions.store_file(data, 3, P).unlink()
    again = service(sink_args(url, data), name="again")
    after = wait_for(lambda: settled(url, 270), 60, "the rebuild")
    assert {k: s["unique_processed"] for k, s in after.items()} == {k: s["unique_processed"] for k, s in before.items()}
    assert after[3]["topics"] == before[3]["topics"]
    assert after[3]["sink"]["file_id"] != before[3]["sink"]["file_id"]  # a new file, a new consumer
    assert again.stop() == 0
    rebuilt = file_rows(partitions.store_file(data, 3, P))
    assert (rebuilt["events"], rebuilt["counters"]) == (kept["events"], kept["counters"])


def test_a_new_file_is_refused_once_the_stream_no_longer_starts_at_sequence_1(
    tmp_path: Path, server: NatsServer, service: Callable[..., Service]
) -> None:
    url = server.url
    create_partitioned_stream(url, count=2, max_msgs=50)
    publish(url, natively([event(t, f"x{i}") for i, t in enumerate(ALL_TOPICS * 6)]))  # 72: the first 22 dropped

    sink = service(sink_args(url, tmp_path / "sink"), name="refused")
    for k in range(2):
        status = wait_for(functools.partial(ask, url, k, "status", count=2), 30, f"partition {k} to answer")
        assert not status["ready"] and status["file_id"] is None and status["consumer"] is None
        assert "stream LOGS starts at sequence 23, not 1" in status["last_error"]
        assert "history is incomplete" in status["last_error"]
    wait_for(lambda: "refusing to build a new store file" in sink.log(), 10, "the refusal in the log")

    async def consumers(nc: Client) -> list[str]:
        return [c.name for c in await nc.jetstream().consumers_info("LOGS")]

    assert over_nats(url, consumers) == []  # nothing was read
    assert sink.stop() == 0


def test_a_partition_the_stream_does_not_have_is_refused_in_one_line(
    tmp_path: Path, server: NatsServer, service: Callable[..., Service]
) -> None:
    create_partitioned_stream(server.url, count=2)
    sink = service(sink_args(server.url, tmp_path / "sink", "--partitions", "0", "--standby", "2"), name="beyond")
    assert sink.proc is not None
    assert sink.proc.wait(30) == 2
    line = "logmesh sink: partition 2 does not exist: stream LOGS has 2 partition(s), 0-1"
    assert line in sink.log().splitlines()


def test_with_one_partition_every_name_is_as_it_always_was(tmp_path: Path) -> None:
    place = Place(0, 1, tmp_path, "sink")
    assert (place.db_path.name, place.lock_path.name, place.journal_path.name) == (
        "logmesh.duckdb",
        "store.lock",
        "suspect.json",
    )
    assert (place.consumer(None), place.query_prefix, place.filters) == ("sink", "logmesh.query", [])
