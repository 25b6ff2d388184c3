"""Large appends (COPY_MIN_EVENTS events or more) are written with COPY: the same
guarantees as the statement path, on real PostgreSQL."""

from __future__ import annotations

import threading
from collections import defaultdict
from uuid import UUID, uuid4

import pytest

from eventstore import (
    ConcurrencyError,
    EventStore,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    ValidationError,
)
from eventstore.store.postgres_append import COPY_MIN_EVENTS
from tests.integration.log_follower import follow_log

pytestmark = pytest.mark.postgres

#: Strings that text COPY must escape (tab, newline, backslash, its end-of-data marker
#: "\." alone on a line) and characters beyond ASCII.
AWKWARD = ["tab\there", "line\nbreak", "back\\slash", "\\.", "\\N", "\r\n", "é漢🙂",
           "\u0001control", 'quote " and \'']


@pytest.fixture
def store(postgres_url: str):  # type: ignore[no-untyped-def]
    store = EventStore.connect(postgres_url, pool_max_size=16)
    store.migrate()
    yield store
    store.close()


def _events(count: int, tag: str = "") -> list[NewEvent]:
    return [NewEvent("Bulk", {"i": i, "tag": tag, "text": AWKWARD[i % len(AWKWARD)]},
                     metadata={"m": AWKWARD[(i + 1) % len(AWKWARD)]} if i % 2 else {},
                     schema_version=1 + i % 3)
            for i in range(count)]


def test_a_large_append_stores_every_field_exactly(store: EventStore) -> None:
    events = _events(COPY_MIN_EVENTS * 2)
    result = store.append("copy-1", events, expected_version=ExpectedVersion.NO_STREAM)
    assert (result.first_version, result.next_expected_version) == (1, len(events))
    stored = store.read_stream("copy-1")
    assert [(e.id, e.type, e.payload, e.metadata, e.schema_version, e.version)
            for e in stored] == [
        (e.id, e.type, e.payload, e.metadata, e.schema_version, n + 1)
        for n, e in enumerate(events)]
    assert [e.position for e in stored] == list(result.positions)
    assert list(result.positions) == sorted(set(result.positions))
    assert len({e.timestamp for e in stored}) == 1, "one append, one time"
    assert [e.id for e in store.read_all()] == [e.id for e in events]
    # the next append, large or small, continues the stream's versions
    assert store.append("copy-1", _events(COPY_MIN_EVENTS), len(events)).first_version == \
        len(events) + 1
    assert store.append("copy-1", _events(1), 2 * COPY_MIN_EVENTS + COPY_MIN_EVENTS
                        ).first_version == 3 * COPY_MIN_EVENTS + 1


def test_a_large_append_whose_expectation_fails_writes_nothing(store: EventStore) -> None:
    store.append("copy-2", _events(3))
    for expected in (0, 2, 4, ExpectedVersion.NO_STREAM):
        with pytest.raises(ConcurrencyError) as refused:
            store.append("copy-2", _events(COPY_MIN_EVENTS), expected_version=expected)
        assert refused.value.actual_version == 3
    with pytest.raises(ConcurrencyError) as refused:
        store.append("copy-none", _events(COPY_MIN_EVENTS),
                     expected_version=ExpectedVersion.STREAM_EXISTS)
    assert refused.value.actual_version == 0
    assert store.stream_version("copy-2") == 3
    assert store.stream_version("copy-none") == 0
    assert store.append("copy-2", _events(COPY_MIN_EVENTS), 3).next_expected_version == \
        3 + COPY_MIN_EVENTS


def test_a_re_sent_large_append_is_answered_from_what_is_stored(store: EventStore) -> None:
    events = _events(COPY_MIN_EVENTS + 5)
    first = store.append("copy-3", events, expected_version=0)
    again = store.append("copy-3", events, expected_version=0)
    assert again.idempotent and not first.idempotent
    assert (again.first_version, again.next_expected_version, again.positions) == (
        first.first_version, first.next_expected_version, first.positions)
    assert store.stream_version("copy-3") == len(events)


def test_racing_large_appends_each_land_whole_and_readers_skip_nothing(
        store: EventStore) -> None:
    """Six threads append large batches to one stream (ANY: a lost race reads again and
    retries) and to a stream each, while a reader follows the log: every append lands
    whole, in one run of versions, and the reader sees every event once, in order."""
    writers, rounds, size = 6, 4, COPY_MIN_EVENTS + 16
    acknowledged: dict[str, list[list[UUID]]] = defaultdict(list)
    lock = threading.Lock()
    stop = threading.Event()
    seen: list[RecordedEvent] = []
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for r in range(rounds):
                for stream in ("copy-shared", f"copy-own-{n}"):
                    events = _events(size, tag=f"{n}-{r}")
                    store.append(stream, events)
                    with lock:
                        acknowledged[stream].append([e.id for e in events])
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    reader = threading.Thread(target=follow_log, args=(store, stop, seen))
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reader.join(timeout=60)
    assert not failures, failures

    for stream, appends in acknowledged.items():
        stored = store.read_stream(stream)
        assert [e.version for e in stored] == list(range(1, len(stored) + 1))
        ids = [e.id for e in stored]
        assert sorted(ids) == sorted(i for append in appends for i in append)
        for append in appends:  # contiguous: no other append's events in between
            start = ids.index(append[0])
            assert ids[start:start + len(append)] == append
    everything = store.read_all(limit=100_000)
    assert len(everything) == writers * rounds * 2 * size
    assert [e.id for e in seen] == [e.id for e in everything], "the reader skipped or repeated"


def test_only_one_of_racing_large_appends_to_a_new_stream_wins(store: EventStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def write(n: int) -> None:
        start.wait()
        try:
            store.append("copy-new", _events(COPY_MIN_EVENTS, tag=str(n)),
                         expected_version=ExpectedVersion.NO_STREAM)
            outcome = "won"
        except ConcurrencyError as exc:
            outcome = f"conflict at {exc.actual_version}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lost = f"conflict at {COPY_MIN_EVENTS}"
    assert sorted(outcomes) == [lost, lost, lost, "won"]
    stored = store.read_stream("copy-new")
    assert len(stored) == COPY_MIN_EVENTS
    assert len({e.payload["tag"] for e in stored}) == 1


def test_ids_are_unique_across_the_copy_and_statement_paths(store: EventStore) -> None:
    """An event id stored by a small append cannot be stored again by a large one."""
    shared = uuid4()
    store.append("copy-small", [NewEvent("E", {}, id=shared)])
    events = _events(COPY_MIN_EVENTS)
    events[7] = NewEvent("E", {}, id=shared)
    with pytest.raises(ValidationError, match="already stored"):
        store.append("copy-large", events, expected_version=0)
    assert store.stream_version("copy-large") == 0
