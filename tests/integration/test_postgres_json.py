"""Which connections decode jsonb with the store's decoder (eventstore/store/jsonb.py): the
store's own, pooled, async and dedicated; not the program's other psycopg connections, and
without hiding adapters the program registers with psycopg globally."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.adapt import Dumper

from eventstore import EventStore
from eventstore.store.encoding import encode_json
from eventstore.store.postgres import PostgresEventStore
from tests.calls import record_calls

pytestmark = pytest.mark.postgres
QUERY = """SELECT '{"amount": 1250}'::jsonb, '[1, 2]'::json"""


@pytest.fixture
def orjson_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    return record_calls(monkeypatch, orjson, "loads")


class Cents:
    def __init__(self, cents: int) -> None:
        self.cents = cents


class CentsDumper(Dumper):
    def dump(self, obj: Cents) -> bytes:
        return f"{obj.cents / 100:.2f}".encode()


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    # Registered globally before the store connects, as a program would at start-up.
    psycopg.adapters.register_dumper(Cents, CentsDumper)
    store = EventStore.connect(postgres_url)
    assert isinstance(store, PostgresEventStore)
    store.migrate()
    yield store
    store.close()


def test_the_stores_connections_decode_with_the_stores_decoder(
        store: PostgresEventStore, orjson_calls: list[object]) -> None:
    with store.datastore.connection() as conn:
        assert conn.execute(QUERY).fetchone() == ({"amount": 1250}, [1, 2])
    assert len(orjson_calls) == 2
    with store.datastore.dedicated("test") as conn:
        assert conn.execute(QUERY).fetchone() == ({"amount": 1250}, [1, 2])
    assert len(orjson_calls) == 4

    async def on_the_async_pool() -> Any:
        pool = store.datastore.new_async_pool(1, timeout=10)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                return await (await conn.execute(QUERY)).fetchone()
        finally:
            await pool.close()

    assert asyncio.run(on_the_async_pool()) == ({"amount": 1250}, [1, 2])
    assert len(orjson_calls) == 6


def test_other_connections_keep_json_loads(store: PostgresEventStore, postgres_url: str,
                                           orjson_calls: list[object]) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(QUERY).fetchone() == ({"amount": 1250}, [1, 2])
    assert orjson_calls == []


def test_globally_registered_adapters_reach_the_stores_connections(
        store: PostgresEventStore) -> None:
    with store.datastore.connection() as conn:
        assert conn.execute("SELECT %s::numeric::text", (Cents(1250),)).fetchone() == ("12.50",)
    with store.datastore.dedicated("test") as conn:
        assert conn.execute("SELECT %s::numeric::text", (Cents(5),)).fetchone() == ("0.05",)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_comes_back_from_jsonb_as_the_same_float(store: PostgresEventStore,
                                                           value: float) -> None:
    """What PostgreSQL's jsonb gives back for the encoded text decodes to the same float
    (not an int of up to 309 digits, as `1e+16` would)."""
    text = encode_json({"x": value}, "payload")
    with store.datastore.connection() as conn:
        row = conn.execute("SELECT %s::jsonb", (text,)).fetchone()
    assert row is not None
    back = row[0]["x"]
    assert type(back) is float and back == value, (text, back)
