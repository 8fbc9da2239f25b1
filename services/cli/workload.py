"""The load generator's events and the two ways to send them: HTTP ``POST /publish`` or straight into
JetStream. Both retry a failed batch with the same ids, which is always safe."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
import orjson
from nats.js.errors import NotFoundError
from tqdm import tqdm

from logmesh.common.jetstream import close, connect, log_subject, shown_url
from logmesh.common.model import msg_id
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.natsio import NatsIo
from logmesh.common.partitions import partitions_of
from logmesh.common.publisher import AckedPublisher, Outgoing, Prepared

LEVELS = ("debug", "info", "info", "info", "warning", "error")


@dataclass(frozen=True)
class Workload:
    events: list[dict[str, Any]]
    unique: int
    run_id: str = ""  # the prefix of every event id: the same run id sends the same events again

    @property
    def duplicates(self) -> int:
        return len(self.events) - self.unique

    def batches(self, size: int) -> list[list[dict[str, Any]]]:
        return [self.events[i : i + size] for i in range(0, len(self.events), size)]


def make_workload(events: int, dup: float, topics: int, run_id: str | None = None, seed: int = 7) -> Workload:
    """``events`` events of which a fraction ``dup`` repeat an earlier one (same topic and id)."""
    if not 0 <= dup < 1:
        raise ValueError("dup must be in [0, 1)")
    rng = random.Random(seed)
    run = run_id or uuid.uuid4().hex[:8]
    unique = events - round(events * dup)
    start = datetime.now(UTC).replace(microsecond=0)
    originals = [
        {
            "topic": f"topic_{i % topics}",
            "event_id": f"{run}-{i:09d}",
            "timestamp": (start + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
            "source": f"publisher-{i % 4}",
            "payload": {"level": LEVELS[i % len(LEVELS)], "message": f"request {i} handled", "n": i},
        }
        for i in range(unique)
    ]
    out = originals + [rng.choice(originals) for _ in range(events - unique)] if unique else []
    rng.shuffle(out)
    return Workload(out, unique, run)


@dataclass
class SendReport:
    """What a sender has done so far; a caller may pass its own and watch it fill."""

    accepted: int = 0
    duplicates: int = 0
    retries: int = 0
    first_send: float = 0.0  # wall-clock time of the first send, to compare with the sink's commits
    errors: list[str] = field(default_factory=list)  # one entry per failed attempt, saying what failed


class Rejected(Exception):
    """The server refused a batch for a reason retrying cannot fix."""


def _progress(total: int, show: bool, label: str) -> tqdm:
    return tqdm(total=total, unit="ev", unit_scale=True, desc=label, disable=not show, leave=False)


def describe_failure(exc: BaseException) -> str:
    """What went wrong in words, from the OS error at the root when there is one (``connection
    refused`` rather than httpx's ``All connection attempts failed``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"unknown host ({cause.strerror})"
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__


async def send_http(
    url: str,
    batches: Sequence[Sequence[dict[str, Any]]],
    clients: int,
    *,
    show_progress: bool = True,
    report: SendReport | None = None,
    headers: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> SendReport:
    """POSTs the batches from ``clients`` concurrent senders, retrying each until it is accepted
    (for ever: the caller bounds the time, see ``logmesh.cli.delivery``). ``headers`` go with every
    request (an ``Authorization``); ``verify`` is httpx's."""
    bodies = [(orjson.dumps(list(b)), len(b)) for b in batches]
    report = report if report is not None else SendReport()
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    progress = _progress(sum(n for _, n in bodies), show_progress, "publish (HTTP)")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    report.first_send = time.time()
    headers = {"content-type": "application/json", **(headers or {})}
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=60, limits=limits, headers=headers, verify=verify
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                body, count = queue.get_nowait()
                delay = 0.2
                while True:
                    try:
                        resp = await client.post("/publish", content=body)
                    except httpx.TransportError as exc:
                        report.errors.append(describe_failure(exc))
                    else:
                        if resp.status_code == 202:
                            answer = resp.json()
                            report.accepted += answer["accepted"]
                            report.duplicates += answer["duplicates"]
                            progress.update(count)
                            break
                        if resp.status_code not in (408, 429, 503, 504):
                            raise Rejected(f"{resp.status_code}: {resp.text[:500]}")
                        report.errors.append(f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
                        delay = max(delay, float(resp.headers.get("retry-after", 0) or 0))
                    report.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

        try:
            await _all_or_none([worker() for _ in range(clients)])
        finally:
            progress.close()
    return report


async def _all_or_none(workers: list[Coroutine[Any, Any, None]]) -> None:
    """Runs the workers together; the first to fail (or a cancellation) stops the others too, so that
    none keeps sending on a client being closed."""
    tasks = [asyncio.ensure_future(w) for w in workers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# What JetStream has not acknowledged is sent again alone, by the publisher's one retry rule, for this
# long before the whole batch is (and the failure is reported, see cli/delivery.py): on a replicated
# stream a second copy of an id sent while the first is still being replicated is refused ("duplicate
# message id is in process", 409) and must be sent again once the first is stored, not with it again.
BATCH_RETRY_FOR = 2.0


async def send_nats(
    nats_url: str,
    batches: Sequence[Sequence[dict[str, Any]]],
    clients: int,
    *,
    show_progress: bool = True,
    nats_io: NatsIo = "fast",
    report: SendReport | None = None,
    credentials: NatsCredentials | None = None,
    stream: str = "LOGS",
) -> SendReport:
    """Publishes with JetStream acks (and a receipt for the duplicates, as ingest does: so it needs
    the ingest user's permissions, ``credentials``)."""
    report = report if report is not None else SendReport()
    batches_out = [
        [Outgoing(log_subject(e["topic"]), orjson.dumps(e), msg_id(e["topic"], e["event_id"])) for e in batch]
        for batch in batches
    ]
    topics = [[e["topic"] for e in batch] for batch in batches]
    nc = await connect(nats_url, "logmesh-publish", io=nats_io, credentials=credentials)
    try:
        partitions = partitions_of((await nc.jetstream().stream_info(stream)).config)
    except NotFoundError:
        await nc.close()
        raise Rejected(
            f"no JetStream stream {stream} at {shown_url(nats_url)}: start a logmesh service first"
        ) from None
    except TimeoutError:  # a user without the ingest role's permissions gets no answer
        await nc.close()
        raise Rejected(
            f"no answer about stream {stream} at {shown_url(nats_url)}: publishing with receipts needs the "
            "ingest user (--nats-user ingest, or --data-dir of logmesh up)"
        ) from None
    publisher = AckedPublisher(nc)
    await publisher.start()
    # Wire commands are built before the clock starts, as any load generator would.
    prepared: list[Prepared | None] = [publisher.prepare(b) for b in batches_out]
    progress = _progress(sum(len(b) for b in batches_out), show_progress, "publish (NATS)")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(batches_out)):
        queue.put_nowait(i)
    report.first_send = time.time()

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            delay = 0.2
            while True:
                ready = prepared[i] or publisher.prepare(batches_out[i])
                prepared[i] = None
                try:
                    outcome = await publisher.publish_counted(
                        ready, topics[i], timeout=10, partitions=partitions, retry_for=BATCH_RETRY_FOR
                    )
                except (nats.errors.Error, OSError) as exc:  # the connection is down: retry when it is back
                    problem: str | None = f"publishing failed: {exc or type(exc).__name__}"
                else:
                    problem = outcome.problem(10)
                if problem is None:
                    report.accepted += len(batches_out[i])
                    report.duplicates += outcome.batch.duplicates
                    progress.update(len(batches_out[i]))
                    break
                # Resend the whole batch with the same ids: what was stored comes back as duplicates.
                report.errors.append(problem)
                report.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    try:
        await _all_or_none([worker() for _ in range(clients)])
    finally:
        progress.close()
        await publisher.stop()
        # Drains when connected; a broker lost at this moment must not fail a send that is complete.
        await close(nc)
    return report
