"""The server's event-loop append (postgres_async.AsyncAppender) on real PostgreSQL.

It may only finish clean appends; everything else must come back as None with nothing
written, so that the synchronous append can decide it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from eventstore import EventStore, ExpectedVersion, NewEvent, StoreUnavailable, ValidationError
from eventstore.store.postgres import PostgresEventStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    store = EventStore.connect(postgres_url)
    store.migrate()
    assert isinstance(store, PostgresEventStore)
    yield store
    store.close()


def _run(store: PostgresEventStore, *appends: tuple[str, list[NewEvent], object]
         ) -> list[object]:
    async def main() -> list[object]:
        appender = store.async_appender(pool_size=4)
        await appender.open()
        try:
            return await asyncio.gather(*(appender.try_append(s, e, x)  # type: ignore[arg-type]
                                          for s, e, x in appends))
        finally:
            await appender.close()

    return asyncio.run(main())


def test_clean_appends_go_through_with_the_same_result_as_the_store(
        store: PostgresEventStore) -> None:
    [first] = _run(store, ("acc-1", [NewEvent("Opened", {"n": 1}), NewEvent("Deposited",
                                                                           {"n": 2})], 0))
    assert first is not None
    assert (first.first_version, first.next_expected_version) == (1, 2)  # type: ignore[attr-defined]
    events = store.read_stream("acc-1")
    assert [e.version for e in events] == [1, 2]
    assert [e.position for e in events] == list(first.positions)  # type: ignore[attr-defined]
    [second] = _run(store, ("acc-1", [NewEvent("Deposited", {"n": 3})], 2))
    assert second is not None and second.first_version == 3  # type: ignore[attr-defined]


def test_a_version_that_does_not_hold_writes_nothing_and_is_handed_back(
        store: PostgresEventStore) -> None:
    store.append("acc-2", [NewEvent("Opened", {})])
    assert _run(store, ("acc-2", [NewEvent("Deposited", {})], 0),
                ("acc-2", [NewEvent("Deposited", {})], 5),
                ("acc-3", [NewEvent("Deposited", {})], ExpectedVersion.STREAM_EXISTS),
                ("acc-2", [NewEvent("Deposited", {})], ExpectedVersion.NO_STREAM)) == [None] * 4
    assert store.stream_version("acc-2") == 1
    assert store.stream_version("acc-3") == 0


def test_racing_appends_to_one_version_let_exactly_one_through(
        store: PostgresEventStore) -> None:
    store.append("race", [NewEvent("Opened", {})])
    results = _run(store, *[("race", [NewEvent("Deposited", {"i": i})], 1) for i in range(12)])
    winners = [r for r in results if r is not None]
    assert len(winners) <= 1
    assert store.stream_version("race") == 1 + len(winners)


def test_a_resent_event_is_handed_back_and_the_store_recognises_it(
        store: PostgresEventStore) -> None:
    """The case of a connection lost after the commit: the synchronous append that runs
    next, with the same events, must answer with the stored result, not store twice."""
    event = NewEvent("Opened", {"owner": "x"})
    [first] = _run(store, ("resent", [event], 0))
    assert first is not None
    assert _run(store, ("resent", [event], 0)) == [None]
    again = store.append("resent", [event], expected_version=0)
    assert again.idempotent and again.positions == first.positions  # type: ignore[attr-defined]
    assert store.stream_version("resent") == 1


def test_bad_input_is_refused_before_any_io(store: PostgresEventStore) -> None:
    with pytest.raises(ValidationError, match="stream"):
        _run(store, ("has space", [NewEvent("A", {})], 0))
    with pytest.raises(ValidationError, match="no events"):
        _run(store, ("empty", [], 0))


def test_a_missing_schema_is_handed_back(postgres_url: str) -> None:
    store = EventStore.connect(postgres_url)
    assert isinstance(store, PostgresEventStore)
    try:
        store.migrate()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE es_events RENAME TO es_events_moved")
        try:
            assert _run(store, ("s", [NewEvent("A", {})], 0)) == [None]
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE es_events_moved RENAME TO es_events")
    finally:
        store.close()


def test_a_database_that_is_gone_is_handed_back(store: PostgresEventStore) -> None:
    async def main() -> object:
        appender = store.async_appender(pool_size=2)
        await appender.open()
        await asyncio.sleep(0.2)
        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = '' AND pid <> pg_backend_pid() "
                         "AND datname = current_database()")
        try:
            return await appender.try_append("gone", [NewEvent("A", {})], 0)
        finally:
            await appender.close()

    # The pool hands out a connection the server has closed: the attempt fails, and it is
    # handed back rather than raised.
    assert asyncio.run(main()) is None
    for _ in range(3):  # the store's own pool lost its connections too; it replaces them
        try:
            assert store.stream_version("gone") == 0
            break
        except StoreUnavailable:
            continue
    else:
        pytest.fail("the store did not reconnect")
