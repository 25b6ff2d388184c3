"""Projection partitions on SQLite: each event's partition is stored and indexed, a
partition read is a range of that index, and a file of schema version 3 gains the column,
filled in, on migrate, without losing or changing anything stored."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventstore import EventStore, NewEvent, RecordedEvent
from eventstore.store.sqlite import SCHEMA_VERSION, SQLiteEventStore
from eventstore.store.sqlite_datastore import PARTITION_SQL, sqlite_partition
from tests.partition_pages import in_pages


def _store(path: Path) -> SQLiteEventStore:
    store = EventStore.connect(f"sqlite:///{path}")
    assert isinstance(store, SQLiteEventStore)
    store.migrate()
    return store


def _fill(store: SQLiteEventStore) -> None:
    for s in range(40):
        store.append(f"acct-{s}", [NewEvent("Deposited", {"s": s, "i": i}) for i in range(7)])
    for stream in ("acct-3", "acct-11"):
        assert store.archive_stream(stream, 4, datetime.now(UTC) + timedelta(days=1)) == 4


def _every_event(store: SQLiteEventStore) -> list[RecordedEvent]:
    archived = [e for s in ("acct-3", "acct-11") for e in store.read_archived_stream(s)]
    return sorted(store.read_all(limit=10_000) + archived, key=lambda e: e.position)


def _assert_partitions_read_right(store: SQLiteEventStore) -> None:
    every = _every_event(store)
    assert len(every) == 280
    for partition in range(16):
        expected = [e.id for e in every if sqlite_partition(e.aggregate_id) == partition]
        for size in (1, 3, 100):
            assert [e.id for e in in_pages(store.datastore, partition, size)] == expected
        hot = [e for e in store.read_all(limit=10_000)
               if sqlite_partition(e.aggregate_id) == partition]
        count, oldest = store.datastore.partition_behind(partition, 0)
        assert count == len(hot)
        assert oldest == (min(e.timestamp for e in hot) if hot else None)


def test_partition_pages_hold_exactly_the_partitions_events(tmp_path: Path) -> None:
    store = _store(tmp_path / "es.db")
    try:
        _fill(store)
        _assert_partitions_read_right(store)
        for table in ("es_events", "es_events_archive"):
            rows = store.datastore.execute(f"SELECT stream_id, partition FROM {table}")
            assert rows and all(p == sqlite_partition(s) for s, p in rows), table
    finally:
        store.close()


def test_a_partition_read_is_a_range_of_the_partition_index(tmp_path: Path) -> None:
    store = _store(tmp_path / "es.db")
    try:
        _fill(store)
        plan = " | ".join(str(row[3]) for row in store.datastore.execute(
            "EXPLAIN QUERY PLAN " + PARTITION_SQL, (3, 0, 3, 0, 100)))
        print(plan)
        assert "USING INDEX es_events_partition_position (partition=? AND position>?)" in plan
        assert ("USING INDEX es_events_archive_partition_position (partition=? AND position>?)"
                in plan), plan
    finally:
        store.close()


def test_a_version_3_file_gains_the_partition_column_on_migrate(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = _store(path)
    _fill(store)
    before = [(e.id, e.aggregate_id, e.version, e.position, e.payload, e.timestamp)
              for e in _every_event(store)]
    store.close()
    # Make it a file as schema version 3 left it: no partition column, index or trigger.
    conn = sqlite3.connect(path)
    for table in ("es_events", "es_events_archive"):
        conn.execute(f"DROP TRIGGER {table}_partition_filled")
        conn.execute(f"DROP INDEX {table}_partition_position")
        conn.execute(f"ALTER TABLE {table} DROP COLUMN partition")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()

    store = EventStore.connect(f"sqlite:///{path}")
    assert isinstance(store, SQLiteEventStore)
    try:
        assert not store.schema_is_current()
        assert store.migrate() == SCHEMA_VERSION == 4
        assert store.schema_is_current()
        assert store.migrate() == 4  # again: nothing to do
        after = [(e.id, e.aggregate_id, e.version, e.position, e.payload, e.timestamp)
                 for e in _every_event(store)]
        assert after == before
        _assert_partitions_read_right(store)
        store.append("acct-0", [NewEvent("Deposited", {"late": True})], expected_version=7)
        (row,) = store.datastore.execute(
            "SELECT partition FROM es_events WHERE stream_id = 'acct-0' AND version = 8")
        assert row[0] == sqlite_partition("acct-0")
    finally:
        store.close()


def test_rows_written_without_a_partition_get_one(tmp_path: Path) -> None:
    """A process still running an earlier version (its INSERTs name no partition column;
    its connections register es_partition, as every version's do) writes to a migrated
    file: the rows get their partition all the same, and projections read them."""
    path = tmp_path / "es.db"
    store = _store(path)
    try:
        store.append("acct-1", [NewEvent("Deposited", {"i": 0})])
        old = sqlite3.connect(path, isolation_level=None)
        old.create_function("es_partition", 1, sqlite_partition, deterministic=True)
        old.execute("INSERT INTO es_events (id, stream_id, version, type, schema_version,"
                    " payload, metadata, recorded_at) VALUES ('8d1f4f0e-0000-7000-8000-"
                    "000000000001', 'acct-2', 1, 'Deposited', 1, '{}', '{}', ?)",
                    (datetime.now(UTC).isoformat(),))
        old.execute("INSERT INTO es_events_archive (position, id, stream_id, version, type,"
                    " schema_version, payload, metadata, recorded_at, archived_at) SELECT"
                    " position, id, stream_id, version, type, schema_version, payload,"
                    " metadata, recorded_at, recorded_at FROM es_events WHERE stream_id ="
                    " 'acct-1'")
        old.execute("DELETE FROM es_events WHERE stream_id = 'acct-1'")
        old.close()
        for table in ("es_events", "es_events_archive"):
            rows = store.datastore.execute(f"SELECT stream_id, partition FROM {table}")
            assert rows and all(p == sqlite_partition(s) for s, p in rows), (table, rows)
        for stream in ("acct-1", "acct-2"):
            read = store.datastore.read_partition(sqlite_partition(stream), 0, 10)
            assert [e.aggregate_id for e in read] == [stream]
    finally:
        store.close()
