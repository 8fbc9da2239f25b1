"""Where one partition lives: its DuckDB file and the files beside it, its consumer, its subjects.

With one partition (the single-node layout) every name is what it always was: ``logmesh.duckdb``
locked through ``store.lock``, the crash journal ``suspect.json``, the configured consumer, the
queries on ``logmesh.query.<endpoint>``. With P > 1 partition k has ``partition-<k>.duckdb``, its own
lock and journal, and the consumer ``sink-p<k>-<file id>``: a file and its consumer are one pair, so
what one sink acks never concerns another sink's file, and a new file reads the partition from the
stream's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from logmesh.common import partitions
from logmesh.common.claims import STORE_LOCK
from logmesh.sink.decoding import StoredSubjects


@dataclass(frozen=True)
class Place:
    partition: int
    count: int  # P, the stream's number of partitions
    data_dir: Path
    single_consumer: str  # the consumer's name with one partition (--consumer)

    @property
    def partitioned(self) -> bool:
        return self.count > 1

    @property
    def db_path(self) -> Path:
        return partitions.store_file(self.data_dir, self.partition, self.count)

    @property
    def lock_path(self) -> Path:
        return self.data_dir / (STORE_LOCK if not self.partitioned else f"partition-{self.partition}.lock")

    @property
    def journal_path(self) -> Path:
        return self.data_dir / ("suspect.json" if not self.partitioned else f"partition-{self.partition}.suspect.json")

    @property
    def subjects(self) -> StoredSubjects:
        return StoredSubjects.of(self.partition, self.count)

    @property
    def filters(self) -> list[str]:
        return partitions.consumer_filters(self.partition, self.count)

    @property
    def query_prefix(self) -> str:
        return partitions.query_prefix(self.partition, self.count)

    def consumer(self, file_id: str | None) -> str:
        if not self.partitioned:
            return self.single_consumer
        assert file_id is not None, "a partition's consumer is named after its file"
        return f"sink-p{self.partition}-{file_id}"

    def __str__(self) -> str:
        return f"partition {self.partition} of {self.count}" if self.partitioned else "sink"
