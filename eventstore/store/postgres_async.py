"""Appends on an asyncio event loop, for the store server, with group commit.

Running the synchronous append on a worker thread costs the server a thread wake-up and
a GIL hand-off each way; on the HTTP append path that was a third of the CPU. This
appender sends the append statements from the event loop itself, and appends that
arrive while a commit runs (from any connection, to different streams) share the next
one: one transaction, one statement (BATCH_SQL), each append with its own expected
version and its own result. See group_commit.py for the rules of a batch.

It only ever finishes clean successes. Anything else (a version conflict, a unique
violation from a race or a re-sent event, a lost connection, a missing schema) returns
None and the caller runs the synchronous `PostgresEventStore.append_prepared` with the
same prepared append, which decides conflicts, retries and idempotent re-sends in one
place. That is safe because a failed attempt wrote nothing, or (a connection lost after
the commit) wrote exactly these events under their ids, which the synchronous append
recognises as a re-send.

It never makes an append wait long for the database's sake: the synchronous path is
always there. Its wait for a pooled connection is short, and on the first sign that its
connections are gone (that wait running out, or a connection-level error) it replaces its
whole pool. Without that, after PostgreSQL restarts the pool holds nothing usable (its
connections died, its reconnection attempts have backed off to tens of seconds apart) and
every append first waited out the pool timeout (seen on real pods: 5 s each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from eventstore import metrics
from eventstore.events import AppendResult, Expected, NewEvent
from eventstore.store.budget import DEFAULT_APPEND_POOL_SIZE
from eventstore.store.group_commit import take_batch
from eventstore.store.postgres_append import (
    APPEND_SQL,
    BATCH_SQL,
    COPY_MIN_EVENTS,
    AppendHost,
    append_params,
    batch_params,
    batch_results,
    batchable,
)
from eventstore.store.postgres_datastore import POOL_RESET_INTERVAL_SECONDS
from eventstore.store.prepared import PreparedAppend
from eventstore.store.translate import postgres_connection_lost as connection_lost

log = logging.getLogger(__name__)

#: How long an append waits for one of this pool's connections before the synchronous
#: path takes it: long enough for a busy pool to hand one back, far below a request's.
WAIT_TIMEOUT_SECONDS = 0.25
#: Batches written at once. Two: while one commit waits for the disk, the next batch is
#: already on its way, and what queues behind both forms the batch after. A batch never
#: holds a stream that the other one is writing.
MAX_IN_FLIGHT = 2


class AsyncAppender:
    """A small async connection pool next to a PostgresEventStore, for its appends, and
    the queue that groups them into shared commits."""

    def __init__(self, store: AppendHost, max_size: int = DEFAULT_APPEND_POOL_SIZE,
                 wait_timeout: float = WAIT_TIMEOUT_SECONDS,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.store = store
        self.max_size = max_size
        self.wait_timeout = wait_timeout
        # A batch in flight holds a connection: never more batches than connections.
        self.max_in_flight = max(1, min(max_in_flight, max_size))
        self._pool = self._new_pool()
        self._last_reset = 0.0
        self._retiring: set[asyncio.Task[None]] = set()
        self._queue: deque[tuple[PreparedAppend, asyncio.Future[AppendResult | None]]] = deque()
        self._writing: set[str] = set()  # streams of the batches in flight
        self._writers: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]:
        # The database's datastore makes the pool (its connection settings, its place in
        # the pod's connection budget); this side opens, uses and replaces it.
        return self.store.datastore.new_async_pool(self.max_size, self.wait_timeout)

    async def open(self) -> None:
        """Start filling the pool; does not wait, so a database that is down does not
        hold up startup (appends then go the synchronous way)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
        for task in list(self._retiring):
            await task
        await self._pool.close()

    async def _replace_pool(self) -> None:
        """A fresh pool (connecting at once, no back-off) in place of the current one,
        which is closed in the background: its connections in use close when returned."""
        fresh = self._new_pool()
        await fresh.open(wait=False)
        old, self._pool = self._pool, fresh
        log.info("async append pool replaced after a connection failure")
        await old.close(timeout=self.store.pool_timeout)

    def _replace_pool_soon(self) -> None:
        now = time.monotonic()
        if self._retiring or now - self._last_reset < POOL_RESET_INTERVAL_SECONDS:
            return
        self._last_reset = now
        task = asyncio.ensure_future(self._replace_pool())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def try_append(self, stream_id: str, events: Sequence[NewEvent],
                         expected_version: Expected) -> AppendResult | None:
        """Prepare (ValidationError for bad input, before any I/O) and `append`."""
        return await self.append(self.store.prepare_append(stream_id, events,
                                                           expected_version))

    async def append(self, prepared: PreparedAppend) -> AppendResult | None:
        """The result when the append went through, else None (see the module's doc)."""
        if not batchable(prepared):
            if prepared.count >= COPY_MIN_EVENTS:
                return None  # the synchronous path writes it with COPY, on a thread
            return (await self._write([prepared]))[0]  # fills its own commit
        waiting: asyncio.Future[AppendResult | None] = (
            asyncio.get_running_loop().create_future())
        self._queue.append((prepared, waiting))
        self._start_writers()
        return await waiting

    def _start_writers(self) -> None:
        while self._queue and len(self._writers) < self.max_in_flight:
            batch = take_batch(self._queue, self._writing)
            if not batch:  # what is queued waits for a stream in flight
                return
            streams = {p.stream_id for p, _ in batch}
            self._writing |= streams  # now, not when the task starts: the next take skips them
            task = asyncio.ensure_future(self._write_queued(batch, streams))
            self._writers.add(task)

    async def _write_queued(self, batch: list[tuple[PreparedAppend,
                                                    asyncio.Future[AppendResult | None]]],
                            streams: set[str]) -> None:
        try:
            results = await self._write([p for p, _ in batch])
        except BaseException:
            results = [None] * len(batch)
            raise
        finally:
            self._writing -= streams
            for (_, waiting), result in zip(batch, results, strict=True):
                if not waiting.done():  # its request may have been cancelled
                    waiting.set_result(result)
            self._writers.discard(asyncio.current_task())
            self._start_writers()  # what queued meanwhile

    async def _write(self, batch: Sequence[PreparedAppend]) -> list[AppendResult | None]:
        """One statement: APPEND_SQL for one append, BATCH_SQL for several."""
        metrics.APPEND_BATCH_SIZE.labels("async").observe(len(batch))
        try:
            async with self._pool.connection() as conn:
                if len(batch) == 1:
                    cursor = await conn.execute(APPEND_SQL, append_params(batch[0]))
                    row = await cursor.fetchone()
                    rows = [] if row is None else [(0, *row)]
                else:
                    cursor = await conn.execute(BATCH_SQL, batch_params(batch))
                    rows = await cursor.fetchall()
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            # A conflict, a race, a re-send or an outage: the synchronous append decides.
            if connection_lost(exc):
                self._replace_pool_soon()
            log.debug("async append of %d handed to the synchronous path: %s", len(batch),
                      type(exc).__name__)
            return [None] * len(batch)
        except Exception:  # a bug here must not lose the appends, nor go unnoticed
            log.warning("async append of %d failed unexpectedly; handed to the synchronous "
                        "path", len(batch), exc_info=True)
            return [None] * len(batch)
        results = batch_results(batch, rows)
        if any(r is not None for r in results):
            self.store.signal_append()
        return results
