"""The sink's Prometheus metrics, served on a port of its own (it has no HTTP app).

The event counters are read from the same in-memory mirror of the store that ``/stats`` serves, so
the two always agree; batch sizes and commit latency are histograms; consumer lag is refreshed from
JetStream every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from logmesh.common.metrics import LATENCY_BUCKETS
from logmesh.sink.counters import Counters

log = logging.getLogger("logmesh.sink")


class SinkMetrics(Collector):
    """``counters``, ``ready`` and ``buffered`` are read at each scrape."""

    def __init__(
        self, *, counters: Callable[[], Counters], ready: Callable[[], bool], buffered: Callable[[], int]
    ) -> None:
        self._counters, self._ready, self._buffered = counters, ready, buffered
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.batch_size = Histogram(
            "logmesh_sink_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "logmesh_sink_commit_seconds",
            "Time to decode and commit a batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pending = Gauge(
            "logmesh_consumer_pending", "Messages not yet delivered to the sink", registry=self.registry
        )
        self.ack_pending = Gauge(
            "logmesh_consumer_ack_pending", "Messages delivered and not yet acknowledged", registry=self.registry
        )
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int | None:
        """Serves ``/metrics``; a port already taken costs the metrics, not the sink."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("metrics not served on %s:%d: %s", host, port, exc)
            return None
        self.port = int(server.server_port)
        return self.port

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._counters()
        yield CounterMetricFamily("logmesh_events_received", "Log messages processed (first deliveries)", c.received)
        yield CounterMetricFamily("logmesh_events_unique", "Distinct events stored", c.unique_processed)
        yield CounterMetricFamily("logmesh_events_invalid", "Messages dead-lettered", c.invalid)
        duplicates = CounterMetricFamily("logmesh_events_duplicate", "Duplicates dropped, by layer", labels=["layer"])
        duplicates.add_metric(["window"], c.window_duplicates)
        duplicates.add_metric(["store"], c.store_duplicates)
        yield duplicates
        per_topic = CounterMetricFamily(
            "logmesh_topic_events_unique", "Distinct events stored, by topic", labels=["topic"]
        )
        for topic, counts in sorted(c.topics.items()):
            per_topic.add_metric([topic], counts.unique)
        yield per_topic
        yield GaugeMetricFamily("logmesh_sink_ready", "1 while the store takes writes", int(self._ready()))
        yield GaugeMetricFamily("logmesh_sink_buffered", "Messages pulled and not yet committed", self._buffered())
