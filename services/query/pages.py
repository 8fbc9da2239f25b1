"""One page over every partition: each partition's part, merged by stream sequence.

Each partition answers a part (``query_answers.parts``): its next items after its own last id, in
its own order, and whether it has more. The merge takes the item with the lowest sequence (highest,
newest first) among the parts' heads, one at a time. A partition's items are only ever taken as a
prefix of its part, and the merge stops as soon as a partition that has more runs out: its next
item, not fetched, could come before anything left. So nothing is skipped, and nothing is shown
twice: the cursor holds every partition's last taken id, and a partition that did not answer keeps
its place. Ids are unique only within a partition, so each item names its partition.

A late commit (a lower sequence stored after a higher one was shown) still appears, on a later page:
each partition goes on from its own last id, not from a sequence.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from logmesh.common.query_answers import in_partition, read_parts
from logmesh.common.query_contract import PAGE_BYTES, format_cursor

log = logging.getLogger("logmesh.query")

Item = tuple[int, int, bytes]  # id, stream sequence, JSON


@dataclass(frozen=True, slots=True)
class Part:
    items: list[Item]
    more: bool


@dataclass(frozen=True, slots=True)
class Merged:
    items: list[bytes]  # JSON, each naming its partition
    next_cursor: str | None
    positions: tuple[int, ...]  # each partition's last id after this page


def read_part(data: bytes) -> Part:
    """A partition's part; ValueError when it is not one (then the partition counts as missing)."""
    items, more = read_parts(data)
    if more and not items:
        raise ValueError("the part says more items follow but holds none")
    for id_, _, item in items:
        if not (item.startswith(b"{") and item.endswith(b"}") and len(item) > 2):
            raise ValueError(f"item {id_} is not a JSON object with fields")
    return Part(items, more)


def merge(
    parts: Mapping[int, Part],
    positions: Sequence[int],
    limit: int,
    newest_first: bool,
    incomplete: bool,
) -> Merged:
    """Up to ``limit`` items (less when cut at PAGE_BYTES, never none while there are some) from
    ``parts`` by partition, in sequence order. ``positions``: each partition's last id before this
    page. ``incomplete``: some partition did not answer, so the page is never the last."""
    after = list(positions)
    sign = -1 if newest_first else 1
    heads = {k: 0 for k in parts}
    queue = [(sign * part.items[0][1], k) for k, part in parts.items() if part.items]
    heapq.heapify(queue)
    taken: list[bytes] = []
    size = 0
    while queue and len(taken) < limit and size < PAGE_BYTES:
        _, k = heapq.heappop(queue)
        part = parts[k]
        id_, _, item = part.items[heads[k]]
        taken.append(in_partition(item, k))
        size += len(item)
        after[k] = id_
        heads[k] += 1
        if heads[k] < len(part.items):
            heapq.heappush(queue, (sign * part.items[heads[k]][1], k))
        elif part.more:
            break  # its next item is not here, and might come before every one left
    exhausted = all(heads[k] == len(p.items) and not p.more for k, p in parts.items())
    return Merged(taken, None if exhausted and not incomplete else format_cursor(after), tuple(after))


def read_answers(answers: Mapping[int, bytes], missing: dict[int, str]) -> dict[int, Part]:
    """The parts of the partitions that answered with one; one that answered something else is
    missing, with the reason (and a log line: a sink is broken)."""
    parts: dict[int, Part] = {}
    for k, data in answers.items():
        try:
            parts[k] = read_part(data)
        except ValueError as exc:
            log.warning("partition %d answered a part that cannot be read: %s", k, exc)
            missing[k] = f"its answer could not be read: {exc}"
    return parts
