"""Where the projection runner keeps checkpoints and claims partitions: PostgreSQL or SQLite.

PostgreSQL (several replicas on one database)
---------------------------------------------
Each event has a partition, a stable hash of its stream id (`hashtext(stream_id) & 15`,
see postgres_schema.py), so all events of a stream share one partition and a single owner
handles them in order. A (projection, partition) pair is a unit of work. A replica owns a
unit while it holds the session-level advisory lock (hash of the projection name,
partition) on its lock connection; PostgreSQL releases the lock the moment that
connection ends, so the units of a killed pod are free at once (TCP keepalives bound
the delay when the pod's host disappears instead).

Each replica also holds a membership lock (MEMBER_LOCK_CLASS, random id). The number of
such locks in pg_locks is the number of live replicas, from which each one computes its
fair share of units: it claims free units up to the share and releases extras when a new
replica joins. No heartbeat table, no clock.

Ownership is an optimisation, not the safety net: every batch first moves the checkpoint
with a compare-and-set (`WHERE position = <where we started>`) in the same transaction as
the read-model writes. If two processes ever handled the same unit at once (a lock
connection lost while a batch ran, `eventstore replay`, a rebuild), only one of them can
commit a given batch; the other's transaction is rolled back.

SQLite (the embedded default)
-----------------------------
One server process per database file: every unit is local. The compare-and-set keeps a
second process (say `eventstore replay`) from applying a batch twice.

Local (a pod's own read models, `local_projections`)
----------------------------------------------------
Events from either of the above; read models and checkpoints in a SQLite file on the
pod's volume. See LocalBackend.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from eventstore.events import RecordedEvent
from eventstore.projections.base import Dialect, ReadModelTx
from eventstore.store.base import EventStore
from eventstore.store.postgres_schema import PROJECTION_PARTITIONS
from eventstore.store.sqlite import PROJECTION_SCHEMA

#: Advisory-lock class of replica membership (the other key is a random member id).
MEMBER_LOCK_CLASS = 714_203
#: Serialises projection setup (CREATE TABLE IF NOT EXISTS races in PostgreSQL).
SETUP_LOCK = 714_204
#: Retention runs on one replica at a time.
RETENTION_LOCK = 714_205
#: Seconds `close` waits for a connection in use before leaving it to the process's end.
CLOSE_WAIT_S = 2.0

_COLUMNS = ("position, id, stream_id, version, type, schema_version, payload, metadata, "
            "recorded_at")
# Same rule as PostgresEventStore.read_all: only rows below the oldest running
# transaction's id are handed out, so no later commit can land behind a checkpoint.
_CUTOFF = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
#: A stream's partition, spelled exactly as in the expression indexes of migration 2.
_PARTITION = "(hashtext(stream_id) & 15)"


def projection_lock_key(name: str) -> int:
    """The first advisory-lock key of a projection's partitions (a stable int4)."""
    return zlib.crc32(f"eventstore-projection:{name}".encode()) & 0x7FFFFFFF


def sqlite_partition(stream_id: str) -> int:
    return zlib.crc32(stream_id.encode()) % PROJECTION_PARTITIONS


class Backend(Protocol):
    dialect: Dialect
    partitions: int

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]: ...
    def transaction(self) -> Any: ...
    def reading(self) -> Any: ...
    def savepoint(self, tx: ReadModelTx) -> Any: ...
    def join(self) -> None: ...
    def members(self) -> int: ...
    def try_claim(self, projection: str, partition: int) -> bool: ...
    def release(self, projection: str, partition: int) -> None: ...
    def locks_alive(self) -> bool: ...
    def lag(self, projection: str) -> list[tuple[int, int, int, int, datetime | None]]: ...
    def close(self) -> None: ...


class PostgresBackend:
    """Checkpoints, dead letters and partition locks in the event store's database."""

    dialect: Dialect = "postgresql"
    partitions = PROJECTION_PARTITIONS

    def __init__(self, url: str, pool_size: int = 8, pool_timeout: float = 10.0) -> None:
        from eventstore.store.postgres import liveness_kwargs

        self.url = url
        # The wait for a connection is bounded like the store's: with the database gone,
        # a worker gives up in `pool_timeout` rather than psycopg_pool's 30 s, so a pod
        # shutting down (grace period 30 s) is not held by workers waiting on the pool.
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, name="eventstore-projections",
            kwargs={"autocommit": True, **liveness_kwargs(pool_timeout)}, timeout=pool_timeout)
        self._pool.open(wait=True, timeout=30)
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._lock_guard = threading.Lock()
        self.member_id = random.randrange(1, 2**31 - 1)

    # -- reading and writing -------------------------------------------------------------

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]:
        # The archive is read too, so that a rebuild after retention sees every event.
        sql = (
            f"(SELECT {_COLUMNS} FROM es_events WHERE {_PARTITION} = %(p)s AND position >= %(f)s"
            f" AND position < {_CUTOFF} ORDER BY position LIMIT %(n)s)"
            f" UNION ALL (SELECT {_COLUMNS} FROM es_events_archive WHERE {_PARTITION} = %(p)s"
            " AND position >= %(f)s ORDER BY position LIMIT %(n)s)"
            " ORDER BY position LIMIT %(n)s"
        )
        with self._pool.connection() as conn:
            rows = conn.execute(sql.encode(), {"p": partition, "f": from_position,
                                               "n": limit}).fetchall()
        return [RecordedEvent(id=r[1], type=r[4], aggregate_id=r[2], version=r[3], payload=r[6],
                              metadata=r[7], timestamp=r[8], position=r[0], schema_version=r[5])
                for r in rows]

    @contextmanager
    def transaction(self) -> Iterator[ReadModelTx]:
        with self._pool.connection() as conn, conn.transaction():
            yield ReadModelTx(conn, "postgresql")

    @contextmanager
    def reading(self) -> Iterator[ReadModelTx]:
        """For lookups: no transaction, each statement sees what is committed."""
        with self._pool.connection() as conn:
            yield ReadModelTx(conn, "postgresql")

    @contextmanager
    def savepoint(self, tx: ReadModelTx) -> Iterator[None]:
        conn = tx.connection
        assert isinstance(conn, psycopg.Connection)
        with conn.transaction():
            yield

    def setup_lock(self, tx: ReadModelTx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))

    # -- ownership -----------------------------------------------------------------------

    def join(self) -> None:
        with self._lock_guard:
            if self._lock_conn is not None and not self._lock_conn.closed:
                return
            self._lock_conn = psycopg.connect(
                self.url, autocommit=True, keepalives=1, keepalives_idle=5,
                keepalives_interval=2, keepalives_count=3, application_name="eventstore-runner")
            self._lock_conn.execute("SELECT pg_advisory_lock(%s, %s)",
                                    (MEMBER_LOCK_CLASS, self.member_id))

    def _lock_execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        with self._lock_guard:
            if self._lock_conn is None or self._lock_conn.closed:
                raise psycopg.OperationalError("the lock connection is closed")
            row = self._lock_conn.execute(sql.encode(), params).fetchone()
            return row[0] if row else None

    def members(self) -> int:
        count = self._lock_execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objsubid = 2", (MEMBER_LOCK_CLASS,))
        return max(1, int(count or 0))

    def try_claim(self, projection: str, partition: int) -> bool:
        return bool(self._lock_execute("SELECT pg_try_advisory_lock(%s, %s)",
                                       (projection_lock_key(projection), partition)))

    def release(self, projection: str, partition: int) -> None:
        self._lock_execute("SELECT pg_advisory_unlock(%s, %s)",
                           (projection_lock_key(projection), partition))

    def locks_alive(self) -> bool:
        try:
            self._lock_execute("SELECT 1", ())
        except psycopg.Error:
            return False
        return True

    def drop_locks(self) -> None:
        """Forget the lock connection (its locks are gone with it); `join` reconnects."""
        with self._lock_guard:
            if self._lock_conn is not None:
                with suppress(psycopg.Error):
                    self._lock_conn.close()
            self._lock_conn = None

    # -- status --------------------------------------------------------------------------

    def lag(self, projection: str) -> list[tuple[int, int, int, int, datetime | None]]:
        """(partition, checkpoint, events handled, events behind, oldest unhandled time)."""
        sql = (
            "SELECT c.partition, c.position, c.events_handled,"
            f" (SELECT count(*) FROM (SELECT 1 FROM es_events WHERE {_PARTITION} = c.partition"
            f"   AND position >= c.position AND position < {_CUTOFF} LIMIT 10000000) x),"
            f" (SELECT recorded_at FROM es_events WHERE {_PARTITION} = c.partition"
            f"   AND position >= c.position AND position < {_CUTOFF} ORDER BY position LIMIT 1)"
            " FROM es_projection_checkpoints c WHERE c.projection = %s ORDER BY c.partition"
        )
        with self._pool.connection() as conn:
            rows = conn.execute(sql.encode(), (projection,)).fetchall()
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]

    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        sql = (
            f"SELECT (SELECT count(*) FROM (SELECT 1 FROM es_events WHERE {_PARTITION} = %(p)s"
            f"   AND position >= %(f)s AND position < {_CUTOFF} LIMIT 10000000) x),"
            f" (SELECT recorded_at FROM es_events WHERE {_PARTITION} = %(p)s"
            f"   AND position >= %(f)s AND position < {_CUTOFF} ORDER BY position LIMIT 1)"
        )
        with self._pool.connection() as conn:
            row = conn.execute(sql.encode(), {"p": partition, "f": position}).fetchone()
        assert row is not None
        return int(row[0]), row[1]

    def close(self) -> None:
        """Release the lock connection and the pool, in bounded time: with the database
        stalled, the rebalance thread can be stuck in a query on the lock connection, holding
        its guard; then that connection is left to end with the process (and its locks with
        it) rather than holding up a pod's shutdown."""
        if self._lock_guard.acquire(timeout=CLOSE_WAIT_S):
            try:
                if self._lock_conn is not None:
                    with suppress(psycopg.Error):
                        self._lock_conn.close()
                self._lock_conn = None
            finally:
                self._lock_guard.release()
        self._pool.close(timeout=CLOSE_WAIT_S)


class SQLiteBackend:
    """The embedded default: the read model and checkpoints in the events' SQLite file."""

    dialect: Dialect = "sqlite"
    partitions = PROJECTION_PARTITIONS

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.create_function("es_partition", 1, sqlite_partition, deterministic=True)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]:
        import json
        from uuid import UUID

        sql = (f"SELECT * FROM (SELECT {_COLUMNS} FROM es_events WHERE position >= ? AND "
               f"es_partition(stream_id) = ? UNION ALL SELECT {_COLUMNS} FROM es_events_archive "
               "WHERE position >= ? AND es_partition(stream_id) = ?) ORDER BY position LIMIT ?")
        rows = self._conn().execute(sql, (from_position, partition, from_position, partition,
                                          limit)).fetchall()
        return [RecordedEvent(id=UUID(r[1]), type=r[4], aggregate_id=r[2], version=r[3],
                              payload=json.loads(r[6]), metadata=json.loads(r[7]),
                              timestamp=datetime.fromisoformat(r[8]), position=r[0],
                              schema_version=r[5]) for r in rows]

    @contextmanager
    def transaction(self) -> Iterator[ReadModelTx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield ReadModelTx(conn, "sqlite")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[ReadModelTx]:
        """For lookups: no write lock; in WAL mode readers never wait for the writer."""
        yield ReadModelTx(self._conn(), "sqlite")

    @contextmanager
    def savepoint(self, tx: ReadModelTx) -> Iterator[None]:
        conn = tx.connection
        assert isinstance(conn, sqlite3.Connection)
        conn.execute("SAVEPOINT es_handler")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO es_handler")
            conn.execute("RELEASE es_handler")
            raise
        conn.execute("RELEASE es_handler")

    def setup_lock(self, tx: ReadModelTx) -> None:
        """BEGIN IMMEDIATE already serialises writers."""

    def join(self) -> None:
        pass

    def members(self) -> int:
        return 1

    def try_claim(self, projection: str, partition: int) -> bool:
        return True

    def release(self, projection: str, partition: int) -> None:
        pass

    def locks_alive(self) -> bool:
        return True

    def drop_locks(self) -> None:
        pass

    def lag(self, projection: str) -> list[tuple[int, int, int, int, datetime | None]]:
        conn = self._conn()
        rows = conn.execute(
            "SELECT partition, position, events_handled FROM es_projection_checkpoints "
            "WHERE projection = ? ORDER BY partition", (projection,)).fetchall()
        return [(int(partition), int(position), int(handled),
                 *self.behind(int(partition), int(position)))
                for partition, position, handled in rows]

    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        count, oldest = self._conn().execute(
            "SELECT count(*), min(recorded_at) FROM es_events WHERE position >= ? AND "
            "es_partition(stream_id) = ?", (position, partition)).fetchone()
        return int(count), datetime.fromisoformat(oldest).astimezone(UTC) if oldest else None

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()


class LocalBackend(SQLiteBackend):
    """A pod's own read models: events from the shared store (`source`); read-model
    tables, checkpoints and dead letters in a SQLite file on the pod's volume.

    Nothing is shared, so nothing is claimed: the pod runs every partition of its local
    projections itself. A batch's read-model writes and its checkpoint commit in one
    SQLite transaction, so after a crash (the file survives on the volume) the pod goes
    on where it stopped, and with a new, empty volume it replays from the first event.
    """

    def __init__(self, source: PostgresBackend | SQLiteBackend, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(path))
        self.source = source
        with self.transaction() as tx:
            for statement in PROJECTION_SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]:
        return self.source.read(partition, from_position, limit)

    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        return self.source.behind(partition, position)

    def close(self) -> None:
        super().close()
        self.source.close()


def backend_for(store: EventStore, pool_size: int = 8) -> PostgresBackend | SQLiteBackend:
    """The backend matching the store's database."""
    from eventstore.store.postgres import PostgresEventStore
    from eventstore.store.sqlite import SQLiteEventStore

    if isinstance(store, PostgresEventStore):
        return PostgresBackend(store.url, pool_size=pool_size, pool_timeout=store.pool_timeout)
    if isinstance(store, SQLiteEventStore):
        if store.path == ":memory:":
            from eventstore.errors import ValidationError

            raise ValidationError("projections need a database file or PostgreSQL; an "
                                  "in-memory SQLite store cannot be shared with the runner")
        return SQLiteBackend(store.path)
    raise TypeError(f"no projection backend for {type(store).__name__}")
