"""Projection partition reads on PostgreSQL: a range of the partition index, whatever the
planner's statistics say, and exactly the partition's events, the archive included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from eventstore import EventStore, NewEvent
from eventstore.store.postgres import PostgresEventStore
from eventstore.store.postgres_datastore import _BEHIND_SQL, _PARTITION_SQL, PARTITION
from tests.partition_pages import in_pages

pytestmark = pytest.mark.postgres

#: Streams written only at the start of the log, then three written for a long stretch.
EARLY_STREAMS = 200
LATE_STREAMS = ("late-a", "late-b", "late-c")


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresEventStore]:
    store = EventStore.connect(postgres_url, pool_max_size=4)
    assert isinstance(store, PostgresEventStore)
    store.migrate()
    yield store
    store.close()


def _partition(store: PostgresEventStore, stream_id: str) -> int:
    with store._connection() as conn:
        row = conn.execute(f"SELECT {PARTITION} FROM (SELECT %s::text AS stream_id) s",
                           (stream_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _fill_with_idle_partitions(store: PostgresEventStore) -> tuple[int, int]:
    """Every partition busy early in the log, then a long stretch (15,000 events) in the
    partitions of three streams only; statistics gathered. Returns a partition idle over
    that stretch and the position after its last event."""
    for s in range(EARLY_STREAMS):
        store.append(f"early-{s}", [NewEvent("Opened", {"s": s}) for _ in range(25)])
    for _ in range(10):
        for stream in LATE_STREAMS:
            store.append(stream, [NewEvent("Deposited", {"amount": 1}) for _ in range(500)])
    busy = {_partition(store, s) for s in LATE_STREAMS}
    idle = min(set(range(16)) - busy)
    with store._connection() as conn:
        conn.execute("ANALYZE es_events")
        conn.execute("ANALYZE es_events_archive")
        row = conn.execute(f"SELECT max(position) + 1 FROM es_events WHERE {PARTITION} = %s",
                           (idle,)).fetchone()
    assert row is not None and row[0] is not None
    return idle, int(row[0])


def _plan(store: PostgresEventStore, sql: bytes, params: dict[str, int]) -> str:
    with store._connection() as conn:
        rows = conn.execute(b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql,
                            params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_an_idle_partition_is_read_from_its_index_not_by_walking_the_log(
        store: PostgresEventStore) -> None:
    """With statistics, `partition = p AND position >= f ORDER BY position` is planned as
    a walk of the primary key from f, filtered: for a partition with no events past f, a
    walk of the whole rest of the log on every poll. The read must stay on the partition
    index, for an idle partition and a busy one, read and lag query alike."""
    idle, after_last = _fill_with_idle_partitions(store)
    busy = _partition(store, LATE_STREAMS[0])
    for label, sql, params in (
            ("idle read", _PARTITION_SQL, {"p": idle, "f": after_last, "n": 100}),
            ("busy read", _PARTITION_SQL, {"p": busy, "f": 0, "n": 100}),
            ("idle lag", _BEHIND_SQL.encode(), {"p": idle, "f": after_last}),
            ("busy lag", _BEHIND_SQL.encode(), {"p": busy, "f": 0})):
        plan = _plan(store, sql, params)
        print(f"\n-- {label}\n{plan}")
        assert "es_events_partition_position" in plan, label
        assert "es_events_pkey" not in plan and "Seq Scan" not in plan, label
    # Nothing past the idle partition's last event; its 25-event streams before it.
    assert store.datastore.read_partition(idle, after_last, 100) == []
    assert store.datastore.partition_behind(idle, after_last) == (0, None)


def test_partition_pages_hold_exactly_the_partitions_events_archive_included(
        store: PostgresEventStore) -> None:
    for s in range(40):
        store.append(f"acct-{s}", [NewEvent("Deposited", {"s": s, "i": i}) for i in range(7)])
    # Half of two streams' events move to the archive: a rebuild must still read them.
    for stream in ("acct-3", "acct-11"):
        assert store.archive_stream(stream, 4, datetime.now(UTC) + timedelta(days=1)) == 4
    hot = store.read_all(limit=10_000)
    archived = [e for s in ("acct-3", "acct-11") for e in store.read_archived_stream(s)]
    every = sorted(hot + archived, key=lambda e: e.position)
    assert len(every) == 280
    partition_of = {f"acct-{s}": _partition(store, f"acct-{s}") for s in range(40)}
    seen = 0
    for partition in range(16):
        expected = [e.id for e in every if partition_of[e.aggregate_id] == partition]
        for size in (1, 3, 100):
            assert [e.id for e in in_pages(store.datastore, partition, size)] == expected, (partition, size)
        count, oldest = store.datastore.partition_behind(partition, 0)
        hot_ids = [e for e in hot if partition_of[e.aggregate_id] == partition]
        assert count == len(hot_ids)
        assert oldest == (hot_ids[0].timestamp if hot_ids else None)
        seen += len(expected)
    assert seen == 280
