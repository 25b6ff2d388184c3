"""Library-level event store benchmarks, each next to a raw psycopg floor on the same server."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from eventstore import EventStore, ExpectedVersion, NewEvent
from eventstore.store.postgres import PLANNER_OPTIONS, PostgresEventStore

Row = dict[str, Any]

PAYLOAD = {"amount": 1250, "currency": "EUR", "note": "benchmark deposit"}
RAW_TABLE = """
CREATE TABLE IF NOT EXISTS raw_events (
    position bigserial PRIMARY KEY, id uuid NOT NULL, stream_id text NOT NULL,
    version bigint NOT NULL, type text NOT NULL, schema_version integer NOT NULL,
    payload jsonb NOT NULL, metadata jsonb NOT NULL, recorded_at timestamptz NOT NULL)
"""
RAW_INSERT = ("INSERT INTO raw_events (id, stream_id, version, type, schema_version, payload, "
              "metadata, recorded_at) VALUES ")
RAW_ROW = "(%s, %s, %s, 'Deposited', 1, %s::jsonb, '{}'::jsonb, clock_timestamp())"


def timed(count: int, work: Callable[[], None]) -> float:
    """Operations per second of `work`, which performs `count` operations."""
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def threaded(threads: int, per_thread: int, work: Callable[[int], None]) -> float:
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread / (time.perf_counter() - started)


def paired(rounds: int, floor: Callable[[], float], lib: Callable[[], float]) -> tuple[float, float]:
    """Medians of `rounds` alternating runs of the floor and the library, so that both see
    the same background load (this machine has two cores)."""
    floors, libs = [], []
    for _ in range(rounds):
        floors.append(floor())
        libs.append(lib())
    return statistics.median(floors), statistics.median(libs)


def raw_threads(url: str, threads: int, per_thread: int) -> float:
    """The raw write floor: `threads` threads, each on its own connection, doing a 1-row
    INSERT + COMMIT (autocommit) `per_thread` times. Rows per second."""
    payload_text = json.dumps(PAYLOAD)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE)

    def writer(n: int) -> None:
        with psycopg.connect(url, autocommit=True, options=PLANNER_OPTIONS) as conn:
            for i in range(per_thread):
                conn.execute(RAW_INSERT + RAW_ROW, (uuid.uuid4(), f"writer-{n}", i, payload_text))

    return threaded(threads, per_thread, writer)


def run(url: str, scale: float = 1.0, rounds: int = 3) -> list[Row]:
    """Returns rows of {name, unit, value, floor_name, floor, ratio, goal}."""
    n_single = int(1000 * scale)
    n_batch = int(300 * scale)
    n_threaded = int(250 * scale)
    payload_text = json.dumps(PAYLOAD)
    store = EventStore.connect(url, pool_max_size=16)
    assert isinstance(store, PostgresEventStore)
    store.migrate()
    # The floor gets the same planner settings as the store's own connections, so that a
    # plan chosen on stale statistics does not flatter the ratio.
    raw = psycopg.connect(url, autocommit=True, options=PLANNER_OPTIONS)
    raw.execute(RAW_TABLE)
    results: list[Row] = []

    def add(name: str, value: float, floor_name: str, floor: float, goal: float) -> None:
        results.append({"name": name, "unit": "events/s", "value": round(value, 1),
                        "floor_name": floor_name, "floor": round(floor, 1),
                        "ratio": round(value / floor, 3), "goal": goal})

    # -- warm up both paths (prepared statements, pool) --------------------------------
    for i in range(50):
        store.append(f"warm-{i}", [NewEvent("Deposited", PAYLOAD)])
        raw.execute(RAW_INSERT + RAW_ROW, (uuid.uuid4(), f"warm-{i}", 1, payload_text))

    # -- one event per transaction -----------------------------------------------------
    def lib_single() -> None:
        for i in range(n_single):
            store.append(f"single-{i % 100}", [NewEvent("Deposited", PAYLOAD)])

    def raw_single() -> None:
        for i in range(n_single):
            raw.execute(RAW_INSERT + RAW_ROW, (uuid.uuid4(), f"single-{i % 100}", i, payload_text))

    floor, value = paired(rounds, lambda: timed(n_single, raw_single),
                          lambda: timed(n_single, lib_single))
    add("append, 1 event per transaction", value, "raw single-row INSERT", floor, 0.6)

    # -- ten events per transaction ----------------------------------------------------
    def lib_batch() -> None:
        for i in range(n_batch):
            store.append(f"batch-{i % 100}", [NewEvent("Deposited", PAYLOAD) for _ in range(10)])

    ten_rows = RAW_INSERT + ", ".join([RAW_ROW] * 10)

    def raw_batch() -> None:
        for i in range(n_batch):
            params: list[Any] = []
            for j in range(10):
                params += [uuid.uuid4(), f"batch-{i % 100}", j, payload_text]
            raw.execute(ten_rows, params)

    # The same 10-row INSERT into a table shaped like es_events (its seven indexes, the
    # positions built from the transaction id): what the database costs for these rows.
    raw.execute("CREATE TABLE IF NOT EXISTS shaped_events (LIKE es_events INCLUDING ALL)")
    shaped_row = ("((pg_current_xact_id()::text::bigint << 20) | %s, %s, %s, %s, 'Deposited',"
                  " 1, %s::jsonb, '{}'::jsonb, clock_timestamp(), pg_current_xact_id())")
    shaped_rows = ("INSERT INTO shaped_events (position, id, stream_id, version, type,"
                   " schema_version, payload, metadata, recorded_at, tx_id) VALUES "
                   + ", ".join([shaped_row] * 10))
    shaped_batches = 0

    def shaped_batch() -> None:
        nonlocal shaped_batches
        for _ in range(n_batch):
            shaped_batches += 1
            params: list[Any] = []
            for j in range(10):
                params += [j, uuid.uuid4(), f"batch-{shaped_batches}", j + 1, payload_text]
            raw.execute(shaped_rows, params)

    floors, shaped, libs = [], [], []
    for _ in range(rounds):
        floors.append(timed(n_batch * 10, raw_batch))
        shaped.append(timed(n_batch * 10, shaped_batch))
        libs.append(timed(n_batch * 10, lib_batch))
    value = statistics.median(libs)
    add("append, 10-event batches", value, "raw 10-row INSERT", statistics.median(floors), 0.6)
    add("append, 10-event batches, against its own table shape", value,
        "raw 10-row INSERT into a table with es_events' 7 indexes", statistics.median(shaped),
        0.6)

    # -- eight concurrent writers on distinct streams ----------------------------------
    def lib_writer(n: int) -> None:
        for i in range(n_threaded):
            store.append(f"writer-{n}-{i % 20}", [NewEvent("Deposited", PAYLOAD)])

    floor, value = paired(rounds, lambda: raw_threads(url, 8, n_threaded),
                          lambda: threaded(8, n_threaded, lib_writer))
    add("append, 8 concurrent writers", value, "8 threads of raw single-row INSERT", floor, 0.6)

    # -- sixteen threads sharing one store, against the 8-thread raw floor --------------
    def lib_shared(n: int) -> None:
        run = uuid.uuid4().hex[:8]
        for i in range(n_threaded):
            store.append(f"shared-{run}-{n}-{i}", [NewEvent("Deposited", PAYLOAD)],
                         expected_version=ExpectedVersion.NO_STREAM)

    floor, value = paired(rounds, lambda: raw_threads(url, 8, n_threaded),
                          lambda: threaded(16, n_threaded, lib_shared))
    add("append, 16 threads sharing one store", value, "8 threads of raw single-row INSERT",
        floor, 1.0)

    # -- one append of 1,000 events, against COPY of the same rows ----------------------
    n_large = max(3, int(20 * scale))

    def lib_large() -> None:
        for i in range(n_large):
            store.append(f"large-{i}", [NewEvent("Deposited", PAYLOAD) for _ in range(1000)])

    def raw_copy() -> None:
        for i in range(n_large):
            with raw.cursor().copy(
                    "COPY raw_events (id, stream_id, version, type, schema_version, payload,"
                    " metadata, recorded_at) FROM STDIN") as copy:
                for j in range(1000):
                    copy.write_row((uuid.uuid4(), f"large-{i}", j + 1, "Deposited", 1,
                                    payload_text, "{}", "now"))

    # The same COPY into the table shaped like es_events, its seven indexes included (the
    # ones the store's reads need): what the database itself costs for these rows.

    def shaped_copy() -> None:
        for i in range(n_large):
            with raw.transaction():
                row = raw.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
                assert row is not None
                xid = int(row[0])
                with raw.cursor().copy(
                        "COPY shaped_events (position, id, stream_id, version, type,"
                        " schema_version, payload, metadata, recorded_at, tx_id) FROM STDIN"
                ) as copy:
                    for j in range(1000):
                        copy.write_row(((xid << 20) | j, uuid.uuid4(), f"large-{i}-{xid}",
                                        j + 1, "Deposited", 1, payload_text, "{}", "now", xid))

    floors, shaped, libs = [], [], []
    for _ in range(rounds):
        floors.append(timed(n_large * 1000, raw_copy))
        shaped.append(timed(n_large * 1000, shaped_copy))
        libs.append(timed(n_large * 1000, lib_large))
    floor, value = statistics.median(floors), statistics.median(libs)
    add("append of 1,000 events", value, "raw COPY of 1,000 rows", floor, 0.5)
    add("append of 1,000 events, against its own table shape", value,
        "raw COPY of 1,000 rows into a table with es_events' 7 indexes",
        statistics.median(shaped), 0.5)

    # -- reads -------------------------------------------------------------------------
    for _ in range(10):
        store.append("long-stream", [NewEvent("Deposited", PAYLOAD) for _ in range(1000)])
    rows_read = 0

    def lib_stream() -> None:
        nonlocal rows_read
        rows_read = len(store.read_stream("long-stream"))

    def raw_stream() -> None:
        with raw.cursor() as cur:
            cur.execute("SELECT position, id, stream_id, version, type, schema_version, payload,"
                        " metadata, recorded_at FROM es_events WHERE stream_id = 'long-stream'"
                        " ORDER BY version")
            cur.fetchall()

    floor, value = paired(rounds, lambda: timed(10_000, raw_stream),
                          lambda: timed(10_000, lib_stream))
    assert rows_read == 10_000
    add("read_stream of 10,000 events", value, "raw SELECT of the stream", floor, 0.75)

    total = store.stats().events

    def lib_all() -> None:
        position = 0
        while page := store.read_all(from_position=position, limit=1000):
            position = page[-1].position + 1

    def raw_all() -> None:
        position = -1
        with raw.cursor() as cur:
            while True:
                cur.execute("SELECT position, id, stream_id, version, type, schema_version,"
                            " payload, metadata, recorded_at FROM es_events WHERE position > %s"
                            " ORDER BY position LIMIT 1000", (position,))
                rows = cur.fetchall()
                if not rows:
                    return
                position = rows[-1][0]

    floor, value = paired(rounds, lambda: timed(total, raw_all), lambda: timed(total, lib_all))
    add(f"read_all, {total:,} events in pages of 1,000", value, "raw keyset-paged SELECT",
        floor, 0.75)
    raw.close()
    store.close()
    return results
