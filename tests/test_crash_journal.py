"""The crash journal on its own: which message is blamed for a crash, and when it is set aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from logmesh.sink.crash_journal import CRASHES_TO_CONVICT, CrashJournal


def restarted(path: Path) -> CrashJournal:
    """The journal as the next sink finds it."""
    journal = CrashJournal(path)
    journal.load()
    return journal


def test_a_message_committed_without_a_crash_leaves_no_note(tmp_path: Path) -> None:
    path = tmp_path / "suspect.json"
    journal = restarted(path)
    journal.begin(7)
    assert path.exists()
    journal.end()
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert restarted(path).convicted(7) is None


def test_a_message_is_set_aside_after_two_crashes_and_not_after_one(tmp_path: Path) -> None:
    path = tmp_path / "suspect.json"
    restarted(path).begin(7)  # the sink dies while committing message 7
    once = restarted(path)
    assert once.convicted(7) is None  # one crash could have been a kill that came at that moment
    once.begin(7)  # and dies again
    twice = restarted(path)
    assert twice.convicted(7) == CRASHES_TO_CONVICT == 2


def test_only_the_message_being_committed_is_blamed(tmp_path: Path) -> None:
    path = tmp_path / "suspect.json"
    journal = restarted(path)
    journal.begin(7)
    journal.end()
    journal.begin(8)  # dies on 8
    again = restarted(path)
    again.begin(8)  # and on 8 again
    after = restarted(path)
    assert after.convicted(7) is None and after.convicted(8) == 2


def test_the_blame_for_a_message_starts_again_once_it_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "suspect.json"
    restarted(path).begin(7)
    journal = restarted(path)  # blamed once
    journal.begin(7)
    journal.end()  # committed this time
    assert restarted(path).convicted(7) is None


@pytest.mark.parametrize(
    "note", ["", "not json", "[]", '{"seq": 7}', '{"seq": "x", "crashes": 1}', '{"seq": 7, "crashes": null}']
)
def test_a_note_no_sink_wrote_blames_nothing_and_does_not_stop_the_sink(tmp_path: Path, note: str) -> None:
    path = tmp_path / "suspect.json"
    path.write_text(note)
    journal = restarted(path)
    assert journal.convicted(7) is None
    journal.begin(7)
    assert restarted(path).convicted(7) is None  # the new note counts from the first crash
