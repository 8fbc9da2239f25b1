"""A compose file's services as local processes, and the structural rules every compose file keeps.

No Docker engine runs here: each service runs with its exact command, environment and healthcheck,
its container hostnames and ports mapped to free local ports (``<service>:<port>``, and
``localhost``/``0.0.0.0`` meaning the service itself), its volumes to directories, the nats image
replaced by the wheel's nats-server with the same flags. A command or variable that drifts from the
code fails the test that runs it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import nats.aio.client
import nats.errors
import yaml

from logmesh.cli.access import bearer
from logmesh.common.processes import free_port, nats_server_binary
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# ${NAME}, ${NAME:?message}, ${NAME:-default}: compose's interpolation from deploy/.env.
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[?-])([^}]*))?\}")
LOGMESH_IMAGE = "logmesh:latest"


def load_compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return loaded


def is_nats(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("nats:")


def secrets_used(service: dict[str, Any]) -> set[str]:
    """The env-file variables a service's environment interpolates; each must refuse to start without
    the env file (``${NAME:?...}``)."""
    used = set()
    for value in service.get("environment", {}).values():
        for m in INTERPOLATION.finditer(str(value)):
            assert m[2] == ":?", f"{m[0]} must refuse to start without the env file"
            used.add(m[1])
    return used


def start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [n for n, s in services.items() if n not in order and set(s.get("depends_on", {})) <= set(order)]
        assert ready, "depends_on has a cycle"
        order += sorted(ready)
    return order


def check_image_built_once(services: dict[str, Any], builder: str) -> None:
    """Several services building one tag at once can fail ("image ... already exists"): one builds
    it, the others run it and start after the builder."""
    assert {name for name, s in services.items() if "build" in s} == {builder}
    assert services[builder]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert services[builder]["pull_policy"] == "build", "logmesh:latest is built here, never looked for on a registry"
    for name, service in services.items():
        if is_nats(service):
            continue
        assert service["image"] == LOGMESH_IMAGE, name
        if name != builder:
            assert service["pull_policy"] == "never", name
            assert builder in service["depends_on"], name


def check_dependencies(services: dict[str, Any], builder: str) -> None:
    """A service waits for what it needs to be healthy; the image builder may be waited for only as
    far as its image: started, not healthy."""
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            allowed = ("service_healthy", "service_started") if dependency == builder else ("service_healthy",)
            assert condition in [{"condition": c} for c in allowed], (name, dependency)


def logmesh_executable() -> str:
    executable = shutil.which("logmesh", path=str(Path(sys.executable).parent))
    assert executable, "the logmesh console script is not installed"
    return executable


class LocalCompose:
    """The compose services as local processes, started as compose starts them: a service once each
    of its dependencies is started or healthy, as its ``depends_on`` says."""

    def __init__(self, compose: dict[str, Any], root: Path, secrets: dict[str, str] | None = None) -> None:
        self.compose = compose
        self.services: dict[str, Any] = compose["services"]
        self.root = root
        self.ports: dict[tuple[str, str], int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env_overrides: dict[str, dict[str, str]] = {}
        # As the compose files' first comment says: the secrets first, in the env file compose reads.
        env_file = root / ".env"
        done = subprocess.run(
            [logmesh_executable(), "secrets", "--env-file", str(env_file)], capture_output=True, check=True
        )
        assert env_file.stat().st_mode & 0o777 == 0o600, done.stdout
        self.secrets = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
        )
        self.secrets.update(secrets or {})
        names = sorted(self.services, key=len, reverse=True)  # nats-1 before nats
        self._address = re.compile(rf"(?<![\w.-])({'|'.join(map(re.escape, names))}|localhost|0\.0\.0\.0):(\d+)\b")

    def interpolated(self, value: str) -> str:
        def secret(m: re.Match[str]) -> str:
            assert m[1] in self.secrets, f"{m[0]}: not in the env file"
            return self.secrets[m[1]]

        return INTERPOLATION.sub(secret, value)

    def headers(self) -> dict[str, str]:
        return bearer(self.secrets["LOGMESH_QUERY_TOKEN"])

    def port(self, service: str, container_port: str) -> str:
        return str(self.ports.setdefault((service, container_port), free_port()))

    def address(self, service: str, container_port: int) -> str:
        """host:port of a service's container port, as this machine reaches it."""
        return f"127.0.0.1:{self.port(service, str(container_port))}"

    def local(self, value: str, service: str) -> str:
        """Container names and ports as this machine sees them (``localhost`` and ``0.0.0.0`` are the
        service's own); a bare port value is the service's own port."""

        def mapped(m: re.Match[str]) -> str:
            host = service if m[1] in ("localhost", "0.0.0.0") else m[1]
            return f"127.0.0.1:{self.port(host, m[2])}"

        value = self._address.sub(mapped, value)
        return re.sub(r"^(\d{4})$", lambda m: self.port(service, m[1]), value)

    def mounts(self, name: str) -> dict[str, str]:
        """The service's volume targets: a named volume is a directory named after it (kept across
        runs); a file of the repository is that file, or a copy with its addresses made local."""
        out = {}
        for spec in self.services[name].get("volumes", []):
            volume, target, *_ = spec.split(":")
            if volume.startswith("./"):  # a file of the repository, beside the compose file
                source = DEPLOY / volume
                text = source.read_text()
                if self.local(text, name) == text:
                    out[target] = str(source)
                    continue
                copy = self.root / f"{name}-{source.name}"
                copy.write_text(self.local(text, name))
                out[target] = str(copy)
                continue
            (self.root / volume).mkdir(exist_ok=True)
            out[target] = str(self.root / volume)
        return out

    def start(self, name: str) -> None:
        service = self.services[name]
        mounts = self.mounts(name)
        own = {
            k: mounts.get(str(v), self.local(self.interpolated(str(v)), name))
            for k, v in service.get("environment", {}).items()
        }
        own.update(self.env_overrides.get(name, {}))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOGMESH_")}, **own}
        if is_nats(service):
            flags = [mounts.get(a, self.port(name, a) if a == "8222" else a) for a in service["command"]]
            command = [nats_server_binary(), *flags, "--addr", "127.0.0.1", "--port", self.port(name, "4222")]
        else:
            assert service["command"][0] == "logmesh"
            command = [logmesh_executable(), *[self.local(a, name) for a in service["command"][1:]]]
        # The child keeps its own copy of the log's descriptor.
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    def healthy(self, name: str) -> bool:
        test = self.services[name]["healthcheck"]["test"][1:]
        if test[0] == "wget":  # the nats image's own tool: ask the same URL
            try:
                return httpx.get(self.local(test[-1], name)).status_code == 200
            except httpx.TransportError:
                return False
        assert test[0] == "python"
        done = subprocess.run(
            [sys.executable, *[self.local(a, name) for a in test[1:]]], capture_output=True, timeout=10
        )
        return done.returncode == 0

    def _may_start(self, name: str, healthy: set[str]) -> bool:
        needs = self.services[name].get("depends_on", {})
        return all(
            dep in (healthy if cond["condition"] == "service_healthy" else self.procs) for dep, cond in needs.items()
        )

    def up(self, only: tuple[str, ...] | None = None, timeout: float = 90) -> None:
        """Starts every long-running service (or ``only`` these) and waits until each is healthy."""
        wanted = [n for n in start_order(self.services) if n != "publisher" and (only is None or n in only)]
        healthy: set[str] = set()

        def progress() -> bool:
            for name in wanted:
                if name not in self.procs and self._may_start(name, healthy):
                    self.start(name)
            for name in [n for n in self.procs if n not in healthy]:
                assert self.procs[name].poll() is None, f"{name} exited: {self.log_tail(name)}"
                if self.healthy(name):
                    healthy.add(name)
            return healthy >= set(wanted)

        wait_for(progress, timeout, f"{', '.join(wanted)} to be healthy")

    def log_tail(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-2000:]

    def run_publisher(self) -> None:
        """The publisher, as `up` starts it once the others are healthy, to its end."""
        self.start("publisher")
        proc = self.procs.pop("publisher")
        assert proc.wait(120) == 0, self.log_tail("publisher")

    def stop(self, name: str) -> None:
        """Stops one service as ``docker compose stop`` does: SIGTERM, then SIGKILL after 30 s."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def down(self) -> None:
        for name in reversed([n for n in start_order(self.services) if n in self.procs]):
            self.stop(name)


def anonymous_nats(url: str) -> str:
    """What a NATS connection without credentials gets: the server's refusal, or "connected"."""

    async def attempt() -> str:
        nc = nats.aio.client.Client()
        try:
            await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        except nats.errors.Error as exc:
            return str(exc)
        finally:
            await nc.close()
        return "connected"

    return asyncio.run(attempt())
