"""Sending a workload from the command line, around the senders in ``workload``: each failure said
once per kind (not once per retry), a bounded time of failures with nothing acknowledged before
giving up, and a stop at the first SIGINT or SIGTERM. The senders retry for ever; this is where that
ends."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from logmesh.cli.runner import Stopping
from logmesh.cli.workload import Rejected, SendReport, describe_failure
from logmesh.common import embedded

log = logging.getLogger("logmesh.publish")

Send = Callable[[SendReport], Awaitable[SendReport]]

_WATCH_INTERVAL = 0.1  # how often the report is read for new failures and progress
_CANCEL_GRACE = 5.0  # seconds a cancelled sender may take to close its connections


@dataclass
class Delivery:
    report: SendReport
    total: int
    target: str
    seconds: float = 0.0
    gave_up: str | None = None  # what kept failing, when it failed too long with nothing acknowledged
    stopped_by: signal.Signals | None = None
    failed: str | None = None  # what ended the sender, when it ended with an error

    @property
    def complete(self) -> bool:
        return self.gave_up is None and self.stopped_by is None and self.failed is None

    def acknowledged(self) -> str:
        return f"{self.report.accepted:,} of {self.total:,} events acknowledged"


async def deliver(send: Send, *, total: int, target: str, give_up_after: float, stopping: Stopping) -> Delivery:
    """Runs ``send`` until it finishes, ``stopping`` is set, or it has been failing for
    ``give_up_after`` seconds with nothing acknowledged meanwhile; in the last two cases it is
    cancelled. A ``Rejected`` batch propagates."""
    report = SendReport()
    started = time.monotonic()
    sending = asyncio.ensure_future(send(report))
    stop = asyncio.ensure_future(stopping.wait())
    said: set[str] = set()
    read = acked = 0
    failing_since: float | None = None  # the first failure since the last acknowledgement
    outcome = Delivery(report, total, target)
    try:
        while True:
            await asyncio.wait({sending, stop}, timeout=_WATCH_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            now = time.monotonic()
            if report.accepted != acked:
                acked, failing_since = report.accepted, None
            for failure in report.errors[read:]:
                if failing_since is None:
                    failing_since = now
                if failure not in said:
                    said.add(failure)
                    log.warning("%s at %s; retrying for up to %g s", failure, target, give_up_after)
            read = len(report.errors)
            if sending.done():
                outcome.failed = _failure(sending)
                break
            if stopping.is_set():
                outcome.stopped_by = stopping.signal or signal.SIGINT
            elif failing_since is not None and now - failing_since >= give_up_after:
                outcome.gave_up = report.errors[-1]
            else:
                continue
            break
    finally:
        stop.cancel()
        if not sending.done():
            await _cancel(sending)
    outcome.seconds = time.monotonic() - started
    return outcome


def _failure(sending: asyncio.Future[SendReport]) -> str | None:
    """What the finished sender ended with: None for success. A batch the server refused
    (``Rejected``) is the caller's to report; any other error becomes one line, its trace in the log
    at debug level."""
    exc = sending.exception()
    if exc is None:
        return None
    if isinstance(exc, Rejected):
        raise exc
    log.debug("the sender failed", exc_info=exc)
    return describe_failure(exc)


async def _cancel(task: asyncio.Future[SendReport]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=_CANCEL_GRACE)


def nats_failure(url: str, timeout: float = 2.0) -> str | None:
    """Why no NATS server at ``url`` greets a client, in the words of the other failures; None when
    one does."""
    return embedded.nats_failure(url, timeout, describe_failure)


async def wait_for_nats(url: str, report: SendReport) -> None:
    """Returns once a NATS server at ``url`` greets a client; each failed try is recorded in
    ``report.errors`` (the caller gives up, see :func:`deliver`)."""
    delay = 0.1
    while (failure := await asyncio.to_thread(nats_failure, url)) is not None:
        report.errors.append(failure)
        report.retries += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


class OncePerMessage(logging.Filter):
    """Lets each distinct message through once: a client that reconnects twice a second says why
    once, not twice a second."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        if len(self._seen) < 1000:
            self._seen.add(message)
        return True
