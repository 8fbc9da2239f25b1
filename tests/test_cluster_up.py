"""``logmesh up --nats-nodes 3 --partitions 4``: an R3 partitioned stream on a 3-node cluster, with
authorization on; ingest rides through the death of the stream's leader."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from logmesh.cli.sink_children import sink_roles
from logmesh.common.jetstream import ensure_stream
from logmesh.common.leases_bucket import DEFAULT_LEASE_TTL, LEASE_BUCKET
from logmesh.common.partitions import PartitionsMismatch, partition_of, receipt_subject, stream_transform
from logmesh.common.processes import children
from logmesh.common.settings import ServiceSettings
from tests.harness import SERVICE_TOKENS, Service, Up, event, over_nats, wait_for
from tests.test_up_metrics import family_names, samples

CLUSTER = {"nats_nodes": 3, "partitions": 4}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stream(up: Up, subjects: bool = False) -> Any:
    async def info(nc: Client) -> Any:
        return await nc.jetstream().stream_info("LOGS", subjects_filter=">" if subjects else None)

    return over_nats(up.nats_url, info)


def test_the_cluster_starts_with_an_r3_partitioned_stream_and_stops_whole(make_up: Callable[..., Up]) -> None:
    up = make_up(**CLUSTER)
    nodes = up.nodes
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]
    assert nodes[0].url == up.nats_address
    assert len(up.sink_pids) == 1 and all(_alive(pid) for pid in [n.pid for n in nodes] + up.sink_pids)
    stream = _stream(up)
    assert stream.config.num_replicas == 3
    assert stream.config.subject_transform == stream_transform(4)
    assert "logmesh.receipts.*" in stream.config.subjects
    assert stream.cluster.leader in {"n1", "n2", "n3"} and len(stream.cluster.replicas) == 2

    async def bucket(nc: Client) -> Any:
        return await (await nc.jetstream().key_value(LEASE_BUCKET)).status()

    leases = over_nats(up.nats_url, bucket)
    assert leases.ttl == pytest.approx(DEFAULT_LEASE_TTL) and leases.history == 1
    assert leases.stream_info.config.num_replicas == 3
    assert up.service.proc is not None
    started = [n.pid for n in nodes] + children(up.service.proc.pid)
    assert up.stop() == 0
    wait_for(lambda: not any(_alive(pid) for pid in started), 15, "every process up started to be gone")


def test_a_stream_of_another_partition_count_is_refused_never_changed(
    make_up: Callable[..., Up], service: Callable[..., Service]
) -> None:
    up = make_up(**CLUSTER)

    async def as_admin(nc: Client) -> str:
        with pytest.raises(PartitionsMismatch) as refused:
            await ensure_stream(nc.jetstream(), ServiceSettings(stream_partitions=2, replicas=3))
        return str(refused.value)

    line = over_nats(up.nats_url, as_admin)
    assert line.startswith("stream LOGS was created with 4 partition(s), not 2")
    assert _stream(up).config.subject_transform == stream_transform(4)
    ingest_password = up.secret("ingest-nats-password")
    assert ingest_password is not None
    env = {"LOGMESH_NATS_USER": "ingest", "LOGMESH_NATS_PASSWORD": ingest_password, **SERVICE_TOKENS}
    ingest = service(["ingest", "--nats-url", up.nats_address, "--http-port", "0", "--stream-partitions", "2"], env)
    assert ingest.proc is not None
    assert ingest.proc.wait(30) == 2
    assert "logmesh ingest: stream LOGS was created with 4 partition(s), not 2" in ingest.log()


def test_receipts_land_on_the_partition_that_owns_their_events(make_up: Callable[..., Up]) -> None:
    up = make_up(**CLUSTER, sinks=2)
    assert len(up.sink_pids) == 2  # sink-0 and sink-1, each a process of its own
    batch = [event("payments", "p-1"), event("orders", "o-1"), event("orders", "o-2")]
    assert up.publish(batch).status_code == 202
    again = up.publish(batch[1:])
    assert again.status_code == 202 and again.json()["duplicates"] == 2
    subjects = wait_for(lambda: _stream(up, subjects=True).state.subjects, 10, "the stream's subjects")
    k = partition_of("orders", 4)
    assert subjects[receipt_subject(k, 4)] == 1
    assert not any(s.startswith("logmesh.receipts") and s != receipt_subject(k, 4) for s in subjects)
    assert subjects[f"{k}.logs.orders"] == 2
    assert subjects[f"{partition_of('payments', 4)}.logs.payments"] == 1


@pytest.mark.slow
@pytest.mark.usefixtures("nats_io")
def test_ingest_publishes_through_a_sigkill_of_the_stream_leader(make_up: Callable[..., Up]) -> None:
    """Every request answers 202 (the publishes are retried with the same ids while the cluster
    elects a new leader) and every event is in the stream once."""
    up = make_up({"LOGMESH_PUBLISH_TIMEOUT": "25"}, **CLUSTER)
    answers: list[tuple[int, float]] = []
    refusals: list[str] = []
    sent = 0
    stop = threading.Event()

    def publish() -> None:
        nonlocal sent
        with httpx.Client(base_url=up.url, auth=up.auth, timeout=60) as client:
            while not stop.is_set():
                batch = [event(f"topic_{i % 7}", f"e-{sent + i}") for i in range(50)]
                began = time.monotonic()
                resp = client.post("/publish", json=batch)
                answers.append((resp.status_code, time.monotonic() - began))
                if resp.status_code != 202:
                    refusals.append(resp.text)
                sent += len(batch)

    sender = threading.Thread(target=publish)
    sender.start()
    try:
        wait_for(lambda: len(answers) >= 5, 20, "the first answers")
        leader = _stream(up).cluster.leader
        victim = next(n for n in up.nodes if n.name == leader)
        os.kill(victim.pid, signal.SIGKILL)
        # Only a live leader answers for the stream (up restarts the killed node, which may lead again).
        wait_for(lambda: _stream(up).cluster.leader is not None, 30, "the stream to be led again")
        count = len(answers)
        wait_for(lambda: len(answers) >= count + 5, 30, "answers after the election")
    finally:
        stop.set()
        sender.join(90)
    assert {status for status, _ in answers} == {202}, refusals
    assert max(seconds for _, seconds in answers) < 25
    subjects = _stream(up, subjects=True).state.subjects
    assert sum(n for s, n in subjects.items() if ".logs." in s) == sent


def test_each_sink_owns_the_partitions_of_its_number_and_stands_by_for_the_others() -> None:
    roles = sink_roles(2, 4)
    assert [(r.name, r.primary, r.standby) for r in roles] == [
        ("sink-0", (0, 2), (1, 3)),
        ("sink-1", (1, 3), (0, 2)),
    ]
    assert roles[1].env(3.0) == {
        "LOGMESH_SINK_NAME": "sink-1",
        "LOGMESH_PARTITIONS": "1,3",
        "LOGMESH_STANDBY": "0,2",
        "LOGMESH_LEASE_TTL": "3",
    }
    assert [r.primary for r in sink_roles(3, 2)] == [(0,), (1,), ()]  # a third sink only stands by


def test_two_sinks_share_the_partitions_as_stats_and_metrics_show(make_up: Callable[..., Up]) -> None:
    """With --sinks 2 each sink owns the partitions of its number (both start together); /stats names
    owner and PID per partition and every node with its PID, and /metrics holds each sink's
    samples under its own ``sink`` label."""
    up = make_up(**CLUSTER, sinks=2)
    owners = {0: "sink-0", 1: "sink-1", 2: "sink-0", 3: "sink-1"}

    def settled() -> dict[str, Any] | None:
        stats: dict[str, Any] = up.stats()
        parts = stats["partitions"]
        return stats if not stats["missing_partitions"] and all(p["ready"] for p in parts) else None

    stats = wait_for(settled, 30, "every partition to be ready")
    assert {p["partition"]: p["owner"] for p in stats["partitions"]} == owners
    assert {p["pid"] for p in stats["partitions"]} == set(up.sink_pids)
    nodes = stats["cluster"]["nodes"]
    assert {(n["name"], n["url"], n["pid"]) for n in nodes} == {(n.name, n.url, n.pid) for n in up.nodes}
    assert all(n["ok"] for n in nodes) and stats["cluster"]["replicas"] == 3
    text = up.http.get("/metrics").text
    got = samples(text)
    assert got[("logmesh_sink_metrics_missing", ())] == 0
    assert {dict(labels).get("sink") for (name, labels) in got if name == "logmesh_sink_ready"} == {"sink-0", "sink-1"}
    assert len(family_names(text)) == len(set(family_names(text))), "a metric family is listed twice"
