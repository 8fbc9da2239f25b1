"""Latency: publish to queryable at a steady rate, and ``/stats`` while ingest runs flat out."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson

from logmesh.bench.procs import UpProcess
from logmesh.bench.throughput import NATIVE_BATCH, NATIVE_CLIENTS
from logmesh.cli.access import bearer
from logmesh.cli.workload import make_workload, send_nats


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 1), "p99_ms": round(cuts[98], 1), "max_ms": round(ms[-1], 1), "samples": len(ms)}


async def publish_to_queryable(
    rate: int, seconds: float, batch: int = 50, sample_every: int = 10, poll: float = 0.005
) -> dict[str, Any]:
    """Publishes ``rate`` events/s over HTTP in batches of ``batch``; for every ``sample_every``-th
    batch, polls ``GET /events/{topic}/{event_id}`` for its first event every ``poll`` seconds until it
    is found. Sampling one batch in ten keeps the probes' own reads from loading the sink they time."""
    workload = make_workload(int(rate * seconds), 0.0, 10)
    batches = workload.batches(batch)
    found: list[float] = []
    async with UpProcess("latency") as up, httpx.AsyncClient(base_url=up.http_url, timeout=10) as client:
        read, write = bearer(up.query_token), bearer(up.ingest_token)

        async def probe(event: dict[str, Any], sent: float) -> None:
            path = f"/events/{event['topic']}/{event['event_id']}"
            while True:  # polling is the measurement: the first GET that finds the event
                if (await client.get(path, headers=read)).status_code == 200:
                    found.append(time.perf_counter() - sent)
                    return
                await asyncio.sleep(poll)

        probes: list[asyncio.Task[None]] = []
        interval = batch / rate
        next_send = time.perf_counter()
        for n, chunk in enumerate(batches):
            sent = time.perf_counter()
            resp = await client.post(
                "/publish", content=orjson.dumps(chunk), headers={"content-type": "application/json", **write}
            )
            resp.raise_for_status()
            if n % sample_every == 0:
                probes.append(asyncio.create_task(probe(chunk[0], sent)))
            next_send += interval
            await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
        await asyncio.gather(*probes)
    return {"rate": rate, "seconds": seconds, **percentiles(found)}


async def stats_under_load(events: int, dup: float, topics: int, every: float = 0.01) -> dict[str, Any]:
    """``GET /stats`` every ``every`` seconds while the native workload is published flat out. The
    poller runs in a process of its own: in the publisher's busy event loop it would time its own
    waiting, not the service's answer."""
    workload = make_workload(events, dup, topics)
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    stop = context.Event()
    async with UpProcess("stats-load") as up:
        poller = context.Process(
            target=_poll_stats, args=(up.http_url, bearer(up.query_token), every, stop, sending), daemon=True
        )
        poller.start()
        assert await asyncio.to_thread(receiving.recv) == "ready"
        await send_nats(
            up.nats_url,
            workload.batches(NATIVE_BATCH),
            NATIVE_CLIENTS,
            show_progress=False,
            credentials=up.credentials("ingest"),
        )
        stop.set()
        timings: list[float] = await asyncio.to_thread(receiving.recv)
        poller.join(10)
    return {"events": events, **percentiles(timings)}


def _poll_stats(url: str, headers: dict[str, str], every: float, stop: Any, done: Connection) -> None:
    timings: list[float] = []
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        client.get("/stats").raise_for_status()  # warm: the first request starts the snapshots
        done.send("ready")
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/stats").raise_for_status()
            timings.append(time.perf_counter() - started)
            stop.wait(every)
    done.send(timings)
