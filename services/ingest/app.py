"""The ingest service: ``POST /publish`` validates a batch and publishes it into JetStream.

A 202 means every event is durably in the stream (JetStream acked each one) and the duplicates
JetStream dropped are on their way to the counters (their receipt was acked too).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from logmesh.common.auth import INGEST, Authenticator
from logmesh.common.failpoints import Failpoints
from logmesh.common.http import ApiError, FastJSONResponse, build_app
from logmesh.common.jetstream import NatsLink, log_subject, wait_for_stream
from logmesh.common.model import Event, MsgIdKey
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.openapi import json_content, model_schema, responses
from logmesh.common.partitions import PartitionsMismatch, partitions_of
from logmesh.common.publisher import AckedPublisher, Outgoing
from logmesh.ingest.body import check_content_type, parse_events, read_body
from logmesh.ingest.settings import IngestSettings

log = logging.getLogger("logmesh.ingest")

RETRY_AFTER = {"Retry-After": "1"}


class PublishResult(BaseModel):
    accepted: int = Field(description="events in the request")
    duplicates: int = Field(
        description="events JetStream dropped inside its window as already published through ingest (same id key)"
    )
    stored: int = Field(description="events new to the stream")


_EVENTS = {
    "oneOf": [
        model_schema(Event, request=True),
        {"type": "array", "items": model_schema(Event, request=True), "minItems": 1},
    ]
}
INGEST_PATHS: dict[str, Any] = {
    "/publish": {
        "post": {
            "summary": "Publish one event or an array of events",
            "requestBody": {"required": True, **json_content(_EVENTS)},
            "responses": responses("202", PublishResult, "400", "408", "413", "415", "422", "503"),
        }
    }
}


class Ingest:
    """Holds the NATS connection; connects in the background so the HTTP side starts at once and
    answers 503 until JetStream is reachable."""

    openapi_paths = INGEST_PATHS

    def __init__(
        self,
        settings: IngestSettings,
        registry: CollectorRegistry,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """``on_refused`` hears why ingest will not publish (a stream of another number of partitions)."""
        self.settings = settings
        self.partitions = 1
        self._several_servers = len([u for u in settings.nats_url.split(",") if u.strip()]) > 1
        self.refused: str | None = None
        self._on_refused = on_refused
        self._events = Counter(
            "logmesh_ingest_events_total",
            "Events ingest published, by JetStream's answer",
            ["outcome"],
            registry=registry,
        )
        self.publisher: AckedPublisher | None = None
        self.link = NatsLink(
            settings.nats_url,
            "logmesh-ingest",
            self._declare,
            io=settings.nats_io,
            credentials=NatsCredentials.from_settings(settings, "ingest"),
        )
        self._failpoints = Failpoints(settings.failpoints)
        self._msg_ids = MsgIdKey(_msg_id_key(settings))

    async def _declare(self, nc: Client) -> None:
        try:
            info = await wait_for_stream(nc.jetstream(), self.settings, may_update=False)
        except PartitionsMismatch as exc:
            self.refused = str(exc)
            log.error("%s", exc)
            if self._on_refused is not None:
                self._on_refused(self.refused)
            return
        # The receipts go to the partitions of the stream as it is, whoever created it.
        self.partitions = partitions_of(info.config)
        self.publisher = AckedPublisher(nc)
        await self.publisher.start()

    async def start(self) -> None:
        await self.link.start()

    async def stop(self) -> None:
        await self.link.stop()

    def _ready_publisher(self) -> tuple[Client, AckedPublisher]:
        # A connection that is moving to another server of a cluster is used all the same: the publish
        # is retried until it is back (``publisher``'s rule), or answers 503 after the bound. With one
        # server there is nowhere to move: 503 at once, as the client's retry is what helps.
        nc = self.link.nc
        if nc is not None and (nc.is_closed or (not nc.is_connected and not self._several_servers)):
            nc = None
        if self.refused is not None:
            raise ApiError(503, "unavailable", self.refused, headers=RETRY_AFTER)
        if nc is None or self.publisher is None:
            raise ApiError(503, "unavailable", "JetStream is not reachable; retry later", headers=RETRY_AFTER)
        return nc, self.publisher

    async def publish(self, request: Request) -> Response:
        s = self.settings
        check_content_type(request)
        body = await read_body(request, s.max_body_bytes, s.body_timeout)
        # Off the event loop: a 1,000-event batch takes ~10 ms to validate and encode, and in
        # `logmesh up` the query routes share this loop.
        events, outgoing = await asyncio.to_thread(_validated, body, s.max_batch, self._msg_ids)
        nc, publisher = self._ready_publisher()
        too_big = [
            {"index": i, "field": None, "message": f"event is {len(m.data)} bytes; NATS takes at most {nc.max_payload}"}
            for i, m in enumerate(outgoing)
            if len(m.data) > nc.max_payload
        ]
        if too_big:
            raise ApiError(422, "validation_error", "event(s) too large; nothing was published", details=too_big)
        try:
            # On a cluster, retried through a stream leader election with the same ids, for
            # publish_timeout at most; one server answers at once (a 503 its client retries).
            outcome = await publisher.publish_counted(
                publisher.prepare(outgoing),
                [e.topic for e in events],
                s.publish_timeout,
                partitions=self.partitions,
                retry_for=s.publish_timeout if self._several_servers else 0.0,
            )
        except Exception as exc:  # connection lost mid-batch, outbound buffer full, ...
            raise ApiError(503, "unavailable", f"publishing failed: {exc}", headers=RETRY_AFTER) from exc
        problem = outcome.problem(s.publish_timeout)
        if problem is not None:
            raise ApiError(503, "unavailable", f"{problem}; retrying is safe", headers=RETRY_AFTER)
        result = outcome.batch
        self._events.labels("stored").inc(len(events) - result.duplicates)
        self._events.labels("duplicate").inc(result.duplicates)
        self._failpoints.hit("ingest.after_publish")
        return FastJSONResponse(
            {"accepted": len(events), "duplicates": result.duplicates, "stored": len(events) - result.duplicates},
            status_code=202,
        )

    def routes(self) -> list[Route]:
        return [Route("/publish", self.publish, methods=["POST"])]

    async def readiness(self) -> dict[str, Any]:
        nc = self.link.client()
        detail: dict[str, Any] = {"ok": False, "connected": nc is not None}
        if self.refused is not None:
            detail["error"] = self.refused
        elif nc is not None:
            try:
                info = await nc.jetstream().stream_info(self.settings.stream)
                detail.update(ok=True, stream=info.config.name, messages=info.state.messages)
            except Exception as exc:
                detail["error"] = str(exc) or type(exc).__name__
        return {"jetstream": detail}


def create_app(
    settings: IngestSettings,
    registry: CollectorRegistry | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> Starlette:
    """The ingest app. It needs an ingest token unless ``--no-auth`` (else ``SettingsError``); a read
    token is optional: without one, its read routes (``/metrics``, ``/openapi.json``) answer 401."""
    auth = Authenticator.from_settings(settings, needs=[INGEST])
    registry = registry or CollectorRegistry()
    return build_app("logmesh ingest", [Ingest(settings, registry, on_refused)], registry, auth=auth)


def _msg_id_key(settings: IngestSettings) -> bytes:
    if settings.msg_id_key is not None:
        return settings.msg_id_key.get_secret_value().encode()
    log.info(
        "no --msg-id-key given: message ids are keyed with a random key for this process; a repeat sent to "
        "another ingest, or after a restart, is caught by the sink's primary key instead of JetStream's window"
    )
    return secrets.token_bytes(32)


def _validated(body: bytes, max_batch: int, msg_ids: MsgIdKey) -> tuple[list[Event], list[Outgoing]]:
    events, texts = parse_events(body, max_batch)  # each event's text exactly as sent, not encoded again
    # Ids no raw publisher can compute (MsgIdKey says why): a JetStream duplicate is ingest's own.
    return events, [
        Outgoing(log_subject(e.topic), t, msg_ids.msg_id(e.topic, e.event_id))
        for e, t in zip(events, texts, strict=True)
    ]
