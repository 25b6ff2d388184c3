"""Retention reads its candidate streams page after page, to the last one, on PostgreSQL
and SQLite: streams it cannot archive never hide the ones after them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventstore import EventStore, NewEvent
from eventstore.retention import candidate_streams, run_retention
from eventstore.snapshots.base import Snapshot, SnapshotStore


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    url = (str(request.getfixturevalue("postgres_url")) if request.param == "postgres"
           else f"sqlite:///{tmp_path}/events.db")
    store = EventStore.connect(url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def snapshots(tmp_path: Path) -> Iterator[SnapshotStore]:
    store = SnapshotStore.connect(f"sqlite:///{tmp_path}/snapshots.db")
    yield store
    store.close()


def _events(n: int) -> list[NewEvent]:
    return [NewEvent("Deposited", {"amount": i}) for i in range(n)]


def test_candidates_come_in_pages_in_stream_order(store: EventStore) -> None:
    streams = [f"acct-{n}" for n in (7, 3, 11, 1, 5, 9, 2)]
    for stream in streams:
        store.append(stream, _events(2))
    later = datetime.now(UTC) + timedelta(days=1)
    assert store.retention_candidates(datetime.now(UTC) - timedelta(days=1), 10) == []
    pages, after = [], ""
    while page := store.retention_candidates(later, 3, after):
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    every = [s for p in pages for s in p]
    assert sorted(every) == sorted(streams) and len(set(every)) == len(every)
    assert every == store.retention_candidates(later, 100)  # one order, page or not
    assert list(candidate_streams(store, later, page_size=2)) == every


def test_a_run_reaches_the_streams_after_those_it_cannot_archive(
        store: EventStore, snapshots: SnapshotStore) -> None:
    """Five old streams without a snapshot sort first; the covered one after them is
    archived by a run that reads two candidates a page."""
    for n in range(5):
        store.append(f"aaa-{n}", _events(3))
    store.append("zzz-1", _events(6))
    snapshots.save(Snapshot(aggregate_type="Account", aggregate_id="zzz-1", version=4,
                            state={"balance": 6}, state_schema_version=1,
                            taken_at=datetime.now(UTC)))
    later = datetime.now(UTC) + timedelta(days=2)
    assert store.retention_candidates(later, 2) == ["aaa-0", "aaa-1"]  # one page is not all
    report = run_retention(store, snapshots, 1, ["Account"], now=later, page_size=2)
    assert report.ran
    assert (report.streams_examined, report.streams_without_snapshot) == (6, 5)
    assert (report.streams_archived, report.events_archived) == (1, 4)
    assert [e.version for e in store.read_stream("zzz-1")] == [5, 6]
    assert [e.version for e in store.read_archived_stream("zzz-1")] == [1, 2, 3, 4]
    assert all(len(store.read_stream(f"aaa-{n}")) == 3 for n in range(5))
