"""``logmesh soak``: minutes of load while every service is killed at random, then the reckoning.

nats-server, sink, ingest and query run as separate processes. Two publishers send (over HTTP, and
straight into JetStream), retrying with the same ids as clients do; every few seconds one service is
SIGKILLed and restarted. At the end: events sent, distinct, stored, lost (must be 0), stored twice
or counted wrong (must be 0), checked against the store's keys and the stream's own contents.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx
import nats

from logmesh.bench import truth
from logmesh.bench.soak_command import SoakSettings
from logmesh.cli.access import bearer
from logmesh.cli.up_secrets import UpAuth
from logmesh.cli.workload import Workload, make_workload, send_http, send_nats
from logmesh.common.embedded import EmbeddedNats
from logmesh.common.jetstream import connect
from logmesh.common.nats_roles import Role
from logmesh.common.processes import environment, free_port, kill_process, python_command, spawn, stop_process
from logmesh.common.secrets_store import INGEST_TOKEN, MSG_ID_KEY, QUERY_TOKEN
from logmesh.common.settings import LogmeshSettings
from logmesh.common.waiting import wait_until_async


class Services:
    """The separate services, each with its own NATS user and token, as a deployment runs them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.auth = UpAuth.prepare(LogmeshSettings(), root, enabled=True)
        self.nats = EmbeddedNats(
            root / "nats", port=free_port(), config=self.auth.server_config("LOGS"), env=self.auth.server_env()
        )
        self.ingest_port, self.query_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: dict[str, int] = {"nats": 0, "sink": 0, "ingest": 0, "query": 0}

    def _args(self, name: str) -> list[str]:
        url = ["--nats-url", self.nats.url, "--log-level", "error", "--duplicate-window", "5"]
        return {
            "sink": ["sink", *url, "--data-dir", str(self.root / "data"), "--ack-wait", "5"],
            # Load and kills on loopback: the soak measures delivery, not authentication.
            "ingest": ["ingest", *url, "--http-port", str(self.ingest_port)],
            "query": ["query", *url, "--http-port", str(self.query_port)],
        }[name]

    async def start(self, name: str) -> None:
        if name == "nats":
            await self.nats.start()
        else:
            log = (self.root / f"{name}.log").open("ab")  # the child keeps writing to it
            env = {**self.auth.credentials(cast(Role, name)).env(), **self._tokens()}
            self.procs[name] = spawn(python_command(*self._args(name)), env=environment(env), stdout=log, stderr=log)

    def _tokens(self) -> dict[str, str]:
        names = {
            "LOGMESH_INGEST_TOKEN": INGEST_TOKEN,
            "LOGMESH_QUERY_TOKEN": QUERY_TOKEN,
            "LOGMESH_MSG_ID_KEY": MSG_ID_KEY,
        }
        return {variable: self.auth.get(secret) or "" for variable, secret in names.items()}

    async def revive(self) -> None:
        """Starts again whatever is down, as a supervisor would."""
        if self.nats.process is None or self.nats.process.poll() is not None:
            await self.start("nats")
        for name in ("sink", "ingest", "query"):
            if self.procs[name].poll() is not None:
                await self.start(name)

    def kill(self, name: str) -> None:
        proc = self.nats.process if name == "nats" else self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        if name == "nats":
            self.nats.kill()
        else:
            kill_process(proc)
        self.kills[name] += 1

    async def stop(self) -> None:
        for proc in self.procs.values():
            await stop_process(proc, timeout=30)
        await self.nats.stop()


async def _killer(services: Services, until: float, s: SoakSettings, rng: random.Random) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(rng.expovariate(1 / s.kill_every))
        victim = rng.choice(["nats", "sink", "ingest", "query"])
        services.kill(victim)
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        await services.start(victim)


async def _paced(send: Any, batches: list[list[dict[str, Any]]], rate: float) -> int:
    """Sends batch after batch at about ``rate`` events/s; returns the events acknowledged."""
    accepted = 0
    started = time.monotonic()
    for n, batch in enumerate(batches):
        report = await send([batch])
        accepted += report.accepted
        sent = sum(len(b) for b in batches[: n + 1])
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    return accepted


async def soak(s: SoakSettings) -> dict[str, Any]:
    root = s.data_dir or Path(tempfile.mkdtemp(prefix="logmesh-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(s.seed)
    services = Services(root)
    for name in ("nats", "sink", "ingest", "query"):
        await services.start(name)
    ingest_url = f"http://127.0.0.1:{services.ingest_port}"
    await wait_until_async(
        lambda: asyncio.to_thread(lambda: httpx.get(ingest_url + "/readyz").status_code == 200),
        60,
        "the services to come up",
        interval=0.2,
        retry_on=(httpx.HTTPError,),
    )
    half = int(s.rate * s.duration / 2)
    over_http = make_workload(half, 0.35, 10, run_id=f"http{s.seed}", seed=s.seed)
    over_nats = make_workload(half, 0.35, 10, run_id=f"nats{s.seed}", seed=s.seed + 1)
    until = time.monotonic() + s.duration

    async def via_http(batches: list[list[dict[str, Any]]]) -> Any:
        return await send_http(
            ingest_url, batches, 1, show_progress=False, headers=bearer(services.auth.get(INGEST_TOKEN))
        )

    async def via_nats(batches: list[list[dict[str, Any]]]) -> Any:
        return await send_nats(
            services.nats.url, batches, 1, show_progress=False, credentials=services.auth.credentials("ingest")
        )

    try:
        killer = asyncio.create_task(_killer(services, until, s, rng))
        sent = await asyncio.gather(
            _paced(via_http, over_http.batches(200), s.rate / 2),
            _paced(via_nats, over_nats.batches(200), s.rate / 2),
        )
        await killer
        await services.revive()
        everything = Workload(over_http.events + over_nats.events, over_http.unique + over_nats.unique)
        result = await _reckon(services, everything)
        result.update(sent=sum(sent), kills=services.kills, seconds=s.duration)
        return result
    finally:
        await services.stop()
        if s.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)


async def _reckon(services: Services, workload: Workload) -> dict[str, Any]:
    """Once the sink has caught up: what was lost, what was stored twice, what was counted wrong."""
    nc = await connect(services.nats.url, "logmesh-soak", credentials=services.auth.credentials("admin"))
    try:
        js = nc.jetstream()

        async def caught_up() -> dict[str, Any] | None:
            stats = await truth.sink_stats(nc)
            consumer = await js.consumer_info("LOGS", "sink")
            return stats if consumer.num_pending == 0 and consumer.num_ack_pending == 0 else None

        # Errors while the sink is still starting mean "not yet".
        stats = await wait_until_async(
            caught_up, 300, "the sink to catch up", interval=0.5, retry_on=(nats.errors.Error, TimeoutError)
        )
        stream, keys = await truth.stream_truth(nc), await truth.stored_keys(nc)
    finally:
        await nc.close()
    wanted = {(e["topic"], e["event_id"]) for e in workload.events}
    stored = set(keys)
    miscounted = {
        "received": stats["received"] - stream["received"],
        "window": stats["duplicates"]["window"] - stream["window"],
        "unique": stats["unique_processed"] - len(stored),
    }
    return {
        "distinct": len(wanted),
        "stored": len(keys),
        "lost": len(wanted - stored),
        "stored_twice": len(keys) - len(stored),
        "unexpected": len(stored - wanted),
        "miscounted": {k: v for k, v in miscounted.items() if v},
        "invariant_holds": stats["invariant_holds"],
        "counters": {k: stats[k] for k in ("received", "unique_processed", "duplicates", "invalid", "arrived")},
    }
