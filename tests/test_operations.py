"""What operators use: Prometheus metrics that agree with /stats, the OpenAPI description, the
stats and tail commands, JSON logs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from logmesh.cli.stack import combined_app
from logmesh.common.processes import kill_process
from logmesh.ingest.app import create_app as ingest_app
from logmesh.ingest.settings import IngestSettings
from logmesh.query.app import create_app as query_app
from logmesh.query.settings import QuerySettings
from tests.harness import Up, event, nats_publish, wait_for

TAIL = [sys.executable, "-m", "logmesh", "tail"]

pytestmark = pytest.mark.timeout(120)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_agree_with_stats(up: Up) -> None:
    assert up.publish([event("a", "1"), event("a", "2"), event("b", "3")]).status_code == 202
    assert up.publish([event("a", "1"), event("b", "4")]).status_code == 202
    nats_publish(up.nats_url, [("logs.b", b"\xff not utf-8", None)])
    stats = up.settled_stats(arrived=6)

    http = samples(up.http.get("/metrics").text)
    assert http[("logmesh_ingest_events_total", (("outcome", "stored"),))] == 4
    assert http[("logmesh_ingest_events_total", (("outcome", "duplicate"),))] == 1
    published = (("method", "POST"), ("route", "/publish"), ("status", "202"))
    assert http[("logmesh_http_request_seconds_count", published)] == 2

    # The sink's own endpoint, and up's /metrics, which holds the sink's metrics too.
    port = stats["sink"]["metrics_port"]
    sink = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    assert {k: v for k, v in sink.items() if k[0].startswith("logmesh_events")} == {
        k: v for k, v in samples(up.http.get("/metrics").text).items() if k[0].startswith("logmesh_events")
    }
    assert sink[("logmesh_events_received_total", ())] == stats["received"] == 5
    assert sink[("logmesh_events_unique_total", ())] == stats["unique_processed"] == 4
    assert sink[("logmesh_events_invalid_total", ())] == stats["invalid"] == 1
    assert sink[("logmesh_events_duplicate_total", (("layer", "window"),))] == stats["duplicates"]["window"] == 1
    assert sink[("logmesh_events_duplicate_total", (("layer", "store"),))] == stats["duplicates"]["store"] == 0
    for t in stats["topics"]:
        assert sink[("logmesh_topic_events_unique_total", (("topic", t["topic"]),))] == t["count"]
    assert sink[("logmesh_sink_batch_messages_count", ())] == stats["sink"]["batches_committed"]
    assert sink[("logmesh_sink_ready", ())] == 1
    wait_for(
        lambda: samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)[("logmesh_consumer_ack_pending", ())] == 0,
        15,
        "the lag gauge",
    )


@pytest.mark.parametrize("factory", ["ingest", "query", "up"])
def test_every_route_is_in_the_openapi_description(factory: str) -> None:
    app = {
        "ingest": lambda: ingest_app(IngestSettings(no_auth=True)),
        "query": lambda: query_app(QuerySettings(no_auth=True)),
        "up": lambda: combined_app(IngestSettings(), QuerySettings()),
    }[factory]()
    spec = asyncio.run(_get_spec(app))
    routes = {
        (r.path.replace(":path", ""), m.lower())
        for r in app.routes
        if isinstance(r, Route)
        for m in r.methods or ()
        if m != "HEAD"
    }
    described = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes - {("/metrics", "get")} <= described, routes - described
    assert described <= routes


async def _get_spec(app: Any) -> Any:
    # Straight through ASGI, without the lifespan: nothing connects to NATS.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        return (await client.get("/openapi.json")).json()


def logmesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logmesh", *args], capture_output=True, text=True, timeout=timeout)


def test_stats_and_tail_commands(up: Up) -> None:
    tail = subprocess.Popen(
        # As the README says: the admin's password from the data directory of up.
        [*TAIL, "--nats-url", up.nats_address, "--data-dir", str(up.data_dir), "--topic", "tailed", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None
        # Subscribed once it says so (after its log line about the connection): what follows is shown.
        first_lines = [tail.stderr.readline() for _ in range(2)]
        assert any("following logs.tailed" in line for line in first_lines), first_lines
        up.publish([event("other", "x"), event("tailed", "t-1", payload={"k": 1}), event("tailed", "t-2")])
        out, _ = tail.communicate(timeout=30)
    finally:
        kill_process(tail)
    lines = out.splitlines()
    assert len(lines) == 2 and "tailed t-1 [tests]" in lines[0] and '{"k":1}' in lines[0] and "t-2" in lines[1]

    up.settled_stats(arrived=3)
    table = logmesh("stats", "--url", up.url, "--data-dir", str(up.data_dir))
    assert table.returncode == 0 and "unique_processed" in table.stdout and "tailed" in table.stdout
    raw: dict[str, Any] = orjson.loads(
        logmesh("stats", "--url", up.url, "--raw", "--data-dir", str(up.data_dir)).stdout
    )
    assert raw["unique_processed"] == 3


def test_json_logs_one_line_per_batch(make_up: Any) -> None:
    up = make_up({"LOGMESH_LOG_FORMAT": "json"})
    up.publish([event("j", str(i)) for i in range(10)])
    up.settled_stats(arrived=10)
    lines = [orjson.loads(line) for line in up.service.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    batches = [line for line in lines if line["logger"] == "logmesh.sink" and "committed" in line["message"]]
    assert batches and all(line["level"] == "info" for line in batches)
