"""Faults injected into real processes (nats-server, sink, ingest as separate OS processes, real
signals). After each run the sink's counters must equal what the stream itself holds, every distinct
event must be stored exactly once, and the invariant must hold."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from logmesh.cli.access import bearer
from logmesh.cli.workload import SendReport, Workload, make_workload, send_http, send_nats
from logmesh.common.processes import free_port
from tests.harness import (
    SERVICE_AUTH,
    SERVICE_TOKENS,
    NatsServer,
    Service,
    event,
    jetstream_info,
    settled,
    sink_request,
    stored_keys,
    stream_truth,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Background(threading.Thread):
    """Runs a coroutine (a publisher) in its own thread and event loop."""

    def __init__(self, coro_factory: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._factory = coro_factory
        self.result: SendReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = asyncio.run(self._factory())
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 120) -> SendReport:
        self.join(timeout)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", port=free_port()).start()
    yield server
    server.kill()


def sink_args(nats: NatsServer, data: Path, *extra: str) -> list[str]:
    return ["sink", "--nats-url", nats.url, "--data-dir", str(data), "--ack-wait", "1", *extra]


def ready_sink(service: Callable[..., Service], args: list[str], env: dict[str, str] | None = None) -> Service:
    """Starts a sink and waits until it answers (it has declared the stream and its consumer)."""
    sink = service(args, env)
    nats_url = args[args.index("--nats-url") + 1]
    wait_for(lambda: sink.alive() and sink_request(nats_url, "stats"), 30, "the sink to answer")
    return sink


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def record(sent: int, wanted: set[tuple[str, str]], keys: list[tuple[str, str]], stats: dict[str, Any]) -> None:
    """What a fault run sent and kept, for docs/reliability.md (test-artifacts/reliability.jsonl).
    Written before the test's own assertions, so a failing run is recorded too."""
    case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    line = {
        "case": case,
        "sent": sent,
        "distinct": len(wanted),
        "stored": len(keys),
        "lost": len(wanted - set(keys)),
        "stored_twice": len(keys) - len(set(keys)),
        "received": stats["received"],
        "window": stats["duplicates"]["window"],
        "store": stats["duplicates"]["store"],
        "invalid": stats["invalid"],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "reliability.jsonl").open("a") as f:
        f.write(orjson.dumps(line).decode() + "\n")


def assert_exact(nats_url: str, workload: Workload) -> dict[str, Any]:
    """The sink's counters equal the stream's own truth, and every distinct event is stored once."""
    truth = stream_truth(nats_url)
    stats: dict[str, Any] = sink_request(nats_url, "stats")
    assert stats["received"] == truth["received"]
    assert stats["duplicates"]["window"] == truth["window"]
    assert stats["unique_processed"] == workload.unique
    assert stats["duplicates"]["store"] == truth["received"] - workload.unique - stats["invalid"]
    assert stats["invariant_holds"]
    keys = stored_keys(nats_url)
    record(len(workload.events), {(e["topic"], e["event_id"]) for e in workload.events}, keys, stats)
    assert len(keys) == len(set(keys)) == workload.unique, "an event is missing or stored twice"
    assert set(keys) == {(e["topic"], e["event_id"]) for e in workload.events}
    return stats


def test_sink_crash_loop(nats: NatsServer, tmp_path: Path, service: Callable[..., Service]) -> None:
    """SIGKILL the sink at random moments, at least five times, during 50,000 events (35% duplicates,
    some re-sent after the window), restarting it each time."""
    data = tmp_path / "data"
    window = {"LOGMESH_DUPLICATE_WINDOW": "2"}
    sink = ready_sink(service, sink_args(nats, data), window)
    workload = make_workload(50_000, 0.35, 10, seed=11)
    publisher = Background(lambda: send_nats(nats.url, workload.batches(500), 2, show_progress=False))
    publisher.start()
    kills = 0
    rng = random.Random(5)
    while publisher.is_alive() or kills < 5:
        time.sleep(rng.uniform(0.2, 0.8))
        sink.kill()
        kills += 1
        sink = service(sink_args(nats, data), window)
    report = publisher.outcome()
    assert report.accepted == 50_000
    # Some events again, after the window: only the store can tell they are duplicates.
    late = Workload(workload.events[:2000], 0)
    wait_for(lambda: _window_passed(nats.url, late.events[0]), 30, "the 2 s window to pass")
    assert asyncio.run(send_nats(nats.url, late.batches(500), 2, show_progress=False)).accepted == 2000
    wait_for(lambda: settled(nats.url), 60, "the sink to catch up")
    stats = assert_exact(nats.url, workload)
    assert stats["duplicates"]["store"] >= 1000
    assert kills >= 5


def _window_passed(url: str, probe: dict[str, Any]) -> bool:
    """Publishing a known event again is no longer flagged by JetStream (it reaches the store)."""
    report = asyncio.run(send_nats(url, [[probe]], 1, show_progress=False))
    return report.duplicates == 0


def test_broker_crash(nats: NatsServer, tmp_path: Path, service: Callable[..., Service]) -> None:
    """SIGKILL nats-server mid-run and restart it on the same store: ingest answers 503 meanwhile, the
    client retries with the same ids, sink and ingest reconnect by themselves."""
    port = free_port()
    sink = service(sink_args(nats, tmp_path / "data"))
    ingest = service(["ingest", "--nats-url", nats.url, "--http-port", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "ingest ready")
    workload = make_workload(30_000, 0.35, 10, seed=12)
    publisher = Background(
        lambda: send_http(
            url, workload.batches(250), 2, show_progress=False, headers=bearer(SERVICE_TOKENS["LOGMESH_INGEST_TOKEN"])
        )
    )
    publisher.start()
    wait_for(lambda: jetstream_info(nats.url)[0].state.messages > 3000, 30, "publishing under way")
    nats.kill()
    wait_for(
        lambda: httpx.post(url + "/publish", json=event(), auth=SERVICE_AUTH).status_code == 503, 20, "ingest to refuse"
    )
    nats.start()
    report = publisher.outcome()
    assert report.accepted >= 30_000 and any("503" in e for e in report.errors)
    wait_for(lambda: settled(nats.url), 60, "the sink to catch up")
    assert_exact(nats.url, workload)
    assert sink.alive() and ingest.alive()


def test_ingest_crash_mid_request(nats: NatsServer, tmp_path: Path, service: Callable[..., Service]) -> None:
    """Ingest dies after JetStream stored a batch and before it answered; the client retries the
    same batch against a new ingest: every event is stored once and every copy counted."""
    ready_sink(service, sink_args(nats, tmp_path / "data"))
    port = free_port()
    # Both ingests key their message ids alike, so JetStream's window recognises the retried batch.
    key = ["--msg-id-key", "one key for both ingests, 32 chars or more"]
    args = ["ingest", "--nats-url", nats.url, "--http-port", str(port), *key]
    dying = service(args, {"LOGMESH_FAILPOINTS": "ingest.after_publish=kill"})
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "ingest ready")
    workload = make_workload(1000, 0.0, 5, seed=13)
    with pytest.raises(httpx.TransportError):
        httpx.post(url + "/publish", json=workload.events, timeout=30, auth=SERVICE_AUTH)
    assert dying.proc is not None and dying.proc.wait(10) == -9
    service(args)
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "the new ingest ready")
    answer = httpx.post(url + "/publish", json=workload.events, timeout=30, auth=SERVICE_AUTH).json()
    assert answer == {"accepted": 1000, "duplicates": 1000, "stored": 0}
    wait_for(lambda: settled(nats.url), 30, "the sink to catch up")
    stats = assert_exact(nats.url, workload)
    assert (stats["received"], stats["duplicates"]["window"]) == (1000, 1000)


def test_sink_killed_mid_transaction(nats: NatsServer, tmp_path: Path, service: Callable[..., Service]) -> None:
    """Killed between writing a batch and committing it: DuckDB recovers from its WAL, no part of the
    batch is visible, and the counters match the rows."""
    from tests.test_recovery import stored_counters

    data = tmp_path / "data"
    healthy = ready_sink(service, sink_args(nats, data))
    first = make_workload(500, 0.0, 5, seed=14)
    asyncio.run(send_nats(nats.url, first.batches(500), 1, show_progress=False))
    wait_for(lambda: settled(nats.url), 30, "the first batch committed")
    assert healthy.stop() == 0
    dying = service(sink_args(nats, data), {"LOGMESH_FAILPOINTS": "sink.mid_transaction=kill"})
    second = make_workload(500, 0.0, 5, seed=15)
    asyncio.run(send_nats(nats.url, second.batches(500), 1, show_progress=False))
    assert dying.proc is not None and dying.proc.wait(30) == -9
    after_crash = stored_counters(data / "logmesh.duckdb")
    assert after_crash == {"received": 500, "unique": 500, "store": 0, "invalid": 0, "rows": 500}
    service(sink_args(nats, data))
    wait_for(lambda: settled(nats.url), 30, "the second batch committed")
    everything = Workload(first.events + second.events, 1000)
    assert_exact(nats.url, everything)


def test_storage_failure_holds_messages_until_the_store_works(
    nats: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    """Writes start failing (a file-size limit makes every write past the current size fail, as a
    full disk does): the sink stops acking, reports not ready, keeps the messages in JetStream, and
    catches up by itself once writes work again."""
    data = tmp_path / "data"
    sink = ready_sink(service, sink_args(nats, data, "--checkpoint-threshold", "1GB"))
    first = make_workload(1000, 0.0, 5, seed=16)
    asyncio.run(send_nats(nats.url, first.batches(500), 1, show_progress=False))
    wait_for(lambda: settled(nats.url), 30, "the first events committed")
    assert sink.proc is not None
    sizes = [p.stat().st_size for p in data.iterdir()]
    resource.prlimit(sink.proc.pid, resource.RLIMIT_FSIZE, (max(sizes), resource.RLIM_INFINITY))
    second = make_workload(1000, 0.0, 5, seed=17)
    asyncio.run(send_nats(nats.url, second.batches(500), 1, show_progress=False))
    wait_for(lambda: not sink_request(nats.url, "stats")["sink"]["ready"], 30, "the sink to report the failure")
    stalled = sink_request(nats.url, "stats")
    assert stalled["received"] == 1000 and "File too large" in (stalled["sink"]["last_error"] or "")
    _, consumer = jetstream_info(nats.url)
    assert consumer.num_ack_pending + consumer.num_pending > 0  # kept in JetStream, not acked
    resource.prlimit(sink.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_for(lambda: settled(nats.url) and sink_request(nats.url, "stats")["sink"]["ready"], 60, "recovery")
    assert_exact(nats.url, Workload(first.events + second.events, 2000))
    assert sink.alive()


def test_a_full_stream_refuses_with_503_rather_than_accept(
    nats: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    """With the sink stopped and the stream at its byte limit (discard new), ingest answers 503 with
    Retry-After for what it cannot store; everything it accepted is stored once the sink runs."""
    port = free_port()
    limits = {"LOGMESH_STREAM_MAX_BYTES": "200000"}
    service(["ingest", "--nats-url", nats.url, "--http-port", str(port)], limits)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "ingest ready")
    workload = make_workload(5000, 0.0, 5, seed=18)
    accepted: list[dict[str, Any]] = []
    refused = None
    refused_batch: list[dict[str, Any]] = []
    for batch in workload.batches(100):
        resp = httpx.post(url + "/publish", json=batch, timeout=30, auth=SERVICE_AUTH)
        if resp.status_code == 503:
            refused, refused_batch = resp, batch
            break
        assert resp.status_code == 202
        accepted += batch
    assert refused is not None, "the stream never filled"
    assert refused.headers["retry-after"] and "maximum bytes" in refused.json()["error"]["message"]
    service(sink_args(nats, tmp_path / "data"), limits)
    wait_for(lambda: settled(nats.url), 30, "the sink to catch up")
    stats = sink_request(nats.url, "stats")
    keys = stored_keys(nats.url)
    record(len(accepted) + len(refused_batch), {(e["topic"], e["event_id"]) for e in accepted}, keys, stats)
    # A refused batch may have had some events stored before the stream filled: at least every
    # accepted event is stored, and nothing beyond what the stream holds.
    assert stats["unique_processed"] >= len(accepted)
    assert stats["received"] == stream_truth(nats.url)["received"]
    assert {(e["topic"], e["event_id"]) for e in accepted} <= set(keys)
    assert len(keys) == len(set(keys))


def test_a_slow_sink_is_not_redelivered_what_it_is_working_on(
    nats: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    """Each commit takes 3 s while ack_wait is 1 s: in-progress acks keep JetStream from
    redelivering the batch; and the consumer honours max_ack_pending."""
    args = sink_args(nats, tmp_path / "data", "--max-ack-pending", "300", "--batch-size", "1000")
    ready_sink(service, args, {"LOGMESH_FAILPOINTS": "sink.slow_commit=sleep:3"})
    workload = make_workload(600, 0.0, 5, seed=19)
    asyncio.run(send_nats(nats.url, workload.batches(600), 1, show_progress=False))
    peak = 0

    def done() -> bool:
        nonlocal peak
        _, c = jetstream_info(nats.url)
        peak = max(peak, c.num_ack_pending)
        return bool(c.num_pending == 0 and c.num_ack_pending == 0)

    wait_for(done, 60, "the slow sink to finish")
    _, consumer = jetstream_info(nats.url)
    assert consumer.delivered.consumer_seq == consumer.delivered.stream_seq, "something was redelivered"
    assert peak <= 300
    assert_exact(nats.url, workload)


def test_graceful_stop_under_load(nats: NatsServer, tmp_path: Path, service: Callable[..., Service]) -> None:
    """SIGTERM during load: the batch in hand commits and is acked, the connection drains, exit code 0,
    and nothing is redelivered after the restart."""
    data = tmp_path / "data"
    sink = ready_sink(service, sink_args(nats, data, "--ack-wait", "30"))
    workload = make_workload(30_000, 0.0, 10, seed=20)
    publisher = Background(lambda: send_nats(nats.url, workload.batches(500), 2, show_progress=False))
    publisher.start()
    wait_for(lambda: sink_request(nats.url, "stats")["received"] > 5000, 30, "the sink busy")
    assert sink.stop() == 0
    _, consumer = jetstream_info(nats.url)
    assert consumer.num_ack_pending == 0, "the stopped sink left delivered messages unacked"
    publisher.outcome()
    # Ready first: when the stopped sink had taken everything, the stream is settled at once.
    ready_sink(service, sink_args(nats, data, "--ack-wait", "30"))
    wait_for(lambda: settled(nats.url), 60, "the restarted sink to catch up")
    _, consumer = jetstream_info(nats.url)
    assert consumer.delivered.consumer_seq == consumer.delivered.stream_seq, "something was redelivered"
    assert_exact(nats.url, workload)


def test_a_message_that_keeps_killing_the_sink_is_set_aside(
    nats: NatsServer, tmp_path: Path, service: Callable[..., Service]
) -> None:
    """A message whose processing kills the sink (a failpoint standing for a crash on some input) is
    committed alone after two deliveries, and dead-lettered once the sink has stopped on it alone
    twice; everything else is stored and the stream keeps flowing."""
    data = tmp_path / "data"
    args = sink_args(nats, data, "--poison-after", "2")
    crash = {"LOGMESH_FAILPOINTS": "sink.poison=kill"}
    ready_sink(service, sink_args(nats, tmp_path / "declare")).stop()
    workload = make_workload(400, 0.0, 4, seed=21)
    poison = event("orders", "poison", payload={"note": "LOGMESH-POISON"})
    asyncio.run(send_nats(nats.url, [workload.events[:200], [poison], workload.events[200:]], 1, show_progress=False))
    restarts = 0
    sink = service(args, crash)
    deadline = time.monotonic() + 90
    while not settled(nats.url):
        assert time.monotonic() < deadline, "the stream stopped flowing"
        if not sink.alive():
            restarts += 1
            sink = service(args, crash)
        time.sleep(0.1)
    stats = sink_request(nats.url, "stats")
    keys = stored_keys(nats.url)
    record(401, {(e["topic"], e["event_id"]) for e in workload.events}, keys, stats)
    assert (stats["unique_processed"], stats["invalid"], stats["received"]) == (400, 1, 401)
    assert sorted(keys) == sorted((e["topic"], e["event_id"]) for e in workload.events)
    [letter] = sink_request(nats.url, "dead_letters", {"limit": 10})["dead_letters"]
    assert "stopped 2 times while processing it alone" in letter["reason"] and "LOGMESH-POISON" in letter["body"]
    assert restarts >= 3
