"""One PostgreSQL database as this process sees it: its pools, its few dedicated connections,
the one place psycopg errors become library errors, every reader of events (one stream, its
archive, the global log and projection partitions: one column list, one cutoff, one row
mapper), consumer checkpoints, advisory locks and retention's queries. (Appends are the
event store's, over this object's pool.)

Like eventsourcing's `PostgresDatastore`, one object per database is handed to everything
that talks to it: the event store, the projection runner (shared and local), retention and
the server's async append side. So a store pod's connections are the sum of a few pools
named in one place (eventstore/store/budget.py), not one per component.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from eventstore.errors import StoreUnavailable, ValidationError
from eventstore.events import Checkpoint, RecordedEvent, validate_checkpoint
from eventstore.store import jsonb
from eventstore.store.encoding import LogQuery
from eventstore.store.rows import EVENT_COLUMNS, StreamTable, row_to_event
from eventstore.store.translate import postgres_connection_lost, postgres_error

log = logging.getLogger(__name__)

#: Keep every query of the log on its index (see `connection_kwargs`). JIT off: with
#: enable_sort=off any plan with a Sort costs about 1e10, past the JIT thresholds, and
#: compiling it took 0.9 s (seen on the group commit's statement).
PLANNER_OPTIONS = ("-c enable_bitmapscan=off -c enable_seqscan=off -c enable_sort=off"
                   " -c jit=off")
#: A projection batch's checkpoint move, a compare-and-set (see projection_batch). With
#: literals: it is sent with the batch's BEGIN in one simple query, which takes no
#: parameters.
_ADVANCE_CHECKPOINT = sql.SQL(
    "UPDATE es_projection_checkpoints SET position = {end}, events_handled = events_handled"
    " + {count}, updated_at = CURRENT_TIMESTAMP WHERE projection = {projection} AND"
    " partition = {partition} AND position = {start}")
#: At most one pool replacement per this many seconds (see `_replace_pool_soon`).
POOL_RESET_INTERVAL_SECONDS = 1.0
#: The readers' cutoff: positions are (transaction id << 20 | index), so every row below the
#: oldest running transaction's id shifted is committed and no later commit can land below
#: it. A sub-select, so the planner evaluates it once (an InitPlan) per statement.
CUTOFF = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
#: Rows below this position are committed and will never be joined by an earlier one.
#: Written as a filter on `position + 0`, not as an index bound: with a two-sided range of
#: unknown values the planner guesses a handful of rows and sorts the whole tail of the log
#: for every page; with one bound it walks the index.
_CUTOFF_FILTER = f"(position + 0) < {CUTOFF}"
#: A stream's projection partition, spelled exactly as in the expression indexes of
#: migration 2 (see postgres_schema.py).
PARTITION = "(hashtext(stream_id) & 15)"
#: A stream's category as the category index holds it (see migration 3).
_CATEGORY = "(split_part(stream_id, '-', 1) COLLATE \"C\")"
#: Advisory-lock class of projection-runner membership (the other key is a member id).
MEMBER_LOCK_CLASS = 714_203
#: Serialises projection setup (CREATE TABLE IF NOT EXISTS races in PostgreSQL).
SETUP_LOCK = 714_204
#: Retention runs on one replica at a time.
RETENTION_LOCK = 714_205


def liveness_kwargs(connect_timeout: float) -> dict[str, Any]:
    """libpq settings that notice a dead or unreachable server: a connect timeout, TCP
    keepalives, and a TCP user timeout for sent data that is never acknowledged."""
    seconds = max(2, int(connect_timeout))  # libpq takes whole seconds, at least 2
    return {"connect_timeout": seconds, "keepalives": 1, "keepalives_idle": seconds,
            "keepalives_interval": 1, "keepalives_count": 3,
            "tcp_user_timeout": seconds * 1000}


def connection_kwargs(statement_timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    """psycopg.connect's arguments for the pools' connections.

    Every query here walks an index in order. With stale statistics (a young, fast-growing
    log) the planner prefers scanning and sorting the whole tail of the log for each page of
    read_all; the planner options keep it on the index."""
    options = PLANNER_OPTIONS
    if statement_timeout is not None:
        options += f" -c statement_timeout={int(statement_timeout * 1000)}"
    return {"autocommit": True, "options": options, **liveness_kwargs(connect_timeout)}


#: Appends are acknowledged once their COMMIT returns, which means durable only when
#: synchronous_commit is not off. A server, database or role default of off (a tuning
#: some DBAs apply) would acknowledge appends that a crash can still lose, so a pool
#: connection that starts with off is set to on; stronger settings (remote_write,
#: remote_apply) and local are kept. Projection batches still turn it off for their own
#: transaction (SET LOCAL), and the coalesced NOTIFY on its dedicated connection.
_DURABLE = (b"SELECT set_config('synchronous_commit', 'on', false)"
            b" WHERE current_setting('synchronous_commit') = 'off'")


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """The sync pool's `configure`: durable commits (above), stored JSON decoded by
    jsonb.loads."""
    conn.execute(_DURABLE)
    jsonb.decode_with_loads(conn)


async def configure_async_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """`configure_connection` for the async (append) pool."""
    await conn.execute(_DURABLE)
    await jsonb.decode_with_loads_async(conn)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresDatastore:
    """The pools of one database and every non-append query of the log; see the module doc.

    `pool_max_size` bounds the one synchronous pool that the store's reads, projection
    batches, checkpoints and retention share; `pool_timeout` bounds the wait for one of its
    connections and the connect timeout; `statement_timeout` (seconds; None: the server's
    setting) each statement.
    """

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_min_size: int = 1, pool_max_size: int = 16,
                 connect_timeout: float = 10.0, pool_timeout: float = 10.0,
                 statement_timeout: float | None = None) -> None:
        self.url = url
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        self.pool_sizes = (pool_min_size, pool_max_size)
        self._pool_lock = threading.Lock()
        self._last_pool_reset = 0.0
        self._closed = False
        self._pool = self._new_pool()
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(
                f"could not connect to PostgreSQL at {safe_url(url)} within {connect_timeout}s"
            ) from exc

    # -- pools and connections ---------------------------------------------------------

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[TupleRow]]:
        return ConnectionPool(
            self.url, min_size=self.pool_sizes[0], max_size=self.pool_sizes[1],
            kwargs=connection_kwargs(self.statement_timeout, self.pool_timeout),
            configure=configure_connection, open=False, name="eventstore",
            # How long a call waits for a connection: while the database is down, callers
            # get StoreUnavailable after this instead of hanging.
            timeout=self.pool_timeout)

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[TupleRow]]:
        return self._pool

    @property
    def closed(self) -> bool:
        return self._closed

    def _replace_pool_soon(self) -> None:
        """Put a fresh pool in place of one whose connections are gone.

        After PostgreSQL restarts, the pool's connections are dead and its reconnection
        attempts have backed off (1, 2, 4, ... s apart), so for tens of seconds after the
        database is back every call waited out the pool timeout and failed. A fresh pool
        connects at once. At most one replacement a second; the old pool is closed on a
        thread (its connections in use close when they are returned).
        """
        with self._pool_lock:
            now = time.monotonic()
            if self._closed or now - self._last_pool_reset < POOL_RESET_INTERVAL_SECONDS:
                return
            self._last_pool_reset = now
            old, self._pool = self._pool, self._new_pool()
            self._pool.open(wait=False)
        log.info("connection pool replaced after a connection failure")
        threading.Thread(target=old.close, kwargs={"timeout": self.pool_timeout},
                         name="eventstore-pool-close", daemon=True).start()

    @contextmanager
    def translated(self) -> Iterator[None]:
        """psycopg and pool errors raised inside as library errors: the one place."""
        try:
            yield
        except (psycopg.Error, PoolTimeout) as exc:
            error = postgres_error(exc)
            if error is None:
                raise
            if postgres_connection_lost(exc):
                self._replace_pool_soon()
            raise error from exc

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection (autocommit), with driver errors translated."""
        if self._closed:
            raise StoreUnavailable("the event store is closed")
        with self.translated(), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self, setup: bytes = b"") -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection inside one transaction (committed when the block ends).

        `setup`: statements without parameters (SET LOCAL ...) sent with the BEGIN, in the
        same round trip."""
        if not setup:
            with self.connection() as conn, conn.transaction():
                yield conn
            return
        with self._begin(setup) as (conn, _):
            yield conn

    @contextmanager
    def projection_batch(self, projection: str, partition: int, start: int, end: int,
                         count: int, setup: bytes = b""
                         ) -> Iterator[tuple[psycopg.Connection[TupleRow], bool]]:
        """A projection batch's transaction. Its BEGIN, `setup` and the move of the
        checkpoint from `start` to `end` (a compare-and-set) go in one round trip: a
        batch is a handful of round trips, so one counts. Yields the connection and
        whether the checkpoint moved; when it did not, the caller raises, and nothing of
        the batch commits."""
        advance = _ADVANCE_CHECKPOINT.format(
            end=sql.Literal(end), count=sql.Literal(count), projection=sql.Literal(projection),
            partition=sql.Literal(partition), start=sql.Literal(start))
        statements = sql.SQL("; ").join([sql.SQL(setup.decode()), advance] if setup
                                         else [advance])
        with self._begin(statements) as (conn, moved):
            yield conn, moved == 1

    @contextmanager
    def _begin(self, statements: bytes | sql.Composable
               ) -> Iterator[tuple[psycopg.Connection[TupleRow], int]]:
        """BEGIN and `statements` (no parameters) in one round trip, then the block, then
        COMMIT (ROLLBACK when it raises). Yields the row count of the last statement."""
        with self.connection() as conn:
            if isinstance(statements, sql.Composable):
                statements = statements.as_bytes(conn)
            try:
                cursor = conn.execute(b"BEGIN; " + statements)
                while cursor.nextset():
                    pass
                yield conn, cursor.rowcount
            except BaseException:
                with suppress(psycopg.Error):  # if the connection is gone, the pool drops it
                    conn.rollback()
                raise
            conn.commit()

    def dedicated(self, application_name: str, **options: Any) -> psycopg.Connection[TupleRow]:
        """A connection of its own, outside the pool, for a session that must outlive a
        call: LISTEN, the coalesced NOTIFY, the projection runner's advisory locks. Each
        is counted in eventstore/store/budget.py."""
        with self.translated():
            conn = psycopg.connect(self.url, autocommit=True, application_name=application_name,
                                   **liveness_kwargs(self.pool_timeout), **options)
        jsonb.decode_with_loads(conn)
        return conn

    def new_async_pool(self, max_size: int, timeout: float
                       ) -> AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]:
        """An unopened async pool of `max_size` connections for the server's event-loop
        appends (the append side opens, uses and replaces it)."""
        return AsyncConnectionPool(
            self.url, min_size=max_size, max_size=max_size, open=False, timeout=timeout,
            name="eventstore-async", configure=configure_async_connection,
            kwargs=connection_kwargs(self.statement_timeout, self.pool_timeout))

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            self._pool.close()

    # -- one stream ----------------------------------------------------------------------

    def read_stream(self, stream_id: str, *, from_version: int, to_version: int | None,
                    as_of: datetime | None, backwards: bool, limit: int | None,
                    table: StreamTable = "es_events") -> list[RecordedEvent]:
        """A checked read of one stream (EventStore.read_stream; `as_of` aware), from the
        log or, with `table="es_events_archive"`, from the archive (both are read on their
        UNIQUE (stream_id, version) index)."""
        sql = [f"SELECT {EVENT_COLUMNS} FROM {table} WHERE stream_id = %s AND version >= %s"]
        params: list[Any] = [stream_id, from_version]
        if to_version is not None:
            sql.append("AND version <= %s")
            params.append(to_version)
        if as_of is not None:
            sql.append("AND recorded_at <= %s")
            params.append(as_of)
        sql.append("ORDER BY version DESC" if backwards else "ORDER BY version")
        if limit is not None:
            sql.append("LIMIT %s")
            params.append(limit)
        with self.connection() as conn:
            rows = conn.execute(" ".join(sql).encode(), params).fetchall()
        return [row_to_event(r) for r in rows]

    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        """A checked range of a stream's events that retention moved to the archive, in
        version order."""
        return self.read_stream(stream_id, from_version=from_version, to_version=to_version,
                                as_of=None, backwards=False, limit=limit,
                                table="es_events_archive")

    # -- the global log ----------------------------------------------------------------

    def read_log(self, query: LogQuery) -> list[RecordedEvent]:
        """A checked page of the global log (EventStore.read_all)."""
        sql, params, needs_sort = log_query_sql(query)
        with self.connection() as conn:
            if not needs_sort:
                rows = conn.execute(sql, params).fetchall()
            else:
                with conn.transaction():
                    conn.execute("SET LOCAL enable_sort = on")
                    rows = conn.execute(sql, params).fetchall()
        return [row_to_event(r) for r in rows]

    def read_partition(self, partition: int, from_position: int, limit: int
                       ) -> list[RecordedEvent]:
        """The next `limit` events of one projection partition from `from_position`, the
        archive included (a rebuild after retention must see every event)."""
        with self.connection() as conn:
            rows = conn.execute(_PARTITION_SQL, {"p": partition, "f": from_position,
                                                 "n": limit}).fetchall()
        return [row_to_event(r) for r in rows]

    def partition_behind(self, partition: int, position: int) -> tuple[int, datetime | None]:
        """(events of the partition at or after `position`, the oldest one's time)."""
        with self.connection() as conn:
            row = conn.execute(_BEHIND_SQL.encode(), {"p": partition, "f": position}).fetchone()
        assert row is not None
        return int(row[0]), row[1]

    def projection_lag(self, projection: str
                       ) -> list[tuple[int, int, int, int, datetime | None]]:
        """(partition, checkpoint, events handled, events behind, oldest unhandled time)."""
        behind = _BEHIND_SQL.replace("%(p)s", "c.partition").replace("%(f)s", "c.position")
        sql = (f"SELECT c.partition, c.position, c.events_handled, b.* FROM "
               f"es_projection_checkpoints c, LATERAL ({behind}) b"
               " WHERE c.projection = %s ORDER BY c.partition")
        with self.connection() as conn:
            rows = conn.execute(sql.encode(), (projection,)).fetchall()
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]

    def head_position(self) -> int:
        """The highest position a reader may see now (0 for an empty log)."""
        with self.connection() as conn:
            row = conn.execute(
                f"SELECT coalesce(max(position), 0) FROM es_events WHERE {_CUTOFF_FILTER}"
            ).fetchone()
        return int(row[0]) if row else 0

    def read_checkpoint(self, consumer: str) -> int | None:
        """A consumer's stored position in the global log (None: it has none yet)."""
        validate_checkpoint(Checkpoint(consumer, 0))
        with self.connection() as conn:
            row = conn.execute("SELECT position FROM es_consumer_checkpoints WHERE consumer = %s",
                               (consumer,)).fetchone()
        return None if row is None else int(row[0])

    # -- retention ---------------------------------------------------------------------

    def retention_candidates(self, older_than: datetime, limit: int, after: str
                             ) -> list[str]:
        """Streams with events in the log recorded before `older_than`: the first `limit`
        after `after`, in stream id order (EventStore.retention_candidates). Sorting is
        allowed here: the old rows are found on the time index, then ordered."""
        if older_than.tzinfo is None:
            raise ValidationError("older_than has no time zone: pass an aware datetime (UTC)")
        with self.transaction(b"SET LOCAL enable_sort = on") as conn:
            rows = conn.execute("SELECT DISTINCT stream_id FROM es_events WHERE recorded_at < %s"
                                " AND stream_id > %s ORDER BY stream_id LIMIT %s",
                                (older_than, after, limit)).fetchall()
        return [str(r[0]) for r in rows]

    @contextmanager
    def exclusive(self, key: int, wait: float = 0.5) -> Iterator[bool]:
        """True while this process holds the cluster-wide advisory lock `key`; False when
        another session still holds it after `wait` seconds. Held on one pooled connection
        and released before it goes back; if that connection dies, PostgreSQL releases the
        lock with it. (The short wait covers a holder that has just disconnected: its
        server process lets go of the lock a moment after the client has gone.)"""
        with self.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {max(1, int(wait * 1000))}".encode())
                    # Session level: it outlives this transaction, until unlocked.
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                mine = True
            except psycopg.errors.LockNotAvailable:
                mine = False
            try:
                yield mine
            finally:
                if mine:
                    with suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    # -- advisory locks for the projection runner --------------------------------------

    def lock_session(self, application_name: str) -> PostgresLockSession:
        return PostgresLockSession(self, application_name)


#: One partition's rows from position %(f)s up to the readers' cutoff. Bounded as a range
#: of the partition index, (partition, position), with row comparisons, and not as
#: `partition = p AND position >= f`: once the log has statistics, the planner takes that
#: spelling as an ordered walk of the primary key filtered on the partition, and reaches a
#: partition idle over a long stretch of the log only after walking the whole stretch, on
#: every poll (19 ms per read past 100,000 events of other partitions, growing with the
#: log). The row comparisons leave the partition index as the only one that serves the
#: bounds and the order.
_IN_PARTITION = (f"({PARTITION}, position) >= (%(p)s, %(f)s)"
                 f" AND ({PARTITION}, position) < (%(p)s, {CUTOFF})")
#: The same range of the archive, which has no cutoff (rows arrive there only by
#: retention, already committed and below every reader's cutoff).
_IN_ARCHIVED_PARTITION = (f"({PARTITION}, position) >= (%(p)s, %(f)s)"
                          f" AND ({PARTITION}, position) <= (%(p)s, {2**63 - 1})")
#: The next %(n)s events of a partition, the archive included (see read_partition).
_PARTITION_SQL = (
    f"(SELECT {EVENT_COLUMNS} FROM es_events WHERE {_IN_PARTITION}"
    f" ORDER BY {PARTITION}, position LIMIT %(n)s)"
    f" UNION ALL (SELECT {EVENT_COLUMNS} FROM es_events_archive WHERE {_IN_ARCHIVED_PARTITION}"
    f" ORDER BY {PARTITION}, position LIMIT %(n)s)"
    " ORDER BY position LIMIT %(n)s").encode()
#: Events of one partition at or after a position: how many, and the oldest one's time.
_BEHIND_SQL = (
    f"SELECT (SELECT count(*) FROM (SELECT 1 FROM es_events WHERE {_IN_PARTITION}"
    f"   LIMIT 10000000) x) AS behind,"
    f" (SELECT recorded_at FROM es_events WHERE {_IN_PARTITION}"
    f"   ORDER BY {PARTITION}, position LIMIT 1) AS oldest")


class PostgresLockSession:
    """Session-level advisory locks on one dedicated connection: a lock is held while the
    connection lives, so a killed process's locks are free at once (TCP keepalives bound
    the delay when its host disappears). Thread-safe; every driver error is
    StoreUnavailable, after which the session is gone with its locks (`drop`, then `open`
    again)."""

    def __init__(self, datastore: PostgresDatastore, application_name: str) -> None:
        self._datastore = datastore
        self._application_name = application_name
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._guard = threading.Lock()

    def open(self, member_class: int, member_id: int) -> None:
        """Connect (if not connected) and take the membership lock (member_class, member_id)."""
        with self._guard:
            if self._conn is not None and not self._conn.closed:
                return
            self._conn = self._datastore.dedicated(self._application_name)
            self._run("SELECT pg_advisory_lock(%s, %s)", (member_class, member_id))

    def _run(self, sql: str, params: tuple[Any, ...]) -> Any:
        if self._conn is None or self._conn.closed:
            raise StoreUnavailable("the advisory-lock connection is closed")
        try:
            row = self._conn.execute(sql.encode(), params).fetchone()
        except psycopg.Error as exc:
            # Whatever went wrong, which locks this session holds is now unknown.
            raise StoreUnavailable(f"advisory-lock connection failed: {exc}") from exc
        return row[0] if row else None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """One statement on the lock connection; its first column."""
        with self._guard:
            return self._run(sql, params)

    def members(self, member_class: int) -> int:
        """How many sessions (of any process) hold a lock of `member_class`: at least 1."""
        count = self.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objsubid = 2", (member_class,))
        return max(1, int(count or 0))

    def try_lock(self, key1: int, key2: int) -> bool:
        return bool(self.execute("SELECT pg_try_advisory_lock(%s, %s)", (key1, key2)))

    def unlock(self, key1: int, key2: int) -> None:
        self.execute("SELECT pg_advisory_unlock(%s, %s)", (key1, key2))

    def alive(self) -> bool:
        try:
            self.execute("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def drop(self) -> None:
        """Forget the connection (its locks go with it); `open` reconnects."""
        with self._guard:
            self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self, wait: float) -> None:
        """Close in bounded time: with the database stalled, another thread can be stuck in
        a query here holding the guard; then the connection is left to end with the process
        (and its locks with it) rather than holding up a pod's shutdown."""
        if self._guard.acquire(timeout=wait):
            try:
                self._close_conn()
            finally:
                self._guard.release()


def _category(prefix: str) -> str | None:
    """The one category every stream with this prefix is in ("account-1" -> "account"),
    or None when the prefix has no "-" (it may then span several categories)."""
    category, dash, _ = prefix.partition("-")
    return category if dash else None


def log_query_sql(query: LogQuery) -> tuple[bytes, dict[str, Any], bool]:
    """read_all's statement for `query`, its parameters, and whether it needs a sort.

    Unfiltered, it walks the primary key. Filtered, it walks one of the filter indexes
    of migration 3 in position order, so a page costs about its own size: by type, one
    index scan per type, each stopped after a page, the pages then merged (each branch
    has its own ORDER BY and LIMIT: flattened into one UNION ALL, the planner loses
    `type = ...` as an equality and walks the whole log); by a stream prefix with a "-",
    one index scan of its category; by one without (it may span several categories), a
    range of categories, sorted. Filtered reads
    bound and order by `position + 0`, the expression those indexes hold (see there).
    The cut-off filter keeps the no-skip guarantee on every path.
    """
    filtered = bool(query.types) or query.stream_prefix is not None
    pos = "(position + 0)" if filtered else "position"
    params: dict[str, Any] = {"lo": query.from_position, "limit": query.limit}
    conditions = [f"{pos} >= %(lo)s", _CUTOFF_FILTER]
    if query.to_position is not None:
        conditions.append(f"{pos} <= %(hi)s")
        params["hi"] = query.to_position
    needs_sort = False
    if query.stream_prefix is not None:
        prefix = query.stream_prefix
        category = _category(prefix)
        if category is not None:  # one category: its index range is in position order
            conditions.append(f'{_CATEGORY} = %(category)s')
            params["category"] = category
        else:  # a range of categories ("acc" covers "account" and "accrual"): then sorted
            conditions.append(f"{_CATEGORY} >= %(cat_lo)s AND {_CATEGORY} < %(cat_hi)s")
            params["cat_lo"] = prefix
            params["cat_hi"] = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            needs_sort = not query.types
        # The category alone would take "account" (no "-") for the prefix "account-".
        conditions.append("starts_with(stream_id, %(prefix)s)")
        params["prefix"] = prefix
    where = " AND ".join(conditions)
    direction = " DESC" if query.backwards else ""
    if len(query.types) == 1:
        where += " AND type = %(t0)s"
        params["t0"] = query.types[0]
    if len(query.types) > 1:
        branches = []
        for n, type_ in enumerate(query.types):
            params[f"t{n}"] = type_
            branches.append(f"(SELECT {EVENT_COLUMNS} FROM es_events WHERE type = %(t{n})s "
                            f"AND {where} ORDER BY {pos}{direction} LIMIT %(limit)s)")
        sql = (f"SELECT {EVENT_COLUMNS} FROM ({' UNION ALL '.join(branches)}) AS e "
               f"ORDER BY position{direction} LIMIT %(limit)s")
        needs_sort = True  # at most (types x limit) rows, each branch already in order
    else:
        sql = (f"SELECT {EVENT_COLUMNS} FROM es_events WHERE {where} "
               f"ORDER BY {pos}{direction} LIMIT %(limit)s")
    return sql.encode(), params, needs_sort
