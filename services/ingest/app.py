"""The ingest service: ``POST /publish`` validates a batch and publishes it into JetStream.

A 202 means every event is durably in the stream (JetStream acked each one) and the duplicates
JetStream dropped are on their way to the counters (their receipt was acked too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.failpoints import Failpoints
from services.common.fastnats import FastClient
from services.common.http import EXCEPTION_HANDLERS, ApiError, FastJSONResponse, health_routes, openapi_route
from services.common.jetstream import close, connect, log_subject, wait_for_stream
from services.common.model import EVENT_ADAPTER
from services.common.openapi import HEALTH_PATHS, INGEST_PATHS, openapi
from services.common.publisher import AckedPublisher, Outgoing, duplicates_by_topic, receipt_message
from services.ingest.body import check_content_type, parse_events, read_body
from services.ingest.settings import IngestSettings

log = logging.getLogger("logmesh.ingest")

RETRY_AFTER = {"Retry-After": "1"}


class Ingest:
    """Holds the NATS connection; connects in the background so the HTTP side starts at once and
    answers 503 until JetStream is reachable."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.nc: FastClient | None = None
        self.publisher: AckedPublisher | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failpoints = Failpoints(settings.failpoints)

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        nc = await connect(self.settings.nats_url, "logmesh-ingest", stopping=self._stopping)
        await wait_for_stream(nc.jetstream(), self.settings)
        publisher = AckedPublisher(nc)
        await publisher.start()
        self.nc, self.publisher = nc, publisher
        log.info("ingest connected to %s", self.settings.nats_url)

    async def stop(self) -> None:
        self._stopping.set()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._connecting
        if self.nc is not None:
            await close(self.nc)

    def _ready_publisher(self) -> tuple[FastClient, AckedPublisher]:
        if self.nc is None or self.publisher is None or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "JetStream is not reachable; retry later", headers=RETRY_AFTER)
        return self.nc, self.publisher

    async def publish(self, request: Request) -> Response:
        s = self.settings
        check_content_type(request)
        body = await read_body(request, s.max_body_bytes, s.body_timeout)
        events, _ = parse_events(body, s.max_batch)
        nc, publisher = self._ready_publisher()
        outgoing = [Outgoing(log_subject(e.topic), EVENT_ADAPTER.dump_json(e), e.msg_id) for e in events]
        too_big = [
            {"index": i, "field": None, "message": f"event is {len(m.data)} bytes; NATS takes at most {nc.max_payload}"}
            for i, m in enumerate(outgoing)
            if len(m.data) > nc.max_payload
        ]
        if too_big:
            raise ApiError(422, "validation_error", "event(s) too large; nothing was published", details=too_big)
        try:
            result = await publisher.publish(outgoing, s.publish_timeout)
        except Exception as exc:  # connection lost mid-batch, outbound buffer full, ...
            raise ApiError(503, "unavailable", f"publishing failed: {exc}", headers=RETRY_AFTER) from exc
        duplicates = duplicates_by_topic([e.topic for e in events], result)
        if duplicates:
            await self._send_receipt(publisher, duplicates)
        if not result.complete:
            missing = sum(1 for r in result.results if r is None)
            reason = result.first_error() or f"{missing} acknowledgement(s) did not arrive in {s.publish_timeout:g} s"
            raise ApiError(
                503,
                "unavailable",
                f"JetStream did not store every event ({reason}); retrying is safe",
                headers=RETRY_AFTER,
            )
        self._failpoints.hit("ingest.after_publish")
        return FastJSONResponse(
            {"accepted": len(events), "duplicates": result.duplicates, "stored": len(events) - result.duplicates},
            status_code=202,
        )

    async def _send_receipt(self, publisher: AckedPublisher, duplicates: Any) -> None:
        receipt = await publisher.publish([receipt_message(duplicates)], self.settings.publish_timeout)
        if not receipt.complete:
            raise ApiError(
                503, "unavailable", "the duplicate receipt was not stored; retrying is safe", headers=RETRY_AFTER
            )

    async def readiness(self) -> dict[str, Any]:
        connected = self.nc is not None and self.nc.is_connected
        detail: dict[str, Any] = {"ok": False, "connected": connected}
        if connected and self.nc is not None:
            try:
                info = await self.nc.jetstream().stream_info(self.settings.stream)
                detail.update(ok=True, stream=info.config.name, messages=info.state.messages)
            except Exception as exc:
                detail["error"] = str(exc) or type(exc).__name__
        return {"jetstream": detail}


def ingest_routes(ingest: Ingest) -> list[Route]:
    return [Route("/publish", ingest.publish, methods=["POST"])]


def create_app(settings: IngestSettings) -> Starlette:
    ingest = Ingest(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingest.start()
        yield
        await ingest.stop()

    spec = openapi("logmesh ingest", INGEST_PATHS, HEALTH_PATHS)
    return Starlette(
        routes=[*ingest_routes(ingest), *health_routes([ingest.readiness]), openapi_route(spec)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
