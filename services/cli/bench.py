"""``logmesh bench``: end-to-end throughput, measured from the first publish to the last commit.

Each scenario runs ``logmesh up`` as its own process tree on a fresh temporary directory (nats-server,
sink, ingest + query), so the load generator in this process competes for the CPU as a real client
would, and not for this process's interpreter lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.cli.observe import wait_until_drained
from services.cli.runner import run
from services.cli.workload import SendReport, Workload, make_workload, send_http, send_nats
from services.common.logs import setup_logging
from services.common.processes import free_port, python_command, spawn, stop_process
from services.common.settings import ENV_PREFIX, add_settings_arguments, settings_from_args


class BenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "BENCH_", extra="ignore", frozen=True)

    scenarios: str = Field("http-seed,native", description="comma-separated: http-seed, http, native")
    runs: int = Field(1, ge=1, description="runs per scenario; the median is reported")
    dup: float = Field(0.35, ge=0, lt=1, description="fraction of duplicate events")
    topics: int = Field(10, ge=1, description="number of topics")
    native_events: int = Field(200_000, ge=1, description="events in the native (NATS) scenario")
    http_events: int = Field(200_000, ge=1, description="events in the large HTTP scenario")
    json_out: Path | None = Field(None, description="also write the results to this JSON file")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    events: int
    batch: int
    clients: int
    send: Callable[[str, str, Workload, int, int], Awaitable[SendReport]]


async def _via_http(http_url: str, nats_url: str, w: Workload, batch: int, clients: int) -> SendReport:
    return await send_http(http_url, w.batches(batch), clients, show_progress=False)


async def _via_nats(http_url: str, nats_url: str, w: Workload, batch: int, clients: int) -> SendReport:
    return await send_nats(nats_url, w.batches(batch), clients, show_progress=False)


def scenarios(s: BenchSettings) -> dict[str, Scenario]:
    return {
        "http-seed": Scenario(
            "http-seed", "seed workload: POST /publish, batches of 500, 4 clients", 20_000, 500, 4, _via_http
        ),
        "http": Scenario("http", "POST /publish, batches of 1,000, 4 clients", s.http_events, 1000, 4, _via_http),
        "native": Scenario(
            "native",
            "straight into JetStream, acked batches of 1,000, 4 in flight",
            s.native_events,
            1000,
            4,
            _via_nats,
        ),
    }


async def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"logmesh up at {url} was not ready in {timeout:g} s")


async def run_once(scenario: Scenario, s: BenchSettings) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"logmesh-bench-{scenario.name}-"))
    http_port, nats_port = free_port(), free_port()
    up = spawn(
        python_command(
            "up",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--nats-port",
            str(nats_port),
            "--log-level",
            "warning",
        )
    )
    http_url, nats_url = f"http://127.0.0.1:{http_port}", f"nats://127.0.0.1:{nats_port}"
    try:
        await _wait_ready(http_url, 60)
        workload = make_workload(scenario.events, s.dup, s.topics)
        report = await scenario.send(http_url, nats_url, workload, scenario.batch, scenario.clients)
        stats = await wait_until_drained(http_url, timeout=600, at_least=report.accepted)
        elapsed = stats["sink"]["last_commit_at"] - report.first_send
        return {
            "events": scenario.events,
            "seconds": round(elapsed, 3),
            "events_per_second": round(scenario.events / elapsed),
            "unique_ok": stats["unique_processed"] == workload.unique,
            "invariant_ok": stats["invariant_holds"],
            "retries": report.retries,
            "store_bytes": stats["sink"]["store_bytes"],
        }
    finally:
        await stop_process(up, timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def bench_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(BenchSettings, args)
    setup_logging("warning", "text")
    available = scenarios(settings)
    chosen = [name.strip() for name in settings.scenarios.split(",") if name.strip()]
    unknown = [n for n in chosen if n not in available]
    if unknown:
        print(f"logmesh bench: unknown scenario(s) {unknown}; choose from {sorted(available)}")
        return 2

    async def main(stopping: asyncio.Event) -> int:
        info = machine()
        print(f"machine: {info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}")
        results: dict[str, Any] = {"machine": info, "scenarios": {}}
        ok = True
        for name in chosen:
            sc = available[name]
            runs = []
            for i in range(settings.runs):
                if stopping.is_set():
                    return 130
                r = await run_once(sc, settings)
                runs.append(r)
                print(
                    f"  {name} run {i + 1}: {r['events']:,} events in {r['seconds']:.2f} s = "
                    f"{r['events_per_second']:,} events/s",
                    flush=True,
                )
                ok = ok and r["unique_ok"] and r["invariant_ok"]
            median = statistics.median(r["events_per_second"] for r in runs)
            results["scenarios"][name] = {
                "description": sc.description,
                "median_events_per_second": median,
                "runs": runs,
            }
        print()
        print(f"  {'scenario':<10} {'events':>9} {'events/s (median)':>18}  what")
        for name, r in results["scenarios"].items():
            events = r["runs"][0]["events"]
            print(f"  {name:<10} {events:>9,} {r['median_events_per_second']:>18,.0f}  {r['description']}")
        if settings.json_out:
            settings.json_out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        if not ok:
            print("a run stored the wrong number of events or broke the invariant")
        return 0 if ok else 1

    return run(main)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = "measure end-to-end throughput (first publish to last commit)"
    parser = commands.add_parser("bench", help=text, description=text)
    add_settings_arguments(parser, BenchSettings)
    parser.set_defaults(handler=bench_command)
