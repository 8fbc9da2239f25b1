"""SeqRanges against a plain set of integers: the same members, kept as the fewest sorted ranges."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logmesh.sink.seqranges import SeqRanges

seqs = st.sets(st.integers(min_value=1, max_value=200), max_size=60)


def runs(members: set[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive integers, the shape SeqRanges promises."""
    out: list[tuple[int, int]] = []
    for seq in sorted(members):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def test_an_empty_set_holds_nothing() -> None:
    empty = SeqRanges()
    assert len(empty) == 0 and empty.ranges() == [] and 1 not in empty and 0 not in empty


def test_adjacent_and_overlapping_ranges_merge() -> None:
    assert SeqRanges([(5, 7), (1, 2), (3, 4)]).ranges() == [(1, 7)]
    assert SeqRanges([(1, 10), (2, 3), (10, 12)]).ranges() == [(1, 12)]
    assert SeqRanges([(1, 2), (4, 5)]).ranges() == [(1, 2), (4, 5)]


def test_a_hole_is_not_a_member_and_filling_it_joins_the_ranges() -> None:
    committed = SeqRanges().union([1, 2, 3, 5, 6])
    assert committed.ranges() == [(1, 3), (5, 6)]
    assert [s in committed for s in range(8)] == [False, True, True, True, False, True, True, False]
    assert committed.union([4]).ranges() == [(1, 6)]


@given(st.lists(seqs, max_size=6))
def test_unions_hold_exactly_the_members_of_a_plain_set(batches: list[set[int]]) -> None:
    committed = SeqRanges()
    members: set[int] = set()
    for batch in batches:
        before = committed.ranges()
        updated = committed.union(batch)
        assert committed.ranges() == before, "union changed the set it was called on"
        committed = updated
        members |= batch
        assert committed.ranges() == runs(members)
        assert len(committed) == len(runs(members))
        assert all((s in committed) == (s in members) for s in range(-1, 203))


@given(seqs, st.lists(st.integers(min_value=1, max_value=200), max_size=30))
def test_repeats_and_disorder_in_a_batch_change_nothing(members: set[int], batch: list[int]) -> None:
    once = SeqRanges().union(members).union(set(batch))
    assert SeqRanges().union(members).union(batch + batch[::-1]).ranges() == once.ranges()


@given(seqs)
def test_ranges_rebuild_the_same_set(members: set[int]) -> None:
    committed = SeqRanges().union(members)
    assert SeqRanges(reversed(committed.ranges())).ranges() == committed.ranges()
