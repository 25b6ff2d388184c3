"""The backend contract, run against PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstore import EventStore
from eventstore.store.postgres import PostgresEventStore
from eventstore.store.sqlite import SQLiteEventStore
from eventstore.testing.contract import EventStoreContract, UnmigratedContract


@pytest.mark.postgres
class TestPostgresContract(EventStoreContract, UnmigratedContract):
    @pytest.fixture
    def store(self, postgres_url: str) -> Iterator[EventStore]:
        store = EventStore.connect(postgres_url)
        assert isinstance(store, PostgresEventStore)
        store.migrate()
        yield store
        store.close()

    @pytest.fixture
    def unmigrated(self, postgres_url: str) -> Iterator[EventStore]:
        store = EventStore.connect(postgres_url)
        yield store
        store.close()


class TestSQLiteFileContract(EventStoreContract, UnmigratedContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[EventStore]:
        store = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
        assert isinstance(store, SQLiteEventStore)
        store.migrate()
        yield store
        store.close()

    @pytest.fixture
    def unmigrated(self, tmp_path: Path) -> Iterator[EventStore]:
        store = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
        yield store
        store.close()


class TestSQLiteMemoryContract(EventStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        store = EventStore.connect("sqlite://:memory:")
        store.migrate()
        yield store
        store.close()
