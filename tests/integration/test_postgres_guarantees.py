"""The guarantees that matter under concurrency and crashes, on real PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from uuid import UUID, uuid4

import psycopg
import pytest

from eventstore import ConcurrencyError, EventStore, NewEvent, RecordedEvent
from eventstore.store.postgres import APPEND_SQL
from tests.integration.durable_store import durable_single_connection_store, pool_synchronous_commit

pytestmark = pytest.mark.postgres


def append_params(stream: str, event_type: str) -> dict[str, object]:
    """Parameters for the store's own append statement, run in a transaction we control."""
    events = [{"id": str(uuid4()), "type": event_type, "payload": {"slow": True},
               "metadata": {}, "sv": 1}]
    return {"stream": stream, "expected": -2, "events": json.dumps(events)}


@pytest.fixture
def store(postgres_url: str):  # type: ignore[no-untyped-def]
    store = EventStore.connect(postgres_url, pool_max_size=24)
    store.migrate()
    yield store
    store.close()


def test_concurrent_writers_with_expected_versions(store: EventStore) -> None:
    """16 threads x 500 appends on the same 10 streams: no gap, no duplicate, no lost ack,
    and every ConcurrencyError was a real conflict (the stream had moved past us)."""
    streams = [f"hot-{i}" for i in range(10)]
    acknowledged: dict[str, list[UUID]] = defaultdict(list)
    known_versions: dict[str, int] = dict.fromkeys(streams, 0)
    lock = threading.Lock()
    false_conflicts: list[str] = []
    conflicts = 0

    def writer(seed: int) -> None:
        nonlocal conflicts
        rng = random.Random(seed)
        for _ in range(500):
            stream = rng.choice(streams)
            with lock:
                expected = known_versions[stream]
            event = NewEvent(type="Tick", payload={"writer": seed})
            try:
                result = store.append(stream, [event], expected_version=expected)
            except ConcurrencyError as exc:
                if exc.actual_version <= expected:
                    false_conflicts.append(f"{stream}: expected {expected}, actual "
                                           f"{exc.actual_version}")
                with lock:
                    conflicts += 1
                    known_versions[stream] = max(known_versions[stream], exc.actual_version)
                continue
            assert result.first_version == expected + 1
            with lock:
                acknowledged[stream].append(event.id)
                known_versions[stream] = max(known_versions[stream], result.next_expected_version)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not false_conflicts
    total = 0
    for stream in streams:
        events = store.read_stream(stream)
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert {e.id for e in events} == set(acknowledged[stream])
        assert len({e.id for e in events}) == len(events)
        total += len(events)
    assert total + conflicts == 16 * 500
    assert conflicts > 0, "the test did not produce contention; it proves nothing"


def test_subscriber_never_skips_events_committed_out_of_order(
    store: EventStore, postgres_url: str
) -> None:
    """Writers on many streams while a subscriber follows read_all from 0.

    A slow transaction that allocated its position first and commits last is forced in the
    middle: a store ordering by a plain sequence would let the reader pass it and skip it.
    """
    stop = threading.Event()
    seen: list[RecordedEvent] = []

    def follow() -> None:
        position = 0
        while True:
            page = store.read_all(from_position=position, limit=200)
            if page:
                seen.extend(page)
                position = page[-1].position + 1
            elif stop.is_set():
                # One more read after writers stopped, then done.
                page = store.read_all(from_position=position, limit=100_000)
                seen.extend(page)
                return
            else:
                store.wait_for_events(position - 1, 0.05)

    def write(n: int) -> None:
        rng = random.Random(n)
        for i in range(150):
            store.append(f"w{n}-{rng.randrange(20)}", [NewEvent("E", {"n": n, "i": i})])

    def slow_writer() -> None:
        # Takes its transaction id early, then lets others commit before it does.
        with psycopg.connect(postgres_url) as conn:
            conn.execute("SELECT pg_current_xact_id()")
            time.sleep(0.5)
            conn.execute(APPEND_SQL, append_params("slow", "Slow"))
            time.sleep(0.3)
            conn.commit()

    follower = threading.Thread(target=follow)
    follower.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    writers.append(threading.Thread(target=slow_writer))
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    follower.join(timeout=60)

    final = store.read_all(from_position=0, limit=100_000)
    assert len(final) == 6 * 150 + 1
    assert [e.id for e in seen] == [e.id for e in final], "subscriber skipped or repeated"
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        by_stream[event.aggregate_id].append(event.version)
    assert all(v == sorted(v) for v in by_stream.values())
    assert any(e.type == "Slow" for e in seen)


def test_a_naive_sequence_order_would_skip(store: EventStore, postgres_url: str) -> None:
    """Shows the hazard the xid8 cut-off removes: the slow transaction's row is invisible
    while later rows are visible, and read_all holds those back instead of handing them out."""
    with psycopg.connect(postgres_url) as slow:
        slow.execute("SELECT pg_current_xact_id()")  # an older transaction, still open
        store.append("fast", [NewEvent("E", {})])
        assert store.read_all() == [], "a committed row past an open older transaction was handed out"
        slow.execute(APPEND_SQL, append_params("slow", "S"))
        slow.commit()
    assert [e.aggregate_id for e in store.read_all()] == ["slow", "fast"]


CRASH_WRITER = r"""
import sys, uuid
from eventstore import EventStore, NewEvent
store = EventStore.connect(sys.argv[1])
events = [NewEvent("Bulk", {"i": i, "pad": "x" * 2000}) for i in range(1000)]
print("ready", flush=True)
store.append("crash-stream", events)
print("done", flush=True)
"""


def test_sigkill_mid_append_leaves_all_or_nothing(store: EventStore, postgres_url: str) -> None:
    outcomes = set()
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4):
        before = store.stream_version("crash-stream")
        proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, postgres_url],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The server notices the dead client and rolls back; give it a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE (query LIKE '%INSERT INTO es_events%'"
                    " OR query LIKE 'COPY es_events%')"
                    " AND pid <> pg_backend_pid() AND state = 'active'").fetchone()
            if busy and busy[0] == 0:
                break
            time.sleep(0.05)
        after = store.stream_version("crash-stream")
        events = store.read_stream("crash-stream")
        assert after - before in (0, 1000), f"partial batch: {after - before} events"
        assert len(events) == after
        assert [e.version for e in events] == list(range(1, after + 1))
        outcomes.add(after - before)
    # Killing before the statement reached the server leaves nothing; after, everything.
    assert outcomes <= {0, 1000}


def test_unreachable_database_is_store_unavailable() -> None:
    from eventstore import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="could not connect"):
        EventStore.connect("postgresql://nobody:secret@127.0.0.1:1/none", connect_timeout=1)


def test_password_is_not_in_connection_errors() -> None:
    from eventstore import StoreUnavailable

    with pytest.raises(StoreUnavailable) as info:
        EventStore.connect("postgresql://nobody:hunter2@127.0.0.1:1/none", connect_timeout=1)
    assert "hunter2" not in str(info.value)


def test_appends_stay_durable_commits_while_the_notifier_runs(postgres_url: str) -> None:
    """The notifier sends NOTIFY with synchronous_commit off (a wake-up need not wait for
    the disk). That setting must never reach a connection that appends: it would
    acknowledge appends before they are on disk (it once did, through the pool)."""
    with durable_single_connection_store(postgres_url) as store:
        for n in range(20):
            store.append("durable", [NewEvent("Tick", {"n": n})])
            time.sleep(0.01)  # let the notifier run in between
        time.sleep(0.1)
        assert pool_synchronous_commit(store) == ("on",)
