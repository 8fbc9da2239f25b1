"""Waiting for a condition, with a deadline: one loop, in a blocking form and an async form.

The condition is polled every ``interval`` seconds until it returns something truthy, which is
returned. An exception listed in ``retry_on`` counts as "not yet"; any other one propagates, which is
how a condition gives up early (a child that exited, say). Past the deadline, ``WaitTimeout`` says
what was awaited and the last answer seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, overload

T = TypeVar("T")

Errors = tuple[type[BaseException], ...]


class WaitTimeout(TimeoutError):
    pass


class _Deadline:
    """What both forms share: the clock, which errors mean "not yet", and the last answer."""

    def __init__(self, timeout: float | None, what: str, retry_on: Errors) -> None:
        self.timeout = timeout
        self.what = what
        self.retry_on = retry_on
        self.ends = None if timeout is None else time.monotonic() + timeout
        self.last: object = None

    def passed(self) -> bool:
        return self.ends is not None and time.monotonic() >= self.ends

    def pause(self, interval: float) -> float:
        """How long to sleep before the next attempt: no further than the deadline."""
        return interval if self.ends is None else max(0.0, min(interval, self.ends - time.monotonic()))

    def failure(self) -> WaitTimeout:
        return WaitTimeout(f"timed out after {self.timeout:g} s waiting for {self.what}; last value: {self.last!r}")


def wait_until(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float | None,
    what: str,
    *,
    interval: float = 0.05,
    retry_on: Errors = (),
) -> T:
    """Blocks until ``condition()`` is truthy and returns it; ``timeout=None`` waits for ever."""
    deadline = _Deadline(timeout, what, retry_on)
    while True:
        try:
            value = condition()
        except retry_on as exc:
            deadline.last = exc
        else:
            if value:
                return value
            deadline.last = value
        if deadline.passed():
            raise deadline.failure()
        time.sleep(deadline.pause(interval))


@overload
async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float | None,
    what: str,
    *,
    interval: float = ...,
    retry_on: Errors = ...,
    stopping: None = None,
) -> T: ...


@overload
async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float | None,
    what: str,
    *,
    interval: float = ...,
    retry_on: Errors = ...,
    stopping: asyncio.Event,
) -> T | None: ...


async def wait_until_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float | None,
    what: str,
    *,
    interval: float = 0.05,
    retry_on: Errors = (),
    stopping: asyncio.Event | None = None,
) -> T | None:
    """Awaits ``condition()`` until it is truthy and returns it. Given ``stopping``, returns None as
    soon as that is set: a stop request is never held up by a wait."""
    deadline = _Deadline(timeout, what, retry_on)
    while stopping is None or not stopping.is_set():
        try:
            value = await condition()
        except retry_on as exc:
            deadline.last = exc
        else:
            if value:
                return value
            deadline.last = value
        if deadline.passed():
            raise deadline.failure()
        if stopping is None:
            await asyncio.sleep(deadline.pause(interval))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), deadline.pause(interval))
    return None
