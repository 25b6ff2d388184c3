"""Event ids on a store that already holds many events: the WAL a 10-event append writes
right after a checkpoint, with NewEvent's default ids (time-ordered UUIDv7) against random
uuid4 ids. Each store is loaded with a history of its own kind of ids (a store that has
always used them), then the two are measured in alternating rounds on one server.

Why it matters: after a checkpoint, PostgreSQL writes the first change to each index page
as the whole 8 KiB page. A random id lands on a random page of the event-id index, so on
a large index nearly every insert is such a first change; a time-ordered id lands on the
newest pages. Not a goal row: the figure says what the default id buys.

Called by bench/run.py: `run(server, scale)` returns rows {name, unit, value, floor_name,
floor, ratio, goal}.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from bench.store_bench import PAYLOAD
from eventstore import EventStore, NewEvent
from eventstore.events import uuid7
from tests.harness.postgres import PostgresServer

#: Events loaded per transaction: positions keep 20 bits for the index within one.
_LOAD_CHUNK = 500_000
#: A UUIDv7 in SQL: the time in milliseconds, then version 7, variant 0b10, random bits.
_SQL_UUID7 = ("(lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint), 12, '0')"
              " || '7' || substr(md5(random()::text), 1, 3) || '8'"
              " || substr(md5(random()::text), 1, 15))::uuid")
_SQL_UUID4 = "gen_random_uuid()"


def load(url: str, events: int, id_sql: str) -> None:
    """`events` events in streams of 10, as appends would have stored them."""
    payload = json.dumps(PAYLOAD)
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, events, _LOAD_CHUNK):
            count = min(_LOAD_CHUNK, events - start)
            conn.execute(
                "INSERT INTO es_events (position, id, stream_id, version, type, payload,"
                " metadata, recorded_at, tx_id)"
                " SELECT (pg_current_xact_id()::text::bigint << 20) | n, " + id_sql + ","
                " 'load-' || ((%(start)s + n) / 10), (%(start)s + n) %% 10 + 1, 'Deposited',"
                " %(payload)s::jsonb, '{}', now(), pg_current_xact_id()"
                " FROM generate_series(0, %(count)s - 1) n",
                {"start": start, "count": count, "payload": payload})
        conn.execute("VACUUM ANALYZE es_events")


def run(server: PostgresServer, scale: float = 1.0, rounds: int = 3) -> list[dict[str, Any]]:
    history = max(100_000, int(2_000_000 * scale))
    appends = max(100, int(500 * scale))
    kinds: dict[str, tuple[str, Callable[[], uuid.UUID]]] = {
        "uuid7": (_SQL_UUID7, uuid7), "uuid4": (_SQL_UUID4, uuid.uuid4)}
    stores, wal, micros = {}, {k: [] for k in kinds}, {k: [] for k in kinds}
    admin = psycopg.connect(server.create_database("bench_ids_admin"), autocommit=True)
    try:
        for kind, (id_sql, _) in kinds.items():
            url = server.create_database(f"bench_ids_{kind}")
            store = EventStore.connect(url, pool_max_size=2)
            store.migrate()
            load(url, history, id_sql)
            for n in range(50):  # the pool's connections and prepared statements
                store.append(f"warm-{n}", [NewEvent("Deposited", PAYLOAD)])
            stores[kind] = store
        streams = 0
        for _ in range(rounds):
            for kind, (_, new_id) in kinds.items():
                admin.execute("CHECKPOINT")
                before = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
                started = time.perf_counter()
                for _ in range(appends):
                    streams += 1
                    stores[kind].append(f"new-{streams}", [
                        NewEvent("Deposited", PAYLOAD, id=new_id()) for _ in range(10)])
                micros[kind].append((time.perf_counter() - started) / appends * 1e6)
                written = admin.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn",
                                        (str(before),)).fetchone()[0]  # type: ignore[index]
                wal[kind].append(float(written) / appends / 1024)
    finally:
        admin.close()
        for store in stores.values():
            store.close()
    kb = {k: statistics.median(v) for k, v in wal.items()}
    us = {k: statistics.median(v) for k, v in micros.items()}
    where = f"a store of {history:,} events, right after a checkpoint"
    return [
        {"name": f"WAL per 10-event append, {where}", "value": round(kb["uuid7"], 1),
         "unit": "KiB per append, default (uuid7) ids; lower is better",
         "floor_name": "the same with random uuid4 ids", "floor": round(kb["uuid4"], 1),
         "ratio": round(kb["uuid7"] / kb["uuid4"], 3), "goal": ""},
        {"name": f"time per 10-event append, {where}", "value": round(us["uuid7"], 1),
         "unit": "µs per append, default (uuid7) ids; lower is better",
         "floor_name": "the same with random uuid4 ids", "floor": round(us["uuid4"], 1),
         "ratio": round(us["uuid7"] / us["uuid4"], 3), "goal": ""},
    ]
