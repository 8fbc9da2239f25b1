"""Finding the one message that keeps stopping the sink, without blaming the others.

A message JetStream has delivered more than ``poison_after`` times came back because a sink holding it
stopped (crashed, or was killed) before committing. Such messages are committed one at a time, and
before each the sink writes down which one it is working on. If the sink dies there, the next sink
reads the note: the message is blamed for one crash. Blamed for two, it is dead-lettered undecoded;
the first could have been a kill that merely came at that moment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CRASHES_TO_CONVICT = 2


class CrashJournal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._blame: dict[int, int] = {}

    def load(self) -> None:
        """Reads the note a stopped sink left, if any: that message is blamed for one more crash."""
        try:
            note = json.loads(self._path.read_text())
            seq, crashes = int(note["seq"]), int(note["crashes"]) + 1
        except (OSError, ValueError, KeyError, TypeError):
            return  # no note, or one no sink wrote: it blames nothing (the next note replaces it)
        self._blame[seq] = crashes
        self._write(seq, crashes)

    def convicted(self, seq: int) -> int | None:
        """The crashes blamed on the message, when enough to set it aside."""
        crashes = self._blame.get(seq, 0)
        return crashes if crashes >= CRASHES_TO_CONVICT else None

    def begin(self, seq: int) -> None:
        self._write(seq, self._blame.get(seq, 0))

    def end(self) -> None:
        self._path.unlink(missing_ok=True)

    def _write(self, seq: int, crashes: int) -> None:
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"seq": seq, "crashes": crashes}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._path)
