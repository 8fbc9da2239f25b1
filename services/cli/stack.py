"""The whole pipeline on one machine: embedded nats-server, the sink as a child process, and ingest
plus query routes on one HTTP port. ``logmesh up``, ``demo`` and ``bench`` run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import Field
from starlette.applications import Starlette

from logmesh.common.embedded import EmbeddedNats
from logmesh.common.http import bound_port, build_app, make_server
from logmesh.common.natsio import NatsIo
from logmesh.common.processes import python_command, spawn, stop_process
from logmesh.common.settings import CommonSettings, flag_name
from logmesh.ingest.app import Ingest
from logmesh.ingest.settings import IngestSettings
from logmesh.query.app import Query
from logmesh.query.settings import QuerySettings

log = logging.getLogger("logmesh")


class UpSettings(CommonSettings):
    data_dir: Path = Field(Path("data"), description="directory for the DuckDB file and the JetStream store")
    host: str = Field("127.0.0.1", description="HTTP listen address")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port for ingest and query (0 picks one)")
    nats_port: int = Field(4222, ge=1, le=65535, description="port of the embedded nats-server")
    nats_url: str | None = Field(None, description="use this NATS server instead of starting one")
    metrics_port: int = Field(9464, ge=0, le=65535, description="port of the sink's Prometheus endpoint")
    nats_io: NatsIo = Field("fast", description="hot NATS paths of the sink and ingest: 'fast' or 'plain'")


def combined_app(ingest_settings: IngestSettings, query_settings: QuerySettings) -> Starlette:
    registry = CollectorRegistry()
    return build_app("logmesh", [Ingest(ingest_settings, registry), Query(query_settings)], registry)


class Stack:
    def __init__(self, settings: UpSettings, *, sink_log_level: str | None = None) -> None:
        self.settings = settings
        self.sink_log_level = sink_log_level or settings.log_level
        self.nats: EmbeddedNats | None = None
        self.nats_url = settings.nats_url or ""
        self.http_url = ""
        self.sink: subprocess.Popen[bytes] | None = None
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    def _common(self) -> dict[str, Any]:
        return {name: getattr(self.settings, name) for name in CommonSettings.model_fields}

    def sink_command(self) -> list[str]:
        flags = {
            **self._common(),
            "metrics_port": self.settings.metrics_port,
            "log_level": self.sink_log_level,
            "nats_url": self.nats_url,
            "nats_io": self.settings.nats_io,
            "data_dir": self.settings.data_dir,
        }
        args = ["sink"]
        for name, value in flags.items():
            args += [flag_name(name), str(value)]
        return python_command(*args)

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if not s.nats_url:
            self.nats = EmbeddedNats(s.data_dir / "nats", port=s.nats_port)
            await self.nats.start()
            self.nats_url = self.nats.url
        self._start_sink()
        self._supervisor = asyncio.create_task(self._supervise_sink())
        http = {
            "nats_url": self.nats_url,
            "nats_io": s.nats_io,
            "host": s.host,
            "http_port": s.http_port,
            **self._common(),
        }
        app = combined_app(IngestSettings(**http), QuerySettings(**http))
        self._server = make_server(app, s.host, s.http_port)
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                with contextlib.suppress(SystemExit):
                    await self._serving
                raise RuntimeError(f"HTTP server could not listen on {s.host}:{s.http_port}")
            await asyncio.sleep(0.02)
        self.http_url = f"http://{s.host}:{bound_port(self._server)}"

    def _start_sink(self) -> None:
        self.sink = spawn(self.sink_command())

    async def _supervise_sink(self) -> None:
        """Restarts the sink if it dies: it resumes from its store and JetStream redelivers the rest."""
        delay = 0.5
        while not self._stopping:
            assert self.sink is not None
            code = await asyncio.to_thread(self.sink.wait)
            if self._stopping:
                return
            log.error("sink exited with code %s; restarting it in %.1f s", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if not self._stopping:
                self._start_sink()

    async def stop(self) -> int:
        """Stops in dependency order: HTTP (finish requests), the sink (commit, ack, drain), NATS."""
        self._stopping = True
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(SystemExit):
                await self._serving
        code = 0
        if self.sink is not None:
            code = await stop_process(self.sink, timeout=30)
        if self._supervisor is not None:
            await self._supervisor
        if self.nats is not None:
            await self.nats.stop()
        return code
