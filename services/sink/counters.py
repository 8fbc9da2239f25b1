"""The sink's counters, kept in memory as an exact mirror of what is committed in DuckDB.

Invariant: ``received == unique_processed + store_duplicates + invalid``. Window duplicates never
reach the stream: they are reported by the publishers' receipts and kept apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(slots=True)
class TopicCounts:
    unique: int = 0
    window_duplicates: int = 0
    store_duplicates: int = 0


@dataclass(slots=True)
class Counters:
    received: int = 0
    unique_processed: int = 0
    window_duplicates: int = 0
    store_duplicates: int = 0
    invalid: int = 0
    topics: dict[str, TopicCounts] = field(default_factory=dict)

    @property
    def invariant_holds(self) -> bool:
        return self.received == self.unique_processed + self.store_duplicates + self.invalid

    def after(
        self,
        *,
        inserted: Counter[str],
        valid: Counter[str],
        window: Counter[str],
        invalid: int,
    ) -> tuple[Counters, set[str]]:
        """The counters once a batch commits, and the topics it changed. ``valid`` counts the batch's
        storable events per topic, ``inserted`` those that were new to the store."""
        topics = dict(self.topics)
        for topic in valid.keys() | window.keys():
            counts = replace(topics.get(topic) or TopicCounts())
            topics[topic] = counts
            counts.unique += inserted[topic]
            counts.store_duplicates += valid[topic] - inserted[topic]
            counts.window_duplicates += window[topic]
        total_valid = sum(valid.values())
        total_inserted = sum(inserted.values())
        updated = Counters(
            received=self.received + total_valid + invalid,
            unique_processed=self.unique_processed + total_inserted,
            window_duplicates=self.window_duplicates + sum(window.values()),
            store_duplicates=self.store_duplicates + total_valid - total_inserted,
            invalid=self.invalid + invalid,
            topics=topics,
        )
        return updated, set(valid.keys() | window.keys())

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique_processed": self.unique_processed,
            "duplicate_dropped": self.window_duplicates + self.store_duplicates,
            "duplicates": {"window": self.window_duplicates, "store": self.store_duplicates},
            "invalid": self.invalid,
            "arrived": self.received + self.window_duplicates,
            "topics": [
                {
                    "topic": topic,
                    "count": c.unique,
                    "duplicates": {"window": c.window_duplicates, "store": c.store_duplicates},
                }
                for topic, c in sorted(self.topics.items())
            ],
        }
