"""Reading ``/stats`` from the command line: waiting for the sink to catch up, and printing a table."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from logmesh.common.waiting import WaitTimeout, wait_until_async


async def get_stats(url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get(url.rstrip("/") + "/stats")
    resp.raise_for_status()
    result: dict[str, Any] = resp.json()
    return result


def drained(stats: dict[str, Any]) -> bool:
    """Everything in the stream was delivered, committed and acked."""
    consumer = stats.get("consumer") or {}
    return bool(consumer) and consumer["pending"] == 0 and consumer["ack_pending"] == 0


async def wait_until_drained(
    url: str,
    timeout: float,
    *,
    at_least: int = 0,
    headers: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> dict[str, Any]:
    """Polls ``/stats`` until the sink has processed everything in the stream (and at least
    ``at_least`` events arrived), or raises ``TimeoutError`` with the last figures. ``headers`` and
    ``verify`` as for the client (a read token, trusted certificates)."""
    last: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10, headers=headers, verify=verify) as client:

        async def caught_up() -> dict[str, Any] | None:
            nonlocal last
            last = await get_stats(url, client)
            return last if drained(last) and last["arrived"] >= at_least else None

        try:
            return await wait_until_async(caught_up, timeout, "the sink to catch up", retry_on=(httpx.HTTPError,))
        except WaitTimeout:
            raise WaitTimeout(f"the sink did not catch up within {timeout:g} s; last stats: {last}") from None


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_stats(stats: dict[str, Any]) -> str:
    rows = [
        ("arrived (received + window duplicates)", stats["arrived"]),
        ("received (stream messages processed)", stats["received"]),
        ("unique_processed", stats["unique_processed"]),
        ("duplicate_dropped", stats["duplicate_dropped"]),
        ("  dropped by the JetStream window", stats["duplicates"]["window"]),
        ("  dropped by the store's primary key", stats["duplicates"]["store"]),
        ("invalid (dead letters)", stats["invalid"]),
    ]
    consumer = stats.get("consumer") or {}
    if consumer:
        rows.append(("consumer pending / ack pending", f"{consumer['pending']:,} / {consumer['ack_pending']:,}"))
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {_n(value):>12}" for label, value in rows]
    topics = stats.get("topics", [])
    if topics:
        lines.append("")
        lines.append(f"  {'topic':<{width}}  {'unique':>12}  {'window dup':>10}  {'store dup':>10}")
        for t in topics:
            d = t["duplicates"]
            lines.append(f"  {t['topic']:<{width}}  {_n(t['count']):>12}  {_n(d['window']):>10}  {_n(d['store']):>10}")
    return "\n".join(lines)
