"""Running a command until SIGINT/SIGTERM: the signal only sets a flag, the command then finishes its
batch, commits, acks, drains and closes. A second signal exits at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

import uvloop
from starlette.applications import Starlette

from logmesh.common.claims import Refused
from logmesh.common.http import EmbeddedServer, bound_port, make_server
from logmesh.common.settings import HttpTls
from logmesh.common.waiting import wait_until_async

log = logging.getLogger("logmesh")


class Stopping(asyncio.Event):
    """Set by the first SIGINT or SIGTERM, which it names."""

    signal: signal.Signals | None = None


Main = Callable[[Stopping], Awaitable[int | None]]


def run(main: Main) -> int:
    async def runner() -> int:
        stopping = Stopping()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stopping.is_set():
                log.warning("second %s: exiting now", sig.name)
                os._exit(128 + sig.value)
            log.info("%s received: stopping", sig.name)
            stopping.signal = sig
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stopping) or 0

    # uvloop: the same asyncio API, a faster event loop (every service here is loop-bound).
    return uvloop.run(runner())


def refuse(command: str, reason: Refused) -> int:
    """A command that cannot start says why in one line and exits non-zero."""
    print(f"logmesh {command}: {reason}", file=sys.stderr, flush=True)
    return 1


async def start_server(
    app: Starlette, listener: socket.socket, tls: HttpTls | None = None
) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    """Serves ``app`` on an already bound socket (``claims.listen_socket``), so that a port in use
    has been refused before anything started; returns once the server takes requests. HTTPS when
    ``tls`` names a certificate."""
    host, port = listener.getsockname()[:2]
    server = make_server(app, host, port, tls)
    serving = asyncio.create_task(server.serve(sockets=[listener]))

    async def started() -> bool:
        if serving.done():
            # uvicorn exits the process (SystemExit) when the app's startup fails; report it instead.
            with contextlib.suppress(SystemExit):
                await serving
            raise RuntimeError(f"HTTP server could not start on {host}:{port}")
        return bool(server.started)

    await wait_until_async(started, 30, "the HTTP server to start", interval=0.02)
    return server, serving


async def stop_server(server: EmbeddedServer, serving: asyncio.Task[None]) -> None:
    """Stops taking requests, finishes those under way, and runs the app's shutdown."""
    server.should_exit = True
    with contextlib.suppress(SystemExit):
        await serving


async def serve_http(
    app: Starlette,
    listener: socket.socket,
    stopping: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
    tls: HttpTls | None = None,
) -> int:
    """Serves ``app`` on ``listener`` until ``stopping`` is set."""
    try:
        server, serving = await start_server(app, listener, tls)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if on_ready is not None:
        on_ready(bound_port(server))
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    await stop_server(server, serving)
    return 0
