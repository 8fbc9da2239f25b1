"""Answers of any size over NATS request/reply, against a real nats-server: one plain reply when it
fits, parts joined in order when it does not, errors and missing responders told apart."""

from __future__ import annotations

import asyncio
import os

import nats
import pytest
from nats.errors import NoRespondersError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from logmesh.common.nats_answers import PART_HEADER, ErrorAnswer, ask, respond
from tests.harness import NatsServer


@pytest.mark.timeout(60)
def test_answers_of_any_size_cross_nats_whole(nats_server: NatsServer) -> None:
    async def go() -> None:
        nc = await nats.connect(nats_server.url)
        answers = {
            b"small": b'{"a":1}',
            b"big": os.urandom(5 * 1024 * 1024 + 17),
            b"edge": b"x" * (nc.max_payload - 1024),
        }

        async def handle(request: Request) -> None:
            if request.data == b"missing":
                await request.respond_error("404", "no such thing")
            else:
                await respond(request, nc, answers[request.data], {"X-Kept": "yes"})

        service = await add_service(nc, ServiceConfig(name="answers", version="1.0.0"))
        await service.add_endpoint(EndpointConfig(name="get", subject="answers.get", handler=handle))
        try:
            for key, expected in answers.items():
                answer = await ask(nc, "answers.get", key, timeout=10)
                assert answer.data == expected and answer.headers["X-Kept"] == "yes"
                assert (PART_HEADER in answer.headers) == (key == b"big")
            with pytest.raises(ErrorAnswer) as caught:
                await ask(nc, "answers.get", b"missing", timeout=5)
            assert (caught.value.code, caught.value.message) == ("404", "no such thing")
            with pytest.raises(NoRespondersError):
                await ask(nc, "nobody.here", b"", timeout=5)
        finally:
            await service.stop()
            await nc.close()

    asyncio.run(go())
