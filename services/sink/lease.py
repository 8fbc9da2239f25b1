"""Partition ownership: a lease per partition in the KV bucket ``LOGMESH_LEASES``.

The bucket keeps one revision per key (``p<k>``) and forgets a key a TTL after its last write (the
bucket's ``max_age``). A sink acquires a lease with ``create`` (refused while another holds it) and
renews it every third of the TTL with a compare-and-set ``update``; a refused renewal means the lease
is lost. A time-based lease does not fence by itself, so the holder trusts it only until
``valid_until`` = the time the last successful renewal was SENT + 0.8 TTL: the server wrote it later,
so the key outlives that by at least a fifth of the TTL, and a standby waits a further whole TTL of
absence before it tries. The sink commits and acks only while :meth:`Lease.valid`.

The bucket is declared create-only (a sink never changes it); its TTL is the bucket's, whatever a sink
was configured with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import nats
import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from logmesh.common.leases_bucket import lease_key

log = logging.getLogger("logmesh.sink")

# valid_until = last renewal sent + VALIDITY * TTL
VALIDITY = 0.8


async def bucket_ttl(kv: KeyValue) -> float | None:
    return (await kv.status()).ttl


class Lease:
    """One partition's lease as this sink sees it. Calls time out after a third of the TTL: a renewal
    that hangs must not outlast the validity it is meant to extend."""

    def __init__(self, kv: KeyValue, partition: int, owner: dict[str, object], ttl: float) -> None:
        self._kv = kv
        self.partition = partition
        self.key = lease_key(partition)
        self.ttl = ttl
        self._owner = owner
        self._value = b""
        self.revision: int | None = None
        self.valid_until = 0.0
        # The send time of the oldest renewal not answered since the last grant: one of those may
        # have been written all the same, and no later than it was sent.
        self._unanswered_since: float | None = None

    @property
    def held(self) -> bool:
        return self.revision is not None

    def valid(self) -> bool:
        return self.revision is not None and time.monotonic() < self.valid_until

    async def acquire(self) -> bool:
        """True when this sink now holds the lease; False while another does."""
        self._value = orjson.dumps({**self._owner, "since": datetime.now(UTC).isoformat()})
        sent = time.monotonic()
        try:
            revision = await asyncio.wait_for(self._kv.create(self.key, self._value), self.ttl / 3)
        except KeyWrongLastSequenceError:
            return False
        self._granted(revision, sent)
        return True

    async def renew(self) -> bool:
        """False when the lease is lost (another revision is there, or none). A renewal NATS does not
        answer is not a loss: validity simply runs on from the last one that was answered."""
        assert self.revision is not None, "renewing a lease not held"
        sent = time.monotonic()
        try:
            revision = await asyncio.wait_for(self._kv.update(self.key, self._value, last=self.revision), self.ttl / 3)
        except KeyWrongLastSequenceError:
            return await self._still_ours()
        except (TimeoutError, nats.errors.Error) as exc:
            if self._unanswered_since is None:
                self._unanswered_since = sent
            log.warning("lease %s not renewed (%s): valid for %.1f s more", self.key, exc, self.remaining)
            return True
        self._granted(revision, sent)
        return True

    async def _still_ours(self) -> bool:
        """A renewal that went unanswered may have been written all the same: then the key holds
        exactly our value at a revision newer than the last one we know was ours. A read a lagging
        server answers may show that older revision: it proves nothing, so it is no grant. Validity
        then counts from the oldest unanswered attempt, the earliest the write can have been sent."""
        since = self._unanswered_since
        try:
            entry = await asyncio.wait_for(self._kv.get(self.key), self.ttl / 3)
        except KeyNotFoundError:
            entry = None
        except (TimeoutError, nats.errors.Error):
            return True  # cannot tell yet: the next renewal asks again, validity runs on meanwhile
        if (
            since is not None
            and entry is not None
            and entry.value == self._value
            and entry.revision is not None
            and self.revision is not None
            and entry.revision > self.revision
        ):
            self._granted(entry.revision, since)
            return True
        self.lost()
        return False

    def _granted(self, revision: int, sent: float) -> None:
        self.revision = revision
        # Never backwards: a grant counted from an older attempt must not shorten a newer one.
        self.valid_until = max(self.valid_until, sent + VALIDITY * self.ttl)
        self._unanswered_since = None

    def lost(self) -> None:
        self.revision = None
        self.valid_until = 0.0
        self._unanswered_since = None

    @property
    def remaining(self) -> float:
        return max(0.0, self.valid_until - time.monotonic())

    async def release(self) -> None:
        """Gives the lease up on a graceful stop (best effort: it expires by itself otherwise)."""
        revision = self.revision
        self.lost()
        if revision is None:
            return
        try:
            await asyncio.wait_for(self._kv.delete(self.key, last=revision), self.ttl / 3)
        except (TimeoutError, nats.errors.Error) as exc:
            log.info("lease %s not released (%s): it expires by itself", self.key, exc)

    async def absent(self) -> bool:
        """True when nobody holds the lease now."""
        try:
            await asyncio.wait_for(self._kv.get(self.key), self.ttl / 3)
        except KeyNotFoundError:
            return True
        return False
