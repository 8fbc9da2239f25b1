"""The services as separate processes, started in any order, as compose runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from logmesh.common.processes import free_port
from tests.harness import SERVICE_AUTH, NatsServer, Service, event, wait_for

pytestmark = pytest.mark.timeout(120)


def test_services_start_in_any_order_and_wait_for_nats(tmp_path: Path, service: Callable[..., Service]) -> None:
    nats = NatsServer(tmp_path / "nats")  # not started yet
    ingest_port, query_port = free_port(), free_port()
    url = ["--nats-url", nats.url]
    services = [
        service(["query", *url, "--http-port", str(query_port)]),
        service(["sink", *url, "--data-dir", str(tmp_path / "data")]),
        service(["ingest", *url, "--http-port", str(ingest_port)]),
    ]
    ingest = httpx.Client(base_url=f"http://127.0.0.1:{ingest_port}", timeout=10, auth=SERVICE_AUTH)
    query = httpx.Client(base_url=f"http://127.0.0.1:{query_port}", timeout=10, auth=SERVICE_AUTH)
    try:
        # Up, but not ready: there is no NATS yet.
        wait_for(lambda: ingest.get("/healthz").status_code == 200, 20, "ingest to answer")
        assert ingest.get("/readyz").status_code == 503
        refused = ingest.post("/publish", json=event())
        assert refused.status_code == 503 and refused.headers["retry-after"]

        nats.start()
        wait_for(lambda: ingest.get("/readyz").status_code == 200, 30, "ingest to be ready")
        wait_for(lambda: query.get("/readyz").status_code == 200, 30, "query to be ready")
        assert ingest.post("/publish", json=[event("x", "1"), event("x", "2")]).status_code == 202
        stats = wait_for(
            lambda: (s := query.get("/stats").json()).get("unique_processed") == 2 and s, 20, "2 events stored"
        )
        assert stats["invariant_holds"]
        assert query.get("/events/x/2").status_code == 200

        # NATS goes away: ingest refuses with 503 and Retry-After rather than accept what it cannot store.
        nats.kill()

        def refused_publish() -> httpx.Response | None:
            r = ingest.post("/publish", json=event("x", "3"))
            return r if r.status_code == 503 else None

        down = wait_for(refused_publish, 20, "a 503")
        assert int(down.headers["retry-after"]) >= 1
        assert down.json()["error"]["code"] == "unavailable"
    finally:
        ingest.close()
        query.close()
        nats.stop()
    for svc in services:
        assert svc.stop() == 0, svc.log()
