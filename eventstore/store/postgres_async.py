"""Appends on an asyncio event loop, for the store server.

Running the synchronous append on a worker thread costs the server a thread wake-up and
a GIL hand-off each way; on the HTTP append path that was a third of the CPU. This
appender sends the same one-statement append (APPEND_SQL) from the event loop itself.

It only ever finishes clean successes. Anything else (a version conflict, a unique
violation from a race or a re-sent event, a lost connection, a missing schema) returns
None and the caller runs the synchronous `PostgresEventStore.append` with the same
events, which decides conflicts, retries and idempotent re-sends in one place. That is
safe because a failed attempt wrote nothing, or (a connection lost after the commit)
wrote exactly these events under their ids, which the synchronous append recognises as
a re-send.

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
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from eventstore.events import AppendResult, Expected, NewEvent
from eventstore.store.postgres import (
    APPEND_SQL,
    POOL_RESET_INTERVAL_SECONDS,
    PostgresEventStore,
    appended,
    connection_lost,
)

log = logging.getLogger(__name__)

#: How long an append waits for one of this pool's connections before the synchronous
#: path takes it: long enough for a busy pool to hand one back, far below a request's.
WAIT_TIMEOUT_SECONDS = 0.25


class AsyncAppender:
    """A small async connection pool next to a PostgresEventStore, for its appends."""

    def __init__(self, store: PostgresEventStore, max_size: int = 16,
                 wait_timeout: float = WAIT_TIMEOUT_SECONDS) -> None:
        self.store = store
        self.max_size = max_size
        self.wait_timeout = wait_timeout
        self._pool = self._new_pool()
        self._last_reset = 0.0
        self._retiring: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]:
        # The database's datastore makes the pool (its connection settings, its place in
        # the pod's connection budget); this side opens, uses and replaces it.
        return self.store.datastore.new_async_pool(self.max_size, self.wait_timeout)

    async def open(self) -> None:
        """Start filling the pool; does not wait, so a database that is down does not
        hold up startup (appends then go the synchronous way)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
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
        """The result when the append went through, else None (see the module's doc).

        Raises ValidationError for bad input, before any I/O, as the store does.
        """
        _, params = self.store.prepare_append(stream_id, events, expected_version)
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(APPEND_SQL, params)
                row = await cursor.fetchone()
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            # A conflict, a race, a re-send or an outage: the synchronous append decides.
            if connection_lost(exc):
                self._replace_pool_soon()
            log.debug("async append to %s handed to the synchronous path: %s", stream_id,
                      type(exc).__name__)
            return None
        except Exception:  # a bug here must not lose the append, nor go unnoticed
            log.warning("async append to %s failed unexpectedly; handed to the synchronous "
                        "path", stream_id, exc_info=True)
            return None
        if row is None or row[1] is None:  # the expectation did not hold
            return None
        self.store.signal_append()
        return appended(stream_id, int(row[0]), row[1])

