"""The merge of partitions' parts into pages, the cursor over every partition, and the cluster_nodes
setting: the pure parts of the query service's scatter-gather, fuzzed."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logmesh.common.query_answers import parts, read_parts
from logmesh.common.query_contract import PAGE_BYTES, format_cursor, parse_cursor
from logmesh.query.cluster import parse_cluster_nodes
from logmesh.query.pages import Part, merge, read_part

# A partition's stored items: (seq, visible from page) in id order. Seqs rise with ids inside a
# partition (its consumer delivers in stream order) and interleave across partitions.
Stored = dict[int, list[tuple[int, int]]]


@st.composite
def _partitions(draw: st.DrawFn) -> Stored:
    count = draw(st.integers(2, 6))
    seqs = draw(st.permutations(list(range(1, draw(st.integers(0, 60)) + 1))))
    by_partition: dict[int, list[int]] = {k: [] for k in range(count)}
    for seq in seqs:
        by_partition[draw(st.integers(0, count - 1))].append(seq)
    late = draw(st.booleans())
    stored: Stored = {}
    for k, mine in by_partition.items():
        # Late commits: a suffix of a partition becomes visible only pages later, while other
        # partitions' higher sequences are already shown.
        visible = sorted(draw(st.lists(st.integers(0, 6), min_size=len(mine), max_size=len(mine))))
        stored[k] = [(seq, at if late else 0) for seq, at in zip(sorted(mine), visible, strict=True)]
    return stored


def _item(k: int, seq: int) -> bytes:
    return orjson.dumps({"k": k, "seq": seq})


def _part(mine: list[tuple[int, int]], k: int, after: int, limit: int, newest_first: bool, page_no: int) -> bytes:
    """What a partition's sink answers: its visible items after its last id, as query_answers.parts."""
    visible = [(i + 1, seq) for i, (seq, at) in enumerate(mine) if at <= page_no]
    if newest_first:
        chosen = [x for x in reversed(visible) if after == 0 or x[0] < after]
    else:
        chosen = [x for x in visible if x[0] > after]
    page = chosen[:limit]
    return parts([(id_, seq, _item(k, seq)) for id_, seq in page], len(chosen) > limit)


def _walk(stored: Stored, limits: list[int], newest_first: bool) -> list[list[int]]:
    """Every page, following next_cursor, until the last one after everything is visible."""
    count = len(stored)
    positions = (0,) * count
    pages: list[list[int]] = []
    for page_no in range(500):
        limit = limits[page_no % len(limits)]
        answers = {
            k: read_part(_part(mine, k, positions[k], limit, newest_first, page_no)) for k, mine in stored.items()
        }
        merged = merge(answers, positions, limit, newest_first, incomplete=False)
        assert len(merged.items) <= limit
        pages.append([orjson.loads(item)["seq"] for item in merged.items])
        for item in merged.items:
            assert orjson.loads(item)["partition"] == orjson.loads(item)["k"]
        if merged.next_cursor is None:
            assert merged.positions == positions or pages[-1], "an empty last page moved a position"
            if page_no >= 6:  # everything is visible: the walk is over
                return pages
            # Later commits are read on from where the query stood after this page.
            positions = merged.positions
            continue
        positions = parse_cursor(merged.next_cursor)
        assert positions == merged.positions
    raise AssertionError("the pages never ended")


@given(stored=_partitions(), limits=st.lists(st.integers(1, 7), min_size=1, max_size=5), desc=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_paging_returns_every_item_once(stored: Stored, limits: list[int], desc: bool) -> None:
    if desc:
        # Newest first walks back from the newest item there was at its first page: what commits
        # later is newer than where it began, for a new walk (as with one partition).
        stored = {k: [(seq, 0) for seq, _ in mine] for k, mine in stored.items()}
    pages = _walk(stored, limits, desc)
    shown = [seq for page in pages for seq in page]
    every = sorted(seq for mine in stored.values() for seq, _ in mine)
    assert sorted(shown) == every and len(shown) == len(set(shown))
    if all(at == 0 for mine in stored.values() for _, at in mine):
        # Nothing committed late: the pages are the stream's order exactly.
        assert shown == (every[::-1] if desc else every)


def test_merging_stops_where_a_partition_with_more_runs_out() -> None:
    # Partition 0 has more past seq 5; partition 1's seq 7 must wait: partition 0's next could be 6.
    got = merge(
        {
            0: Part([(1, 1, b'{"a":1}'), (2, 5, b'{"a":5}')], True),
            1: Part([(1, 3, b'{"a":3}'), (2, 7, b'{"a":7}')], False),
        },
        (0, 0),
        10,
        False,
        incomplete=False,
    )
    assert [orjson.loads(i)["a"] for i in got.items] == [1, 3, 5]
    assert got.next_cursor == "p2.2.1"


def test_a_missing_partition_keeps_its_place_and_the_page_is_not_the_last() -> None:
    got = merge({1: Part([(4, 9, b'{"a":9}')], False)}, (7, 3, 0), 10, False, incomplete=True)
    assert got.next_cursor == "p3.7.4.0"
    assert orjson.loads(got.items[0]) == {"partition": 1, "a": 9}


def test_a_page_ends_at_the_byte_bound_but_holds_one_item() -> None:
    big = b'{"x":"' + b"y" * PAGE_BYTES + b'"}'
    got = merge({0: Part([(1, 1, big), (2, 2, big)], False), 1: Part([], False)}, (0, 0), 10, False, False)
    assert len(got.items) == 1 and got.next_cursor == "p2.1.0"


@given(positions=st.lists(st.integers(0, 10**19 - 1), min_size=1, max_size=64))
def test_a_cursor_reads_back_as_it_was_made(positions: list[int]) -> None:
    assert parse_cursor(format_cursor(positions)) == tuple(positions)


BAD_CURSORS = [
    "",
    "p",
    "p2",
    "p2.1",  # says 2, holds 1
    "p2.1.2.3",
    "p1.5",
    "p65." + ".".join(["1"] * 65),
    "p2.1.-2",
    "p2.1." + "9" * 20,
    "p2.1.\u0661",  # Arabic-Indic digit one
    "p\uff12.1.2",  # fullwidth 2
    "\u2460",
    "P2.1.2",
    "p2.1.2.",
    "p2..1",
    "p2.1.2\x00",
    "p2.1.\ud800",
    "p2.1.2🙂",
    "9" * 20,
]


@pytest.mark.parametrize("raw", BAD_CURSORS)
def test_a_malformed_cursor_is_refused_with_the_rule(raw: str) -> None:
    with pytest.raises(ValueError, match="next_cursor of a previous page"):
        parse_cursor(raw)


@given(raw=st.text(max_size=40))
def test_any_text_is_a_cursor_or_refused(raw: str) -> None:
    try:
        positions = parse_cursor(raw)
    except ValueError:
        return
    assert raw.isascii() and parse_cursor(format_cursor(positions)) == positions


@given(data=st.binary(max_size=200))
@settings(max_examples=300)
def test_any_bytes_are_a_part_or_refused(data: bytes) -> None:
    try:
        items, _ = read_parts(data)
    except ValueError:
        return
    assert sum(len(item) for _, _, item in items) <= len(data)


def test_a_part_with_a_negative_length_is_refused_not_looped_over() -> None:
    with pytest.raises(ValueError, match="item header"):
        read_parts(b"0\n1 2 -8\n{}")
    with pytest.raises(ValueError, match="more items follow"):
        read_part(b"1\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_part(parts([(1, 1, b"[]")], False))


def test_cluster_nodes_setting() -> None:
    nodes = parse_cluster_nodes("n1=nats://127.0.0.1:4222@1234, n2=nats://u:secret@10.0.0.2:4222 ,n3=nats://h:1@x")
    assert [(n.name, n.url, n.pid) for n in nodes] == [
        ("n1", "nats://127.0.0.1:4222", 1234),
        ("n2", "nats://u:***@10.0.0.2:4222", None),
        ("n3", "nats://h:***@x", None),  # a password, not a pid: it is hidden
    ]
    assert parse_cluster_nodes("  ") == ()
    for bad, why in [("n1", "entry 1"), ("n1=a,,n2=b", "entry 2"), ("=x", "entry 1"), ("n1=a,n1=b", "second time")]:
        with pytest.raises(ValueError, match=why):
            parse_cluster_nodes(bad)
