"""Loads of streams that retention moved (part of) to the archive: with no usable snapshot,
at a version or a time, bounded by max_replay, and while retention moves events between
two pages of the read (as it can under the HTTP client)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from eventstore import EventStore, Repository
from eventstore.errors import ReplayTooLong
from eventstore.events import RecordedEvent
from eventstore.examples.bank import Account

FUTURE = datetime.now(UTC) + timedelta(days=1)


def _account(store: EventStore, deposits: int, account_id: str = "acc") -> None:
    account = Account(account_id)
    account.open("ada")
    for amount in range(1, deposits + 1):
        account.deposit(amount)
    Repository(store, Account).save(account)


def test_a_wholly_archived_stream_loads_from_the_archive(store: EventStore) -> None:
    _account(store, 5)
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    Repository(store, Account).execute("acc", lambda a: [a.deposit(n) for n in range(6, 13)])
    assert store.archive_stream("acc", 13, FUTURE) == 13
    assert store.read_stream("acc") == [] and store.stream_version("acc") == 13
    repo = Repository(store, Account)  # no snapshot store: every load replays
    loaded, info = repo.load_with_info("acc")
    assert (loaded.balance, loaded.version, info.events_replayed) == (78, 13, 13)
    assert repo.load("acc", at_version=4).balance == 6
    assert repo.load("acc", as_of=middle).version == 6


def test_max_replay_counts_the_archived_events_too(store: EventStore) -> None:
    _account(store, 12)
    store.archive_stream("acc", 8, FUTURE)
    repo = Repository(store, Account)
    with pytest.raises(ReplayTooLong):
        repo.load_with_info("acc", max_replay=10)
    assert repo.load_with_info("acc", max_replay=13)[0].balance == 78


class _RetentionBetweenPages:
    """The store as the HTTP client sees it: read_stream in pages of 4, and retention
    archiving versions 1..8 just after the first page was read."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.moved = False

    def read_stream(self, stream_id: str, from_version: int = 1, to_version: int | None = None,
                    **kwargs: object) -> list[RecordedEvent]:
        events: list[RecordedEvent] = []
        while True:
            page = self.store.read_stream(stream_id, from_version=from_version,
                                          to_version=to_version, limit=4)
            events += page
            if not self.moved:
                self.moved = self.store.archive_stream(stream_id, 8, FUTURE) > 0
            if len(page) < 4:
                return events
            from_version = page[-1].version + 1

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def test_events_archived_between_two_pages_are_read_from_the_archive(store: EventStore) -> None:
    _account(store, 12)
    racing = _RetentionBetweenPages(store)
    loaded = Repository(racing, Account).load("acc")  # type: ignore[arg-type]
    assert racing.moved
    assert (loaded.balance, loaded.version) == (78, 13)


def test_archived_reads_take_a_range(store: EventStore) -> None:
    _account(store, 12)
    store.archive_stream("acc", 10, FUTURE)
    assert [e.version for e in store.read_archived_stream("acc")] == list(range(1, 11))
    assert [e.version for e in store.read_archived_stream("acc", 3, to_version=6)] == [3, 4, 5, 6]
    assert [e.version for e in store.read_archived_stream("acc", 8, limit=2)] == [8, 9]
    assert store.read_archived_stream("acc", 11) == []


class _ArchiveReads:
    """The store, recording the `limit` of every archive read that has no `to_version`
    (those look for a time; the others read the events a load replays)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.limits: list[int | None] = []

    def read_archived_stream(self, stream_id: str, from_version: int = 1, *,
                             to_version: int | None = None, limit: int | None = None
                             ) -> list[RecordedEvent]:
        if to_version is None:
            self.limits.append(limit)
        return self.store.read_archived_stream(stream_id, from_version, to_version=to_version,
                                               limit=limit)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def test_a_time_in_the_archive_is_found_a_page_at_a_time(
        store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(store, Account)
    _account(store, 2)
    times = []
    for n in range(3, 9):  # one append each: versions 4..9, each with its own time
        time.sleep(0.005)
        repo.execute("acc", lambda a, n=n: a.deposit(n))  # type: ignore[misc]
        times.append(datetime.now(UTC))
    store.archive_stream("acc", 9, FUTURE)
    monkeypatch.setattr("eventstore.repository.ARCHIVE_PAGE", 2)
    reads = _ArchiveReads(store)
    paged = Repository(reads, Account)  # type: ignore[arg-type]
    for n, moment in zip(range(3, 9), times, strict=True):
        loaded = paged.load("acc", as_of=moment)
        assert (loaded.version, loaded.balance) == (n + 1, sum(range(1, n + 1)))
    assert reads.limits and all(limit is not None and limit <= 2 for limit in reads.limits)
