"""A batch's receipts, split by partition: each to the sink that owns the partition's topics."""

from __future__ import annotations

from collections import Counter

import orjson
from hypothesis import given
from hypothesis import strategies as st

from logmesh.common.partitions import partition_of, receipt_subject
from logmesh.common.publisher import receipt_messages
from logmesh.common.subjects import RECEIPT_SUBJECT

TOPICS = st.lists(st.sampled_from(["a", "b", "orders", "payments.eu", "topic_7", "é.ü", "x-y_z"]), min_size=1)


def test_one_partition_keeps_the_single_receipt() -> None:
    (receipt,) = receipt_messages(Counter({"a": 2}), ["a", "a", "b"], 1)
    assert receipt.subject == RECEIPT_SUBJECT
    assert orjson.loads(receipt.data) == {"events": 3, "window_duplicates": {"a": 2}}


@given(topics=TOPICS, partitions=st.integers(2, 64), data=st.data())
def test_each_partition_with_duplicates_gets_its_share(topics: list[str], partitions: int, data: st.DataObject) -> None:
    duplicates = Counter(t for t in topics if data.draw(st.booleans()))
    receipts = receipt_messages(duplicates, topics, partitions)
    owners = {partition_of(t, partitions) for t in duplicates}
    assert sorted(r.subject for r in receipts) == sorted(receipt_subject(k, partitions) for k in owners)
    assert len({r.msg_id for r in receipts}) == len(receipts)
    for r in receipts:
        k = int(r.subject.rsplit(".", 1)[1])
        body = orjson.loads(r.data)
        assert body["events"] == sum(1 for t in topics if partition_of(t, partitions) == k)
        assert body["window_duplicates"] == {t: n for t, n in duplicates.items() if partition_of(t, partitions) == k}
