"""Projection partition reads on a log with statistics: the time of one read of up to 100 events
(`read_partition`, what a projection worker polls), for a partition idle over the recent
log and for a busy one, against the same read spelt as before 2026-12-02
(`partition = p AND position >= f ORDER BY position`).

Why it matters: with statistics (any production database), PostgreSQL plans that spelling
as a walk of the primary key from the checkpoint, filtered on the partition. A partition
with nothing new is then found empty only after walking every later event of the log, on
every poll of every worker. Not a goal row: the figure says what the row-comparison
spelling buys, and that it does not grow with the log.

The same on a SQLite file, where the former read also hashed every stream id it walked
past (in Python), against the indexed partition column of SQLite schema version 4.

Called by bench/run.py: `run(server, scale)` returns rows {name, unit, value, floor_name,
floor, ratio, goal}.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.store_bench import PAYLOAD
from eventstore import EventStore, NewEvent
from eventstore.store.postgres import PostgresEventStore
from eventstore.store.postgres_datastore import CUTOFF, PARTITION, PLANNER_OPTIONS
from eventstore.store.rows import EVENT_COLUMNS
from eventstore.store.sqlite import SQLiteEventStore
from tests.harness.postgres import PostgresServer

#: The partition read before 2026-12-02, for comparison.
_FORMER_SQL = (
    f"(SELECT {EVENT_COLUMNS} FROM es_events WHERE {PARTITION} = %(p)s"
    f" AND position >= %(f)s AND position < {CUTOFF} ORDER BY position LIMIT %(n)s)"
    f" UNION ALL (SELECT {EVENT_COLUMNS} FROM es_events_archive WHERE {PARTITION} = %(p)s"
    " AND position >= %(f)s ORDER BY position LIMIT %(n)s)"
    " ORDER BY position LIMIT %(n)s").encode()


#: SQLite's partition read before schema version 4, for comparison.
_FORMER_SQLITE_SQL = (
    f"SELECT * FROM (SELECT {EVENT_COLUMNS} FROM es_events WHERE position >= ? AND "
    f"es_partition(stream_id) = ? UNION ALL SELECT {EVENT_COLUMNS} FROM "
    "es_events_archive WHERE position >= ? AND es_partition(stream_id) = ?) "
    "ORDER BY position LIMIT ?")


def load(url: str, early: int, late: int) -> None:
    """`early` events over 4,000 streams (every partition), then `late` events in three
    streams only; statistics gathered, as autovacuum would have."""
    payload = json.dumps(PAYLOAD)
    with psycopg.connect(url, autocommit=True) as conn:
        for prefix, streams, count in (("early", 4000, early), ("late", 3, late)):
            conn.execute(
                "INSERT INTO es_events (position, id, stream_id, version, type, payload,"
                " metadata, recorded_at, tx_id)"
                " SELECT (pg_current_xact_id()::text::bigint << 20) | n, gen_random_uuid(),"
                " %(prefix)s || '-' || (n %% %(streams)s), n / %(streams)s + 1, 'Deposited',"
                " %(payload)s::jsonb, '{}', now(), pg_current_xact_id()"
                " FROM generate_series(0, %(count)s - 1) n",
                {"prefix": prefix, "streams": streams, "count": count, "payload": payload})
        conn.execute("VACUUM ANALYZE es_events")


def per_read_us(reads: int, read: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(reads):
        read()
    return (time.perf_counter() - started) / reads * 1e6


def run(server: PostgresServer, scale: float = 1.0, rounds: int = 3) -> list[dict[str, Any]]:
    early = max(20_000, int(100_000 * scale))
    late = max(100_000, int(400_000 * scale))
    reads = max(20, int(200 * scale))
    url = server.create_database("bench_partitions")
    store = EventStore.connect(url, pool_max_size=2)
    assert isinstance(store, PostgresEventStore)
    store.migrate()
    load(url, early, late)
    rows: list[dict[str, Any]] = []
    try:
        with psycopg.connect(url, autocommit=True, options=PLANNER_OPTIONS) as conn:
            busy = {int(r[0]) for r in conn.execute(
                f"SELECT DISTINCT {PARTITION} FROM es_events WHERE stream_id LIKE 'late-%'")}
            idle = min(set(range(16)) - busy)
            after_idle = conn.execute(f"SELECT max(position) + 1 FROM es_events WHERE"
                                      f" {PARTITION} = %s", (idle,)).fetchone()[0]  # type: ignore[index]
            cases = {"idle": (idle, after_idle), "busy": (min(busy), 0)}
            for name, (partition, start) in cases.items():
                params = {"p": partition, "f": start, "n": 100}
                now_us, before_us = [], []
                for _ in range(rounds):
                    now_us.append(per_read_us(reads, lambda p=partition, f=start:
                                              store.datastore.read_partition(p, f, 100)))
                    before_us.append(per_read_us(reads, lambda params=params:
                                                 conn.execute(_FORMER_SQL, params).fetchall()))
                value, floor = statistics.median(now_us), statistics.median(before_us)
                what = ("a partition with no event in the last "
                        f"{late:,} of the log" if name == "idle" else "a busy partition")
                rows.append({
                    "name": f"projection read of 100 events, {what}",
                    "value": round(value, 1),
                    "unit": f"µs per read; a log of {early + late:,} events with statistics;"
                            " lower is better",
                    "floor_name": "the same read spelt partition = p AND position >= f",
                    "floor": round(floor, 1), "ratio": round(value / floor, 3), "goal": ""})
    finally:
        store.close()
    rows.append(sqlite_idle_read(early // 10, late // 4, reads, rounds))
    return rows


def sqlite_idle_read(early: int, late: int, reads: int, rounds: int) -> dict[str, Any]:
    """The idle-partition read on a SQLite file loaded through the store's own appends."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore.connect(f"sqlite:///{Path(tmp) / 'es.db'}")
        assert isinstance(store, SQLiteEventStore)
        store.migrate()
        try:
            for s in range(0, early, 100):
                store.append(f"early-{s // 100 % 400}", [NewEvent("Deposited", PAYLOAD)
                                                         for _ in range(100)])
            for s in range(0, late, 500):
                store.append(f"late-{s // 500 % 3}", [NewEvent("Deposited", PAYLOAD)
                                                      for _ in range(500)])
            datastore = store.datastore
            busy = {int(r[0]) for r in datastore.execute(
                "SELECT DISTINCT partition FROM es_events WHERE stream_id LIKE 'late-%'")}
            idle = min(set(range(16)) - busy)
            ((after_idle,),) = datastore.execute(
                "SELECT max(position) + 1 FROM es_events WHERE partition = ?", (idle,))
            params = (after_idle, idle, after_idle, idle, 100)
            now_us, before_us = [], []
            for _ in range(rounds):
                now_us.append(per_read_us(reads, lambda: datastore.read_partition(
                    idle, after_idle, 100)))
                before_us.append(per_read_us(reads, lambda: datastore.execute(
                    _FORMER_SQLITE_SQL, params)))
        finally:
            store.close()
    value, floor = statistics.median(now_us), statistics.median(before_us)
    return {"name": f"SQLite: projection read, a partition with no event in the last {late:,}",
            "value": round(value, 1),
            "unit": f"µs per read; a file of {early + late:,} events; lower is better",
            "floor_name": "the same read filtered on es_partition(stream_id), no index",
            "floor": round(floor, 1), "ratio": round(value / floor, 3), "goal": ""}
