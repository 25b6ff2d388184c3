"""Appends are acknowledged after COMMIT returns: the store's pools commit durably even
where the database's default says otherwise (this test server runs with
synchronous_commit off), and keep a stronger setting a DBA chose."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from eventstore import EventStore, NewEvent
from eventstore.store.postgres import PostgresEventStore
from tests.integration.durable_store import pool_synchronous_commit

pytestmark = pytest.mark.postgres


def _database_default(url: str, value: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        conn.execute(f'ALTER DATABASE "{row[0]}" SET synchronous_commit = {value}')


def _async_pool_setting(store: PostgresEventStore) -> str:
    async def show() -> str:
        pool = store.datastore.new_async_pool(1, 10.0)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
                assert row is not None
                return str(row[0])
        finally:
            await pool.close()

    return asyncio.run(show())


@pytest.mark.parametrize(("default", "expected"), [
    ("off", "on"), ("local", "local"), ("remote_apply", "remote_apply")])
def test_the_pools_commit_durably_whatever_the_database_default(
        postgres_url: str, default: str, expected: str) -> None:
    _database_default(postgres_url, default)
    with psycopg.connect(postgres_url) as conn:  # what any other client of it gets
        assert conn.execute("SHOW synchronous_commit").fetchone() == (default,)
    store = EventStore.connect(postgres_url, pool_min_size=1, pool_max_size=1)
    assert isinstance(store, PostgresEventStore)
    try:
        store.migrate()
        store.append("s", [NewEvent("T", {})])
        assert pool_synchronous_commit(store) == (expected,)
        assert _async_pool_setting(store) == expected
    finally:
        store.close()
