"""The sink's Prometheus metrics, served on a port of its own (it has no HTTP app).

The event counters are read from the same in-memory mirror of the store that ``/stats`` serves, so
the two always agree; batch sizes and commit latency are histograms; consumer lag is refreshed from
JetStream every few seconds. A sink that owns several partitions sums them, and labels the few
per-partition series by partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from logmesh.common.metrics import LATENCY_BUCKETS
from logmesh.sink.counters import Counters, TopicCounts

log = logging.getLogger("logmesh.sink")


@dataclass(frozen=True)
class PartitionSample:
    """One owned partition at a scrape."""

    partition: int
    counters: Counters
    ready: bool
    buffered: int
    pending: int
    ack_pending: int


class SinkMetrics(Collector):
    """``owned`` (the partitions this sink serves now) and ``ready`` are read at each scrape."""

    def __init__(self, *, owned: Callable[[], Sequence[PartitionSample]], ready: Callable[[], bool]) -> None:
        self._owned, self._ready = owned, ready
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
        owned = self._owned()
        c = total([p.counters for p in owned])
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
        yield GaugeMetricFamily(
            "logmesh_sink_ready", "1 while every partition this sink owns takes writes", int(self._ready())
        )
        yield GaugeMetricFamily(
            "logmesh_sink_buffered", "Messages pulled and not yet committed", sum(p.buffered for p in owned)
        )
        yield GaugeMetricFamily(
            "logmesh_consumer_pending", "Messages not yet delivered to the sink", sum(p.pending for p in owned)
        )
        yield GaugeMetricFamily(
            "logmesh_consumer_ack_pending",
            "Messages delivered and not yet acknowledged",
            sum(p.ack_pending for p in owned),
        )
        if len(owned) == 1 and owned[0].partition == 0:
            return  # one partition: the sums say it all
        ready = GaugeMetricFamily("logmesh_partition_ready", "1 while the partition takes writes", labels=["partition"])
        unique = CounterMetricFamily(
            "logmesh_partition_events_unique", "Distinct events stored, by partition", labels=["partition"]
        )
        for p in owned:
            ready.add_metric([str(p.partition)], int(p.ready))
            unique.add_metric([str(p.partition)], p.counters.unique_processed)
        yield ready
        yield unique


def total(parts: Sequence[Counters]) -> Counters:
    """The counters of several partitions as one (a topic lives in one partition; sums all the same)."""
    if len(parts) == 1:
        return parts[0]
    topics: dict[str, TopicCounts] = {}
    for part in parts:
        for topic, counts in part.topics.items():
            have = topics.get(topic)
            topics[topic] = (
                counts
                if have is None
                else TopicCounts(
                    have.unique + counts.unique,
                    have.window_duplicates + counts.window_duplicates,
                    have.store_duplicates + counts.store_duplicates,
                )
            )
    return Counters(
        sum(p.received for p in parts),
        sum(p.unique_processed for p in parts),
        sum(p.window_duplicates for p in parts),
        sum(p.store_duplicates for p in parts),
        sum(p.invalid for p in parts),
        topics,
    )
