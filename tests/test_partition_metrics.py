"""A partitioned sink's Prometheus endpoint on a real nats-server with real DuckDB files: the event
counters come as one series per owned partition (label ``partition``), each equal to that partition's
counters, so each stays monotonic when partitions move between sinks; summed they are the sink's
totals. (One partition keeps its unlabeled series: test_operations.py, test_up_metrics.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness import NatsServer, Service, wait_for
from tests.test_partitioned_sink import (
    ALL_TOPICS,
    P,
    ask,
    create_partitioned_stream,
    event,
    natively,
    publish,
    server,  # noqa: F401 (fixture)
    settled,
    sink_args,
)
from tests.test_up_metrics import samples

pytestmark = pytest.mark.timeout(120)


def test_event_counters_are_labelled_by_partition_and_add_up_to_the_sinks_totals(
    tmp_path: Path,
    server: NatsServer,  # noqa: F811
    service: Callable[..., Service],
) -> None:
    url = server.url
    create_partitioned_stream(url)
    events = [event(t, f"m{i}") for i, t in enumerate(ALL_TOPICS * 5)]  # 60
    publish(url, natively(events) + natively(events[:8], msg_id=False))  # 8 store duplicates
    sink = service(sink_args(url, tmp_path / "sink"), {"LOGMESH_METRICS_PORT": "0"}, name="sink")
    stats = wait_for(lambda: settled(url, 68), 60, "every partition to commit its share")
    port = ask(url, 0, "status")["metrics_port"]
    got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

    for k in range(P):
        part = (("partition", str(k)),)
        assert got[("logmesh_events_received_total", part)] == stats[k]["received"]
        assert got[("logmesh_events_unique_total", part)] == stats[k]["unique_processed"]
        assert got[("logmesh_events_invalid_total", part)] == stats[k]["invalid"] == 0
        store = (("layer", "store"), ("partition", str(k)))
        assert got[("logmesh_events_duplicate_total", store)] == stats[k]["duplicates"]["store"]
        assert got[("logmesh_partition_ready", part)] == 1
    # No unlabeled sum beside them: sum() over a family is the sink's total.
    assert ("logmesh_events_received_total", ()) not in got
    received = sum(v for (name, _), v in got.items() if name == "logmesh_events_received_total")
    assert received == 68
    duplicates = sum(v for (name, labels), v in got.items() if name == "logmesh_events_duplicate_total")
    assert duplicates == 8
    assert got[("logmesh_sink_ready", ())] == 1
    assert sink.stop() == 0
