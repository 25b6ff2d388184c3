"""The PostgreSQL event store: appends and subscriptions over one PostgresDatastore
(postgres_datastore.py: the pools, error translation and every read of events, of one
stream or of the log, which it shares with projections and retention). One round trip per
append (a few for an append written with COPY); threads that append together share one
(group_commit.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from eventstore.errors import (
    CheckpointConflict,
    ConcurrencyError,
    EventStoreError,
    SchemaError,
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
from eventstore.store.base import MAX_EVENTS_PER_APPEND, AsyncAppend, EventStore, StoreStats
from eventstore.store.encoding import (
    check_append_many,
    check_read_all,
    check_read_stream,
    check_resent_checkpoint,
    conflicts,
    earlier_append,
    earlier_appends,
    floats_stay_floats,
)
from eventstore.store.group_commit import ThreadGroupCommit
from eventstore.store.postgres_append import (
    APPEND_MANY_SQL,
    APPEND_SQL,
    BATCH_SQL,
    CURRENT_VERSION,
    append_params,
    appended,
    batch_params,
    batch_results,
    batchable,
    write_alone,
)
from eventstore.store.postgres_async import AsyncAppender
from eventstore.store.postgres_datastore import (
    PLANNER_OPTIONS,
    POOL_RESET_INTERVAL_SECONDS,
    RETENTION_LOCK,
    PostgresDatastore,
    connection_kwargs,
    liveness_kwargs,
    log_query_sql,
)
from eventstore.store.postgres_schema import MAX_EVENTS_PER_TRANSACTION, MIGRATIONS, SCHEMA_VERSION
from eventstore.store.prepared import PreparedAppend
from eventstore.store.rows import EVENT_COLUMNS
from eventstore.store.translate import postgres_connection_lost as connection_lost

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "eventstore_appended"
_NOTIFY_COALESCE_SECONDS = 0.003
_RACE_RETRIES = 100
#: Bytes of rows one `import_rows` takes: half of PostgreSQL's cap on one jsonb value.
IMPORT_MAX_BYTES = 128 << 20
_CHECKPOINT_SQL = (
    b"INSERT INTO es_consumer_checkpoints AS c (consumer, position) VALUES (%s, %s)"
    b" ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = now()"
    b" WHERE c.position < excluded.position RETURNING position")


class PostgresEventStore(EventStore):
    """Events in PostgreSQL. See postgres_schema.py for how the global order is kept."""

    def __init__(
        self,
        url: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 16,
        connect_timeout: float = 10.0,
        pool_timeout: float = 10.0,
        max_payload_bytes: int | None = None,
        max_events_per_append: int = MAX_EVENTS_PER_APPEND,
        statement_timeout: float | None = None,
    ) -> None:
        """`pool_timeout` bounds the wait for a pooled connection, `statement_timeout`
        (seconds; None: the server's setting) each statement; connections also carry a
        libpq connect timeout and TCP keepalives, so a dead peer is noticed. Together they
        turn a slow, down or unreachable database into StoreUnavailable within about that
        long. (A stalled server that still acknowledges packets is bounded by the HTTP
        server's request deadline instead: see eventstore/server/deadline.py.)"""
        self.url = url
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        if max_payload_bytes is not None:
            self.max_payload_bytes = max_payload_bytes
        self.max_events_per_append = min(max_events_per_append, MAX_EVENTS_PER_TRANSACTION)
        #: The database: pools, error translation, every read of events, checkpoints, locks,
        #: retention queries. Projections and retention use this same object (one pool per
        #: pod).
        self.datastore = PostgresDatastore(
            url, pool_min_size=pool_min_size, pool_max_size=pool_max_size,
            connect_timeout=connect_timeout, pool_timeout=pool_timeout,
            statement_timeout=statement_timeout)
        self._closed = False
        # Wake-ups: appends set _pending; one thread sends a coalesced NOTIFY outside the
        # writers' transactions, because NOTIFY inside a transaction takes a database-wide
        # lock at commit that would serialise all writers.
        self._pending = threading.Event()
        self._notifier: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._wakeups = threading.Condition()
        self._wakeup_count = 0
        self._start_lock = threading.Lock()
        self._group = ThreadGroupCommit(self._write_batch)

    @property
    def _pool(self) -> ConnectionPool[psycopg.Connection[TupleRow]]:
        """The datastore's synchronous pool (the one every component of a pod shares)."""
        return self.datastore.pool

    @staticmethod
    def connection_kwargs(statement_timeout: float | None, connect_timeout: float
                          ) -> dict[str, Any]:
        """psycopg.connect's arguments for the pools' connections."""
        return connection_kwargs(statement_timeout, connect_timeout)

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> int:
        with self._connection() as conn, conn.transaction():
            # A migration may rewrite a large table: not bounded like a request.
            conn.execute("SET LOCAL statement_timeout = 0")
            # Serialise concurrent migrations (several pods starting at once).
            conn.execute("SELECT pg_advisory_xact_lock(7142001)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS es_schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM es_schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"the database schema is version {current}, newer than this code's "
                    f"{SCHEMA_VERSION}: upgrade eventstore"
                )
            for number in range(current + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[number - 1].encode())
                conn.execute("INSERT INTO es_schema_version (version) VALUES (%s)", (number,))
                log.info("applied schema migration %d", number)
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT to_regclass('es_schema_version') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            row = conn.execute("SELECT coalesce(max(version), 0) FROM es_schema_version").fetchone()
            return int(row[0]) if row else 0

    def schema_is_current(self) -> bool:
        try:
            return self.schema_version() == SCHEMA_VERSION
        except EventStoreError:
            return False

    # -- writing -----------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: Expected = ExpectedVersion.ANY,
    ) -> AppendResult:
        return self.append_prepared(self.prepare_append(stream_id, events, expected_version))

    def append_prepared(self, prepared: PreparedAppend, *, grouped: bool = True
                        ) -> AppendResult:
        """Append a prepared append. Threads sharing this store commit together (see
        group_commit.ThreadGroupCommit): whatever a shared commit does not finish, and
        every append with `grouped` False (the caller already tried a group), takes the
        individual path, which decides conflicts, races and re-sends."""
        if grouped and batchable(prepared):
            result = self._group.append(prepared, self._append_alone)
            if result is not None:
                return result
        return self._append_alone(prepared)

    def _append_alone(self, prepared: PreparedAppend) -> AppendResult:
        """One append in its own transaction (postgres_append.write_alone); retried when
        it loses a race it may."""
        stream_id, expected = prepared.stream_id, prepared.expected
        for _ in range(_RACE_RETRIES):
            try:
                with self._connection() as conn:
                    current, positions = write_alone(conn, prepared)
            except psycopg.errors.UniqueViolation:
                stored = self._stored_append(stream_id, prepared.ids)
                if stored is not None:
                    return stored
                if prepared.retries_races:
                    continue
                raise ConcurrencyError(stream_id, _show(expected),
                                       self.stream_version(stream_id)) from None
            if positions is None:  # the expectation did not hold; nothing was written
                stored = self._stored_append(stream_id, prepared.ids)
                if stored is not None:
                    return stored
                raise ConcurrencyError(stream_id, _show(expected), current)
            self.signal_append()
            return appended(stream_id, current, positions)
        raise StoreUnavailable(f"append to {stream_id!r} lost {_RACE_RETRIES} races in a row; "
                               "retry later")

    def _write_batch(self, batch: Sequence[PreparedAppend]) -> list[AppendResult | None]:
        """One statement for the group commit: each append's result, None where it did not
        go through (a failed statement, a connection lost, an expectation that did not
        hold: the individual path decides each of those)."""
        try:
            with self._connection() as conn:
                if len(batch) == 1:
                    row = conn.execute(APPEND_SQL, append_params(batch[0])).fetchone()
                    rows = [] if row is None else [(0, *row)]
                else:
                    rows = conn.execute(BATCH_SQL, batch_params(batch)).fetchall()
        except (psycopg.Error, EventStoreError) as exc:
            log.debug("group commit of %d appends handed to the individual path: %s",
                      len(batch), type(exc).__name__)
            return [None] * len(batch)
        results = batch_results(batch, rows)
        if any(r is not None for r in results):
            self.signal_append()
        return results

    def append_many(self, appends: Sequence[StreamAppend], *,
                    checkpoint: Checkpoint | None = None) -> list[AppendResult]:
        checked = check_append_many(appends, self.max_payload_bytes, self.max_events_per_append)
        if checkpoint is not None:
            validate_checkpoint(checkpoint)
        elif not checked:
            raise ValidationError("append_many has nothing to do: give appends or a checkpoint")
        items = [item for item, _, _ in checked]
        statements = []
        offset = 0
        for item, expected, encoded in checked:
            params = append_params(PreparedAppend(item.stream_id, item.events, expected,
                                                  encoded))
            params["offset"] = offset
            offset += len(item.events)
            statements.append((item.stream_id, expected, params))
        # Statements run in stream-id order, so that two append_many on the same streams
        # wait for each other's uniqueness checks in one order and never deadlock. The
        # positions follow the order given: they come from the offsets, not from the
        # order of execution.
        order = sorted(range(len(statements)), key=lambda i: statements[i][0])
        for _ in range(_RACE_RETRIES):
            try:
                done = self._append_many_once([statements[i] for i in order], checkpoint)
                results = [done[order.index(i)] for i in range(len(statements))]
            except _Refused as refused:  # rolled back; perhaps a re-send of a committed one
                earlier = self._stored_appends(items) if items else None
                if earlier is not None:
                    return self._resent(earlier, checkpoint)
                raise refused.error from None
            except psycopg.errors.UniqueViolation:
                # A concurrent append took a version we read (or these ids are stored).
                earlier = self._stored_appends(items)
                if earlier is not None:
                    return self._resent(earlier, checkpoint)
                for stream_id, expected, _ in statements:
                    actual = self.stream_version(stream_id)
                    if conflicts(expected, actual):
                        raise ConcurrencyError(stream_id, _show(expected), actual) from None
                continue  # only ANY / STREAM_EXISTS streams raced: read again and retry
            except psycopg.errors.DeadlockDetected:
                continue  # rolled back whole; cannot come from two append_many (see above)
            if results:
                self.signal_append()
            return results
        raise StoreUnavailable(f"append_many lost {_RACE_RETRIES} races in a row; retry later")

    def _append_many_once(self, statements: list[tuple[str, Expected, dict[str, Any]]],
                          checkpoint: Checkpoint | None) -> list[AppendResult]:
        """One transaction: the checkpoint first (its row lock queues a second instance of
        the same consumer behind this one), then each stream's append statement."""
        results = []
        with self._connection() as conn, conn.transaction():
            if checkpoint is not None:
                moved = conn.execute(_CHECKPOINT_SQL,
                                     (checkpoint.consumer, checkpoint.position)).fetchone()
                if moved is None:
                    row = conn.execute("SELECT position FROM es_consumer_checkpoints WHERE "
                                       "consumer = %s", (checkpoint.consumer,)).fetchone()
                    raise _Refused(CheckpointConflict(checkpoint.consumer, checkpoint.position,
                                                      int(row[0]) if row else 0))
            for stream_id, expected, params in statements:
                row = conn.execute(APPEND_MANY_SQL, params).fetchone()
                assert row is not None
                current, positions = int(row[0]), row[1]
                if positions is None:
                    raise _Refused(ConcurrencyError(stream_id, _show(expected), current))
                results.append(appended(stream_id, current, positions))
        return results

    def _resent(self, earlier: list[AppendResult], checkpoint: Checkpoint | None
                ) -> list[AppendResult]:
        if checkpoint is not None:
            check_resent_checkpoint(checkpoint, self.read_checkpoint(checkpoint.consumer))
        return earlier

    def _stored_appends(self, items: list[StreamAppend]) -> list[AppendResult] | None:
        ids = [e.id for item in items for e in item.events]
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, stream_id, version, position FROM es_events WHERE id = ANY(%b::uuid[])"
                " UNION ALL SELECT id, stream_id, version, position FROM es_events_archive"
                " WHERE id = ANY(%b::uuid[])",
                (ids, ids),
            ).fetchall()
        return earlier_appends(items, rows)

    def read_checkpoint(self, consumer: str) -> int | None:
        return self.datastore.read_checkpoint(consumer)

    def _stored_append(self, stream_id: str, ids: list[UUID]) -> AppendResult | None:
        """The earlier result when exactly these events are stored already (a re-send);
        None when none of them is. Raises when only some are, or elsewhere."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, stream_id, version, position FROM es_events WHERE id = ANY(%b::uuid[])"
                " UNION ALL SELECT id, stream_id, version, position FROM es_events_archive"
                " WHERE id = ANY(%b::uuid[]) ORDER BY version",
                (ids, ids),
            ).fetchall()
        return earlier_append(stream_id, [str(i) for i in ids], rows)

    # -- reading -----------------------------------------------------------------------

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
        return self.datastore.read_stream(
            stream_id, from_version=from_version, to_version=to_version,
            as_of=None if as_of is None else _aware(as_of), backwards=backwards, limit=limit)

    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        """Events of a stream that retention moved to the archive table."""
        check_read_stream(stream_id, from_version, to_version, limit)
        return self.datastore.read_archived_stream(stream_id, from_version,
                                                   to_version=to_version, limit=limit)

    def archive_stream(self, stream_id: str, up_to_version: int, older_than: datetime) -> int:
        validate_stream_id(stream_id)
        with self._connection() as conn, conn.transaction():
            cur = conn.execute(
                f"WITH moved AS (DELETE FROM es_events WHERE stream_id = %s AND version <= %s"
                f" AND recorded_at < %s RETURNING {EVENT_COLUMNS}, tx_id)"
                f" INSERT INTO es_events_archive ({EVENT_COLUMNS}, tx_id)"
                f" SELECT {EVENT_COLUMNS}, tx_id FROM moved",
                (stream_id, up_to_version, _aware(older_than)),
            )
            return cur.rowcount

    def read_all(self, from_position: int = 0, limit: int = 1000, *,
                 to_position: int | None = None, types: Sequence[str] | None = None,
                 stream_prefix: str | None = None, backwards: bool = False
                 ) -> list[RecordedEvent]:
        query = check_read_all(from_position, limit, to_position, types, stream_prefix,
                               backwards)
        return self.datastore.read_log(query)

    def head_position(self) -> int:
        """The highest position a reader may see now (0 for an empty log)."""
        return self.datastore.head_position()

    # -- retention (eventstore/retention.py) --------------------------------------------

    def retention_candidates(self, older_than: datetime, limit: int, after: str = ""
                             ) -> list[str]:
        return self.datastore.retention_candidates(older_than, limit, after)

    @contextmanager
    def retention_lock(self) -> Iterator[bool]:
        """Retention runs on one replica at a time: an advisory lock for the run."""
        with self.datastore.exclusive(RETENTION_LOCK) as mine:
            yield mine

    def stream_version(self, stream_id: str) -> int:
        validate_stream_id(stream_id)
        with self._connection() as conn:
            row = conn.execute(f"SELECT {CURRENT_VERSION.format(s='%s')}".encode(),
                               (stream_id, stream_id)).fetchone()
            return int(row[0]) if row else 0

    def stats(self) -> StoreStats:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT (SELECT reltuples::bigint FROM pg_class WHERE oid = 'es_events'::regclass),"
                " pg_total_relation_size('es_events') + pg_total_relation_size('es_events_archive')"
            ).fetchone()
            assert row is not None
            estimate, size = int(row[0]), int(row[1])
            # Exact counts while they are cheap; planner statistics past a million rows.
            if estimate < 1_000_000:
                counted = conn.execute(
                    "SELECT (SELECT count(*) FROM es_events),"
                    " (SELECT count(*) FROM (SELECT stream_id FROM es_events"
                    "  UNION SELECT stream_id FROM es_events_archive) AS s),"
                    " (SELECT count(*) FROM es_events_archive)"
                ).fetchone()
                assert counted is not None
                events, streams, archived = (int(v) for v in counted)
            else:
                est = conn.execute(
                    "SELECT (SELECT CASE WHEN n_distinct < 0 THEN -n_distinct * %s"
                    "  ELSE n_distinct END FROM pg_stats WHERE tablename = 'es_events'"
                    "  AND attname = 'stream_id'),"
                    " (SELECT reltuples::bigint FROM pg_class"
                    "  WHERE oid = 'es_events_archive'::regclass)", (estimate,)
                ).fetchone()
                assert est is not None
                events, streams, archived = estimate, int(est[0] or 0), max(0, int(est[1]))
        return StoreStats(events=events, streams=streams, archived_events=archived, bytes=size,
                          head_position=self.head_position())

    # -- live subscriptions ------------------------------------------------------------

    def wait_for_events(self, after_position: int, timeout: float,
                        interrupt: threading.Event | None = None) -> bool:
        self._ensure_listener()
        with self._wakeups:
            seen = self._wakeup_count
            self._wakeups.wait_for(
                lambda: self._wakeup_count != seen or self._closed
                or (interrupt is not None and interrupt.is_set()), timeout)
            return self._wakeup_count != seen

    def wake_waiters(self) -> None:
        with self._wakeups:
            self._wakeups.notify_all()

    def async_appender(self, pool_size: int) -> AsyncAppend:
        return AsyncAppender(self, max_size=pool_size)

    def signal_append(self) -> None:
        """Wake subscribers (here and, through NOTIFY, in other processes) after an append."""
        if self._notifier is None:
            with self._start_lock:
                if self._notifier is None:
                    self._notifier = threading.Thread(
                        target=self._notify_loop, name="eventstore-notify", daemon=True)
                    self._notifier.start()
        if not self._pending.is_set():  # set() takes a lock; under load most appends find it set
            self._pending.set()

    def _notify_loop(self) -> None:
        # Its own connection, never one of the pool's: a wake-up need not wait for the
        # disk (synchronous_commit off), and that setting must never reach a connection
        # that appends, or appends would be acknowledged before they are durable.
        conn: psycopg.Connection[TupleRow] | None = None
        try:
            while not self._closed:
                if not self._pending.wait(timeout=0.5):
                    continue
                self._pending.clear()
                try:
                    if conn is None or conn.closed:
                        conn = self.datastore.dedicated(
                            "eventstore-notify", options="-c synchronous_commit=off")
                    conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
                except Exception:
                    log.debug("NOTIFY failed; subscribers will poll", exc_info=True)
                    if conn is not None:
                        conn.close()
                    conn = None
                # Appends during this pause share the next NOTIFY: under load that is one
                # notification per few milliseconds instead of one per append.
                time.sleep(_NOTIFY_COALESCE_SECONDS)
        finally:
            if conn is not None:
                conn.close()

    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        with self._start_lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen_loop, name="eventstore-listen", daemon=True)
                self._listener.start()

    def _listen_loop(self) -> None:
        while not self._closed:
            try:
                with self.datastore.dedicated("eventstore-listen") as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._wake()  # we may have missed a notification while reconnecting
                    while not self._closed:
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake()
            except (psycopg.Error, StoreUnavailable):
                log.warning("LISTEN connection lost; reconnecting", exc_info=True)
                threading.Event().wait(1.0)

    def _wake(self) -> None:
        with self._wakeups:
            self._wakeup_count += 1
            self._wakeups.notify_all()

    # -- backup and restore (eventstore/backup.py) ------------------------------------

    def export_rows(self, after_position: int, up_to_position: int) -> list[dict[str, Any]]:
        """Every event of the log and the archive with after < position <= up_to, in
        position order, as plain JSON-ready rows (the archive's flagged `archived_at`)."""
        columns = f"{EVENT_COLUMNS}, NULL::timestamptz AS archived_at"
        archive_columns = f"{EVENT_COLUMNS}, archived_at"
        with self._connection() as conn:
            cur = conn.execute(
                f"SELECT {columns} FROM es_events WHERE position > %s AND position <= %s"
                f" UNION ALL SELECT {archive_columns} FROM es_events_archive"
                " WHERE position > %s AND position <= %s ORDER BY 1",
                (after_position, up_to_position, after_position, up_to_position),
            )
            rows = cur.fetchall()
        return [
            {
                "position": r[0], "id": str(r[1]), "stream_id": r[2], "version": r[3], "type": r[4],
                "schema_version": r[5], "payload": r[6], "metadata": r[7],
                "recorded_at": r[8].isoformat(),
                "archived_at": r[9].isoformat() if r[9] is not None else None,
            }
            for r in rows
        ]

    def is_empty(self) -> bool:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM es_events)"
                " AND NOT EXISTS (SELECT 1 FROM es_events_archive)"
            ).fetchone()
        return bool(row and row[0])

    def import_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert exported rows, in their order, in one transaction.

        Positions are renumbered the way appends number them, from this transaction's id
        (see postgres_schema.py): a restored position must sort below every later append
        and above the readers' cutoff, which the source database's values would not in
        another PostgreSQL cluster. Their order is kept; ids, streams, versions, types,
        payloads, metadata and timestamps are restored as they were.
        """
        if len(rows) >= 1 << 20:
            raise ValidationError("at most 1,048,575 events per import transaction")
        # As for appends: floats of 1e16 and more written so that jsonb keeps them floats.
        batch = floats_stay_floats(json.dumps(list(rows)))
        if len(batch) > IMPORT_MAX_BYTES:
            # The rows travel as one jsonb value, which PostgreSQL caps at 256 MiB.
            raise ValidationError(f"{len(batch)} bytes of rows in one import transaction: at "
                                  f"most {IMPORT_MAX_BYTES}; import them in smaller chunks")
        position = "(pg_current_xact_id()::text::bigint << 20) | (u.n - 1)"
        recordset = (
            "ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (id uuid, stream_id text, version bigint,"
            " type text, schema_version integer, payload jsonb, metadata jsonb,"
            " recorded_at timestamptz, archived_at timestamptz)) WITH ORDINALITY AS"
            " u(id, stream_id, version, type, schema_version, payload, metadata, recorded_at,"
            " archived_at, n)"
        )
        with self._connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO es_events (position, id, stream_id, version, type, schema_version,"
                " payload, metadata, recorded_at, tx_id)"
                f" SELECT {position}, u.id, u.stream_id, u.version, u.type, u.schema_version,"
                f" u.payload, u.metadata, u.recorded_at, pg_current_xact_id() FROM {recordset}"
                " WHERE u.archived_at IS NULL",
                (batch,),
            )
            conn.execute(
                "INSERT INTO es_events_archive (position, id, stream_id, version, type,"
                " schema_version, payload, metadata, recorded_at, tx_id, archived_at)"
                f" SELECT {position}, u.id, u.stream_id, u.version, u.type, u.schema_version,"
                " u.payload, u.metadata, u.recorded_at, pg_current_xact_id(), u.archived_at"
                f" FROM {recordset} WHERE u.archived_at IS NOT NULL",
                (batch,),
            )

    # -- plumbing ----------------------------------------------------------------------

    def _connection(self) -> AbstractContextManager[psycopg.Connection[TupleRow]]:
        """A pooled connection, with driver errors translated (by the datastore)."""
        if self._closed:
            raise StoreUnavailable("the event store is closed")
        return self.datastore.connection()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.set()
        self._wake()
        for thread in (self._notifier, self._listener):
            if thread is not None:
                thread.join(timeout=2)
        self.datastore.close()


def _show(expected: Expected) -> object:
    return expected.value if isinstance(expected, ExpectedVersion) else expected


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValidationError(
            f"as_of {moment.isoformat()} has no time zone: pass an aware datetime (UTC)"
        )
    return moment


#: Re-exported for older imports (they live in postgres_datastore.py and postgres_append.py).
__all__ = ["APPEND_SQL", "PLANNER_OPTIONS", "POOL_RESET_INTERVAL_SECONDS", "RETENTION_LOCK", "UUID",
           "PostgresEventStore", "appended", "connection_lost", "liveness_kwargs", "log_query_sql"]


class _Refused(Exception):
    """Inside append_many's transaction: roll back, then raise `error` unless the whole
    append_many turns out to be a re-send of one already committed."""

    def __init__(self, error: EventStoreError) -> None:
        super().__init__(str(error))
        self.error = error
