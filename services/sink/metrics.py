"""The sink's Prometheus metrics, served on a port of its own (it has no HTTP app).

The event counters are read from the same in-memory mirror of the store that ``/stats`` serves, so
the two always agree; batch sizes and commit latency are histograms; consumer lag is refreshed from
JetStream every few seconds.

With one partition the event counters are unlabeled, as they always were. With several, a sink owns
partitions for a while only (leases move them), so a sum over what it owns now would go backwards
when one leaves: each event counter (``logmesh_events_*``) then has one series per owned partition,
labeled ``partition``, monotonic on its own, and ``sum()`` over the family is this sink's total. A
series ends when its partition leaves. Per-topic counters need no label (a topic lives in one
partition). The gauges (buffered, consumer lag) are sums over what the sink owns now.
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
    partitions: int  # P, the stream's
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
        single = not owned or owned[0].partitions == 1
        # One partition: today's unlabeled series; several: one series per partition (see above).
        by: list[str] = [] if single else ["partition"]
        received = CounterMetricFamily(
            "logmesh_events_received", "Log messages processed (first deliveries)", labels=by
        )
        unique = CounterMetricFamily("logmesh_events_unique", "Distinct events stored", labels=by)
        invalid = CounterMetricFamily("logmesh_events_invalid", "Messages dead-lettered", labels=by)
        duplicates = CounterMetricFamily(
            "logmesh_events_duplicate", "Duplicates dropped, by layer", labels=["layer", *by]
        )
        for p in owned or [PartitionSample(0, 1, Counters(), False, 0, 0, 0)]:
            c, k = p.counters, [] if single else [str(p.partition)]
            received.add_metric(k, c.received)
            unique.add_metric(k, c.unique_processed)
            invalid.add_metric(k, c.invalid)
            duplicates.add_metric(["window", *k], c.window_duplicates)
            duplicates.add_metric(["store", *k], c.store_duplicates)
        yield from (received, unique, invalid, duplicates)
        per_topic = CounterMetricFamily(
            "logmesh_topic_events_unique", "Distinct events stored, by topic", labels=["topic"]
        )
        for topic, counts in sorted(total([p.counters for p in owned]).topics.items()):
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
        if single:
            return  # one partition: the sums say it all
        ready = GaugeMetricFamily("logmesh_partition_ready", "1 while the partition takes writes", labels=["partition"])
        partition_unique = CounterMetricFamily(
            "logmesh_partition_events_unique", "Distinct events stored, by partition", labels=["partition"]
        )
        for p in owned:
            ready.add_metric([str(p.partition)], int(p.ready))
            partition_unique.add_metric([str(p.partition)], p.counters.unique_processed)
        yield ready
        yield partition_unique


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
