"""Store growth: the sink's insert rate into an empty store and into one already holding millions of
events, its peak memory, and the file size per million events."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import nats
import orjson

from logmesh.bench.procs import peak_rss_mib
from logmesh.cli.workload import make_workload, send_nats
from logmesh.common.embedded import EmbeddedNats
from logmesh.common.jetstream import connect, wait_for_stream
from logmesh.common.nats_answers import ask
from logmesh.common.processes import free_port, python_command, spawn, stop_process
from logmesh.common.settings import CommonSettings
from logmesh.common.waiting import wait_until_async
from logmesh.sink.schema import KEY
from logmesh.sink.store import Store

PRELOAD_CHUNK = 1_000_000


def build_preloaded_store(path: Path, rows: int) -> None:
    """A sink store already holding ``rows`` events with random ids (the worst case for the key
    index), written straight with SQL: publishing them would take most of the benchmark's time."""
    store = Store(path, memory_limit="2GB", checkpoint_threshold="1GB")
    store.load()  # creates the schema
    store.close()
    con = duckdb.connect(str(path))
    try:
        for start in range(0, rows, PRELOAD_CHUNK):
            con.execute("BEGIN").fetchall()
            con.execute(
                f"""INSERT INTO events
                    SELECT {KEY}, id, topic, event_id, "timestamp", source, payload, seq, stored_at FROM (
                        SELECT i + 1 AS id, 'topic_' || (i % 10) AS topic, 'pre-' || md5(i::VARCHAR) AS event_id,
                               TIMESTAMP '2026-01-01' + to_milliseconds(i) AS "timestamp", 'preload' AS source,
                               '{{"level":"info","message":"preloaded","n":' || i || '}}' AS payload,
                               i + 1 AS seq, now()::TIMESTAMP AS stored_at
                        FROM range(?, ?) t(i))""",
                [start, min(rows, start + PRELOAD_CHUNK)],
            ).fetchall()
            con.execute("COMMIT").fetchall()
        con.execute("UPDATE counters SET received = ?, unique_processed = ?", [rows, rows]).fetchall()
        con.execute("INSERT OR REPLACE INTO topics SELECT topic, count(*), 0, 0 FROM events GROUP BY topic").fetchall()
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()


async def sink_drain(events: int, dup: float, topics: int, preloaded: Path | None) -> dict[str, Any]:
    """Publishes a workload into the stream first, then starts the sink on a store (empty or a copy of
    ``preloaded``) and measures its rate from its first commit to its last."""
    work = Path(tempfile.mkdtemp(prefix="logmesh-bench-growth-"))
    server = EmbeddedNats(work / "nats", port=free_port())
    await server.start()
    sink = None
    try:
        nc = await connect(server.url, "bench-growth")
        await wait_for_stream(nc.jetstream(), CommonSettings())
        await nc.close()
        workload = make_workload(events, dup, topics)
        await send_nats(server.url, workload.batches(1000), 4, show_progress=False)
        data = work / "data"
        data.mkdir()
        if preloaded is not None:
            shutil.copy(preloaded, data / "logmesh.duckdb")
        args = ["sink", "--nats-url", server.url, "--data-dir", str(data), "--log-level", "warning"]
        sink = spawn(python_command(*args))
        first, last = await _watch(server.url, workload.unique)
        # From the first commit seen to the last: the store's opening is not part of the rate.
        committed = last["received"] - first["received"]
        rate = round(committed / (last["sink"]["last_commit_at"] - first["at"]))
        rss = peak_rss_mib(sink.pid)
        # Sized after a graceful stop: until its closing checkpoint the newest rows sit in the WAL.
        await stop_process(sink, timeout=120)
        sink = None
        return {
            "messages_timed": committed,
            "messages_per_second": rate,
            "sink_peak_rss_mib": rss,
            "store_rows": last["unique_processed"],
            "store_mib": round((data / "logmesh.duckdb").stat().st_size / 2**20, 1),
        }
    finally:
        if sink is not None:
            await stop_process(sink, timeout=120)
        await server.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _watch(url: str, expected_new: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Polls the sink's stats: the first answer showing a commit, and the one showing all committed."""
    nc = await nats.connect(url)
    first: dict[str, Any] | None = None
    start_received: int | None = None

    async def all_committed() -> dict[str, Any] | None:
        nonlocal first, start_received
        answer = (await ask(nc, "logmesh.query.stats", b"{}", timeout=5)).data
        stats: dict[str, Any] = orjson.loads(answer)
        if start_received is None:
            start_received = stats["received"]
        if first is None and stats["received"] > start_received:
            first = {"at": time.time(), **stats}
        return stats if first is not None and stats["received"] - start_received >= expected_new else None

    try:
        # No responders or no answer: the sink is still opening its store.
        last = await wait_until_async(
            all_committed,
            None,
            "the sink to commit the workload",
            interval=0.02,
            retry_on=(nats.errors.NoRespondersError, nats.errors.TimeoutError),
        )
    finally:
        await nc.close()
    assert first is not None
    return first, last
