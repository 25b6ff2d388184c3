"""Where the projection runner keeps checkpoints and claims partitions: PostgreSQL or SQLite.

PostgreSQL (several replicas on one database)
---------------------------------------------
Each event has a partition, a stable hash of its stream id (`hashtext(stream_id) & 15`,
see postgres_schema.py), so all events of a stream share one partition and a single owner
handles them in order. A (projection, partition) pair is a unit of work. A replica owns a
unit while it holds the session-level advisory lock (hash of the projection name,
partition) on its lock connection; PostgreSQL releases the lock the moment that
connection ends, so the units of a killed pod are free at once (TCP keepalives bound
the delay when the pod's host disappears instead). The lock connection is the only one
the runner adds: batches, reads and checkpoints use the event store's own pool (one
PostgresDatastore per database, see eventstore/store/postgres_datastore.py and the
connection budget in eventstore/store/budget.py).

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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from eventstore.errors import ValidationError
from eventstore.events import RecordedEvent
from eventstore.projections.base import Dialect, ReadModelTx
from eventstore.store.base import EventStore
from eventstore.store.postgres_datastore import (
    MEMBER_LOCK_CLASS,
    RETENTION_LOCK,
    SETUP_LOCK,
    PostgresDatastore,
)
from eventstore.store.postgres_schema import PROJECTION_PARTITIONS
from eventstore.store.sqlite import PROJECTION_SCHEMA
from eventstore.store.sqlite_datastore import SQLiteDatastore, sqlite_partition

__all__ = ["MEMBER_LOCK_CLASS", "RETENTION_LOCK", "SETUP_LOCK", "Backend", "LocalBackend",
           "PostgresBackend", "SQLiteBackend", "backend_for", "projection_lock_key",
           "sqlite_partition"]

#: Seconds `close` waits for a connection in use before leaving it to the process's end.
CLOSE_WAIT_S = 2.0
#: A projection batch is not an HTTP request: the pool's statement timeout and its
#: index-only planner settings (see postgres_datastore.connection_kwargs) are lifted for
#: the read-model writes of the batch, as they were on the runner's own pool before.
_BATCH_SETTINGS = (b"SET LOCAL statement_timeout = 0; SET LOCAL enable_seqscan = on;"
                   b" SET LOCAL enable_bitmapscan = on; SET LOCAL enable_sort = on")
#: ... and a batch's commit does not wait for the disk. A batch is derived state: its
#: read-model writes and its checkpoint commit together, so a crash can only lose whole
#: recent batches (at most wal_writer_delay x 3, 600 ms by default), read model and
#: checkpoint alike, and the worker that takes the partition then applies them again.
#: Nothing is acknowledged to anyone on the strength of a batch's commit. COMMIT was a
#: fifth of the workers' samples in a catch-up (py-spy). Appends never carry this
#: setting: it is local to the batch's transaction.
_BATCH_COMMIT = _BATCH_SETTINGS + b"; SET LOCAL synchronous_commit = off"


class CheckpointMoved(Exception):
    """A batch's checkpoint was not where the batch started (a rebuild or a replay moved
    it): nothing of the batch commits; reload the checkpoint and go on."""


def projection_lock_key(name: str) -> int:
    """The first advisory-lock key of a projection's partitions (a stable int4)."""
    import zlib

    return zlib.crc32(f"eventstore-projection:{name}".encode()) & 0x7FFFFFFF


class Backend(Protocol):
    """What the projection runner needs of a database: partitioned reads of the log,
    read-model transactions, and ownership of (projection, partition) units."""

    dialect: Dialect
    partitions: int

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]: ...
    def transaction(self) -> Any: ...
    def batch(self, projection: str, partition: int, start: int, end: int,
              count: int) -> Any: ...
    def reading(self) -> Any: ...
    def savepoint(self, tx: ReadModelTx) -> Any: ...
    def setup_lock(self, tx: ReadModelTx) -> None: ...
    def join(self) -> None: ...
    def members(self) -> int: ...
    def try_claim(self, projection: str, partition: int) -> bool: ...
    def release(self, projection: str, partition: int) -> None: ...
    def locks_alive(self) -> bool: ...
    def drop_locks(self) -> None: ...
    def lag(self, projection: str) -> list[tuple[int, int, int, int, datetime | None]]: ...
    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]: ...
    def close(self) -> None: ...


class PostgresBackend:
    """Checkpoints, dead letters and partition locks in the event store's database, over
    the store's own PostgresDatastore (its pool; one dedicated lock connection)."""

    dialect: Dialect = "postgresql"
    partitions = PROJECTION_PARTITIONS

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self._locks = datastore.lock_session("eventstore-runner")
        self.member_id = random.randrange(1, 2**31 - 1)

    # -- reading and writing -------------------------------------------------------------

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]:
        return self.datastore.read_partition(partition, from_position, limit)

    @contextmanager
    def transaction(self) -> Iterator[ReadModelTx]:
        with self.datastore.transaction(setup=_BATCH_SETTINGS) as conn:
            yield ReadModelTx(conn, "postgresql")

    @contextmanager
    def batch(self, projection: str, partition: int, start: int, end: int,
              count: int) -> Iterator[ReadModelTx]:
        """A batch's transaction, its checkpoint moved from `start` to `end` first
        (CheckpointMoved if someone else moved it), in the round trip of its BEGIN."""
        with self.datastore.projection_batch(projection, partition, start, end, count,
                                             setup=_BATCH_COMMIT) as (conn, moved):
            if not moved:
                raise CheckpointMoved
            yield ReadModelTx(conn, "postgresql")

    @contextmanager
    def reading(self) -> Iterator[ReadModelTx]:
        """For lookups: no transaction, each statement sees what is committed."""
        with self.datastore.connection() as conn:
            yield ReadModelTx(conn, "postgresql")

    @contextmanager
    def savepoint(self, tx: ReadModelTx) -> Iterator[None]:
        with tx.connection.transaction():
            yield

    def setup_lock(self, tx: ReadModelTx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))

    # -- ownership -----------------------------------------------------------------------

    def join(self) -> None:
        self._locks.open(MEMBER_LOCK_CLASS, self.member_id)

    def members(self) -> int:
        return self._locks.members(MEMBER_LOCK_CLASS)

    def try_claim(self, projection: str, partition: int) -> bool:
        return self._locks.try_lock(projection_lock_key(projection), partition)

    def release(self, projection: str, partition: int) -> None:
        self._locks.unlock(projection_lock_key(projection), partition)

    def locks_alive(self) -> bool:
        return self._locks.alive()

    def drop_locks(self) -> None:
        """Forget the lock connection (its locks are gone with it); `join` reconnects."""
        self._locks.drop()

    # -- status --------------------------------------------------------------------------

    def lag(self, projection: str) -> list[tuple[int, int, int, int, datetime | None]]:
        """(partition, checkpoint, events handled, events behind, oldest unhandled time)."""
        return self.datastore.projection_lag(projection)

    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        return self.datastore.partition_behind(partition, position)

    def close(self) -> None:
        """Release the lock connection in bounded time (see PostgresLockSession.close). The
        pool is the store's, closed with it."""
        self._locks.close(CLOSE_WAIT_S)


class SQLiteBackend:
    """The embedded default: the read model and checkpoints in the events' SQLite file."""

    dialect: Dialect = "sqlite"
    partitions = PROJECTION_PARTITIONS

    def __init__(self, datastore: SQLiteDatastore, *, owned: bool = False) -> None:
        """`owned`: close the datastore with this backend (else its owner, the store,
        closes it: the runner's batches use the store's own connections)."""
        self.datastore = datastore
        self.path = datastore.path
        self._owned = owned

    def read(self, partition: int, from_position: int, limit: int) -> list[RecordedEvent]:
        return self.datastore.read_partition(partition, from_position, limit)

    @contextmanager
    def transaction(self) -> Iterator[ReadModelTx]:
        """The store's own write transaction: batches queue with this process's appends on
        its write lock rather than inside SQLite."""
        with self.datastore.write(translate=False) as conn:
            yield ReadModelTx(conn, "sqlite")

    @contextmanager
    def batch(self, projection: str, partition: int, start: int, end: int,
              count: int) -> Iterator[ReadModelTx]:
        """A batch's transaction, its checkpoint moved from `start` to `end` first
        (CheckpointMoved if someone else moved it)."""
        with self.transaction() as tx:
            moved = tx.execute(
                "UPDATE es_projection_checkpoints SET position = %s, events_handled = "
                "events_handled + %s, updated_at = CURRENT_TIMESTAMP WHERE projection = %s "
                "AND partition = %s AND position = %s",
                (end, count, projection, partition, start))
            if moved.rowcount != 1:
                raise CheckpointMoved
            yield tx

    @contextmanager
    def reading(self) -> Iterator[ReadModelTx]:
        """For lookups: no write lock; in WAL mode readers never wait for the writer."""
        with self.datastore.connection(translate=False) as conn:
            yield ReadModelTx(conn, "sqlite")

    @contextmanager
    def savepoint(self, tx: ReadModelTx) -> Iterator[None]:
        with self.datastore.savepoint(tx.connection):
            yield

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
        return [(partition, position, handled, *self.behind(partition, position))
                for partition, position, handled in self.datastore.checkpoints(projection)]

    def behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        return self.datastore.partition_behind(partition, position)

    def close(self) -> None:
        if self._owned:
            self.datastore.close()


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
        super().__init__(SQLiteDatastore(str(path)), owned=True)
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


def backend_for(store: EventStore) -> PostgresBackend | SQLiteBackend:
    """The backend over the store's own datastore (no connections of its own but, on
    PostgreSQL, the advisory-lock connection)."""
    datastore = getattr(store, "datastore", None)
    if isinstance(datastore, PostgresDatastore):
        return PostgresBackend(datastore)
    if isinstance(datastore, SQLiteDatastore):
        if datastore.memory:
            raise ValidationError("projections need a database file or PostgreSQL; an "
                                  "in-memory SQLite store cannot be shared with the runner")
        return SQLiteBackend(datastore)
    raise TypeError(f"no projection backend for {type(store).__name__}")
