"""A partition a sink cannot serve is not kept: on a real nats-server with real DuckDB files, a sink
whose file cannot read the partition's whole history (a new file once the stream no longer starts at
sequence 1, or an existing file the stream has moved past) says why, gives the lease up and stays
away for a while, so that a sink that can serve the partition takes it.

Authorization is off on this one-node server, as in test_partitioned_sink.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from logmesh.common import partitions
from tests.harness import NatsServer, Service, wait_for
from tests.test_partitioned_sink import (
    TOPICS,
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

# Failure handling with several sink processes and lease timeouts: with the fault tests.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
P = 2
BY_PARTITION = {k: [t for t in TOPICS if partitions.partition_of(t, P) == k][:3] for k in range(P)}


def alternating(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` events whose partitions alternate, so each partition's last message is among the last two."""
    return [event(BY_PARTITION[i % P][i % 3], f"{prefix}{i}") for i in range(n)]


def highest_committed(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as db:
        [(highest,)] = db.execute("SELECT max(hi) FROM committed_seqs").fetchall()
    return int(highest)


def refusal(url: str, k: int, words: str) -> dict[str, Any] | None:
    """Partition k's status while it says it is refused with ``words``."""
    status: dict[str, Any] = ask(url, k, "status", count=P)
    return status if not status["ready"] and words in (status["last_error"] or "") else None


def test_a_sink_that_cannot_build_a_file_gives_the_partition_up_to_a_standby_that_can(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
    service: Callable[..., Service],
) -> None:
    url = server.url
    create_partitioned_stream(url, count=P, max_msgs=50)
    publish(url, natively(alternating("a", 40)))
    b_dir = tmp_path / "b"
    b = service(sink_args(url, b_dir, "--sink-name", "b"), name="b")
    wait_for(lambda: settled(url, 40, count=P), 60, "sink b to commit everything")
    assert b.stop() == 0
    publish(url, natively(alternating("c", 20)))  # 60 stored: the stream now starts at sequence 11

    # a has no files: it may build none, and must not keep the partitions it is primary for.
    a = service(sink_args(url, tmp_path / "a", "--sink-name", "a"), name="a")
    for k in range(P):
        wait_for(functools.partial(refusal, url, k, "refusing to build a new store file"), 30, f"a's refusal of {k}")
    wait_for(lambda: a.log().count("lease given up") >= P, 30, "a to give its leases up")
    assert "trying again in" in a.log()
    # b's files hold everything the stream has dropped: as a standby it takes both partitions.
    b = service(sink_args(url, b_dir, "--sink-name", "b", "--partitions", "", "--standby", "0,1"), name="b-standby")

    def owners() -> set[str] | None:
        status = {k: ask(url, k, "status", count=P) for k in range(P)}
        return {s["owner"] for s in status.values()} if all(s["ready"] for s in status.values()) else None

    assert wait_for(owners, 40, "sink b to take both partitions") == {"b"}
    stats = wait_for(lambda: settled(url, 60, count=P), 30, "sink b to commit the rest")
    assert sum(s["unique_processed"] for s in stats.values()) == 60
    assert a.stop() == 0 and b.stop() == 0


def test_an_existing_file_the_stream_has_moved_past_is_refused_and_its_lease_given_up(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
    service: Callable[..., Service],
) -> None:
    url = server.url
    create_partitioned_stream(url, count=P, max_msgs=50)
    publish(url, natively(alternating("a", 20)))
    data = tmp_path / "sink"
    first = service(sink_args(url, data, "--sink-name", "first"), name="first")
    wait_for(lambda: settled(url, 20, count=P), 60, "the first sink to commit everything")
    assert first.stop() == 0
    before = {k: file_rows(partitions.store_file(data, k, P)) for k in range(P)}
    highest = {k: highest_committed(partitions.store_file(data, k, P)) for k in range(P)}
    assert sorted(highest.values()) == [19, 20]
    # 80 stored, 50 kept: the stream starts at 31, past what either file has committed + 1.
    publish(url, natively(alternating("b", 60)))

    again = service(sink_args(url, data, "--sink-name", "again"), name="again")
    for k in range(P):
        status = wait_for(functools.partial(refusal, url, k, "refusing to resume"), 30, f"the refusal of {k}")
        assert f"its highest committed sequence is {highest[k]}" in status["last_error"]
        assert "stream LOGS starts at sequence 31" in status["last_error"]
        assert "history is incomplete" in status["last_error"]
        assert status["consumer"] is None  # nothing is read over the gap
    wait_for(lambda: again.log().count("lease given up") >= P, 30, "the leases to be given up")
    assert "refusing to resume" in again.log() and "trying again in" in again.log()
    assert again.stop() == 0
    # Untouched: nothing was committed over the gap.
    assert {k: file_rows(partitions.store_file(data, k, P)) for k in range(P)} == before
