"""The query service over a partitioned stream: a real nats-server with authorization on, the stream
created with P = 3 partitions, and each partition's sink played by a small nats.micro responder that
serves canned counters, status and pages in the shapes the partitioned sink answers. The query
service runs in-process and is asked over HTTP (ASGI), as a client would.

The query connects as the ``query`` user and the responders as ``sink`` (nats_roles); the users are
rendered with the consumer name ``*``, since each partition's consumer is ``sink-p<k>-<file id>``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from prometheus_client import CollectorRegistry

from logmesh.common.embedded import EmbeddedNats
from logmesh.common.http import build_app
from logmesh.common.nats_roles import ROLES, Role, inbox_prefix, password_variable, server_authorization
from logmesh.common.openapi import openapi
from logmesh.common.partitions import consumer_filters, partition_of, query_prefix, stream_transform
from logmesh.common.query_answers import parts
from logmesh.common.query_contract import (
    COUNTERS_AS_OF_HEADER,
    CountersQuery,
    DeadLettersQuery,
    EventQuery,
    EventsQuery,
    parse_cursor,
)
from logmesh.common.waiting import wait_until_async
from logmesh.query.app import Query
from logmesh.query.settings import QuerySettings

P = 3
T = TypeVar("T")


@dataclass
class Nats:
    server: EmbeddedNats
    passwords: dict[Role, str]
    server_name: str

    async def connect(self, role: Role) -> Client:
        return await nats.connect(
            self.server.url, user=role, password=self.passwords[role], inbox_prefix=inbox_prefix(role)
        )


def _topics() -> dict[int, list[str]]:
    """Two topics per partition."""
    by: dict[int, list[str]] = {k: [] for k in range(P)}
    for i in range(200):
        topic = f"t{i}"
        if len(by[partition_of(topic, P)]) < 2:
            by[partition_of(topic, P)].append(topic)
    return by


TOPICS = _topics()
# Messages published into each partition, so that each consumer has its own pending count.
PUBLISHED = {0: 2, 1: 5, 2: 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    passwords: dict[Role, str] = {role: f"{role}-password-for-tests" for role in ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("scatter")) / "nats",
        port=0,
        owner="the tests",
        config=server_authorization(),
        env={password_variable(role): pw for role, pw in passwords.items()},
    )
    server.start_sync()
    name = ""

    async def create() -> None:
        nonlocal name
        nc = await nats.connect(server.url, user="admin", password=passwords["admin"])
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name="LOGS",
                subjects=["logs.>", "logmesh.receipts", "logmesh.receipts.*"],
                subject_transform=stream_transform(P),
            )
        )
        for k in range(P):
            await js.add_consumer(
                "LOGS",
                ConsumerConfig(
                    durable_name=f"sink-p{k}-f{k}",
                    filter_subjects=consumer_filters(k, P),
                    ack_policy=AckPolicy.EXPLICIT,
                ),
            )
            for i in range(PUBLISHED[k]):
                await js.publish(f"logs.{TOPICS[k][0]}", b"{}", headers={"Nats-Msg-Id": f"m{k}-{i}"})
        name = str(nc._server_info["server_name"])
        await nc.close()

    try:
        asyncio.run(create())
        yield Nats(server, passwords, name)
    finally:
        server.stop_sync()


# ---- a partition's sink, played from canned data -------------------------------------------------


def _event(k: int, id_: int, seq: int, topic: str) -> dict[str, Any]:
    return {
        "id": id_,
        "topic": topic,
        "event_id": f"e{seq}",
        "timestamp": "2026-01-01T00:00:00Z",
        "source": f"partition-{k}",
        "payload": {"seq": seq},
        "seq": seq,
        "stored_at": "2026-01-01T00:00:01Z",
    }


@dataclass
class FakeSink:
    k: int
    events: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    as_of: float = 1000.0
    ready: bool = True
    asked: list[str] = field(default_factory=list)
    full_counters: int = 0  # how often the counters themselves (not "unchanged") were sent
    service: Service | None = None

    def commit(self, seq: int, topic: str | None = None) -> None:
        """Stores one event with the next id (its sequence is the test's choice: a late commit)."""
        self.events.append(_event(self.k, len(self.events) + 1, seq, topic or TOPICS[self.k][0]))

    def set_counters(self, received: int, unique: int, window: int, store: int, invalid: int) -> None:
        topics = [
            {"topic": TOPICS[self.k][0], "count": unique, "duplicates": {"window": window, "store": store}},
            {"topic": TOPICS[self.k][1], "count": 0, "duplicates": {"window": 0, "store": 0}},
        ]
        self.counters = {
            "received": received,
            "unique_processed": unique,
            "duplicate_dropped": window + store,
            "duplicates": {"window": window, "store": store},
            "invalid": invalid,
            "arrived": received + window,
            "topics": sorted(topics, key=lambda t: str(t["topic"])),
            "invariant_holds": received == unique + store + invalid,
        }
        self.as_of += 1

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "last_error": None if self.ready else "catching up",
            "uptime_seconds": 10.0 + self.k,
            "last_commit_at": 2000.0 + self.k,
            "batches_committed": 10 * (self.k + 1),
            "buffered": self.k,
            "metrics_port": None,
            "store_bytes": 1000 * (self.k + 1),
            "partition": self.k,
            "partitions": P,
            "owner": f"sink-{self.k % 2}",
            "pid": 4000 + self.k,
            "consumer": f"sink-p{self.k}-f{self.k}",
            "file_id": f"f{self.k}",
        }

    def page(self, items: list[dict[str, Any]], after: int, limit: int, newest_first: bool) -> bytes:
        chosen = [i for i in reversed(items) if not after or i["id"] < after] if newest_first else None
        chosen = chosen if chosen is not None else [i for i in items if i["id"] > after]
        page = chosen[:limit]
        return parts([(i["id"], i["seq"], orjson.dumps(i)) for i in page], len(chosen) > limit)

    async def start(self, nc: Client) -> None:
        prefix = query_prefix(self.k, P)

        def endpoint(name: str) -> EndpointConfig:
            async def handle(request: Request) -> None:
                self.asked.append(name)
                await answer_with(request, name)

            return EndpointConfig(name=name, subject=f"{prefix}.{name}", handler=handle)

        async def answer_with(request: Request, name: str) -> None:
            if name == "status":
                await request.respond(orjson.dumps(self.status()))
            elif name == "counters":
                query = CountersQuery.model_validate_json(request.data)
                unchanged = query.unless_as_of == self.as_of
                self.full_counters += not unchanged
                body = b"null" if unchanged else orjson.dumps(self.counters)
                await request.respond(body, headers={COUNTERS_AS_OF_HEADER: repr(self.as_of)})
            elif name == "events":
                q = EventsQuery.model_validate_json(request.data)
                assert q.parts, "a partitioned stream is asked for parts"
                mine = [e for e in self.events if q.topic is None or e["topic"] == q.topic]
                await request.respond(self.page(mine, q.after, q.limit, q.newest_first))
            elif name == "dead_letters":
                d = DeadLettersQuery.model_validate_json(request.data)
                await request.respond(self.page(self.letters, d.after, d.limit, d.newest_first))
            elif name == "event":
                e = EventQuery.model_validate_json(request.data)
                found = [x for x in self.events if x["topic"] == e.topic and x["event_id"] == e.event_id]
                if found:
                    await request.respond(orjson.dumps(found[0]))
                else:
                    await request.respond_error("404", "not found")

        self.service = await add_service(
            nc, ServiceConfig(name="logmesh-sink", version="0.0.0", metadata={"partition": str(self.k)})
        )
        for name in ("status", "counters", "events", "event", "dead_letters"):
            await self.service.add_endpoint(endpoint(name))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None


def _sinks() -> list[FakeSink]:
    sinks = [FakeSink(k) for k in range(P)]
    for k, sink in enumerate(sinks):
        sink.set_counters(received=10 * (k + 1), unique=8 * (k + 1), window=k, store=k + 1, invalid=(k + 1) * 2 - k - 1)
    # Sequences interleave across partitions: 1..24, partition = seq % 3.
    for seq in range(1, 25):
        sinks[seq % P].commit(seq)
    for k, sink in enumerate(sinks):
        sink.letters = [
            {**_event(k, 1, 100 + k, "x"), "reason": "bad"},
            {**_event(k, 2, 110 + k, "x"), "reason": "bad"},
        ]
    return sinks


@dataclass
class Running:
    http: httpx.AsyncClient
    sinks: list[FakeSink]
    responders: Client


@asynccontextmanager
async def running(cluster: Nats, sinks: list[FakeSink]) -> AsyncIterator[Running]:
    pid = cluster.server.process.pid if cluster.server.process else 0
    settings = QuerySettings(
        nats_url=cluster.server.url,
        nats_user="query",
        nats_password=cluster.passwords["query"],
        no_auth=True,
        query_timeout=2.0,
        cluster_nodes=f"{cluster.server_name}={cluster.server.url}@{pid},n2=nats://127.0.0.1:1@7",
    )
    query = Query(settings)
    app = build_app("logmesh query", [query], CollectorRegistry())
    responders = await cluster.connect("sink")
    for sink in sinks:
        await sink.start(responders)
    await query.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://query") as http:
            await wait_until_async(lambda: _ok(query.link.client() is not None), 10, "the query connects to NATS")
            yield Running(http, sinks, responders)
    finally:
        await query.stop()
        for sink in sinks:
            await sink.stop()
        await responders.close()


async def _ok(value: bool) -> bool:
    return value


async def until(condition: Callable[[], Awaitable[T | None]], what: str) -> T:
    return await wait_until_async(condition, 10, what)


# ---- /stats --------------------------------------------------------------------------------------


def test_stats_sums_the_partitions_and_lists_each(cluster: Nats) -> None:
    async def scenario() -> None:
        async with running(cluster, _sinks()) as q:

            async def with_consumers() -> dict[str, Any] | None:
                stats: dict[str, Any] = (await q.http.get("/stats")).json()
                return stats if stats.get("consumer") else None

            # Each partition's consumer is learned from its status, then read from JetStream.
            stats = await until(with_consumers, "the consumer figures of every partition")
            counters = [s.counters for s in q.sinks]
            for name in ("received", "unique_processed", "duplicate_dropped", "invalid", "arrived"):
                assert stats[name] == sum(c[name] for c in counters), name
            assert stats["duplicates"] == {
                "window": sum(c["duplicates"]["window"] for c in counters),
                "store": sum(c["duplicates"]["store"] for c in counters),
            }
            assert [t["topic"] for t in stats["topics"]] == sorted(t for ts in TOPICS.values() for t in ts)
            assert stats["invariant_holds"] is True
            assert stats["missing_partitions"] == []
            assert stats["consumer"] == {"name": "sink-p*", "pending": sum(PUBLISHED.values()), "ack_pending": 0,
                                         "redelivered": 0}  # fmt: skip
            assert stats["sink"]["ready"] is True and stats["sink"]["batches_committed"] == 60
            assert stats["sink"]["store_bytes"] == 6000 and stats["sink"]["partitions"] == P
            assert stats["stream"]["messages"] == sum(PUBLISHED.values())
            for k, line in enumerate(stats["partitions"]):
                c = counters[k]
                assert line == {
                    "partition": k,
                    "owner": f"sink-{k % 2}",
                    "pid": 4000 + k,
                    "ready": True,
                    "received": c["received"],
                    "unique_processed": c["unique_processed"],
                    "duplicates": c["duplicates"],
                    "invalid": c["invalid"],
                    "consumer": {"name": f"sink-p{k}-f{k}", "pending": PUBLISHED[k], "ack_pending": 0},
                }
            pid = cluster.server.process.pid if cluster.server.process else None
            assert stats["cluster"] == {
                "nodes": [
                    {"name": cluster.server_name, "url": cluster.server.url, "ok": True, "pid": pid},
                    {"name": "n2", "url": "nats://127.0.0.1:1", "ok": False, "pid": 7},
                ],
                "stream_leader": cluster.server_name,
                "replicas": 1,
            }

            # Counters are fetched again only from the partition whose counters changed.
            before = [s.full_counters for s in q.sinks]
            q.sinks[1].set_counters(received=1000, unique=900, window=5, store=50, invalid=50)

            async def updated() -> dict[str, Any] | None:
                stats: dict[str, Any] = (await q.http.get("/stats")).json()
                return stats if stats["partitions"][1]["received"] == 1000 else None

            stats = await until(updated, "partition 1's new counters")
            assert stats["received"] == 10 + 1000 + 30
            assert [s.full_counters - b for s, b in zip(q.sinks, before, strict=True)] == [0, 1, 0]
            assert q.sinks[0].asked.count("counters") > 1  # asked, and answered "unchanged"

    asyncio.run(scenario())


# ---- pages ---------------------------------------------------------------------------------------


async def _all_pages(http: httpx.AsyncClient, route: str, params: dict[str, str]) -> list[dict[str, Any]]:
    pages = []
    cursor = None
    for _ in range(100):
        resp = await http.get(route, params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the pages never end")


def test_paging_through_every_partition_gives_each_event_once_in_stream_order(cluster: Nats) -> None:
    sinks = _sinks()
    # Partition 2 is behind: it commits sequences 5 and up only after later ones were shown.
    late = [e for e in sinks[2].events if e["seq"] >= 5]
    sinks[2].events = [e for e in sinks[2].events if e["seq"] < 5]

    async def scenario() -> None:
        async with running(cluster, sinks) as q:
            first = (await q.http.get("/events", params={"limit": "4"})).json()
            assert [e["seq"] for e in first["events"]] == [1, 2, 3, 4]
            assert [e["partition"] for e in first["events"]] == [1, 2, 0, 1]
            assert first["missing_partitions"] == [] and first["next_cursor"].startswith("p3.")
            second = (await q.http.get("/events", params={"limit": "4", "cursor": first["next_cursor"]})).json()
            assert [e["seq"] for e in second["events"]] == [6, 7, 9, 10]
            sinks[2].events += late  # committed now: 5 is older than what was shown
            rest = await _all_pages(q.http, "/events", {"limit": "4", "cursor": second["next_cursor"]})
            later = [e["seq"] for p in rest for e in p["events"]]
            assert 5 in later, "a late commit is still shown, on a later page"
            shown = [1, 2, 3, 4, 6, 7, 9, 10, *later]
            assert sorted(shown) == list(range(1, 25)) and len(shown) == 24
            assert all(0 < p["count"] <= 4 for p in rest[:-1])

            # With everything committed, the pages are the stream's order exactly, either way.
            oldest = await _all_pages(q.http, "/events", {"limit": "7"})
            assert [e["seq"] for p in oldest for e in p["events"]] == list(range(1, 25))
            newest = await _all_pages(q.http, "/events", {"limit": "5", "order": "desc"})
            assert [e["seq"] for p in newest for e in p["events"]] == list(range(24, 0, -1))

            letters = await _all_pages(q.http, "/dead-letters", {"limit": "2"})
            assert [(d["partition"], d["seq"]) for p in letters for d in p["dead_letters"]] == [
                (2, 112), (1, 111), (0, 110), (2, 102), (1, 101), (0, 100)
            ]  # fmt: skip

    asyncio.run(scenario())


def test_a_lookup_and_a_topic_are_asked_of_their_partition_only(cluster: Nats) -> None:
    async def scenario() -> None:
        async with running(cluster, _sinks()) as q:
            topic = TOPICS[2][0]
            event = q.sinks[2].events[0]
            for sink in q.sinks:
                sink.asked.clear()
            found = await q.http.get(f"/events/{topic}/{event['event_id']}")
            assert found.status_code == 200 and found.json() == {"partition": 2, **event}
            missing = await q.http.get(f"/events/{topic}/nope")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            page = (await q.http.get("/events", params={"topic": topic})).json()
            assert {e["topic"] for e in page["events"]} == {topic} and page["next_cursor"] is None
            # The stats snapshot (refreshed in the background) asks every partition its state.
            assert [a for a in q.sinks[2].asked if a != "status" and a != "counters"] == ["event", "event", "events"]
            for sink in q.sinks[:2]:
                assert not {"event", "events"} & set(sink.asked), sink.asked

    asyncio.run(scenario())


def test_a_missing_partition_is_named_keeps_its_place_and_makes_query_not_ready(cluster: Nats) -> None:
    async def scenario() -> None:
        async with running(cluster, _sinks()) as q:
            first = (await q.http.get("/events", params={"limit": "4"})).json()
            assert (await q.http.get("/readyz")).status_code == 200
            assert (await q.http.get("/stats")).json()["received"] == 10 + 20 + 30
            await q.sinks[1].stop()
            held = parse_cursor(first["next_cursor"])

            page = (await q.http.get("/events", params={"limit": "4", "cursor": first["next_cursor"]})).json()
            assert page["missing_partitions"] == [1]
            assert [e["seq"] for e in page["events"]] == [5, 6, 8, 9]  # partitions 2 and 0 only
            after = parse_cursor(page["next_cursor"])
            assert after[1] == held[1], "the missing partition kept its place"

            ready = await q.http.get("/readyz")
            assert ready.status_code == 503
            sink = ready.json()["checks"]["sink"]
            assert sink["ok"] is False and sink["missing_partitions"] == [1]

            async def named() -> dict[str, Any] | None:
                stats: dict[str, Any] = (await q.http.get("/stats")).json()
                return stats if stats["missing_partitions"] == [1] else None

            stats = await until(named, "/stats naming partition 1 missing")
            assert stats["partitions"][1]["ready"] is False and stats["sink"]["ready"] is False
            assert stats["received"] == 10 + 20 + 30, "a missing partition keeps its last counters"
            assert "partition 1" in stats["sink"]["last_error"]

            # Back: the items it held are shown from where it was, none lost and none twice.
            await q.sinks[1].start(q.responders)
            rest = await _all_pages(q.http, "/events", {"limit": "4", "cursor": page["next_cursor"]})
            seqs = [1, 2, 3, 4, 5, 6, 8, 9] + [e["seq"] for p in rest for e in p["events"]]
            assert sorted(seqs) == list(range(1, 25)) and len(seqs) == 24

            for sink in q.sinks:
                await sink.stop()
            gone = await q.http.get("/events")
            assert gone.status_code == 503 and gone.json()["error"]["code"] == "sink_unavailable"
            assert gone.headers["retry-after"] == "1"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("cursor", "says"),
    [
        ("abc", "next_cursor of a previous page"),
        ("p3.1.2", "next_cursor of a previous page"),
        ("p3.1.2.\u0663", "next_cursor of a previous page"),
        ("p3.1.2." + "9" * 20, "next_cursor of a previous page"),
        ("17", "made for a stream of 1 partition"),
        ("p2.1.2", "made for a stream of 2 partitions"),
        ("p4.1.2.3.4", "made for a stream of 4 partitions"),
    ],
)
def test_a_malformed_or_foreign_cursor_is_a_422(cluster: Nats, cursor: str, says: str) -> None:
    async def scenario() -> None:
        async with running(cluster, _sinks()) as q:
            for route in ("/events", "/dead-letters"):
                resp = await q.http.get(route, params={"cursor": cursor})
                assert resp.status_code == 422, resp.text
                error = resp.json()["error"]
                assert error["code"] == "validation_error" and error["message"].startswith("cursor: ")
                assert says in error["message"] and [d["field"] for d in error["details"]] == ["cursor"]

    asyncio.run(scenario())


def test_the_openapi_description_names_the_new_fields() -> None:
    spec = openapi("logmesh query", Query.openapi_paths)
    schemas = spec["components"]["schemas"]
    assert {"partitions", "cluster", "missing_partitions"} <= set(schemas["Stats"]["properties"])
    assert "missing_partitions" in schemas["EventPage"]["properties"]
    assert "missing_partitions" in schemas["DeadLetterPage"]["properties"]
    cursor = next(p for p in spec["paths"]["/events"]["get"]["parameters"] if p["name"] == "cursor")
    assert re.fullmatch(cursor["schema"]["pattern"].strip("^$"), "p3.0.17.4")
    assert re.fullmatch(cursor["schema"]["pattern"].strip("^$"), "17")
