"""Partition leases on a real nats-server: one holder at a time, a refused renewal is a lost lease,
and two sinks started for the same partitions: only one commits, the other waits, and a SIGKILL of the
first hands the partitions over within a bounded time, with no event stored twice and none lost.

Authorization is off on this one-node server, as in test_partitioned_sink.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client

from logmesh.common import partitions
from logmesh.common.failpoints import Failpoints
from logmesh.common.leases_bucket import LEASE_BUCKET, ensure_lease_bucket, lease_key
from logmesh.common.wire import WireMsg
from logmesh.sink.commit import BatchCommitter, LeaseLost
from logmesh.sink.crash_journal import CrashJournal
from logmesh.sink.lease import VALIDITY, Lease, bucket_ttl
from logmesh.sink.metrics import SinkMetrics
from logmesh.sink.settings import SinkSettings
from logmesh.sink.writer import Writer
from tests.harness import NatsServer, Service, over_nats, wait_for
from tests.test_partitioned_sink import (
    ALL_TOPICS,
    ask,
    create_partitioned_stream,
    event,
    file_rows,
    natively,
    publish,
    server,  # noqa: F401 (fixture)
    settled,
    sink_args,
)

pytestmark = pytest.mark.timeout(120)
P = 4


def test_one_holder_at_a_time_and_a_refused_renewal_is_a_lost_lease(server: NatsServer) -> None:  # noqa: F811
    async def work(nc: Client) -> None:
        js = nc.jetstream()
        kv = await ensure_lease_bucket(js, ttl=30, replicas=1)
        assert await bucket_ttl(kv) == 30
        # Create-only: a sink configured with another TTL uses the bucket as it is.
        assert await bucket_ttl(await ensure_lease_bucket(js, ttl=5, replicas=1)) == 30
        a = Lease(kv, 1, {"owner": "a"}, 30)
        b = Lease(kv, 1, {"owner": "b"}, 30)
        sent = time.monotonic()
        assert await a.acquire() and a.valid()
        assert sent + VALIDITY * 30 <= a.valid_until <= time.monotonic() + VALIDITY * 30
        assert not await b.acquire() and not b.valid()
        assert not await b.absent()
        assert await a.renew() and a.valid()
        # Someone else's write (as an operator could make it): a's next renewal is refused.
        await kv.put(lease_key(1), b'{"owner": "operator"}')
        assert not await a.renew() and not a.held and not a.valid()
        await kv.delete(lease_key(1))
        assert await b.absent() and await b.acquire()
        await b.release()
        assert await a.absent() and await a.acquire()

    over_nats(server.url, work)


def test_a_lease_not_renewed_expires_with_the_buckets_ttl(server: NatsServer) -> None:  # noqa: F811
    async def work(nc: Client) -> float:
        kv = await ensure_lease_bucket(nc.jetstream(), ttl=1, replicas=1)
        holder = Lease(kv, 0, {"owner": "gone"}, 1)
        assert await holder.acquire()
        started = time.monotonic()
        other = Lease(kv, 0, {"owner": "next"}, 1)
        for _ in range(100):
            if await other.acquire():
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError("the lease never expired")

    took = over_nats(server.url, work)
    assert 0.8 <= took < 3.0, took


def test_a_renewal_written_after_its_timeout_is_ours_from_the_oldest_unanswered_attempt(
    server: NatsServer,  # noqa: F811
) -> None:
    """The server stalls (SIGSTOP) while a renewal is in flight: the renewal times out unanswered,
    and is written once the server resumes. The next renewal is refused (the revision moved on), yet
    the lease is still ours: our value at a newer revision. Its validity counts from when the
    unanswered attempt was sent, the earliest that write can have been made, not from the refused one."""
    ttl = 3.0
    assert server.launcher.process is not None
    pid = server.launcher.process.pid

    async def work(nc: Client) -> None:
        kv = await ensure_lease_bucket(nc.jetstream(), ttl=ttl, replicas=1)
        lease = Lease(kv, 0, {"owner": "a"}, ttl)
        assert await lease.acquire()
        known = lease.revision
        assert known is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            unanswered = time.monotonic()
            assert await lease.renew()  # times out after ttl/3: no answer is no loss
            assert lease.revision == known
        finally:
            os.kill(pid, signal.SIGCONT)
        for _ in range(100):  # the stalled renewal lands once the server runs again
            entry = await kv.get(lease_key(0))
            if entry.revision is not None and entry.revision > known:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the stalled renewal was never written")
        refused = time.monotonic()
        assert await lease.renew() and lease.valid()
        assert lease.revision == entry.revision
        # Counted from the unanswered attempt, sent a third of the TTL (its timeout) before the
        # refused one at least; not from the refused one.
        assert unanswered + VALIDITY * ttl <= lease.valid_until < refused - ttl / 6 + VALIDITY * ttl
        assert await lease.renew() and lease.revision > entry.revision  # renewals go on from there

    over_nats(server.url, work)


def test_our_value_written_by_someone_else_is_not_taken_for_our_renewal(server: NatsServer) -> None:  # noqa: F811
    """With no renewal of ours unanswered, a newer revision cannot be ours, whatever its value."""

    async def work(nc: Client) -> None:
        kv = await ensure_lease_bucket(nc.jetstream(), ttl=30, replicas=1)
        lease = Lease(kv, 2, {"owner": "a"}, 30)
        assert await lease.acquire()
        entry = await kv.get(lease_key(2))
        assert entry.value is not None
        await kv.put(lease_key(2), entry.value)  # the very same bytes, as a copy made by hand
        assert not await lease.renew() and not lease.held and not lease.valid()

    over_nats(server.url, work)


def test_a_lost_lease_leaves_no_crash_note_against_the_message_being_committed(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
) -> None:
    """A message committed alone under the crash journal: the lease is lost before it commits. The work
    ends, the process lives on: the next run must not blame the message for a crash."""
    journal_path = tmp_path / "suspect.json"
    settings = SinkSettings(data_dir=tmp_path)

    async def work(nc: Client) -> None:
        kv = await ensure_lease_bucket(nc.jetstream(), ttl=30, replicas=1)
        lease = Lease(kv, 1, {"owner": "a"}, 30)
        assert await lease.acquire()
        await kv.put(lease_key(1), b'{"owner": "operator"}')
        assert not await lease.renew()  # lost
        failpoints = Failpoints("")
        writer = Writer(settings, failpoints, tmp_path / "partition-1.duckdb")
        await writer.open()
        metrics = SinkMetrics(owned=list, ready=lambda: True)
        committer = BatchCommitter(settings, writer, CrashJournal(journal_path), failpoints, metrics, lease)
        body = orjson.dumps(event("t", "e1"))
        # Delivered more often than poison_after: committed on its own, under the journal.
        reply = f"$JS.ACK.LOGS.sink-p1-x.{settings.poison_after + 1}.7.7.0.0".encode()
        try:
            with pytest.raises(LeaseLost):
                await committer._handle([WireMsg(b"1.logs.t", reply, None, body)], asyncio.Event())
        finally:
            await writer.close()

    over_nats(server.url, work)
    assert not journal_path.exists()
    journal = CrashJournal(journal_path)
    journal.load()
    assert journal.convicted(7) is None


def kill_hard(svc: Service) -> None:
    assert svc.proc is not None
    svc.proc.kill()
    svc.proc.wait()


@pytest.mark.slow
def test_two_sinks_for_the_same_partitions_one_commits_and_a_kill_hands_over(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
    service: Callable[..., Service],
) -> None:
    url = server.url
    create_partitioned_stream(url)
    first_events = [event(t, f"a{i}") for i, t in enumerate(ALL_TOPICS * 20)]  # 240
    publish(url, natively(first_events))
    ttl = "2"
    a = service(sink_args(url, tmp_path / "a", "--sink-name", "a", "--lease-ttl", ttl), name="a")
    wait_for(lambda: settled(url, 240), 60, "sink a to commit everything")
    # b, on another machine's disk, is standby for every partition: it waits and opens nothing.
    b = service(
        sink_args(
            url, tmp_path / "b", "--sink-name", "b", "--lease-ttl", ttl, "--partitions", "", "--standby", "0,1,2,3"
        ),
        name="b",
    )
    wait_for(lambda: "standby 0,1,2,3" in b.log(), 30, "sink b to start")
    more = [event(t, f"b{i}") for i, t in enumerate(ALL_TOPICS * 10)]  # 120
    publish(url, natively(more[:60]))
    stats = wait_for(lambda: settled(url, 300), 30, "sink a to commit the next ones")
    assert {s["sink"]["owner"] for s in stats.values()} == {"a"}
    assert not list((tmp_path / "b").glob("partition-*.duckdb"))  # b committed nothing anywhere
    assert "lease won" not in b.log()

    kill_hard(a)
    killed = time.monotonic()
    publish(url, natively(more[60:]))  # while nobody serves the partitions

    def owners() -> set[str] | None:
        status = {k: ask(url, k, "status") for k in range(P)}
        return {s["owner"] for s in status.values()} if all(s["ready"] for s in status.values()) else None

    assert wait_for(owners, 60, "sink b to take every partition") == {"b"}
    handover = time.monotonic() - killed
    stats = wait_for(lambda: settled(url, 360), 30, "sink b to commit everything")
    print(f"handover after SIGKILL with a {ttl} s lease TTL: {handover:.2f} s")
    # Bounded: the key expires within a TTL of the last renewal, the standby waits a TTL of absence,
    # looks every third of one, then opens its file and consumer.
    assert handover < 4 * float(ttl) + 3, handover
    assert sum(s["unique_processed"] for s in stats.values()) == 360
    assert sum(s["duplicates"]["store"] for s in stats.values()) == 0

    assert b.stop() == 0
    stored = [key for k in range(P) for key in file_rows(partitions.store_file(tmp_path / "b", k, P))["events"]]
    assert len(stored) == len(set(stored)) == 360  # each once, none lost
    assert set(stored) == {(e["topic"], e["event_id"]) for e in first_events + more}

    async def leases(nc: Client) -> list[str]:
        kv = await nc.jetstream().key_value(LEASE_BUCKET)
        return [key for key in await kv.keys()] if (await kv.status()).values else []

    # A graceful stop gives the leases up.
    wait_for(lambda: over_nats(url, leases) == [], 10, "the leases to be given up")


@pytest.mark.slow
def test_an_owner_frozen_past_its_lease_commits_nothing_when_it_wakes(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
    service: Callable[..., Service],
) -> None:
    """SIGSTOP stands for a long pause (GC, swap, a stalled VM): the standby takes over meanwhile,
    and the old owner, woken, finds its lease invalid and stops without committing or acking."""
    url = server.url
    create_partitioned_stream(url)
    early = [event(t, f"c{i}") for i, t in enumerate(ALL_TOPICS * 5)]  # 60
    publish(url, natively(early))
    a = service(sink_args(url, tmp_path / "a", "--sink-name", "a", "--lease-ttl", "1"), name="a")
    wait_for(lambda: settled(url, 60), 60, "sink a to commit")
    args = ["--sink-name", "b", "--lease-ttl", "1", "--partitions", "", "--standby", "0,1,2,3"]
    b = service(sink_args(url, tmp_path / "b", *args), name="b")
    wait_for(lambda: "standby 0,1,2,3" in b.log(), 30, "sink b to start")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    late = [event(t, f"d{i}") for i, t in enumerate(ALL_TOPICS * 5)]
    publish(url, natively(late))
    # The frozen owner still holds its share of the partitions' query subjects: ask JetStream instead.
    ready = re.compile(r"partition \d of 4 ready: stream LOGS, consumer (sink-p\d-[0-9a-f]+)")
    consumers = wait_for(lambda: len(found := ready.findall(b.log())) == P and found, 30, "sink b to take over")

    async def drained(nc: Client) -> bool:
        infos = [await nc.jetstream().consumer_info("LOGS", name) for name in consumers]
        return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

    wait_for(lambda: over_nats(url, drained), 30, "sink b to commit everything")
    a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: a.log().count("lease lost") + a.log().count("no longer valid") >= P, 30, "a to stop its pipelines")
    assert sum(s["unique_processed"] for s in wait_for(lambda: settled(url, 120), 30, "b alone").values()) == 120
    assert a.stop() == 0 and b.stop() == 0
    for k in range(P):
        kept = {key for key in file_rows(partitions.store_file(tmp_path / "a", k, P))["events"]}
        assert kept == {(e["topic"], e["event_id"]) for e in early if partitions.partition_of(e["topic"], P) == k}
