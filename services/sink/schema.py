"""The sink's tables. Bump SCHEMA_VERSION when they change: the store refuses a file of another version."""

SCHEMA_VERSION = "2"
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key UHUGEINT PRIMARY KEY,
    id UBIGINT NOT NULL,
    topic VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    "timestamp" TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    seq UBIGINT NOT NULL,
    stored_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id UBIGINT NOT NULL,
    seq UBIGINT NOT NULL,
    subject VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    headers VARCHAR,
    body BLOB NOT NULL,
    stored_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    singleton BOOLEAN PRIMARY KEY DEFAULT true,
    received UBIGINT NOT NULL,
    unique_processed UBIGINT NOT NULL,
    window_duplicates UBIGINT NOT NULL,
    store_duplicates UBIGINT NOT NULL,
    invalid UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    topic VARCHAR PRIMARY KEY,
    unique_events UBIGINT NOT NULL,
    window_duplicates UBIGINT NOT NULL,
    store_duplicates UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS committed_seqs (lo UBIGINT NOT NULL, hi UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO counters VALUES (true, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING;
"""

KEY = "md5_number(topic || ':' || event_id)"
