from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logmesh.common.natsio import NatsIo
from tests.harness import SERVICE_TOKENS, NatsServer, Service, Up

# Every sink a test starts serves its metrics on a port of its own.
os.environ.setdefault("LOGMESH_METRICS_PORT", "0")

# Fixtures that start real processes, and what a test module that starts its own says in its code.
_PROCESS_FIXTURES = {"up", "make_up", "service", "nats_server", "running", "local"}
_STARTS_PROCESSES = ("subprocess.", "NatsServer(", "Up(", "python_command(")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``processes`` every test that starts real processes (nats-server, logmesh services), so
    that ``-m "not processes"`` is the part that runs in seconds."""
    modules: dict[str, bool] = {}
    for item in items:
        path = str(item.path)
        if path not in modules:
            modules[path] = any(word in item.path.read_text() for word in _STARTS_PROCESSES)
        if modules[path] or _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(params=["fast", "plain"])
def nats_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> NatsIo:
    """Runs the test once with the fast implementations and once with the plain ones, as uvicorn's
    suite runs over httptools and h11: every process it starts (the harness passes the environment
    on) and every client it makes with ``connect(..., io=nats_io)`` uses that NATS path, and every
    sink decodes with the SQL batch decoder (fast) or the reference decoder alone (plain). Request it
    before the fixtures that start processes, or through ``pytest.mark.usefixtures``, which comes
    first."""
    monkeypatch.setenv("LOGMESH_NATS_IO", request.param)
    monkeypatch.setenv("LOGMESH_DECODER", "sql" if request.param == "fast" else "reference")
    value: NatsIo = request.param
    return value


@pytest.fixture
def make_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Starts ``logmesh up`` processes (with extra environment if given) and stops them after the test."""
    started: list[Up] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None, **cluster: int) -> Up:
        up = Up(data_dir or tmp_path / f"up{len(started)}", env, **cluster)
        started.append(up)
        return up.start()

    yield make
    for up in started:
        up.close()


@pytest.fixture
def up(make_up: Callable[..., Up]) -> Up:
    return make_up()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Starts ``logmesh <command>`` processes, logging to the test's directory, and kills whatever is
    still running after the test, passed or failed. Ingest and query get the tokens of
    ``SERVICE_TOKENS`` (their clients: ``auth=SERVICE_AUTH``) unless ``env`` says otherwise."""
    started: list[Service] = []

    def start(args: list[str], env: dict[str, str] | None = None, name: str | None = None) -> Service:
        log = tmp_path / f"{name or args[0]}-{len(started)}.log"
        svc = Service(args, {**SERVICE_TOKENS, **(env or {})}, log_path=log).start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.kill()
