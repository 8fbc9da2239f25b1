"""``/stats`` from a snapshot refreshed in the background, a few times a second.

Asking the sink and JetStream on every request made ``/stats`` as slow as the busiest of the three
under full load (p99 over 200 ms here): the sink's loop and JetStream's API queue behind the ingest
they are serving. A snapshot at most a fraction of a second old answers in about a millisecond and
costs the sink a few requests per second however many dashboards poll.

The snapshot is JSON, ready to send. The counters (one entry per topic: megabytes with 100,000
topics) are never parsed here, and are fetched again only when the sink has newer ones; the sink's
state and JetStream's figures, a few hundred bytes, are fetched on every refresh.

With P > 1 partitions every partition's sink is asked at once (scatter.py), each partition's counters
fetched only when they changed, and the whole made one view (gathered.py). P itself is read from the
stream's config on every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import ConsumerInfo, StreamInfo

from logmesh.common.http import ApiError
from logmesh.common.jetstream import RECEIPT_SUBJECT
from logmesh.common.nats_answers import Answer
from logmesh.common.query_contract import COUNTERS_AS_OF_HEADER, CountersQuery, NoQuery
from logmesh.query.cluster import NodeAddress, cluster_state
from logmesh.query.gathered import (
    PartitionState,
    consumers_together,
    merged_counters,
    partition_line,
    sinks_together,
    totals_of,
)
from logmesh.query.scatter import Asker, Topology, none_answered, unreachable

log = logging.getLogger("logmesh.query")

REFRESH_EVERY = 0.25
# Older than this, the snapshot is not served: the request waits for a fresh one (or fails with it).
# With very many topics a refresh takes longer, and both stretch with it (see _refresh_forever).
MAX_AGE = 1.0
# Receipts are on logmesh.receipts (P = 1) or logmesh.receipts.<k>: one filter finds both.
_RECEIPTS_FILTER = "logmesh.>"


class StatsView:
    def __init__(
        self,
        asker: Asker,
        client: Callable[[], Client | None],
        topology: Topology,
        stream: str,
        consumer: str,
        nodes: tuple[NodeAddress, ...] = (),
    ) -> None:
        self._asker = asker
        self._client = client
        self._topology = topology
        self._stream, self._consumer = stream, consumer
        self.nodes = nodes
        # The snapshot: the fields around the counters, and the counters' own fields (no braces).
        self._head = b""
        self._counters = memoryview(b"")
        self._partitions: list[PartitionState] = []
        self._taken: float | None = None
        self._took = 0.0
        self._refresher: asyncio.Task[None] | None = None

    async def body(self, **extra: Any) -> bytes:
        """The latest stats, with ``extra`` fields added, as JSON."""
        await self._fresh()
        return b"".join((self._head, self._counters, b",", memoryview(orjson.dumps(extra))[1:]))

    async def summary(self) -> dict[str, Any]:
        """The latest stats without the per-topic list, which is all that can be large: cheap to read
        however many topics there are."""
        await self._fresh()
        totals = totals_of(b"{" + bytes(self._counters) + b"}")
        head: dict[str, Any] = orjson.loads(self._head[:-1] + b"}")
        return {**head, **totals}

    async def _fresh(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        if self._taken is None or time.monotonic() - self._taken >= max(MAX_AGE, 4 * self._took):
            await self._take()  # first request, or the refresher is failing: show why

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            try:
                await self._take()
                failing = False
            except ApiError:
                pass  # NATS or the sink is down: /stats and /readyz say so
            except Exception:
                # Whatever it was, the snapshot must keep being refreshed; say it once per outage.
                if not failing:
                    log.exception("stats: the snapshot could not be refreshed")
                failing = True
            # A refresh that moves megabytes of counters waits a while before the next one.
            await asyncio.sleep(max(REFRESH_EVERY, 2 * self._took))

    def _consumer_names(self, count: int) -> dict[int, str]:
        if count == 1:
            return {0: self._consumer}
        return {k: state.consumer for k, state in enumerate(self._partitions) if state.consumer is not None}

    async def _take(self) -> None:
        nc = self._client()
        if nc is None:
            raise unreachable()
        started = time.monotonic()
        js = nc.jetstream()
        was = self._topology.count or 1
        names = self._consumer_names(was)
        stream_task = asyncio.create_task(js.stream_info(self._stream, subjects_filter=_RECEIPTS_FILTER))
        consumer_tasks = {k: asyncio.create_task(js.consumer_info(self._stream, name)) for k, name in names.items()}
        # JetStream first, the sinks' counters after: a sink acks a batch only once it is committed,
        # so counters read after a consumer state hold every batch that state shows as acked (a
        # snapshot saying "nothing pending" then never shows counters from before the last commit).
        await asyncio.wait({stream_task, *consumer_tasks.values()})
        # Read now, so that an answer JetStream refused (no consumer yet: the sink is starting) is
        # retrieved even when asking the sink fails next; an expected state is not an error to log.
        stream = stream_task.result() if stream_task.exception() is None else None
        consumers = {k: t.result() if t.exception() is None else None for k, t in consumer_tasks.items()}
        count = self._topology.learn(stream.config) if stream is not None else was
        if count != len(self._partitions):
            self._partitions = [PartitionState() for _ in range(count)]
            names, consumers = self._consumer_names(count), {}
        statuses, missing, changed = await self._ask_sinks(count)
        fields: dict[str, Any] = {"as_of": time.time()}
        if count == 1:
            fields["sink"] = orjson.Fragment(statuses[0][1])
            only = consumers.get(0)
            if only is not None:
                fields["consumer"] = _consumer(only)
            self._counters = memoryview(self._partitions[0].counters)[1:-1]
        else:
            fields["sink"] = sinks_together({k: s for k, (s, _) in statuses.items()}, missing, count)
            # A consumer the partition's owner no longer names (a new file) is not this partition's.
            consumers = {k: c for k, c in consumers.items() if names.get(k) == self._partitions[k].consumer}
            together = consumers_together({k: consumers.get(k) for k in range(count)}, count)
            if together is not None:
                fields["consumer"] = together
            if changed:
                self._counters = memoryview(merged_counters(self._partitions))
        if stream is not None:
            fields["stream"] = _stream(stream)
        fields["partitions"] = [
            partition_line(
                k, state, k not in missing, consumers.get(k), self._consumer if count == 1 else state.consumer
            )
            for k, state in enumerate(self._partitions)
        ]
        fields["cluster"] = cluster_state(stream, self.nodes)
        fields["missing_partitions"] = sorted(missing)
        self._head = orjson.dumps(fields)[:-1] + b","
        self._taken, self._took = time.monotonic(), time.monotonic() - started

    async def _ask_sinks(self, count: int) -> tuple[dict[int, tuple[dict[str, Any], bytes]], dict[int, str], bool]:
        """Each partition's status (parsed, and as sent), why the others are missing, and whether
        any partition's counters changed. With P = 1 a sink that does not answer fails the snapshot,
        as it always did; with P > 1 only when no partition answers."""
        states = self._partitions

        def counters_query(k: int) -> CountersQuery:
            return CountersQuery(unless_as_of=states[k].as_of)

        if count == 1:
            status, counters = await asyncio.gather(
                self._asker.ask(0, 1, "status", NoQuery()), self._asker.ask(0, 1, "counters", counters_query(0))
            )
            status_answers, counter_answers = {0: status}, {0: counters}
            missing: dict[int, str] = {}
        else:
            asked_status, asked_counters = await asyncio.gather(
                self._asker.ask_each(range(count), count, "status", lambda k: NoQuery()),
                self._asker.ask_each(range(count), count, "counters", counters_query),
            )
            (status_answers, missing), (counter_answers, also_missing) = asked_status, asked_counters
            missing.update((k, why) for k, why in also_missing.items() if k not in missing)
        statuses: dict[int, tuple[dict[str, Any], bytes]] = {}
        changed = False
        for k in range(count):
            if k in missing:
                continue
            try:
                parsed = _status(status_answers[k])
                changed = _keep_counters(states[k], counter_answers[k], full=count > 1) or changed
            except (KeyError, ValueError, TypeError) as exc:
                if count == 1:
                    raise ApiError(502, "sink_error", f"the sink answered what cannot be read: {exc}") from None
                log.warning("partition %d answered what cannot be read: %s", k, exc)
                missing[k] = f"its answer could not be read: {exc}"
                continue
            states[k].status = parsed
            states[k].consumer = parsed.get("consumer") if isinstance(parsed.get("consumer"), str) else None
            statuses[k] = (parsed, status_answers[k].data)
        if not statuses:
            raise none_answered(missing)
        return statuses, missing, changed


def _status(answer: Answer) -> dict[str, Any]:
    status = orjson.loads(answer.data)
    if not isinstance(status, dict):
        raise ValueError("the status is not a JSON object")
    return status


def _keep_counters(state: PartitionState, answer: Answer, full: bool) -> bool:
    """Keeps the counters the sink sent, unless it said they did not change (``null``)."""
    as_of = float(answer.headers[COUNTERS_AS_OF_HEADER])
    if answer.data == b"null":
        return False
    # With one partition the counters are served as sent, never parsed beyond their totals.
    state.fields = orjson.loads(answer.data) if full else totals_of(answer.data)
    if not isinstance(state.fields, dict):
        raise ValueError("the counters are not a JSON object")
    state.counters, state.as_of = answer.data, as_of
    return True


def _consumer(consumer: ConsumerInfo) -> dict[str, Any]:
    return {
        "name": consumer.name,
        "pending": consumer.num_pending,
        "ack_pending": consumer.num_ack_pending,
        "redelivered": consumer.num_redelivered,
    }


def _stream(stream: StreamInfo) -> dict[str, Any]:
    """Lag and size, from JetStream itself; without them the counters are still worth serving."""
    subjects: Mapping[str, int] = stream.state.subjects or {}
    return {
        "name": stream.config.name,
        # Every message in the stream, and apart: the receipts ingest writes beside the events.
        "messages": stream.state.messages,
        "receipt_messages": sum(
            n for s, n in subjects.items() if s == RECEIPT_SUBJECT or s.startswith(RECEIPT_SUBJECT + ".")
        ),
        "bytes": stream.state.bytes,
        "first_seq": stream.state.first_seq,
        "last_seq": stream.state.last_seq,
    }
