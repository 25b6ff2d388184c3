"""One SQLite file as this process sees it: its connections (one per thread, or the one
shared connection of an in-memory database), the write transaction, the one place sqlite3
errors become library errors (eventstore/store/translate.py), and every read of events:
one stream, its archive, the global log and a projection partition (one column list, one
row mapper, as in postgres_datastore.py). The event store, the projection runner and retention all go through
the store's one SQLiteDatastore, as they share one PostgresDatastore on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from eventstore.errors import StoreUnavailable
from eventstore.events import RecordedEvent
from eventstore.store.encoding import LogQuery
from eventstore.store.postgres_schema import PROJECTION_PARTITIONS
from eventstore.store.rows import EVENT_COLUMNS, StreamTable, row_to_event
from eventstore.store.translate import sqlite_error

#: The next events of a partition (see read_partition); parameters: partition, position,
#: partition, position, limit.
PARTITION_SQL = (
    f"SELECT * FROM (SELECT {EVENT_COLUMNS} FROM es_events WHERE partition = ? AND "
    f"position >= ? UNION ALL SELECT {EVENT_COLUMNS} FROM es_events_archive WHERE "
    "partition = ? AND position >= ?) ORDER BY position LIMIT ?")


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
    """The connections to one SQLite file; see the module doc. Thread-safe."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self._local = threading.local()
        #: Writers of this process queue here, not inside SQLite (see `write`).
        self._write_lock = threading.Lock()
        self._closed = False
        # Every connection, and how many calls are using each right now. sqlite3 crashes
        # the interpreter when a connection is closed while another thread runs a query
        # on it, so close() waits for calls in flight and never closes a busy connection:
        # a call still running after that wait closes its own connection when it ends.
        self._state = threading.Condition()
        self._connections: dict[sqlite3.Connection, int] = {}
        if self.memory:
            # One shared connection: every :memory: connection is a separate database.
            self._shared = self._open()

    @property
    def closed(self) -> bool:
        return self._closed

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.create_function("es_partition", 1, sqlite_partition, deterministic=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._state:
            self._connections[conn] = 0
        return conn

    @contextmanager
    def connection(self, *, translate: bool = True) -> Iterator[sqlite3.Connection]:
        """This thread's connection (autocommit), marked busy for the block. Re-entrant: a
        call inside another's block shares its connection. sqlite3 errors raised in the
        block become library errors unless `translate` is False (a block that runs a
        projection's own SQL: its errors are the caller's to judge)."""
        with self._checked_out() as conn, (translated() if translate
                                           else contextlib.nullcontext()):
            yield conn

    @contextmanager
    def _checked_out(self) -> Iterator[sqlite3.Connection]:
        if self.memory:
            with self._write_lock, self._using(lambda: self._shared) as conn:
                yield conn
            return
        with self._using(self._thread_connection) as conn:
            yield conn

    def _thread_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn not in self._connections:
            conn = self._local.conn = self._open()
        return conn

    @contextmanager
    def _using(self, get: Callable[[], sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
        """A connection marked busy for the duration of one call (see __init__)."""
        if self._closed:
            raise StoreUnavailable("the event store is closed")
        conn = get()
        with self._state:
            if self._closed:  # closed while we opened it
                if not self._connections.get(conn):
                    self._connections.pop(conn, None)
                    conn.close()
                raise StoreUnavailable("the event store is closed")
            self._connections[conn] = self._connections.get(conn, 0) + 1
        try:
            yield conn
        finally:
            with self._state:
                self._connections[conn] -= 1
                if self._connections[conn] == 0:
                    if self._closed:  # close() left it to us
                        del self._connections[conn]
                        conn.close()
                    self._state.notify_all()

    @contextmanager
    def write(self, *, translate: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes SQLite's write lock up front (so no
        upgrade deadlock); the process lock keeps this process's threads (appends and
        projection batches alike) from queueing inside SQLite, where a wait past the busy
        timeout is "database is locked". COMMIT when the block ends, ROLLBACK on any
        exception. BEGIN and COMMIT errors are always translated, the block's as for
        `connection`."""
        lock = contextlib.nullcontext() if self.memory else self._write_lock
        with lock, self._checked_out() as conn:
            with translated():
                conn.execute("BEGIN IMMEDIATE")
            try:
                with translated() if translate else contextlib.nullcontext():
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
        """One statement on this thread's connection; its rows."""
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def read_stream(self, stream_id: str, *, from_version: int, to_version: int | None,
                    as_of: datetime | None, backwards: bool, limit: int | None,
                    table: StreamTable = "es_events") -> list[RecordedEvent]:
        """A checked read of one stream (EventStore.read_stream; `as_of` aware), from the
        log or, with `table="es_events_archive"`, from the archive (both are read on their
        UNIQUE (stream_id, version) index)."""
        sql = f"SELECT {EVENT_COLUMNS} FROM {table} WHERE stream_id = ? AND version >= ?"
        params: list[Any] = [stream_id, from_version]
        if to_version is not None:
            sql += " AND version <= ?"
            params.append(to_version)
        if as_of is not None:
            try:
                cutoff = as_of.astimezone(UTC).isoformat()
            except OverflowError:
                # In UTC the moment falls outside datetime's years 1..9999: before year 1
                # nothing was recorded; after 9999 everything was.
                if (as_of.utcoffset() or timedelta(0)) > timedelta(0):
                    return []
            else:
                sql += " AND recorded_at <= ?"
                params.append(cutoff)
        sql += " ORDER BY version DESC" if backwards else " ORDER BY version"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [row_to_event(r) for r in self.execute(sql, tuple(params))]

    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        """A checked range of a stream's events that retention moved to the archive, in
        version order."""
        return self.read_stream(stream_id, from_version=from_version, to_version=to_version,
                                as_of=None, backwards=False, limit=limit,
                                table="es_events_archive")

    def read_log(self, query: LogQuery) -> list[RecordedEvent]:
        """A checked page of the global log (EventStore.read_all). SQLite commits in
        position order, so there is no cutoff to respect."""
        sql = [f"SELECT {EVENT_COLUMNS} FROM es_events WHERE position >= ?"]
        params: list[Any] = [query.from_position]
        if query.to_position is not None:
            sql.append("AND position <= ?")
            params.append(query.to_position)
        if query.types:
            sql.append(f"AND type IN ({','.join('?' * len(query.types))})")
            params.extend(query.types)
        if query.stream_prefix is not None:
            # A range on the (stream_id, version) index; ids are ASCII, so adding 1 to the
            # last character gives the first string past every id with this prefix.
            prefix = query.stream_prefix
            sql.append("AND stream_id >= ? AND stream_id < ?")
            params.extend([prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)])
        sql.append("ORDER BY position DESC LIMIT ?" if query.backwards else
                   "ORDER BY position LIMIT ?")
        params.append(query.limit)
        return [row_to_event(r) for r in self.execute(" ".join(sql), tuple(params))]

    def head_position(self) -> int:
        """The highest position of the log (0: empty). SQLite commits in position order,
        so every position up to it is settled."""
        ((head,),) = self.execute("SELECT coalesce(max(position), 0) FROM es_events")
        return int(head)

    def read_checkpoint(self, consumer: str) -> int | None:
        """A consumer's stored position in the global log (None: it has none yet)."""
        rows = self.execute("SELECT position FROM es_consumer_checkpoints WHERE consumer = ?",
                            (consumer,))
        return None if not rows else int(rows[0][0])

    def read_partition(self, partition: int, from_position: int, limit: int
                       ) -> list[RecordedEvent]:
        """The next `limit` events of one projection partition, the archive included: a
        range of each table's (partition, position) index. (SQLite commits in position
        order: there is no cutoff to respect.)"""
        rows = self.execute(PARTITION_SQL,
                            (partition, from_position, partition, from_position, limit))
        return [row_to_event(r) for r in rows]

    def partition_behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        ((count, oldest),) = self.execute(
            "SELECT count(*), min(recorded_at) FROM es_events WHERE partition = ? AND "
            "position >= ?", (partition, position))
        return int(count), datetime.fromisoformat(oldest).astimezone(UTC) if oldest else None

    def checkpoints(self, projection: str) -> list[tuple[int, int, int]]:
        """(partition, position, events handled) of a projection's checkpoints in this file."""
        rows = self.execute(
            "SELECT partition, position, events_handled FROM es_projection_checkpoints "
            "WHERE projection = ? ORDER BY partition", (projection,))
        return [(int(p), int(pos), int(n)) for p, pos, n in rows]

    def retention_candidates(self, older_than: datetime, limit: int, after: str
                             ) -> list[str]:
        """Streams with events in the log recorded before `older_than`: the first `limit`
        after `after`, in stream id order (EventStore.retention_candidates)."""
        rows = self.execute("SELECT DISTINCT stream_id FROM es_events WHERE recorded_at < ? "
                            "AND stream_id > ? ORDER BY stream_id LIMIT ?",
                            (older_than.astimezone(UTC).isoformat(), after, limit))
        return [str(r[0]) for r in rows]

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new calls (StoreUnavailable), wait up to `timeout` seconds for the calls
        in flight, and close the connections. A call still running after that closes its
        own connection when it ends: a connection is never closed under a running query."""
        with self._state:
            self._closed = True
            self._state.wait_for(lambda: not any(self._connections.values()), timeout)
            for conn, busy in list(self._connections.items()):
                if not busy:
                    del self._connections[conn]
                    conn.close()


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock up front, so no upgrade deadlock), COMMIT on
    success, ROLLBACK on any exception. For connections opened with isolation_level=None."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
