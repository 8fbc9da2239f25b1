"""The one wait-until loop: what it returns, what it retries, when it gives up, and that a stop
request ends an async wait at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from logmesh.common.waiting import WaitTimeout, wait_until, wait_until_async


def answers(*values: object) -> Iterator[object]:
    yield from values
    while True:
        yield values[-1]


def test_returns_the_first_truthy_answer() -> None:
    replies = answers(None, 0, "", {"ready": True})
    assert wait_until(lambda: next(replies), 5, "a reply", interval=0.001) == {"ready": True}


def test_listed_errors_mean_not_yet_and_others_end_the_wait() -> None:
    failures = iter([ConnectionRefusedError("down"), ConnectionRefusedError("down")])

    def probe() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "up"

    assert wait_until(probe, 5, "the server", interval=0.001, retry_on=(OSError,)) == "up"

    def broken() -> bool:
        raise ValueError("the child exited")

    with pytest.raises(ValueError, match="the child exited"):
        wait_until(broken, 5, "a child", retry_on=(OSError,))


def test_the_timeout_says_what_was_awaited_and_the_last_answer() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"after 0.2 s waiting for the sink; last value: \[\]"):
        wait_until(lambda: [], 0.2, "the sink", interval=0.05)
    assert 0.2 <= time.monotonic() - started < 2


def test_async_wait_returns_the_answer() -> None:
    replies = answers(False, False, 7)

    async def probe() -> object:
        return next(replies)

    assert asyncio.run(wait_until_async(probe, 5, "seven", interval=0.001)) == 7


def test_a_stop_request_ends_an_async_wait_at_once() -> None:
    async def never() -> bool:
        return False

    async def scenario() -> tuple[object, float]:
        stopping = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stopping.set)
        started = time.monotonic()
        result = await wait_until_async(never, None, "nothing", interval=30, stopping=stopping)
        return result, time.monotonic() - started

    result, took = asyncio.run(scenario())
    assert result is None
    assert took < 1, f"the wait outlived the stop request by {took:.1f} s"
