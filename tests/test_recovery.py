"""Crashes and restarts: nothing is lost and nothing is counted twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.harness import (
    NatsServer,
    Service,
    delete_message,
    event,
    jetstream_info,
    jetstream_publish,
    sink_request,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def stored_counters(db: Path) -> dict[str, Any]:
    """Reads the sink's file directly (only while no sink holds it)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT received, unique_processed, store_duplicates, invalid FROM counters").fetchone()
        rows = con.execute("SELECT count(*) FROM events").fetchone()
    finally:
        con.close()
    assert row is not None and rows is not None
    return {"received": row[0], "unique": row[1], "store": row[2], "invalid": row[3], "rows": rows[0]}


def sink_args(nats: NatsServer, data_dir: Path) -> list[str]:
    return ["sink", "--nats-url", nats.url, "--data-dir", str(data_dir), "--ack-wait", "1"]


def test_a_redelivery_after_the_commit_changes_no_counter(
    nats_server: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    data = tmp_path / "data"
    jetstream_publish(nats_server.url, [event("orders", f"r-{i}") for i in range(50)])

    crashing = service(sink_args(nats_server, data), {"LOGMESH_FAILPOINTS": "sink.after_commit=kill"})
    assert crashing.proc is not None
    assert crashing.proc.wait(30) == -9, crashing.log()
    # Its first batch (some or all of the 50) is committed but was never acked.
    first = stored_counters(data / "logmesh.duckdb")
    committed = first["received"]
    assert 0 < committed <= 50
    assert first == {"received": committed, "unique": committed, "store": 0, "invalid": 0, "rows": committed}
    _, consumer = jetstream_info(nats_server.url)
    assert consumer.num_ack_pending >= committed
    assert consumer.num_ack_pending + consumer.num_pending == 50

    restarted = service(sink_args(nats_server, data))
    try:
        # JetStream redelivers what the dead sink held after ack_wait; the restarted sink recognises
        # the committed ones and only acks them.
        def redelivered_and_acked() -> bool:
            _, c = jetstream_info(nats_server.url)
            return bool(c.delivered.consumer_seq >= 50 + committed and c.num_ack_pending == 0 and c.num_pending == 0)

        wait_for(redelivered_and_acked, 30, "the redelivered batch to be acked")
        stats = sink_request(nats_server.url, "stats")
        assert (stats["received"], stats["unique_processed"], stats["duplicates"]["store"]) == (50, 50, 0)
        assert stats["invariant_holds"]
    finally:
        assert restarted.stop() == 0
    assert stored_counters(data / "logmesh.duckdb")["received"] == 50


def test_deleting_a_pending_message_loses_no_other(
    nats_server: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    """A sink dies holding a batch; one of its messages is then deleted from the stream (``nats stream
    rmm``). Every other message of that batch is still redelivered and stored. (With ack policy ALL
    the server would ack all messages before the deleted one.)"""
    data = tmp_path / "data"
    jetstream_publish(nats_server.url, [event("gap", f"a-{i}") for i in range(50)])
    crashing = service(sink_args(nats_server, data), {"LOGMESH_FAILPOINTS": "sink.before_commit=kill"})
    assert crashing.proc is not None
    assert crashing.proc.wait(30) == -9, crashing.log()
    delete_message(nats_server.url, 25)
    jetstream_publish(nats_server.url, [event("gap", f"b-{i}") for i in range(50)])

    restarted = service(sink_args(nats_server, data))

    def all_acked() -> bool:
        _, c = jetstream_info(nats_server.url)
        return bool(c.num_ack_pending == 0 and c.num_pending == 0)

    wait_for(all_acked, 60, "every message acked")
    stats = sink_request(nats_server.url, "stats")
    assert (stats["received"], stats["unique_processed"], stats["invalid"]) == (99, 99, 0)
    assert restarted.stop() == 0


def test_a_graceful_stop_commits_acks_and_exits_zero(
    nats_server: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    data = tmp_path / "data"
    running = service(sink_args(nats_server, data))
    jetstream_publish(nats_server.url, [event("g", f"g-{i}") for i in range(200)])
    wait_for(lambda: sink_request(nats_server.url, "stats")["received"] == 200, 30, "200 events committed")
    assert running.stop() == 0
    _, consumer = jetstream_info(nats_server.url)
    # Every message delivered once and acked: nothing left to redeliver after a restart.
    assert consumer.num_ack_pending == 0 and consumer.delivered.consumer_seq == 200
    assert stored_counters(data / "logmesh.duckdb")["rows"] == 200


def test_stopping_everything_and_starting_again_keeps_data_and_counters(make_up: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "same"
    # Both runs key ingest's message ids alike, so JetStream's window still recognises a repeat.
    same_key = {"LOGMESH_MSG_ID_KEY": "one key for both runs, 32 characters or more"}
    first = make_up(same_key, data_dir=data_dir)
    events = [event(f"t{i % 4}", f"keep-{i}") for i in range(300)]
    assert first.publish(events).status_code == 202
    assert first.publish(events[:100]).json()["duplicates"] == 100
    before = first.settled_stats(arrived=400)
    assert first.stop() == 0

    second = make_up(same_key, data_dir=data_dir)
    after = second.settled_stats(arrived=400)
    for key in ("received", "unique_processed", "duplicates", "invalid", "topics"):
        assert after[key] == before[key], key
    assert second.http.get("/events/t1/keep-1").status_code == 200
    # Old events are still recognised: sending them again stores nothing new.
    again = second.publish(events[:50]).json()
    assert again["duplicates"] == 50
    final = second.settled_stats(arrived=450)
    assert final["unique_processed"] == 300
    assert final["invariant_holds"]
