"""NATS connections: credentials, retries until the server answers, a prompt stop, draining on close.

Also the one import place of the subjects (``subjects``) and the stream setup (``stream_setup``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, overload
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.natsio import NatsIo
from logmesh.common.stream_setup import (
    ConsumerInTheWay,
    StoppedWaiting,
    ensure_consumer,
    ensure_stream,
    stream_config,
    wait_for_stream,
)
from logmesh.common.subjects import (
    LOG_SUBJECT_PREFIX,
    LOG_SUBJECTS,
    MSG_ID_HEADER,
    QUERY_SUBJECT_PREFIX,
    RECEIPT_SUBJECT,
    SINK_SERVICE_NAME,
    SOURCE_HEADER,
    log_subject,
)

if TYPE_CHECKING:
    from logmesh.common.fastnats import FastClient

__all__ = [
    "LOG_SUBJECTS",
    "LOG_SUBJECT_PREFIX",
    "MSG_ID_HEADER",
    "QUERY_SUBJECT_PREFIX",
    "RECEIPT_SUBJECT",
    "SINK_SERVICE_NAME",
    "SOURCE_HEADER",
    "ConsumerInTheWay",
    "NatsLink",
    "StoppedWaiting",
    "close",
    "connect",
    "ensure_consumer",
    "ensure_stream",
    "log_subject",
    "shown_url",
    "stream_config",
    "wait_for_stream",
]

log = logging.getLogger("logmesh.nats")


def shown_url(url: str) -> str:
    """A NATS URL (or comma-separated list) fit for a log line: a password or token in it is
    replaced, so credentials given in the URL never reach the logs."""
    shown = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if "@" not in parts.netloc:
            shown.append(server.strip())
            continue
        user = f"{parts.username}:***" if parts.password is not None else "***"
        host = parts.netloc.rpartition("@")[2]
        shown.append(urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment)))
    return ",".join(shown)


@overload
async def connect(
    url: str,
    name: str,
    *,
    io: Literal["fast"] = "fast",
    stopping: asyncio.Event | None = None,
    credentials: NatsCredentials | None = None,
) -> FastClient: ...


@overload
async def connect(
    url: str,
    name: str,
    *,
    io: NatsIo,
    stopping: asyncio.Event | None = None,
    credentials: NatsCredentials | None = None,
) -> Client: ...


async def connect(
    url: str,
    name: str,
    *,
    io: NatsIo = "fast",
    stopping: asyncio.Event | None = None,
    credentials: NatsCredentials | None = None,
) -> Client:
    """Connects, retrying until the server answers, so services may start in any order; gives up with
    ``StoppedWaiting`` as soon as ``stopping`` is set. Once connected, the client reconnects by itself
    for ever. ``io`` picks the hot paths' implementation (see ``natsio``): the fast client, or an
    ordinary nats-py one. ``credentials``: who connects (user, TLS, inbox prefix)."""
    make_client = _client_class(io)
    credentials = credentials or NatsCredentials()
    options = credentials.connect_options()
    delay = 0.1
    warned = False
    connected = False

    def waiting(exc: BaseException) -> None:
        nonlocal warned
        if warned:
            return
        warned = True
        text = str(exc) or type(exc).__name__
        if "authorization violation" in text.lower() or "authentication" in text.lower():
            log.error(
                "NATS at %s refused %s (%s): check the user and password or the credentials file; retrying",
                shown_url(url),
                credentials.shown(),
                text,
            )
        else:
            log.warning("waiting for NATS at %s: %s", shown_url(url), text)

    async def on_error(exc: Exception) -> None:
        if connected:
            log.warning("NATS error (%s): %s", name, exc or type(exc).__name__)
        else:  # nats-py retries the first connection by itself: say it once
            waiting(exc)

    while True:
        nc = make_client()

        async def on_disconnect(nc: Client = nc) -> None:
            if not (nc.is_closed or nc.is_draining):
                log.warning("NATS connection lost (%s); reconnecting", name)

        async def on_reconnect() -> None:
            log.info("NATS reconnected (%s)", name)

        try:
            abandoned = await _unless_stopping(
                nc.connect(
                    servers=[u.strip() for u in url.split(",")],
                    name=name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works; the stub says int
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **options,
                ),
                stopping,
                nc,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            waiting(exc)
        else:
            if not abandoned:
                connected = True
                log.info("%s connected to %s (%s NATS path)", name, shown_url(url), io)
                return nc
        if stopping is not None and stopping.is_set():
            raise StoppedWaiting(f"stopped while waiting for NATS at {shown_url(url)}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _client_class(io: NatsIo) -> type[Client]:
    if io == "plain":
        return Client
    # Imported only for the fast path: it checks nats-py's internals, which the plain path does not need.
    from logmesh.common.fastnats import FastClient

    return FastClient


async def _unless_stopping(connecting: Awaitable[None], stopping: asyncio.Event | None, nc: Client) -> bool:
    """Awaits ``connecting``, or abandons it (and closes ``nc``) once ``stopping`` is set: then True."""
    if stopping is None:
        await connecting
        return False
    attempt = asyncio.ensure_future(connecting)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.wait({attempt})
            with contextlib.suppress(nats.errors.Error, OSError, RuntimeError):
                await nc.close()
    if attempt.cancelled():
        return True
    attempt.result()
    return False


async def close(nc: Client) -> None:
    """Drains (pending messages are handled, publishes flushed) when connected; otherwise just closes,
    since there is nothing to drain to while the server is away."""
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            await nc.drain()
            return
    except (nats.errors.Error, TimeoutError, OSError, RuntimeError) as exc:
        log.warning("drain failed (%s); closing", exc or type(exc).__name__)
    # The socket may already be gone (uvloop then raises RuntimeError); closing only releases the
    # client's tasks.
    with contextlib.suppress(nats.errors.Error, OSError, RuntimeError):
        await nc.close()


class NatsLink:
    """A connection made in the background, so that an HTTP service starts at once and answers 503
    until NATS is reachable; ``on_connect`` finishes the setup (declare the stream, ...)."""

    def __init__(
        self,
        url: str,
        name: str,
        on_connect: Callable[[Client], Awaitable[None]] | None = None,
        *,
        io: NatsIo = "fast",
        credentials: NatsCredentials | None = None,
    ) -> None:
        self.url, self.name, self.io, self.credentials = url, name, io, credentials
        self.nc: Client | None = None
        self._on_connect = on_connect
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        nc = await connect(self.url, self.name, io=self.io, stopping=self._stopping, credentials=self.credentials)
        if self._on_connect is not None:
            await self._on_connect(nc)
        self.nc = nc

    def client(self) -> Client | None:
        """The connection, while it is up."""
        return self.nc if self.nc is not None and self.nc.is_connected else None

    async def stop(self) -> None:
        self._stopping.set()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._connecting
        if self.nc is not None:
            await close(self.nc)
