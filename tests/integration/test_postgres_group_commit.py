"""Group commit on real PostgreSQL: appends that wait together share one statement, and
each keeps its own expected-version check, its own result and the store's guarantees.

The async appender (the server's event loop) and threads sharing one store are both
driven here through the whole pipeline: the shared commit first, then, for whatever it
hands back, the store's individual path, as the server and `append` do.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from eventstore import (
    ConcurrencyError,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from eventstore.events import AppendResult, Expected
from eventstore.store.postgres import PostgresEventStore
from eventstore.store.prepared import PreparedAppend
from tests.integration.log_follower import follow_log

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    store = EventStore.connect(postgres_url, pool_max_size=24)
    store.migrate()
    assert isinstance(store, PostgresEventStore)
    yield store
    store.close()


def batches(executor: str) -> tuple[float, float]:
    """(statements, appends) the group commit of `executor` has written so far."""
    labels = {"executor": executor}
    count = REGISTRY.get_sample_value("eventstore_append_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("eventstore_append_batch_size_sum", labels) or 0.0
    return count, total


def run_while_locked(postgres_url: str, threads: list[threading.Thread]) -> None:
    """Start `threads` while es_events is locked for 0.5 s, then wait for them: the first
    commit waits on the lock, as a commit waits for a durable disk, so the other threads'
    appends queue behind it and form a batch."""
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("LOCK TABLE es_events IN SHARE MODE")
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        blocker.rollback()
    for thread in threads:
        thread.join()


async def pipeline(store: PostgresEventStore, appender: Any, prepared: PreparedAppend
                   ) -> AppendResult:
    """What the server does with a prepared append (server/appends.py)."""
    result = await appender.append(prepared)
    if result is None:
        return await asyncio.to_thread(store.append_prepared, prepared, grouped=False)
    assert isinstance(result, AppendResult)
    return result


def run_async(store: PostgresEventStore, *appends: tuple[str, list[NewEvent], Expected]
              ) -> list[AppendResult | BaseException]:
    async def main() -> list[AppendResult | BaseException]:
        appender = store.async_appender(pool_size=4)
        await appender.open()
        try:
            return await asyncio.gather(
                *(pipeline(store, appender, store.prepare_append(s, e, x))
                  for s, e, x in appends), return_exceptions=True)
        finally:
            await appender.close()

    return asyncio.run(main())


def assert_log_is_whole(store: PostgresEventStore, acknowledged: list[AppendResult],
                        events_by_id: dict[Any, NewEvent]) -> list[RecordedEvent]:
    """Every acknowledged append is stored once at its positions; the log has no
    duplicates, each stream's versions run 1..n without gaps, positions increase."""
    log = store.read_all(limit=100_000)
    positions = [e.position for e in log]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert len({e.id for e in log}) == len(log)
    by_position = {e.position: e for e in log}
    for result in acknowledged:
        for n, position in enumerate(result.positions):
            event = by_position[position]
            assert event.aggregate_id == result.stream_id
            assert event.version == result.first_version + n
            assert event.payload == events_by_id[event.id].payload
    versions: dict[str, list[int]] = defaultdict(list)
    for event in log:
        versions[event.aggregate_id].append(event.version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"{stream} has gaps or repeats: {seen}"
    assert len(log) == sum(len(r.positions) for r in acknowledged if not r.idempotent)
    return log


def test_appends_that_arrive_together_share_one_statement(store: PostgresEventStore) -> None:
    before = batches("async")
    events = [[NewEvent("Opened", {"n": n})] for n in range(40)]
    results = run_async(store, *[(f"acc-{n}", events[n], 0) for n in range(40)])
    assert all(isinstance(r, AppendResult) for r in results), results
    statements, appends = (a - b for a, b in zip(batches("async"), before, strict=True))
    assert appends == 40
    assert statements < 40 / 4, f"{statements} statements for 40 appends: no batching"
    by_id = {e.id: e for batch in events for e in batch}
    assert_log_is_whole(store, [r for r in results if isinstance(r, AppendResult)], by_id)


def test_a_conflict_in_a_batch_fails_only_its_own_append(store: PostgresEventStore) -> None:
    store.append("busy", [NewEvent("Opened", {}), NewEvent("Deposited", {})])
    appends: list[tuple[str, list[NewEvent], Expected]] = [
        (f"ok-{n}", [NewEvent("Opened", {"n": n})], ExpectedVersion.NO_STREAM)
        for n in range(12)]
    appends.insert(5, ("busy", [NewEvent("Late", {})], 1))          # stale: it is at 2
    appends.insert(8, ("busy-new", [NewEvent("Late", {})], ExpectedVersion.STREAM_EXISTS))
    results = run_async(store, *appends)
    conflict = results[5]
    assert isinstance(conflict, ConcurrencyError)
    assert conflict.actual_version == 2 and conflict.expected == 1
    assert isinstance(results[8], ConcurrencyError) and results[8].actual_version == 0
    good = [r for i, r in enumerate(results) if i not in (5, 8)]
    assert all(isinstance(r, AppendResult) and r.first_version == 1 for r in good), good
    assert store.stream_version("busy") == 2 and store.stream_version("busy-new") == 0


def test_a_resent_event_in_a_batch_is_idempotent_and_spares_its_neighbours(
        store: PostgresEventStore) -> None:
    sent = NewEvent("Opened", {"owner": "x"})
    first = store.append("resent", [sent], expected_version=0)
    before = batches("async")
    appends: list[tuple[str, list[NewEvent], Expected]] = [
        (f"nb-{n}", [NewEvent("Opened", {"n": n})], 0) for n in range(10)]
    appends.insert(4, ("resent", [sent], 0))
    results = run_async(store, *appends)
    again = results[4]
    assert isinstance(again, AppendResult) and again.idempotent
    assert again.positions == first.positions
    for n, result in enumerate(r for i, r in enumerate(results) if i != 4):
        assert isinstance(result, AppendResult) and not result.idempotent, result
        assert [e.payload for e in store.read_stream(f"nb-{n}")] == [{"n": n}]
    statements, _ = (a - b for a, b in zip(batches("async"), before, strict=True))
    assert statements < 11  # the re-send did travel in a batch with others
    assert store.stream_version("resent") == 1


def test_two_appends_to_one_stream_never_share_a_batch(store: PostgresEventStore) -> None:
    """Each sees the version the other wrote: exact expectations chain, none conflicts."""
    results = run_async(store, *[("one", [NewEvent("E", {"i": i})], ExpectedVersion.ANY)
                                 for i in range(15)])
    assert all(isinstance(r, AppendResult) for r in results), results
    assert [e.payload["i"] for e in store.read_stream("one")] == list(range(15))


def test_many_tasks_on_distinct_and_shared_streams_keep_every_guarantee(
        store: PostgresEventStore) -> None:
    rng = random.Random(7)
    events_by_id: dict[Any, NewEvent] = {}
    acknowledged: list[AppendResult] = []
    conflicts: list[ConcurrencyError] = []
    seen: list[RecordedEvent] = []
    done = threading.Event()

    async def task(n: int, appender: Any) -> None:
        for i in range(12):
            stream = f"own-{n}" if rng.random() < 0.5 else f"shared-{rng.randrange(4)}"
            choices: list[Expected] = [ExpectedVersion.ANY, ExpectedVersion.NO_STREAM,
                                       store.stream_version(stream)]
            expected = rng.choice(choices)
            event = NewEvent("E", {"n": n, "i": i})
            events_by_id[event.id] = event
            try:
                acknowledged.append(await pipeline(
                    store, appender, store.prepare_append(stream, [event], expected)))
            except ConcurrencyError as exc:
                conflicts.append(exc)

    async def main() -> None:
        appender = store.async_appender(pool_size=4)
        await appender.open()
        try:
            await asyncio.gather(*(task(n, appender) for n in range(24)))
        finally:
            await appender.close()

    before = batches("async")
    follower = threading.Thread(target=follow_log, args=(store, done, seen))
    follower.start()
    asyncio.run(main())
    done.set()
    follower.join(timeout=60)
    log = assert_log_is_whole(store, acknowledged, events_by_id)
    assert [e.id for e in seen] == [e.id for e in log], "the subscriber skipped or repeated"
    assert len(acknowledged) + len(conflicts) == 24 * 12
    for exc in conflicts:  # a real conflict: the stream was elsewhere than expected
        expected, actual = exc.expected, exc.actual_version
        assert (expected == "no_stream" and actual > 0) or \
            (isinstance(expected, int) and actual > expected), (expected, actual)
    statements, appends = (a - b for a, b in zip(batches("async"), before, strict=True))
    assert statements < appends


def test_threads_sharing_a_store_commit_together_and_keep_every_guarantee(
        store: PostgresEventStore, postgres_url: str) -> None:
    events_by_id: dict[Any, NewEvent] = {}
    acknowledged: list[AppendResult] = []
    conflicts: list[ConcurrencyError] = []
    lock = threading.Lock()
    slow = EventStore.connect(postgres_url, pool_max_size=24)
    assert isinstance(slow, PostgresEventStore)

    def writer(n: int) -> None:
        rng = random.Random(n)
        for i in range(25):
            stream = f"t-{n}" if i % 2 else f"shared-{rng.randrange(3)}"
            choices: list[Expected] = [ExpectedVersion.ANY, ExpectedVersion.NO_STREAM,
                                       slow.stream_version(stream)]
            expected = rng.choice(choices)
            event = NewEvent("E", {"n": n, "i": i})
            with lock:
                events_by_id[event.id] = event
            try:
                result = slow.append(stream, [event], expected_version=expected)
            except ConcurrencyError as exc:
                with lock:
                    conflicts.append(exc)
            else:
                with lock:
                    acknowledged.append(result)

    before = batches("threads")
    try:
        run_while_locked(postgres_url, [threading.Thread(target=writer, args=(n,))
                                        for n in range(16)])
    finally:
        slow.close()
    assert len(acknowledged) + len(conflicts) == 16 * 25
    assert_log_is_whole(store, acknowledged, events_by_id)
    for exc in conflicts:
        expected, actual = exc.expected, exc.actual_version
        assert (expected == "no_stream" and actual > 0) or \
            (isinstance(expected, int) and actual > expected), (expected, actual)
    statements, appends = (a - b for a, b in zip(batches("threads"), before, strict=True))
    assert statements < appends, "threads never shared a commit"


def test_a_batch_whose_connection_dies_mid_statement_acknowledges_only_what_is_stored(
        store: PostgresEventStore, postgres_url: str) -> None:
    """The batch's backend is terminated while its statement waits (a lock held by
    another session); the appends then take the individual path. Whatever any append
    acknowledged is stored, exactly once, and nothing else is."""
    events = [[NewEvent("Opened", {"n": n})] for n in range(10)]
    outcome: list[AppendResult | BaseException] = []

    async def main() -> None:
        appender = store.async_appender(pool_size=4)
        await appender.open()
        try:
            outcome.extend(await asyncio.gather(
                *(pipeline(store, appender, store.prepare_append(f"d-{n}", events[n], 0))
                  for n in range(10)), return_exceptions=True))
        finally:
            await appender.close()

    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("LOCK TABLE es_events IN SHARE MODE")
        runner = threading.Thread(target=asyncio.run, args=(main(),))
        runner.start()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            deadline = time.monotonic() + 20
            batch_killed = False
            while time.monotonic() < deadline and not batch_killed:
                # Every append statement waiting on the lock dies, until a batch's has.
                row = admin.execute(
                    "SELECT count(*) FILTER (WHERE query LIKE '%%AS r(k integer%%'"
                    " AND pg_terminate_backend(pid)) FROM pg_stat_activity WHERE"
                    " datname = current_database() AND wait_event_type = 'Lock'"
                    " AND query LIKE '%%jsonb_to_recordset%%'"
                    " AND (query LIKE '%%AS r(k integer%%' OR pg_terminate_backend(pid))"
                ).fetchone()
                batch_killed = bool(row and row[0])
                time.sleep(0.02)
            assert batch_killed, "no batch statement was waiting"
        blocker.rollback()
    runner.join(timeout=60)
    assert len(outcome) == 10
    acknowledged = [r for r in outcome if isinstance(r, AppendResult)]
    for r in outcome:
        assert isinstance(r, AppendResult | EventStoreError), r
    by_id = {e.id: e for batch in events for e in batch}
    log = assert_log_is_whole(store, acknowledged, by_id)
    assert Counter(e.aggregate_id for e in log) == Counter(r.stream_id for r in acknowledged)


def test_a_threads_batch_with_a_resent_event_spares_its_neighbours(
        store: PostgresEventStore, postgres_url: str) -> None:
    """Threads queue behind a commit held on a lock; the batch that follows carries a
    re-sent event id, so its statement fails whole, and every append of it is decided
    alone: the re-send is idempotent, its neighbours are stored."""
    sent = NewEvent("Opened", {"owner": "x"})
    first = store.append("resent", [sent], expected_version=0)
    results: dict[int, AppendResult | BaseException] = {}

    def writer(n: int) -> None:
        try:
            if n == 5:
                results[n] = store.append("resent", [sent], expected_version=0)
            else:
                results[n] = store.append(f"nb-{n}", [NewEvent("Opened", {"n": n})], 0)
        except BaseException as exc:
            results[n] = exc

    before = batches("threads")
    run_while_locked(postgres_url, [threading.Thread(target=writer, args=(n,))
                                    for n in range(10)])
    again = results[5]
    assert isinstance(again, AppendResult) and again.idempotent
    assert again.positions == first.positions
    for n in set(range(10)) - {5}:
        result = results[n]
        assert isinstance(result, AppendResult) and not result.idempotent, result
        assert [e.payload for e in store.read_stream(f"nb-{n}")] == [{"n": n}]
    statements, appends = (a - b for a, b in zip(batches("threads"), before, strict=True))
    assert statements < appends, "the appends never shared a statement"
