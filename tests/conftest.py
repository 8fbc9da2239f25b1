from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import NatsServer, Up


@pytest.fixture
def make_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Starts ``logmesh up`` processes (with extra environment if given) and stops them after the test."""
    started: list[Up] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Up:
        up = Up(data_dir or tmp_path / f"up{len(started)}", env)
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
