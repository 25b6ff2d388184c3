"""Filtered reads of the global log on PostgreSQL walk an index, never the whole log; and
append_many keeps the no-skip guarantee of read_all."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from eventstore import EventStore, NewEvent, RecordedEvent
from eventstore.events import StreamAppend
from eventstore.store.encoding import check_read_all
from eventstore.store.postgres import PostgresEventStore, log_query_sql

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    store = EventStore.connect(postgres_url, pool_max_size=12)
    assert isinstance(store, PostgresEventStore)
    store.migrate()
    yield store
    store.close()


def _fill(store: PostgresEventStore, batches: int = 20, size: int = 1000) -> None:
    """20,000 events: 40 categories of streams, 20 event types; `Rare` is 1 in 1000."""
    rng = random.Random(7)
    for b in range(batches):
        events = [NewEvent(type="Rare" if i == 500 else f"Type{rng.randrange(20)}",
                           payload={"b": b, "i": i}) for i in range(size)]
        store.append(f"cat{b % 40}-{b}", events)
    with store._connection() as conn:
        conn.execute("ANALYZE es_events")


def _plan(store: PostgresEventStore, **kwargs: object) -> str:
    query = check_read_all(**{"from_position": 0, "limit": 100, **kwargs})  # type: ignore[arg-type]
    sql, params, needs_sort = log_query_sql(query)
    with store._connection() as conn, conn.transaction():
        if needs_sort:
            conn.execute("SET LOCAL enable_sort = on")
        rows = conn.execute(b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql,
                            params).fetchall()
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("filters,index", [
    ({"types": ["Rare"]}, "es_events_type_position"),
    ({"types": ["Rare", "Type3"]}, "es_events_type_position"),
    ({"types": ["Rare"], "backwards": True}, "es_events_type_position"),
    ({"types": ["Rare"], "to_position": 2**62}, "es_events_type_position"),
    ({"stream_prefix": "cat7-"}, "es_events_category_position"),
    ({"stream_prefix": "cat7-", "backwards": True}, "es_events_category_position"),
    ({"stream_prefix": "cat7-7"}, "es_events_category_position"),
    ({"stream_prefix": "cat1"}, "es_events_category_position"),
    ({"types": ["Rare"], "stream_prefix": "cat1"}, "es_events_type_position"),
])
def test_filtered_reads_use_an_index_not_the_log(store: PostgresEventStore,
                                                 filters: dict[str, object], index: str) -> None:
    _fill(store)
    plan = _plan(store, **filters)
    print(f"\n-- read_all({filters})\n{plan}")
    assert "Seq Scan" not in plan
    assert index in plan
    # The whole log is never walked: not its primary key, not the time index.
    assert "es_events_pkey" not in plan and "es_events_recorded_at" not in plan


def test_unfiltered_read_walks_the_position_index(store: PostgresEventStore) -> None:
    _fill(store, batches=3)
    plan = _plan(store, backwards=True)
    print(f"\n-- read_all(backwards=True)\n{plan}")
    assert "Seq Scan" not in plan and "es_events_pkey" in plan


def test_filtered_reads_answer_like_a_filter_in_python(store: PostgresEventStore) -> None:
    _fill(store, batches=6, size=300)
    log = store.read_all(limit=100_000)
    for filters in ({"types": ["Rare", "Type1"]}, {"stream_prefix": "cat3-"},
                    {"stream_prefix": "cat"}, {"types": ["Type2"], "stream_prefix": "cat4-"}):
        types = filters.get("types")
        prefix = filters.get("stream_prefix")

        def wanted(e: RecordedEvent, types: object = types, prefix: object = prefix) -> bool:
            return ((not types or e.type in types)  # type: ignore[operator]
                    and (prefix is None or e.aggregate_id.startswith(prefix)))  # type: ignore[arg-type]

        forward: list[RecordedEvent] = []
        position = 0
        while page := store.read_all(position, limit=37, **filters):  # type: ignore[arg-type]
            forward.extend(page)
            position = page[-1].position + 1
        assert [e.id for e in forward] == [e.id for e in log if wanted(e)], filters


def test_append_many_never_lets_a_reader_skip(store: PostgresEventStore) -> None:
    """Writers commit multi-stream appends concurrently while a reader follows the log
    (filtered and not): each reader sees every event exactly once, in position order."""
    stop = threading.Event()
    seen: dict[str, list[RecordedEvent]] = {"all": [], "typed": []}

    def follow(name: str, types: list[str] | None) -> None:
        position = 0
        while True:
            page = store.read_all(position, limit=50, types=types)
            if page:
                seen[name].extend(page)
                position = page[-1].position + 1
            elif stop.is_set():
                seen[name].extend(store.read_all(position, limit=100_000, types=types))
                return
            else:
                store.wait_for_events(position - 1, 0.05)

    errors: list[BaseException] = []

    def write(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(40):
                streams = rng.sample(range(30), 3)
                store.append_many([StreamAppend(f"w-{s}", [NewEvent(f"T{j}", {"n": n, "i": i})
                                                           for j in range(2)]) for s in streams])
        except BaseException as exc:
            errors.append(exc)

    followers = [threading.Thread(target=follow, args=("all", None)),
                 threading.Thread(target=follow, args=("typed", ["T1"]))]
    writers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in followers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in followers:
        thread.join(60)
    assert not errors
    final = store.read_all(limit=100_000)
    assert len(final) == 6 * 40 * 3 * 2
    assert [e.id for e in seen["all"]] == [e.id for e in final]
    assert [e.id for e in seen["typed"]] == [e.id for e in final if e.type == "T1"]


def test_closed_subscriptions_leave_no_thread_or_connection(store: PostgresEventStore,
                                                           postgres_url: str) -> None:
    """Rounds of eight subscriptions followed by eight threads and closed from the main
    thread: each iteration ends within a second, every thread ends, and every database
    session is one of the pool's or the store's LISTEN/NOTIFY connection (a subscription
    has none of its own)."""
    import time

    import psycopg

    store.append("s", [NewEvent("E", {})])

    def sessions() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND pid <> pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    def round_of_eight() -> None:
        subscriptions = [store.subscribe(poll_interval=60, types=["E"] if n % 2 else None)
                         for n in range(8)]
        seen = [0] * 8

        def follow(n: int) -> None:
            for _ in subscriptions[n]:
                seen[n] += 1

        threads = [threading.Thread(target=follow, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while min(seen) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # all waiting now
        started = time.monotonic()
        for subscription in subscriptions:
            subscription.close()
        for thread in threads:
            thread.join(5)
        assert not any(t.is_alive() for t in threads)
        assert time.monotonic() - started < 1
        assert seen == [1] * 8

    round_of_eight()
    threads_before = threading.active_count()
    for _ in range(3):
        round_of_eight()
    assert threading.active_count() == threads_before
    # Every session is one of the pool's (which grows under contention, up to
    # pool_max_size) or the store's LISTEN or NOTIFY connection: none is a subscription's.
    pool_size = store._pool.get_stats()["pool_size"]
    assert pool_size <= 12
    assert sessions() <= pool_size + 2
