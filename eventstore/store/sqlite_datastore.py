"""One SQLite file as the projection runner and a pod's local read models see it: connections
(one per thread), transactions, the log read by projection partition, and sqlite3 errors
translated in one place (eventstore/store/translate.py).

The event store's own calls go through SQLiteEventStore's connections, which guard against
closing a connection under a running query; these serve the projection runner's workers.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from eventstore.errors import StoreUnavailable
from eventstore.events import RecordedEvent
from eventstore.store.postgres_schema import PROJECTION_PARTITIONS
from eventstore.store.rows import EVENT_COLUMNS, row_to_event
from eventstore.store.translate import sqlite_error


def sqlite_partition(stream_id: str) -> int:
    """A stream's projection partition on SQLite (registered as `es_partition`)."""
    return zlib.crc32(stream_id.encode()) % PROJECTION_PARTITIONS


@contextmanager
def translated() -> Iterator[None]:
    """sqlite3 errors of our own statements as library errors."""
    try:
        yield
    except sqlite3.Error as exc:
        error = sqlite_error(exc)
        if error is None:
            raise
        raise error from exc


class SQLiteDatastore:
    """The connections to one SQLite file for projection work; see the module doc."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: isolation_level None)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreUnavailable(f"the connections to {self.path} are closed")
            with translated():
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.create_function("es_partition", 1, sqlite_partition, deterministic=True)
                conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (the write lock up front, so no upgrade deadlock), COMMIT when
        the block ends, ROLLBACK on any exception. Errors of the block's own statements
        pass through as they are (the caller decides; see translate.transient)."""
        conn = self.connection()
        with translated():
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        with translated():
            conn.execute("COMMIT")

    @contextmanager
    def savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("SAVEPOINT es_handler")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO es_handler")
            conn.execute("RELEASE es_handler")
            raise
        conn.execute("RELEASE es_handler")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """One of our own statements on this thread's connection; its rows."""
        with translated():
            return self.connection().execute(sql, params).fetchall()

    def read_partition(self, partition: int, from_position: int, limit: int
                       ) -> list[RecordedEvent]:
        """The next `limit` events of one projection partition, the archive included.
        (SQLite commits in position order: there is no cutoff to respect.)"""
        rows = self.execute(
            f"SELECT * FROM (SELECT {EVENT_COLUMNS} FROM es_events WHERE position >= ? AND "
            f"es_partition(stream_id) = ? UNION ALL SELECT {EVENT_COLUMNS} FROM "
            "es_events_archive WHERE position >= ? AND es_partition(stream_id) = ?) "
            "ORDER BY position LIMIT ?", (from_position, partition, from_position, partition,
                                          limit))
        return [row_to_event(r) for r in rows]

    def partition_behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        ((count, oldest),) = self.execute(
            "SELECT count(*), min(recorded_at) FROM es_events WHERE position >= ? AND "
            "es_partition(stream_id) = ?", (position, partition))
        return int(count), datetime.fromisoformat(oldest).astimezone(UTC) if oldest else None

    def checkpoints(self, projection: str) -> list[tuple[int, int, int]]:
        """(partition, position, events handled) of a projection's checkpoints in this file."""
        rows = self.execute(
            "SELECT partition, position, events_handled FROM es_projection_checkpoints "
            "WHERE projection = ? ORDER BY partition", (projection,))
        return [(int(p), int(pos), int(n)) for p, pos, n in rows]

    def close(self) -> None:
        with self._guard:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
