"""Aggregate load time for 1,000 / 10,000 / 100,000 events, without and with snapshots."""

from __future__ import annotations

import time
from typing import Any

from eventstore import EventStore, NewEvent, Repository
from eventstore.examples.bank import Account
from eventstore.snapshots.base import SnapshotStore
from tests.harness.postgres import PostgresServer

SIZES = (1_000, 10_000, 100_000)


def _fill(store: EventStore, stream: str, count: int) -> None:
    store.append(stream, [NewEvent("AccountOpened", {"owner": "bench"})])
    written = 1
    while written < count:
        n = min(5_000, count - written)
        store.append(stream, [NewEvent("Deposited", {"amount": 1}) for _ in range(n)])
        written += n


def _best_of(repeats: int, work: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def run(server: PostgresServer, scale: float = 1.0) -> list[dict[str, Any]]:
    store = EventStore.connect(server.create_database("bench_snapshots"))
    store.migrate()
    snapshots, where = _snapshot_store()
    plain = Repository(store, Account)
    snapped = Repository(store, Account, snapshots=snapshots, snapshot_frequency=100)
    rows: list[dict[str, Any]] = []
    with_times: dict[int, float] = {}
    for size in SIZES:
        stream = f"bench-load-{size}"
        _fill(store, stream, size)
        # The policy would have snapshotted at the last multiple of 100; take that one,
        # so that a load replays the tail since it (here: none beyond the snapshot).
        aggregate = plain.load(stream, at_version=size - size % 100)
        snapped.take_snapshot(aggregate)
        without = _best_of(3 if size < 100_000 else 1, lambda s=stream: plain.load(s))
        with_snap = _best_of(5, lambda s=stream: snapped.load(s))
        loaded, info = snapped.load_with_info(stream)
        assert loaded.balance == size - 1 and info.events_replayed <= 100
        with_times[size] = with_snap
        rows.append({"name": f"load {size:,}-event aggregate, no snapshot", "unit": "ms",
                     "value": round(without * 1000, 2)})
        rows.append({"name": f"load {size:,}-event aggregate, snapshots ({where})", "unit": "ms",
                     "value": round(with_snap * 1000, 2)})
    flat = with_times[100_000] / with_times[1_000]
    rows.append({"name": "snapshot load 100k / 1k (goal <= 2x)", "unit": "ratio",
                 "value": round(flat, 2), "goal": "<= 2.0",
                 "verdict": "ok" if flat <= 2 else "BELOW GOAL"})
    snapshots.close()
    store.close()
    return rows


def _snapshot_store() -> tuple[SnapshotStore, str]:
    try:
        from tests.harness.ferretdb import FerretDBServer
    except ImportError:
        return SnapshotStore.connect("sqlite://:memory:"), "SQLite"
    server = FerretDBServer()
    server.start()
    store = SnapshotStore.connect(server.url)
    original_close = store.close

    def close() -> None:
        original_close()
        server.stop()

    store.close = close  # type: ignore[method-assign]
    return store, "MongoDB wire (FerretDB)"
