"""Running a command until SIGINT/SIGTERM: the signal only sets a flag, the command then finishes its
batch, commits, acks, drains and closes. A second signal exits at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import uvloop
from starlette.applications import Starlette

from logmesh.common.http import bound_port, make_server

log = logging.getLogger("logmesh")

Main = Callable[[asyncio.Event], Awaitable[int | None]]


def run(main: Main) -> int:
    async def runner() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stopping.is_set():
                log.warning("second %s: exiting now", sig.name)
                os._exit(128 + sig.value)
            log.info("%s received: stopping", sig.name)
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stopping) or 0

    # uvloop: the same asyncio API, a faster event loop (every service here is loop-bound).
    return uvloop.run(runner())


async def serve_http(
    app: Starlette, host: str, port: int, stopping: asyncio.Event, on_ready: Callable[[int], None] | None = None
) -> int:
    """Serves ``app`` until ``stopping`` is set; then stops taking requests, finishes those under way,
    and runs the app's shutdown."""
    server = make_server(app, host, port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            # uvicorn exits the process (SystemExit) when it cannot bind; report it instead.
            with contextlib.suppress(SystemExit):
                await serving
            log.error("HTTP server could not start on %s:%d", host, port)
            return 1
        await asyncio.sleep(0.02)
    if on_ready is not None:
        on_ready(bound_port(server))
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stop.cancel()
    await serving
    return 0
