"""``bench --parts cluster``: one node against a 3-node R3 cluster with 1, 2 and 4 partitions, the
publish outage when the stream leader dies, and what each kind of process spends per event.

On one 2-core machine a cluster cannot go faster than one node: every process shares the same two
cores. What the part shows is the price of replication on the same hardware, and the CPU seconds
per 100,000 events of each process kind, from which a deployment on three machines can be reckoned
(docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from nats.js.errors import APIError, NoStreamResponseError

from logmesh.bench.procs import UpProcess, peak_rss_mib
from logmesh.bench.throughput import Sender, nats_sender
from logmesh.cli.access import bearer
from logmesh.cli.observe import get_stats, wait_until_drained
from logmesh.cli.workload import make_workload
from logmesh.common.jetstream import close, connect
from logmesh.common.processes import children

# (label, nats nodes, partitions, sinks)
LAYOUTS = (
    ("1 node", 1, 1, 1),
    ("3 nodes R3, P=1", 3, 1, 1),
    ("3 nodes R3, P=2", 3, 2, 2),
    ("3 nodes R3, P=4", 3, 4, 2),
)
_TICKS = os.sysconf("SC_CLK_TCK")
AFTER_KILL = 15.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _kind(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    if cmdline and cmdline[0].endswith(b"nats-server"):
        return "nats-server"
    return "sink" if b"sink" in cmdline else "other"


def _processes(up: UpProcess) -> dict[int, str]:
    assert up.proc is not None
    kinds = {up.proc.pid: "ingest+query"}
    kinds.update({pid: _kind(pid) for pid in children(up.proc.pid)})
    return kinds


async def layout_run(
    label: str, nodes: int, partitions: int, sinks: int, events: int, dup: float, topics: int, send: Sender
) -> dict[str, Any]:
    workload = make_workload(events, dup, topics)
    async with UpProcess("cluster", nats_nodes=nodes, partitions=partitions, sinks=sinks) as up:
        processes = _processes(up)
        before = {pid: cpu_seconds(pid) for pid in processes}
        publisher_before = time.process_time()
        report = await send(up, workload)
        publisher_cpu = time.process_time() - publisher_before
        stats = await wait_until_drained(
            up.http_url, timeout=900, at_least=report.accepted, headers=bearer(up.query_token)
        )
        spent: dict[str, float] = {"publisher (this process)": publisher_cpu}
        for pid, kind in processes.items():
            spent[kind] = spent.get(kind, 0.0) + cpu_seconds(pid) - before[pid]
        elapsed = stats["sink"]["last_commit_at"] - report.first_send
        per_100k = {kind: round(seconds / events * 100_000, 2) for kind, seconds in sorted(spent.items())}
        sink_rss = [peak_rss_mib(pid) or 0.0 for pid, kind in processes.items() if kind == "sink"]
        return {
            "layout": label,
            "events": events,
            "seconds": round(elapsed, 3),
            "events_per_second": round(events / elapsed),
            "correct": stats["unique_processed"] == workload.unique and stats["invariant_holds"],
            "cpu_seconds_per_100k_events": per_100k,
            "sink_peak_rss_mib": max(sink_rss, default=None),
        }


async def layouts(runs: int, events: int, dup: float, topics: int) -> dict[str, Any]:
    """Every layout once per round, rounds in turn: the machine drifts, only runs side by side compare."""
    send = nats_sender()
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in LAYOUTS}
    for i in range(runs):
        for label, nodes, partitions, sinks in LAYOUTS:
            r = await layout_run(label, nodes, partitions, sinks, events, dup, topics, send)
            print(f"  {label} run {i + 1}/{runs}: {r['events_per_second']:,} events/s", flush=True)
            results[label].append(r)
    single = statistics.median(r["events_per_second"] for r in results[LAYOUTS[0][0]])
    out: dict[str, Any] = {}
    for label, rs in results.items():
        median = statistics.median(r["events_per_second"] for r in rs)
        kinds = rs[0]["cpu_seconds_per_100k_events"].keys()
        cpu = {k: round(statistics.median(r["cpu_seconds_per_100k_events"][k] for r in rs), 2) for k in kinds}
        out[label] = {
            "events_per_second": median,
            "ratio_to_one_node": round(median / single, 2),
            "cpu_seconds_per_100k_events": cpu,
            "runs": rs,
        }
    return out


async def publish_outage(sig: signal.Signals, seconds_before: float = 2.0, in_flight: int = 64) -> dict[str, Any]:
    """Publishes acked messages through every node while the stream leader's nats-server gets ``sig``;
    the outage is the longest wait between two PubAcks. A failed publish is retried with its
    ``Nats-Msg-Id``, so nothing is stored twice."""
    async with UpProcess("outage", nats_nodes=3, partitions=4, sinks=2) as up:
        async with httpx.AsyncClient(timeout=10, headers=bearer(up.query_token)) as client:
            cluster = (await get_stats(up.http_url, client))["cluster"]
        nodes = {n["name"]: n for n in cluster["nodes"]}
        leader = nodes[cluster["stream_leader"]]
        urls = ",".join(n["url"] for n in cluster["nodes"])
        nc = await connect(urls, "bench-outage", credentials=up.credentials("ingest"))
        js = nc.jetstream(timeout=0.5)
        acked: list[float] = []
        failed = 0
        sent = 0
        killed_at: float | None = None
        stop_at: float | None = None

        async def publisher(lane: int) -> None:
            nonlocal failed, sent
            n = 0
            while stop_at is None or time.monotonic() < stop_at:
                msg_id = f"outage:{lane}:{n}"
                while True:
                    try:
                        await js.publish(f"logs.outage{lane % 8}", b'{"m":1}', headers={"Nats-Msg-Id": msg_id})
                        break
                    except (NoStreamResponseError, TimeoutError, APIError):
                        # APIError: 503 while no leader is known, 409 while an earlier attempt is in process.
                        failed += 1
                acked.append(time.monotonic())
                n += 1
                sent += 1

        lanes = [asyncio.create_task(publisher(i)) for i in range(in_flight)]
        try:
            await asyncio.sleep(seconds_before)
            killed_at = time.monotonic()
            os.kill(leader["pid"], sig)
            # An election takes 4-9 s (scaleout-facts); publishing on for longer shows the whole gap.
            await asyncio.sleep(AFTER_KILL)
            stop_at = time.monotonic()
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await close(nc)
        ordered = sorted(acked)
        gap = max((b - a for a, b in itertools.pairwise(ordered) if b > killed_at - 1), default=0.0)
        return {"signal": sig.name, "longest_gap_seconds": round(gap, 3), "failed_publishes": failed, "acked": sent}


async def cluster_part(runs: int, events: int, dup: float, topics: int) -> dict[str, Any]:
    out: dict[str, Any] = {"layouts": await layouts(runs, events, dup, topics)}
    outages: dict[str, list[dict[str, Any]]] = {"SIGKILL": [], "SIGTERM": []}
    for i in range(runs):
        for sig in (signal.SIGKILL, signal.SIGTERM):
            r = await publish_outage(sig)
            print(f"  leader {sig.name} run {i + 1}/{runs}: publish gap {r['longest_gap_seconds']} s", flush=True)
            outages[sig.name].append(r)
    out["leader_outage"] = {
        name: {"longest_gap_seconds": statistics.median(r["longest_gap_seconds"] for r in rs), "runs": rs}
        for name, rs in outages.items()
    }
    return out
