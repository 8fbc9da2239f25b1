"""Processes under measurement: ``logmesh up`` and its sink, with their memory."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import Role, password_secret
from logmesh.common.processes import children, environment, free_port, python_command, spawn, stop_process
from logmesh.common.secrets_store import INGEST_TOKEN, QUERY_TOKEN, read_secret
from logmesh.common.waiting import wait_until_async


class UpProcess:
    """``logmesh up`` on a fresh temporary directory and free ports, as its own process tree."""

    def __init__(
        self,
        name: str,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        *,
        auth: bool = True,
        nats_nodes: int = 1,
        partitions: int = 1,
        sinks: int = 1,
    ) -> None:
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"logmesh-bench-{name}-"))
        self._own_dir = data_dir is None
        self.http_port, self.nats_port = free_port(), free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self._env = env or {}
        self.auth = auth
        self.layout = ["--nats-nodes", str(nats_nodes), "--partitions", str(partitions), "--sinks", str(sinks)]
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> UpProcess:
        args = ["up", "--data-dir", str(self.data_dir), "--http-port", str(self.http_port)]
        args += ["--nats-port", str(self.nats_port), "--log-level", "warning"]
        args += [] if self.auth else ["--no-auth"]
        args += self.layout if self.layout != ["--nats-nodes", "1", "--partitions", "1", "--sinks", "1"] else []
        self.proc = spawn(python_command(*args), env=environment(self._env), stdout=subprocess.DEVNULL)
        await wait_ready(self.http_url, 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            await stop_process(self.proc, timeout=60)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # What a client presents, from the secrets up generated (None and no user with --no-auth).
    @property
    def ingest_token(self) -> str | None:
        return read_secret(self.data_dir, INGEST_TOKEN)

    @property
    def query_token(self) -> str | None:
        return read_secret(self.data_dir, QUERY_TOKEN)

    def credentials(self, role: Role) -> NatsCredentials:
        return NatsCredentials.for_role(role, read_secret(self.data_dir, password_secret(role)))

    def sink_pid(self) -> int | None:
        """The sink is the one Python child of ``up`` (the other child is nats-server)."""
        assert self.proc is not None
        for pid in children(self.proc.pid):
            if "sink" in _cmdline(pid):
                return pid
        return None


async def wait_ready(url: str, timeout: float) -> None:
    async with httpx.AsyncClient(timeout=5) as client:

        async def ready() -> bool:
            return (await client.get(url + "/readyz")).status_code == 200

        await wait_until_async(ready, timeout, f"{url} to be ready", interval=0.1, retry_on=(httpx.HTTPError,))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
