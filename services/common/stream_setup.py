"""The stream and the sink's consumer, declared idempotently by whichever service starts first.

Services only create what is missing (their NATS users may not change or delete it, see
``nats_roles``); whoever holds the admin user applies a changed shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, NotFoundError

from logmesh.common.partitions import check_partitions, partitions_of, stream_transform
from logmesh.common.settings import CommonSettings
from logmesh.common.subjects import LOG_SUBJECTS, RECEIPT_SUBJECT

log = logging.getLogger("logmesh.nats")


class StoppedWaiting(ConnectionError):
    """A stop was requested before NATS answered."""


def stream_subjects(partitions: int) -> list[str]:
    """With partitions, each partition's receipts have a subject of their own (``receipt_subject``)."""
    if partitions == 1:
        return [LOG_SUBJECTS, RECEIPT_SUBJECT]
    return [LOG_SUBJECTS, RECEIPT_SUBJECT, f"{RECEIPT_SUBJECT}.*"]


def stream_config(settings: CommonSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=stream_subjects(settings.stream_partitions),
        subject_transform=stream_transform(settings.stream_partitions),
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window,
        max_age=settings.max_age,
        max_bytes=settings.stream_max_bytes,
        # A full stream refuses new messages (ingest answers 503) rather than dropping unconsumed old ones.
        discard=DiscardPolicy.NEW,
        num_replicas=settings.replicas,
    )


_OWNED_FIELDS = ("subjects", "duplicate_window", "max_age", "max_bytes", "discard", "num_replicas")


def _differences(have: StreamConfig, want: StreamConfig) -> list[str]:
    return [
        f"{f} {getattr(have, f)} (configured {getattr(want, f)})"
        for f in _OWNED_FIELDS
        if getattr(have, f) != getattr(want, f)
    ]


async def ensure_stream(js: JetStreamContext, settings: CommonSettings, *, may_update: bool = True) -> StreamInfo:
    """Creates the stream, or updates the settings logmesh owns if they changed. A service may only
    create it (``nats_roles``): with ``may_update`` False a stream of another shape is left as it is,
    and the log says what differs and who may change it. A stream of another number of partitions
    is refused (``PartitionsMismatch``), by the admin too: it is never re-partitioned in place. A
    service not told the number (``--stream-partitions`` unset) takes the stream's."""
    if settings.duplicate_window > settings.max_age:
        raise ValueError("duplicate_window must not be longer than max_age")
    want = stream_config(settings)
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        try:
            return await js.add_stream(want)
        except BadRequestError:
            # Another service created it first, perhaps with other settings: fall through to compare.
            info = await js.stream_info(settings.stream)
    if "stream_partitions" in settings.model_fields_set:
        check_partitions(info.config, settings.stream_partitions)
    elif (found := partitions_of(info.config)) != settings.stream_partitions:
        # Not configured here: the stream's own number of partitions, which nothing changes in place.
        want = stream_config(settings.model_copy(update={"stream_partitions": found}))
    differences = _differences(info.config, want)
    if differences and may_update:
        log.info("updating stream %s to the configured settings: %s", settings.stream, "; ".join(differences))
        info = await js.update_stream(want)
    elif differences:
        log.warning(
            "stream %s differs from this service's settings (%s); only the admin user may change it "
            "(logmesh up does at start): running with the stream as it is",
            settings.stream,
            "; ".join(differences),
        )
    return info


def sink_consumer_config(
    name: str,
    *,
    ack_wait: float,
    max_ack_pending: int,
    filter_subjects: list[str] | None = None,
    inactive_threshold: float | None = None,
) -> ConsumerConfig:
    """A sink's durable pull consumer: the whole stream from its start, every message acked on its
    own, redelivered for as long as it takes; a partition's reads its filters only."""
    return ConsumerConfig(
        name=name,
        durable_name=name,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
        filter_subjects=filter_subjects,
        inactive_threshold=inactive_threshold,
    )


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    name: str,
    *,
    ack_wait: float,
    max_ack_pending: int,
) -> ConsumerInfo:
    """Declares the sink's durable pull consumer (create or update), acks explicit. A consumer whose
    fixed settings differ (an older ack policy) is replaced: the new one delivers the stream from the
    start, and the sink skips, by sequence, everything it has already committed."""
    config = sink_consumer_config(name, ack_wait=ack_wait, max_ack_pending=max_ack_pending)
    try:
        return await js.add_consumer(stream, config)
    except BadRequestError as exc:
        try:
            await js.consumer_info(stream, name)
        except NotFoundError:
            raise exc from None  # no consumer in the way: creating one is refused (a limit, ...)
        log.warning("consumer %s cannot be updated (%s); replacing it", name, exc.description)
        try:
            await js.delete_consumer(stream, name)
        except TimeoutError:  # a denied request gets no answer: only the admin user may delete
            raise ConsumerInTheWay(
                f"consumer {name} on stream {stream} has settings that cannot be updated ({exc.description}) "
                f"and this user may not delete it: delete it as the admin user (nats consumer rm {stream} {name})"
            ) from None
        return await js.add_consumer(stream, config)


class ConsumerInTheWay(RuntimeError):
    """The durable consumer must be replaced, and only the admin user may delete it."""


async def wait_for_stream(
    js: JetStreamContext,
    settings: CommonSettings,
    *,
    stopping: asyncio.Event | None = None,
    may_update: bool = True,
) -> StreamInfo:
    """Declares the stream (see :func:`ensure_stream`), retrying while JetStream is not ready yet
    (server just started, no quorum); gives up with ``StoppedWaiting`` as soon as ``stopping`` is set."""
    delay = 0.1
    warned = False
    while True:
        try:
            return await ensure_stream(js, settings, may_update=may_update)
        except (TimeoutError, nats.errors.Error, nats.js.errors.ServiceUnavailableError) as exc:
            if not warned:
                log.warning("waiting for JetStream (%s)", exc or type(exc).__name__)
                warned = True
        if stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                raise StoppedWaiting("stopped while waiting for JetStream")
        else:
            await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
