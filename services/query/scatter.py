"""Asking the sinks: one partition, or every partition at once, over NATS request/reply.

With P = 1 the sink answers on ``logmesh.query.<endpoint>``; with P > 1 the owner of partition k
answers on ``partitions.query_prefix(k, P).<endpoint>`` (one subject per partition, so each request
reaches exactly the one sink that holds k). P is read from the stream's config (:class:`Topology`),
never configured here: the stream is the one place it is decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import nats.errors
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from logmesh.common.http import ApiError
from logmesh.common.nats_answers import Answer, ErrorAnswer, ask
from logmesh.common.partitions import PartitionsMismatch, partitions_of, query_prefix

log = logging.getLogger("logmesh.query")

RETRY_AFTER = {"Retry-After": "1"}
# Learning P when no snapshot has yet: a short wait, since a request is held up by it.
_LEARN_TIMEOUT = 2.0

Client_ = Callable[[], Client | None]


def unreachable() -> ApiError:
    return ApiError(503, "unavailable", "NATS is not reachable; retry later", headers=RETRY_AFTER)


class Topology:
    """The stream's number of partitions, as its config says; refreshed with every stats snapshot."""

    def __init__(self, client: Client_, stream: str) -> None:
        self._client = client
        self._stream = stream
        self.count: int | None = None

    def learn(self, config: StreamConfig) -> int:
        try:
            self.count = partitions_of(config)
        except PartitionsMismatch as exc:
            raise ApiError(503, "stream_not_partitioned", str(exc), headers=RETRY_AFTER) from None
        return self.count

    async def partitions(self) -> int:
        """P. Before JetStream has told it: 1 while the stream does not exist yet (today's single
        sink; asked again next time), 503 while JetStream does not answer (an election): a guess
        would refuse a valid cursor or ask the wrong subjects."""
        if self.count is not None:
            return self.count
        nc = self._client()
        if nc is None:
            raise unreachable()
        try:
            info = await nc.jetstream().stream_info(self._stream)
        except NotFoundError:
            return 1
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.debug("the stream's partitions are not known yet: %s", exc)
            raise ApiError(
                503,
                "unavailable",
                "JetStream has not said how the stream is partitioned yet; retry later",
                headers=RETRY_AFTER,
            ) from None
        return self.learn(info.config)


class Asker:
    def __init__(self, client: Client_, timeout: float) -> None:
        self._client = client
        self.timeout = timeout

    async def ask(
        self, partition: int, count: int, endpoint: str, query: BaseModel, timeout: float | None = None
    ) -> Answer:
        """The whole answer of the sink that holds ``partition``; ApiError when there is none: 503 no
        sink, 504 no answer in time, 404 not found, 502 the sink's own error."""
        nc = self._client()
        if nc is None:
            raise unreachable()
        who = "the sink" if count == 1 else f"the sink of partition {partition}"
        subject = f"{query_prefix(partition, count)}.{endpoint}"
        try:
            return await ask(nc, subject, query.model_dump_json().encode(), timeout or self.timeout)
        except NoRespondersError:
            running = "the sink is not running" if count == 1 else f"no sink serves partition {partition}"
            raise ApiError(503, "sink_unavailable", running, headers=RETRY_AFTER) from None
        except (NatsTimeoutError, TimeoutError):
            raise ApiError(504, "timeout", f"{who} did not answer in time", headers=RETRY_AFTER) from None
        except ErrorAnswer as exc:
            if exc.code == "404":
                raise ApiError(404, "not_found", exc.message or "not found") from None
            raise ApiError(502, "sink_error", exc.message or f"{who} could not answer") from None
        except (nats.errors.Error, OSError) as exc:  # the connection went while asking
            raise ApiError(503, "unavailable", f"NATS failed while asking {who}: {exc}", headers=RETRY_AFTER) from None

    async def ask_each(
        self,
        partitions: Iterable[int],
        count: int,
        endpoint: str,
        query: Callable[[int], BaseModel],
        timeout: float | None = None,
    ) -> tuple[dict[int, Answer], dict[int, str]]:
        """Every partition's answer, asked in parallel: the answers, and why each other partition is
        missing. Waits at most ``timeout`` (a partition that is slower is missing)."""
        chosen = list(partitions)
        results = await asyncio.gather(
            *(self.ask(k, count, endpoint, query(k), timeout) for k in chosen), return_exceptions=True
        )
        answers: dict[int, Answer] = {}
        missing: dict[int, str] = {}
        for k, result in zip(chosen, results, strict=True):
            if isinstance(result, Answer):
                answers[k] = result
            elif isinstance(result, ApiError):
                missing[k] = result.message
            elif isinstance(result, BaseException):
                raise result  # cancelled, or a failure of this code: not a missing partition
        return answers, missing


def none_answered(missing: dict[int, str]) -> ApiError:
    reasons = "; ".join(f"{k}: {why}" for k, why in sorted(missing.items()))
    return ApiError(503, "sink_unavailable", f"no partition answered ({reasons})", headers=RETRY_AFTER)
