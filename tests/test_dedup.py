"""Each distinct event is stored once: the JetStream window drops repeats inside it, the store's
primary key past it, and every duplicate is counted where it was dropped."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.harness import Up, event, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.mark.usefixtures("nats_io")
def test_the_window_drops_a_repeat_and_counts_it(up: Up) -> None:
    first = up.publish(event("orders", "w-1"))
    second = up.publish(event("orders", "w-1"))
    assert first.json() == {"accepted": 1, "duplicates": 0, "stored": 1}
    assert second.json() == {"accepted": 1, "duplicates": 1, "stored": 0}
    stats = up.settled_stats(arrived=2)
    assert stats["unique_processed"] == 1
    assert stats["duplicates"] == {"window": 1, "store": 0}
    assert stats["received"] == 1
    assert up.http.get("/events", params={"topic": "orders"}).json()["count"] == 1


def test_the_store_drops_a_repeat_sent_after_the_window(make_up: Any) -> None:
    up = make_up({"LOGMESH_DUPLICATE_WINDOW": "1"})
    assert up.publish(event("orders", "late-1")).json()["duplicates"] == 0
    up.settled_stats(arrived=1)
    # Resend until JetStream no longer recognises the id: the window (1 s) has passed. Each attempt
    # inside the window is a window duplicate; the one after it reaches the store.
    window_hits = 0

    def reaches_the_store() -> bool:
        nonlocal window_hits
        if up.publish(event("orders", "late-1")).json()["duplicates"] == 0:
            return True
        window_hits += 1
        return False

    wait_for(reaches_the_store, 15, "the 1 s duplicate window to pass")
    stats = up.settled_stats(arrived=2 + window_hits)
    assert stats["unique_processed"] == 1
    assert stats["duplicates"] == {"window": window_hits, "store": 1}
    assert stats["received"] == 2
    assert stats["invariant_holds"]
    assert up.http.get("/events", params={"topic": "orders"}).json()["count"] == 1


@pytest.mark.usefixtures("nats_io")
def test_ten_concurrent_publishers_of_one_event_store_one_row(up: Up) -> None:
    barrier = threading.Barrier(10)
    answers: list[dict[str, Any]] = []

    def publish() -> None:
        with httpx.Client(base_url=up.url, timeout=30, auth=up.auth) as client:
            barrier.wait()
            resp = client.post("/publish", json=event("race", "same"))
            answers.append(resp.json())

    threads = [threading.Thread(target=publish) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 10 and all(a["accepted"] == 1 for a in answers)
    assert sum(a["duplicates"] for a in answers) == 9
    stats = up.settled_stats(arrived=10)
    assert stats["unique_processed"] == 1
    assert stats["duplicates"]["window"] + stats["duplicates"]["store"] == 9
    assert stats["invariant_holds"]
    assert up.http.get("/events", params={"topic": "race"}).json()["count"] == 1


@pytest.mark.usefixtures("nats_io")
def test_duplicates_inside_one_batch(up: Up) -> None:
    batch = [event("b", "1"), event("b", "2"), event("b", "1"), event("b", "1")]
    assert up.publish(batch).json() == {"accepted": 4, "duplicates": 2, "stored": 2}
    stats = up.settled_stats(arrived=4)
    assert stats["unique_processed"] == 2 and stats["duplicates"]["window"] == 2


def test_stats_name_the_receipts_in_the_stream_and_count_the_write_ahead_log(up: Up) -> None:
    """The stream holds the receipts beside the events: /stats names them, so that `received` can be
    read against the stream; the store's size on disk counts its write-ahead log."""
    first = [event("orders", f"r-{i}") for i in range(50)]
    assert up.publish(first).status_code == 202
    assert up.publish(first[:20]).json()["duplicates"] == 20  # a receipt for these 20
    stats = up.settled_stats(arrived=70)
    stream = stats["stream"]
    assert stream["receipt_messages"] == 1
    assert stream["messages"] - stream["receipt_messages"] == stats["received"] == 50
    files = [up.data_dir / "logmesh.duckdb", up.data_dir / "logmesh.duckdb.wal"]
    on_disk = sum(f.stat().st_size for f in files if f.exists())
    assert (up.data_dir / "logmesh.duckdb.wal").exists()  # nothing is checkpointed below 1 GB of WAL
    assert stats["sink"]["store_bytes"] == on_disk
