"""deploy/compose.yaml, proved without a Docker engine: its structure is checked against the rules
that matter, then every service runs with its exact command, environment and healthcheck as a local
process (container hostnames and ports mapped to free local ones, volumes to directories, the nats
image replaced by the wheel's nats-server with the same flags). A command or variable that drifts
from the code fails here."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from logmesh.common.processes import free_port, nats_server_binary
from tests.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
LONG_RUNNING = ("nats", "sink", "ingest", "query")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_the_compose_file_follows_the_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"nats", "sink", "ingest", "query", "publisher"}
    assert services["nats"]["image"].startswith("nats:")
    assert "--jetstream" in services["nats"]["command"]
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    assert services["publisher"]["restart"] == "no"
    for name, service in services.items():
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name
    assert _start_order(services)[-1] == "publisher"
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == declared == {"nats-data", "duckdb-data"}
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"ingest", "query"}, "only the HTTP ports reach the host"
    for name in ("sink", "ingest", "query", "publisher"):
        assert services[name]["image"] == "logmesh:latest"
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_the_dockerfile_is_small_and_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "[dev]" not in text and "pip wheel" in text and "pyproject.toml" in text


def _start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [n for n, s in services.items() if n not in order and set(s.get("depends_on", {})) <= set(order)]
        assert ready, "depends_on has a cycle"
        order += sorted(ready)
    return order


class LocalCompose:
    """The compose services as local processes."""

    def __init__(self, compose: dict[str, Any], root: Path) -> None:
        self.compose = compose
        self.root = root
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def port(self, container_port: str) -> str:
        return str(self.ports.setdefault(container_port, free_port()))

    def local(self, value: str) -> str:
        """Container names and ports as this machine sees them; volume paths as directories."""
        value = re.sub(r"\b(?:nats|sink|ingest|query|localhost):(\d+)", lambda m: f"127.0.0.1:{self.port(m[1])}", value)
        return re.sub(r"^(\d{4})$", lambda m: self.port(m[1]), value)

    def mounts(self, name: str) -> dict[str, str]:
        """The service's volume targets, each a directory named after its volume (kept across runs)."""
        out = {}
        for spec in self.compose["services"][name].get("volumes", []):
            volume, target = spec.split(":")
            (self.root / volume).mkdir(exist_ok=True)
            out[target] = str(self.root / volume)
        return out

    def start(self, name: str) -> None:
        service = self.compose["services"][name]
        mounts = self.mounts(name)
        env: dict[str, str] | None = None
        if name == "nats":
            flags = [mounts.get(a, self.port(a) if a == "8222" else a) for a in service["command"]]
            command = [nats_server_binary(), *flags, "--addr", "127.0.0.1", "--port", self.port("4222")]
        else:
            assert service["command"][0] == "logmesh"
            own = {k: mounts.get(str(v), self.local(str(v))) for k, v in service.get("environment", {}).items()}
            executable = shutil.which("logmesh", path=str(Path(sys.executable).parent))
            assert executable, "the logmesh console script is not installed"
            command = [executable, *[self.local(a) for a in service["command"][1:]]]
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOGMESH_")}, **own}
        # The child keeps its own copy of the log's descriptor.
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    def healthy(self, name: str) -> bool:
        test = self.compose["services"][name]["healthcheck"]["test"][1:]
        if test[0] == "wget":  # the nats image's own tool: ask the same URL
            return httpx.get(self.local(test[-1]).replace("localhost", "127.0.0.1")).status_code == 200
        assert test[0] == "python"
        done = subprocess.run([sys.executable, *[self.local(a) for a in test[1:]]], capture_output=True, timeout=10)
        return done.returncode == 0

    def up(self) -> None:
        for name in _start_order(self.compose["services"]):
            if name == "publisher":
                continue
            self.start(name)
            wait_for(functools.partial(self.healthy, name), 60, f"{name} to be healthy")

    def run_publisher(self) -> subprocess.CompletedProcess[bytes]:
        self.start("publisher")
        proc = self.procs.pop("publisher")
        proc.wait(120)
        return subprocess.CompletedProcess(proc.args, proc.returncode)

    def down(self) -> None:
        for name in ("query", "ingest", "sink", "nats"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def local(compose: dict[str, Any], tmp_path: Path) -> Iterator[LocalCompose]:
    stack = LocalCompose(compose, tmp_path)
    yield stack
    stack.down()


def test_the_compose_services_run_as_written(local: LocalCompose) -> None:
    local.up()
    assert local.run_publisher().returncode == 0, (local.root / "publisher.log").read_text()[-2000:]
    query = f"http://127.0.0.1:{local.ports['8082']}"

    def caught_up() -> dict[str, Any] | None:
        stats: dict[str, Any] = httpx.get(query + "/stats").json()
        consumer = stats.get("consumer") or {}
        done = stats["arrived"] == 20_000 and consumer.get("pending") == 0 and consumer.get("ack_pending") == 0
        return stats if done else None

    stats = wait_for(caught_up, 60, "the sink to store the seed workload")
    assert stats["unique_processed"] == 13_000 and stats["invariant_holds"]
    assert httpx.get(query + "/").status_code == 200  # the dashboard

    # docker compose down && docker compose up: same volumes, every event and counter kept.
    local.down()
    local.up()
    again = wait_for(caught_up, 60, "the counters after a restart")
    for key in ("received", "unique_processed", "duplicates", "invalid", "topics"):
        assert again[key] == stats[key], key
