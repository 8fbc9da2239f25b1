"""The set of stream sequences the sink has committed, kept as sorted disjoint ranges.

A message that comes back after its batch committed (crash before the ack, lost ack, ``ack_wait``
expiry) has a sequence already in the set, so it changes no counter a second time. Delivery is almost
always in order, so the set is one range plus the odd hole left by a crash.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class SeqRanges:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in sorted(ranges):
            self._append(lo, hi)

    def _append(self, lo: int, hi: int) -> None:
        if self._hi and lo <= self._hi[-1] + 1:
            self._hi[-1] = max(self._hi[-1], hi)
        else:
            self._lo.append(lo)
            self._hi.append(hi)

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._lo, seq) - 1
        return i >= 0 and seq <= self._hi[i]

    def __len__(self) -> int:
        return len(self._lo)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._lo, self._hi, strict=True))

    def union(self, seqs: Iterable[int]) -> SeqRanges:
        """A new set with ``seqs`` added; this one is left as it is until the batch commits."""
        merged: list[tuple[int, int]] = self.ranges()
        start = end = None
        for seq in sorted(seqs):
            if end is not None and seq <= end + 1:
                end = max(end, seq)
                continue
            if start is not None and end is not None:
                merged.append((start, end))
            start = end = seq
        if start is not None and end is not None:
            merged.append((start, end))
        return SeqRanges(merged)
