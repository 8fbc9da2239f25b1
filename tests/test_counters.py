"""Counters.after: the invariant holds after any batch, the topics add up to the totals, and the
counters a batch started from are left as they were (they stay the truth until the commit)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from hypothesis import given
from hypothesis import strategies as st

from logmesh.sink.counters import Counters

topics = st.sampled_from(["orders", "payments", "web.nginx", "é"])


@st.composite
def batches(draw: st.DrawFn) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """(inserted, valid, window, invalid) as a committed batch can produce them: inserted <= valid."""
    valid = Counter(draw(st.dictionaries(topics, st.integers(0, 50))))
    inserted = Counter({t: draw(st.integers(0, n)) for t, n in valid.items()})
    window = Counter(draw(st.dictionaries(topics, st.integers(0, 50))))
    return inserted, valid, window, draw(st.integers(0, 20))


def test_one_batch() -> None:
    counters, changed = Counters().after(
        inserted=Counter({"a": 2}), valid=Counter({"a": 3, "b": 1}), window=Counter({"c": 4}), invalid=2
    )
    assert changed == {"a", "b", "c"}
    assert counters.as_json() == {
        "received": 6,
        "unique_processed": 2,
        "duplicate_dropped": 6,
        "duplicates": {"window": 4, "store": 2},
        "invalid": 2,
        "arrived": 10,
        "topics": [
            {"topic": "a", "count": 2, "duplicates": {"window": 0, "store": 1}},
            {"topic": "b", "count": 0, "duplicates": {"window": 0, "store": 1}},
            {"topic": "c", "count": 0, "duplicates": {"window": 4, "store": 0}},
        ],
    }
    assert counters.invariant_holds


@given(st.lists(batches(), max_size=8))
def test_the_invariant_and_the_per_topic_sums_hold_after_every_batch(
    history: list[tuple[Counter[str], Counter[str], Counter[str], int]],
) -> None:
    counters = Counters()
    for inserted, valid, window, invalid in history:
        previous, snapshot = counters, asdict(counters)
        counters, changed = counters.after(inserted=inserted, valid=valid, window=window, invalid=invalid)
        assert asdict(previous) == snapshot, "after() changed the counters the batch started from"
        assert changed == set(valid) | set(window)
        assert counters.invariant_holds
        per_topic = counters.topics.values()
        assert sum(c.unique for c in per_topic) == counters.unique_processed
        assert sum(c.store_duplicates for c in per_topic) == counters.store_duplicates
        assert sum(c.window_duplicates for c in per_topic) == counters.window_duplicates
    totals = [(sum(i.values()), sum(v.values()), sum(w.values()), n) for i, v, w, n in history]
    assert counters.unique_processed == sum(t[0] for t in totals)
    assert counters.received == sum(t[1] + t[3] for t in totals)
    assert counters.window_duplicates == sum(t[2] for t in totals)
    assert counters.invalid == sum(t[3] for t in totals)
