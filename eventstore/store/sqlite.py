"""The embedded event store: one SQLite file, for laptops, demos and tests without servers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventstore.errors import (
    CheckpointConflict,
    ConcurrencyError,
    StoreUnavailable,
    ValidationError,
)
from eventstore.events import (
    AppendResult,
    Checkpoint,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    validate_checkpoint,
    validate_stream_id,
)
from eventstore.store.base import MAX_EVENTS_PER_APPEND, EventStore, StoreStats
from eventstore.store.encoding import (
    check_append_many,
    check_read_all,
    check_read_stream,
    check_resent_checkpoint,
    conflicts,
    earlier_appends,
)
from eventstore.store.prepared import PreparedAppend
from eventstore.store.rows import EVENT_COLUMNS
from eventstore.store.sqlite_datastore import SQLiteDatastore, immediate_transaction, sqlite_partition

# SQLite lets one transaction write at a time (BEGIN IMMEDIATE takes the write lock), so a
# position from AUTOINCREMENT is allocated and committed before the next writer starts:
# commit order is position order and a reader of the global log can never skip an event.
SCHEMA_VERSION = 4
#: Projection checkpoints and dead letters; also the schema of a pod's local read-model file.
PROJECTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS es_projection_checkpoints (
    projection     TEXT NOT NULL,
    partition      INTEGER NOT NULL,
    position       INTEGER NOT NULL DEFAULT 0,
    events_handled INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (projection, partition)
);
CREATE TABLE IF NOT EXISTS es_projection_dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    projection TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    event_id   TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    error      TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    parked_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (projection, event_id)
);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS es_streams (
    stream_id TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS es_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    recorded_at    TEXT NOT NULL,
    partition      INTEGER,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS es_events_archive (
    position       INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    recorded_at    TEXT NOT NULL,
    archived_at    TEXT NOT NULL,
    partition      INTEGER,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS es_events_type_position ON es_events (type, position);
CREATE TABLE IF NOT EXISTS es_consumer_checkpoints (
    consumer   TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
""" + PROJECTION_SCHEMA
#: Version 4: each event's projection partition (sqlite_partition of its stream id), stored
#: and indexed with its position, so a projection worker reads a partition as one range of
#: an index. Before, it walked the log from its checkpoint and hashed every stream id: a
#: partition idle over a long stretch cost that whole stretch on every poll (32 ms a read
#: at 100,000 events). Files of an earlier version gain the column, filled in, on migrate.
#: The triggers fill the column in for a row written without it: by a process still
#: running an earlier version of eventstore on a file this one has migrated (those register
#: `es_partition` on their connections too), whose events projections would otherwise
#: never read.
_PARTITION_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS es_events_partition_position ON es_events (partition, position)",
    "CREATE INDEX IF NOT EXISTS es_events_archive_partition_position"
    " ON es_events_archive (partition, position)",
    "CREATE TRIGGER IF NOT EXISTS es_events_partition_filled AFTER INSERT ON es_events"
    " WHEN NEW.partition IS NULL BEGIN UPDATE es_events SET partition ="
    " es_partition(NEW.stream_id) WHERE position = NEW.position; END",
    "CREATE TRIGGER IF NOT EXISTS es_events_archive_partition_filled AFTER INSERT ON"
    " es_events_archive WHEN NEW.partition IS NULL BEGIN UPDATE es_events_archive SET"
    " partition = es_partition(NEW.stream_id) WHERE position = NEW.position; END",
)
_COLUMNS = EVENT_COLUMNS


class SQLiteEventStore(EventStore):
    """Events in one SQLite file (or in memory). Thread-safe; one writer at a time."""

    def __init__(self, path: str | Path, *, max_payload_bytes: int | None = None,
                 max_events_per_append: int = MAX_EVENTS_PER_APPEND) -> None:
        self.path = str(path)
        if max_payload_bytes is not None:
            self.max_payload_bytes = max_payload_bytes
        self.max_events_per_append = max_events_per_append
        self._appended = threading.Condition()
        self._memory = self.path == ":memory:"
        #: The file's connections, write transactions and error translation, shared with
        #: the projection runner and retention (see sqlite_datastore.py).
        self.datastore = SQLiteDatastore(self.path)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteEventStore:
        path = url.removeprefix("sqlite://")
        if path in ("", "/:memory:", ":memory:"):
            return cls(":memory:", **options)
        if not path.startswith("/"):
            raise ValidationError(f"SQLite URL {url!r} needs a path: sqlite:///relative.db or "
                                  "sqlite:////absolute/path.db")
        path = path[1:]
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return cls(path, **options)

    def _conn(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection, with sqlite3 errors translated (see SQLiteDatastore)."""
        return self.datastore.connection()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (see SQLiteDatastore.write)."""
        return self.datastore.write()

    def migrate(self) -> int:
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table in ("es_events", "es_events_archive"):
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if "partition" not in columns:  # a file of schema version 3 or earlier
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN partition INTEGER")
                    conn.execute(f"UPDATE {table} SET partition = es_partition(stream_id)")
            for statement in _PARTITION_SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return SCHEMA_VERSION

    def schema_is_current(self) -> bool:
        try:
            with self._conn() as conn:
                return int(conn.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
        except (sqlite3.Error, StoreUnavailable):
            return False

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: Expected = ExpectedVersion.ANY,
    ) -> AppendResult:
        return self.append_prepared(self.prepare_append(stream_id, events, expected_version))

    def append_prepared(self, prepared: PreparedAppend, *, grouped: bool = True
                        ) -> AppendResult:
        """One writer at a time here, so nothing to group: `grouped` changes nothing."""
        item = StreamAppend(prepared.stream_id, prepared.events, prepared.expected)
        return self._append_checked([(item, prepared.expected, list(prepared.encoded))],
                                    None)[0]

    def append_many(self, appends: Sequence[StreamAppend], *,
                    checkpoint: Checkpoint | None = None) -> list[AppendResult]:
        checked = check_append_many(appends, self.max_payload_bytes, self.max_events_per_append)
        if checkpoint is not None:
            validate_checkpoint(checkpoint)
        elif not checked:
            raise ValidationError("append_many has nothing to do: give appends or a checkpoint")
        return self._append_checked(checked, checkpoint)

    def _append_checked(self, checked: Sequence[tuple[StreamAppend, Expected,
                                                      list[tuple[str, str]]]],
                        checkpoint: Checkpoint | None) -> list[AppendResult]:
        ids = [str(e.id) for item, _, _ in checked for e in item.events]
        results: list[AppendResult] = []
        with self._write() as conn:
            stored = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                stored.extend(conn.execute(
                    "SELECT id, stream_id, version, position FROM es_events WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall())
            earlier = earlier_appends([item for item, _, _ in checked], stored) if ids else None
            if checkpoint is not None:
                self._move_checkpoint(conn, checkpoint, resent=earlier is not None)
            if earlier is not None:
                return earlier
            now = datetime.now(UTC).isoformat()
            for item, expected, encoded in checked:
                row = conn.execute("SELECT version FROM es_streams WHERE stream_id = ?",
                                   (item.stream_id,)).fetchone()
                current = int(row[0]) if row else 0
                if conflicts(expected, current):
                    raise ConcurrencyError(
                        item.stream_id, expected.value if isinstance(expected, ExpectedVersion)
                        else expected, current)
                positions = []
                partition = sqlite_partition(item.stream_id)
                for n, (event, (payload, metadata)) in enumerate(
                        zip(item.events, encoded, strict=True)):
                    cur = conn.execute(
                        f"INSERT INTO es_events ({_COLUMNS.removeprefix('position, ')}, "
                        "partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (str(event.id), item.stream_id, current + n + 1, event.type,
                         event.schema_version, payload, metadata, now, partition),
                    )
                    positions.append(int(cur.lastrowid or 0))
                last = current + len(item.events)
                conn.execute(
                    "INSERT INTO es_streams (stream_id, version) VALUES (?, ?) "
                    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
                    (item.stream_id, last),
                )
                results.append(AppendResult(item.stream_id, current + 1, last, tuple(positions)))
        if results:
            with self._appended:
                self._appended.notify_all()
        return results

    @staticmethod
    def _move_checkpoint(conn: sqlite3.Connection, checkpoint: Checkpoint, resent: bool) -> None:
        row = conn.execute("SELECT position FROM es_consumer_checkpoints WHERE consumer = ?",
                           (checkpoint.consumer,)).fetchone()
        if resent:  # idempotent only with its checkpoint already in place
            check_resent_checkpoint(checkpoint, None if row is None else int(row[0]))
            return
        if row is not None and int(row[0]) >= checkpoint.position:
            raise CheckpointConflict(checkpoint.consumer, checkpoint.position, int(row[0]))
        conn.execute(
            "INSERT INTO es_consumer_checkpoints (consumer, position, updated_at) "
            "VALUES (?, ?, ?) ON CONFLICT (consumer) DO UPDATE SET "
            "position = excluded.position, updated_at = excluded.updated_at",
            (checkpoint.consumer, checkpoint.position, datetime.now(UTC).isoformat()))

    def read_checkpoint(self, consumer: str) -> int | None:
        validate_checkpoint(Checkpoint(consumer, 0))
        return self.datastore.read_checkpoint(consumer)

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        check_read_stream(stream_id, from_version, to_version, limit)
        if as_of is not None and as_of.tzinfo is None:
            raise ValidationError("as_of has no time zone: pass an aware datetime (UTC)")
        return self.datastore.read_stream(stream_id, from_version=from_version,
                                          to_version=to_version, as_of=as_of,
                                          backwards=backwards, limit=limit)

    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        """Events of a stream that retention moved to the archive table."""
        check_read_stream(stream_id, from_version, to_version, limit)
        return self.datastore.read_archived_stream(stream_id, from_version,
                                                   to_version=to_version, limit=limit)

    def archive_stream(self, stream_id: str, up_to_version: int, older_than: datetime) -> int:
        validate_stream_id(stream_id)
        if older_than.tzinfo is None:
            raise ValidationError("older_than has no time zone: pass an aware datetime (UTC)")
        cutoff = older_than.astimezone(UTC).isoformat()
        with self._write() as conn:
            where = "stream_id = ? AND version <= ? AND recorded_at < ?"
            conn.execute(
                f"INSERT INTO es_events_archive ({_COLUMNS}, partition, archived_at) SELECT"
                f" {_COLUMNS}, partition, ? FROM es_events WHERE {where}",
                (datetime.now(UTC).isoformat(), stream_id, up_to_version, cutoff))
            return conn.execute(f"DELETE FROM es_events WHERE {where}",
                                (stream_id, up_to_version, cutoff)).rowcount

    def read_all(self, from_position: int = 0, limit: int = 1000, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None, backwards: bool = False
                 ) -> list[RecordedEvent]:
        query = check_read_all(from_position, limit, to_position, types, stream_prefix,
                               backwards)
        return self.datastore.read_log(query)

    def retention_candidates(self, older_than: datetime, limit: int, after: str = ""
                             ) -> list[str]:
        if older_than.tzinfo is None:
            raise ValidationError("older_than has no time zone: pass an aware datetime (UTC)")
        return self.datastore.retention_candidates(older_than, limit, after)

    def head_position(self) -> int:
        return self.datastore.head_position()

    def wait_for_events(self, after_position: int, timeout: float,
                        interrupt: threading.Event | None = None) -> bool:
        # Wakes at once for appends in this process; other processes are seen by polling.
        timeout = timeout if self._memory else min(timeout, 0.25)
        with self._appended:
            if interrupt is not None and interrupt.is_set():
                return False
            return self._appended.wait(timeout=timeout)

    def wake_waiters(self) -> None:
        with self._appended:
            self._appended.notify_all()

    def stream_version(self, stream_id: str) -> int:
        validate_stream_id(stream_id)
        with self._conn() as conn:
            row = conn.execute("SELECT version FROM es_streams WHERE stream_id = ?",
                               (stream_id,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self) -> StoreStats:
        with self._conn() as conn:
            events, head = conn.execute(
                "SELECT count(*), coalesce(max(position), 0) FROM es_events").fetchone()
            streams = conn.execute("SELECT count(*) FROM es_streams").fetchone()[0]
            archived = conn.execute("SELECT count(*) FROM es_events_archive").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return StoreStats(events=int(events), streams=int(streams), archived_events=int(archived),
                          bytes=int(pages) * int(page_size), head_position=int(head))

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new calls (StoreUnavailable), wait up to `timeout` seconds for the calls
        in flight, and close the connections. A call still running after that closes its
        own connection when it ends: a connection is never closed under a running query."""
        self.datastore.close(timeout)
        with self._appended:
            self._appended.notify_all()


__all__ = ["PROJECTION_SCHEMA", "SQLiteEventStore", "immediate_transaction"]
