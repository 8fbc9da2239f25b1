"""Faults on a 3-node cluster with 4 partitions and 2 sinks (``logmesh up --nats-nodes 3 --partitions 4
--sinks 2``, authorization on): SIGKILL of the stream leader's nats-server during a 50,000-event run
sent through ingest and natively, then of a sink, then a lost partition file. After each, the
counters equal what the stream holds, and at the end every distinct event is in exactly one
partition file, read from the files themselves, each file holding only its own partition's topics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from logmesh.cli.workload import Workload, make_workload, send_http, send_nats
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import password_secret
from logmesh.common.partitions import partition_of, store_file
from logmesh.common.waiting import WaitTimeout
from tests.harness import Up, stored_keys, stream_truth, wait_for
from tests.test_faults import ARTIFACTS, Background

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

P = 4
WINDOW = "2"


def _stats(up: Up) -> dict[str, Any]:
    stats: dict[str, Any] = up.stats()
    return stats


_last: dict[str, Any] = {}


def _settled(up: Up, arrived: int) -> dict[str, Any] | None:
    """/stats once every partition answers, is ready and has nothing pending, with everything sent."""
    stats = _stats(up)
    _last.update(
        arrived=stats["arrived"],
        wanted=arrived,
        missing=stats["missing_partitions"],
        partitions=[(p["partition"], p["ready"], p["consumer"]) for p in stats["partitions"]],
    )
    parts = stats["partitions"]
    done = (
        not stats["missing_partitions"]
        and len(parts) == P
        and all(p["ready"] and p["consumer"]["pending"] == 0 and p["consumer"]["ack_pending"] == 0 for p in parts)
        and stats["arrived"] >= arrived
    )
    return stats if done else None


def _assert_exact(up: Up, workload: Workload, arrived: int) -> dict[str, Any]:
    try:
        stats = wait_for(lambda: _settled(up, arrived), 120, "every partition to catch up")
    except WaitTimeout:
        raise AssertionError(f"the partitions did not settle: {_last}") from None
    wanted = {(e["topic"], e["event_id"]) for e in workload.events}
    truth = stream_truth(up.nats_url)
    assert stats["received"] == truth["received"]
    assert stats["duplicates"]["window"] == truth["window"]
    assert stats["unique_processed"] == len(wanted)
    assert stats["duplicates"]["store"] == truth["received"] - len(wanted) - stats["invalid"]
    assert stats["invariant_holds"]
    assert sum(p["unique_processed"] for p in stats["partitions"]) == len(wanted)
    keys = stored_keys(up.nats_url)
    assert len(keys) == len(set(keys)), "an event is stored twice"
    assert set(keys) == wanted
    return stats


def _native(up: Up) -> tuple[str, NatsCredentials]:
    urls = ",".join(node.url for node in up.nodes)
    return urls, NatsCredentials.for_role("ingest", up.secret(password_secret("ingest")))


def _window_passed(up: Up, probe: dict[str, Any]) -> bool:
    urls, credentials = _native(up)
    report = asyncio.run(send_nats(urls, [[probe]], 1, show_progress=False, credentials=credentials))
    return report.duplicates == 0


def _owner_pid(up: Up, partition: int) -> int:
    stats = wait_for(lambda: (s := _stats(up)) and not s["missing_partitions"] and s, 30, "every partition")
    pid: int = next(p["pid"] for p in stats["partitions"] if p["partition"] == partition)
    return pid


def _leader_pid(up: Up) -> tuple[str, int]:
    cluster = _stats(up)["cluster"]
    leader = cluster["stream_leader"]
    pid: int = next(n["pid"] for n in cluster["nodes"] if n["name"] == leader)
    return leader, pid


def test_leader_sink_and_file_lost_on_a_cluster(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = Up(data, env={"LOGMESH_DUPLICATE_WINDOW": WINDOW}, nats_nodes=3, partitions=P, sinks=2).start()
    try:
        workload = make_workload(50_000, 0.35, 10, seed=23)
        half = len(workload.events) // 2
        by_http, natively = Workload(workload.events[:half], 0), Workload(workload.events[half:], 0)
        urls, credentials = _native(up)
        headers = {"Authorization": f"Bearer {up.auth.ingest}"}
        senders = [
            Background(lambda: send_http(up.url, by_http.batches(500), 2, show_progress=False, headers=headers)),
            Background(lambda: send_nats(urls, natively.batches(500), 2, show_progress=False, credentials=credentials)),
        ]
        for sender in senders:
            sender.start()
        # The stream leader dies while both kinds of publishers are sending.
        wait_for(lambda: _stats(up)["arrived"] >= 5000, 60, "the run to be under way")
        leader, pid = _leader_pid(up)
        os.kill(pid, signal.SIGKILL)
        reports = [sender.outcome(180) for sender in senders]
        assert sum(r.accepted for r in reports) == len(workload.events)
        # up restarts the node; the cluster has it back as a current replica.
        wait_for(
            lambda: all(n["ok"] for n in _stats(up)["cluster"]["nodes"]) and _leader_pid(up)[1] != pid,
            60,
            f"{leader} to be restarted and current",
        )
        # Some events again, after the window: only the partitions' stores can tell.
        late = Workload(workload.events[:2000], 0)
        wait_for(lambda: _window_passed(up, late.events[0]), 30, "the window to pass")
        assert asyncio.run(send_nats(urls, late.batches(500), 2, credentials=credentials, show_progress=False)).accepted
        stats = _assert_exact(up, workload, len(workload.events) + len(late.events))
        assert stats["duplicates"]["store"] >= 1000

        # A sink dies: its partitions go to a live sink (the other one stands by for them; up also
        # restarts the dead one, which claims its own partitions back once their leases expire).
        victim = _owner_pid(up, 0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        more = make_workload(5000, 0.35, 10, seed=29)
        assert asyncio.run(send_nats(urls, more.batches(500), 2, credentials=credentials, show_progress=False))
        wait_for(lambda: _ready_elsewhere(up, 0, victim), 30, "partition 0 to change hands")
        timings = {"sink_handover_seconds": round(time.monotonic() - killed_at, 2)}
        both = Workload(workload.events + more.events, 0)
        _assert_exact(up, both, 0)

        # A partition's file is lost with its sink: the new owner rebuilds it from the stream.
        owner = _owner_pid(up, 1)
        held = next(p["unique_processed"] for p in _stats(up)["partitions"] if p["partition"] == 1)
        os.kill(owner, signal.SIGKILL)
        lost = store_file(data, 1, P)
        wait_for(lambda: not _pid_alive(owner), 10, "the sink to be gone")
        for path in (lost, lost.with_name(lost.name + ".wal")):
            path.unlink(missing_ok=True)
        lost_at = time.monotonic()
        wait_for(lambda: lost.exists() and _ready_elsewhere(up, 1, owner), 60, "partition 1 to be rebuilt")
        _assert_exact(up, both, 0)
        timings |= {"rebuild_seconds": round(time.monotonic() - lost_at, 2), "rebuilt_events": held}
    finally:
        up.close()
    _record(timings)
    _assert_files(data, both)


def _ready_elsewhere(up: Up, partition: int, gone: int) -> bool:
    """The partition is served again, by another process than ``gone``, and ready."""
    stats = _stats(up)
    part = next(p for p in stats["partitions"] if p["partition"] == partition)
    return partition not in stats["missing_partitions"] and part["pid"] != gone and bool(part["ready"])


def _record(timings: dict[str, Any]) -> None:
    """The measured failover times, for docs/scaling.md (test-artifacts/cluster-failover.jsonl)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "cluster-failover.jsonl").open("a") as f:
        f.write(json.dumps(timings) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _assert_files(data: Path, workload: Workload) -> None:
    """Read the partition files themselves (up has stopped): each distinct event in exactly one, in
    the file of its topic's partition, and each file's counters agree with its rows."""
    seen: Counter[tuple[str, str]] = Counter()
    for k in range(P):
        with duckdb.connect(str(store_file(data, k, P)), read_only=True) as db:
            rows = db.execute("SELECT topic, event_id FROM events").fetchall()
            (unique,) = db.execute("SELECT unique_processed FROM counters").fetchone() or (None,)
        assert unique == len(rows), f"partition {k}: counters say {unique}, the file holds {len(rows)}"
        strangers = {topic for topic, _ in rows if partition_of(topic, P) != k}
        assert not strangers, f"partition {k}'s file holds topics of other partitions: {sorted(strangers)}"
        seen.update(rows)
    assert set(seen) == {(e["topic"], e["event_id"]) for e in workload.events}
    twice = [key for key, n in seen.items() if n > 1]
    assert not twice, f"stored in two files: {twice[:5]}"
