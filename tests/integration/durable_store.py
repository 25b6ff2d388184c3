"""A PostgreSQL store whose database commits durably and whose pool holds one connection:
for tests that a `synchronous_commit = off` (the notifier's, a projection batch's) never
stays on the connection that appends use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from eventstore import EventStore
from eventstore.store.postgres import PostgresEventStore


@contextmanager
def durable_single_connection_store(url: str) -> Iterator[PostgresEventStore]:
    with psycopg.connect(url, autocommit=True) as conn:
        # The test server runs with synchronous_commit off; this database gets it on.
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(f'ALTER DATABASE "{database[0]}" SET synchronous_commit = on')
    store = EventStore.connect(url, pool_min_size=1, pool_max_size=1)
    assert isinstance(store, PostgresEventStore)
    try:
        store.migrate()
        yield store
    finally:
        store.close()


def pool_synchronous_commit(store: PostgresEventStore) -> tuple[object, ...] | None:
    """`SHOW synchronous_commit` on the pool's only connection."""
    with store._connection() as conn:
        return conn.execute("SHOW synchronous_commit").fetchone()
