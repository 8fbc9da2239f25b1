"""The lease bucket: declared once with the lease's TTL, found as it is afterwards."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from logmesh.common.leases_bucket import LEASE_BUCKET, ensure_lease_bucket, lease_key
from tests.harness import NatsServer


def test_lease_key_names_the_partition() -> None:
    assert [lease_key(k) for k in (0, 3, 63)] == ["p0", "p3", "p63"]


def test_the_bucket_is_created_once_and_a_held_key_is_refused(nats_server: NatsServer) -> None:
    async def go() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            kv = await ensure_lease_bucket(js, 2.5, 1)
            status = await kv.status()
            assert status.bucket == LEASE_BUCKET
            assert status.ttl == pytest.approx(2.5)
            assert status.history == 1
            await kv.create(lease_key(1), b'{"owner": "sink-0"}')
            again = await ensure_lease_bucket(js, 9.0, 1)  # found, never changed
            assert (await again.status()).ttl == pytest.approx(2.5)
            with pytest.raises(KeyWrongLastSequenceError):
                await again.create(lease_key(1), b'{"owner": "sink-1"}')
        finally:
            await nc.close()

    asyncio.run(go())
