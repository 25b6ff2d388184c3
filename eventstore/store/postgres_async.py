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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from eventstore.events import AppendResult, Expected, NewEvent
from eventstore.store.postgres import (
    APPEND_SQL,
    PostgresEventStore,
    appended,
)

log = logging.getLogger(__name__)


class AsyncAppender:
    """A small async connection pool next to a PostgresEventStore, for its appends."""

    def __init__(self, store: PostgresEventStore, max_size: int = 16,
                 wait_timeout: float = 5.0) -> None:
        self.store = store
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = (
            AsyncConnectionPool(store.url, min_size=max_size, max_size=max_size, open=False,
                                timeout=wait_timeout, name="eventstore-async",
                                kwargs=store.connection_kwargs(store.statement_timeout,
                                                               store.pool_timeout)))

    async def open(self) -> None:
        """Start filling the pool; does not wait, so a database that is down does not
        hold up startup (appends then go the synchronous way)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

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
