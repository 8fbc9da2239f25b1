"""The query service's rate history (logmesh.query.rates): rates from successive /stats snapshots, a
gap where a reading failed, a bounded window, ``?since=`` for the newest points only, and an answer
that is what the OpenAPI description says. The browser test (tests/test_dashboard.py) draws it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from logmesh.common.query_contract import ParamError, parse_params
from logmesh.query.app import QUERY_PATHS, create_app
from logmesh.query.rates import HISTORY_PARAMS, HistoryQuery, RateRecorder
from logmesh.query.rates import RateHistory as RateHistoryModel
from logmesh.query.settings import QuerySettings


def snapshot(
    at: float,
    arrived: int,
    unique: int,
    window: int,
    store: int,
    invalid: int,
    pending: int | None = 0,
    last_seq: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "as_of": at,
        "arrived": arrived,
        "unique_processed": unique,
        "duplicates": {"window": window, "store": store},
        "invalid": invalid,
    }
    if pending is not None:
        out["consumer"] = {"pending": pending, "ack_pending": 2 * pending}
    if last_seq is not None:
        out["stream"] = {"last_seq": last_seq}
    return out


async def _no_snapshot() -> Mapping[str, Any]:
    raise AssertionError("these tests feed the snapshots themselves")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def history(start: float, keep: float = 900) -> RateRecorder:
    """A history whose first reading is at ``start``, and whose clock says it is shortly after."""
    recorder = RateRecorder(_no_snapshot, every=2.0, keep=keep, clock=Clock(start + 60))
    recorder.record(snapshot(start, 0, 0, 0, 0, 0))
    return recorder


def test_each_point_is_the_change_per_second_since_the_previous_reading() -> None:
    recorder = history(1000.0)
    recorder.record(snapshot(1002.0, 100, 80, 10, 6, 4, pending=7, last_seq=500))
    recorder.record(snapshot(1006.0, 140, 100, 30, 6, 4, pending=0, last_seq=520))
    points = recorder.answer(since=0)["points"]
    assert points == [
        {
            "t": 1002.0,
            "seconds": 2.0,
            "arrived": 50.0,
            "committed": 40.0,
            "duplicates_window": 5.0,
            "duplicates_store": 3.0,
            "invalid": 2.0,
            "appended": None,  # the first reading had no stream figures
            "pending": 7,
            "ack_pending": 14,
        },
        {
            "t": 1006.0,
            "seconds": 4.0,
            "arrived": 10.0,
            "committed": 5.0,
            "duplicates_window": 5.0,
            "duplicates_store": 0.0,
            "invalid": 0.0,
            "appended": 5.0,
            "pending": 0,
            "ack_pending": 0,
        },
    ]
    RateHistoryModel.model_validate(recorder.answer(since=0))


def test_a_failed_reading_leaves_a_gap_not_an_average_over_it() -> None:
    recorder = history(1000.0)
    recorder.record(snapshot(1002.0, 10, 10, 0, 0, 0))
    recorder.lost()
    recorder.record(snapshot(1030.0, 500, 500, 0, 0, 0))  # a new baseline, no point
    recorder.record(snapshot(1032.0, 520, 520, 0, 0, 0))
    points = recorder.answer(since=0)["points"]
    assert [(p["t"], p["seconds"], p["arrived"]) for p in points] == [(1002.0, 2.0, 5.0), (1032.0, 2.0, 10.0)]


def test_counters_going_back_or_a_repeated_snapshot_make_no_point() -> None:
    recorder = history(1000.0)
    recorder.record(snapshot(1000.0, 50, 50, 0, 0, 0))  # the same snapshot time again
    recorder.record(snapshot(1002.0, 40, 40, 0, 0, 0))  # another store file: counters went back
    recorder.record(snapshot(1004.0, 44, 44, 0, 0, 0))
    points = recorder.answer(since=0)["points"]
    assert [(p["t"], p["arrived"]) for p in points] == [(1004.0, 2.0)]


def test_no_jetstream_figures_give_null_lag_and_arrivals() -> None:
    recorder = history(1000.0)
    recorder.record(snapshot(1002.0, 2, 2, 0, 0, 0, pending=None))
    (point,) = recorder.answer(since=0)["points"]
    assert point["pending"] is None and point["ack_pending"] is None and point["appended"] is None


def test_arrivals_follow_the_stream_while_the_sink_falls_behind() -> None:
    recorder = history(1000.0)
    recorder.record(snapshot(1002.0, 0, 0, 0, 0, 0, pending=0, last_seq=100))
    recorder.record(snapshot(1004.0, 0, 0, 0, 0, 0, pending=300, last_seq=400))  # the sink commits nothing
    recorder.record(snapshot(1006.0, 500, 500, 0, 0, 0, pending=0, last_seq=500))  # and catches up
    recorder.record(snapshot(1008.0, 500, 500, 0, 0, 0, pending=0, last_seq=7))  # another stream: no rate
    points = recorder.answer(since=0)["points"]
    assert [(p["appended"], p["committed"], p["pending"]) for p in points[1:]] == [
        (150.0, 0.0, 300),
        (50.0, 250.0, 0),
        (None, 0.0, 0),
    ]


def test_the_window_keeps_only_the_last_minutes() -> None:
    clock = Clock(0.0)
    recorder = RateRecorder(_no_snapshot, every=2.0, keep=60, clock=clock)
    for i in range(200):
        clock.now = 2.0 * i + 0.5
        recorder.record(snapshot(2.0 * i, i, i, 0, 0, 0))
    points = recorder.answer()["points"]
    assert [p["t"] for p in points] == [2.0 * i for i in range(170, 200)]
    # Readings stopped (the sink is down): the points age out of the answer all the same.
    clock.now += 50
    assert [p["t"] for p in recorder.answer()["points"]] == [2.0 * i for i in range(195, 200)]


def test_since_gives_only_newer_points() -> None:
    recorder = history(1000.0)
    for i in range(1, 6):
        recorder.record(snapshot(1000.0 + 2 * i, i, i, 0, 0, 0))
    assert [p["t"] for p in recorder.answer(since=1006.0)["points"]] == [1008.0, 1010.0]
    assert recorder.answer(since=1010.0)["points"] == []


def refusal(raw: str) -> ParamError | None:
    """What ``GET /stats/history?since=<raw>`` is refused with, if it is; the query string encoded
    as a client would (lone surrogates as the bytes a careless one sends)."""
    query = urlencode({"since": raw}, errors="surrogatepass").encode()
    scope = {"type": "http", "method": "GET", "path": "/stats/history", "query_string": query, "headers": []}
    try:
        parse_params(HistoryQuery, HISTORY_PARAMS, Request(scope).query_params.multi_items())
    except ParamError as exc:
        return exc
    return None


@given(st.text(st.characters(codec=None), max_size=30) | st.from_regex(r"[0-9]{1,12}(\.[0-9]{1,9})?", fullmatch=True))
def test_since_is_a_plain_unix_time_or_a_clear_422(raw: str) -> None:
    exc = refusal(raw)
    if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,9})?", raw, flags=re.ASCII):
        assert exc is None
    else:
        assert exc is not None, raw
        assert exc.name == "since" and "Unix time" in exc.message


@pytest.mark.parametrize(
    "raw",
    [
        "١٢",
        "1e9",
        "nan",
        "inf",
        "-1",
        "1.",
        " 1",
        "1\n",
        "\N{MATHEMATICAL DOUBLE-STRUCK DIGIT ONE}",
        "1\x00",
        "\ud800",
        "1" * 13,
    ],
)
def test_nasty_since_values_are_refused(raw: str) -> None:
    exc = refusal(raw)
    assert exc is not None and exc.name == "since"


def test_the_route_is_served_and_described() -> None:
    assert "/stats/history" in QUERY_PATHS

    async def ask() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        app = create_app(QuerySettings(no_auth=True))  # no lifespan: the recorder is not started, the history is empty
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            answer = await client.get("/stats/history")
            refused = await client.get("/stats/history", params={"since": "yesterday"})
            spec = (await client.get("/openapi.json")).json()
            return answer, refused, spec

    answer, refused, spec = asyncio.run(ask())
    operation = spec["paths"]["/stats/history"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RateHistory")
    assert answer.status_code == 200
    assert answer.json() == {"interval_seconds": 2.0, "window_seconds": 900, "points": []}
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "since"
    assert set(spec["components"]["schemas"]["RatePoint"]["properties"]) == {
        "t",
        "seconds",
        "arrived",
        "committed",
        "duplicates_window",
        "duplicates_store",
        "invalid",
        "appended",
        "pending",
        "ack_pending",
    }
