"""Failpoint specs: what parses, and a clear error naming the failpoint for what does not."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from logmesh.common.failpoints import POINTS, Failpoints

SERVICES = Path(__file__).resolve().parent.parent / "services"


def test_an_empty_spec_makes_every_point_a_no_op() -> None:
    for spec in ("", " ", ",", " , ,"):
        failpoints = Failpoints(spec)
        assert not any(failpoints.active(p) for p in POINTS)
        failpoints.hit("sink.after_commit")  # nothing happens


def test_several_points_with_spaces_around_the_parts() -> None:
    failpoints = Failpoints(" sink.after_commit=kill , ingest.after_publish = exit,sink.slow_commit=sleep:0.01")
    assert {p for p in POINTS if failpoints.active(p)} == {
        "sink.after_commit",
        "ingest.after_publish",
        "sink.slow_commit",
    }
    started = time.monotonic()
    failpoints.hit("sink.slow_commit")
    assert time.monotonic() - started >= 0.01


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sink.after_comit=kill", "'sink.after_comit': unknown point"),
        ("=kill", "'': unknown point"),
        ("sink.after_commit", "'sink.after_commit': unknown action ''"),
        ("sink.after_commit=explode", "'sink.after_commit': unknown action 'explode'"),
        ("sink.after_commit=kill:3", "'sink.after_commit': unknown action 'kill:3'"),
        ("sink.slow_commit=sleep", "'sink.slow_commit': unknown action 'sleep'"),
        ("sink.slow_commit=sleep:soon", "'sink.slow_commit': sleep needs a number of seconds >= 0, not 'soon'"),
        ("sink.slow_commit=sleep:-1", "'sink.slow_commit': sleep needs a number of seconds >= 0, not '-1'"),
        ("sink.slow_commit=sleep:nan", "'sink.slow_commit': sleep needs a number of seconds >= 0, not 'nan'"),
        ("sink.slow_commit=sleep:inf", "'sink.slow_commit': sleep needs a number of seconds >= 0, not 'inf'"),
        ("sink.poison=kill,sink.poison=exit", "'sink.poison': given twice"),
    ],
)
def test_a_bad_spec_names_the_failpoint_and_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Failpoints(spec)


def test_every_point_the_services_hit_is_a_known_one() -> None:
    used = {
        name
        for path in SERVICES.rglob("*.py")
        for name in re.findall(r"failpoints\.(?:hit|active)\(\"([^\"]+)\"\)", path.read_text())
    }
    assert used == POINTS
