"""The logmesh command: demo and the load generator, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.harness import Up

pytestmark = pytest.mark.timeout(120)


def logmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logmesh", *args], capture_output=True, text=True, timeout=110)


def test_the_demo_workload_at_reduced_size_keeps_the_invariant() -> None:
    done = logmesh("demo", "--events", "3000", "--batch", "250")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ok] received = unique + store duplicates + invalid" in done.stdout
    assert "[ok] every distinct event stored once (1,950)" in done.stdout
    assert "FAILED" not in done.stdout
    # Start-up states (the sink not answering yet) are not errors: nothing handled prints a traceback.
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr


@pytest.mark.parametrize("target", ["http", "nats"])
def test_publish_over_http_and_over_nats_counts_exactly(up: Up, target: str) -> None:
    # The token or the NATS password (of the ingest user: receipts) from the secrets up keeps.
    where = ["--url", up.url] if target == "http" else ["--nats-url", f"nats://127.0.0.1:{up.nats_port}"]
    where += ["--data-dir", str(up.data_dir)]
    done = logmesh("publish", *where, "--events", "4000", "--dup", "0.25", "--topics", "5", "--batch", "400")
    assert done.returncode == 0, done.stderr
    assert "sent 4,000 events (3,000 distinct)" in done.stdout
    stats: dict[str, Any] = up.settled_stats(arrived=4000)
    assert stats["unique_processed"] == 3000
    assert stats["duplicates"]["window"] == 1000 and stats["duplicates"]["store"] == 0
    assert stats["invariant_holds"]
    assert len(stats["topics"]) == 5


def test_publish_needs_exactly_one_target() -> None:
    done = logmesh("publish", "--events", "1")
    assert done.returncode == 2
    assert "exactly one of --url" in done.stderr


def test_every_flag_is_also_an_environment_variable() -> None:
    done = logmesh("sink", "--help")
    assert "LOGMESH_DATA_DIR" in done.stdout and "LOGMESH_BATCH_SIZE" in done.stdout
    for command in ("up", "ingest", "query", "publish", "demo"):
        text = logmesh(command, "--help").stdout
        assert "LOGMESH_LOG_LEVEL" in text, command
