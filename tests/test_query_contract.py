"""The query contract on its own: the one parameter parser and the page format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from logmesh.common.query_answers import page
from logmesh.common.query_contract import (
    DEAD_LETTERS_PARAMS,
    EVENT_PARAMS,
    EVENTS_PARAMS,
    MAX_CURSOR,
    MAX_PAGE,
    STATS_PARAMS,
    DeadLettersQuery,
    EventQuery,
    EventsQuery,
    NoQuery,
    Param,
    ParamError,
    parse_params,
)

ROUTES: list[tuple[type[BaseModel], tuple[Param, ...]]] = [
    (EventsQuery, EVENTS_PARAMS),
    (DeadLettersQuery, DEAD_LETTERS_PARAMS),
    (NoQuery, STATS_PARAMS),
]
_DIGITS = st.characters(categories=("Nd", "No"), min_codepoint=0x80).filter(str.isdigit)
_VALUES = st.one_of(
    st.text(_DIGITS, min_size=1, max_size=4),
    st.integers(min_value=-(10**80), max_value=10**80).map(str),
    st.sampled_from(["", "asc", "desc", "0", "1000", "1001", "9" * 19, "9" * 20, " 1", "1 ", "+1", "1_0", "0x10"]),
    st.text(max_size=30),
)
_NAMES = st.one_of(st.sampled_from(["limit", "cursor", "order", "topic"]), st.text(max_size=6))


@given(route=st.sampled_from(ROUTES), query=st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
@settings(max_examples=1000, deadline=None)
def test_the_parser_answers_a_request_or_a_named_error(
    route: tuple[type[BaseModel], tuple[Param, ...]], query: list[tuple[str, str]]
) -> None:
    model, params = route
    try:
        parsed: BaseModel = parse_params(model, params, query)
    except ParamError as exc:
        assert exc.message and exc.name
        assert exc.name in {n or '""' for n, _ in query} or len(exc.name) > 60
        return
    names = [n for n, _ in query]
    assert len(names) == len(set(names)) and set(names) <= {p.name for p in params}
    given_values = dict(query)
    if isinstance(parsed, EventsQuery | DeadLettersQuery):
        assert 1 <= parsed.limit <= MAX_PAGE and 0 <= parsed.after <= MAX_CURSOR
        for name in ("limit", "cursor"):
            if name in given_values:
                assert given_values[name].isascii() and given_values[name].isdigit()


def test_unicode_digits_are_refused_by_name() -> None:
    for raw in ["²", "①", "٣", "\uff11", "1²", "\u07c0"]:
        for name in ("limit", "cursor"):
            with pytest.raises(ParamError) as caught:
                parse_params(EventsQuery, EVENTS_PARAMS, [(name, raw)])
            assert caught.value.name == name


def test_path_parameters_use_the_same_parser() -> None:
    got = parse_params(EventQuery, EVENT_PARAMS, [], {"topic": "orders", "event_id": "e 1"})
    assert (got.topic, got.event_id) == ("orders", "e 1")
    with pytest.raises(ParamError, match=r"^event_id: "):
        parse_params(EventQuery, EVENT_PARAMS, [], {"topic": "orders", "event_id": " e"})
    with pytest.raises(ParamError, match=r"^topic: "):
        parse_params(EventQuery, EVENT_PARAMS, [], {"topic": "a..b", "event_id": "e"})


def test_a_page_is_json_with_its_cursor_as_a_string() -> None:
    assert json.loads(page("events", [b'{"id":7}', b'{"id":9}'], 9)) == {
        "events": [{"id": 7}, {"id": 9}],
        "count": 2,
        "next_cursor": "9",
    }
    assert json.loads(page("dead_letters", [], None)) == {"dead_letters": [], "count": 0, "next_cursor": None}
