"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstore import EventStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    """A migrated embedded-default store in `tmp_path`/events.db."""
    store = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
    store.migrate()
    yield store
    store.close()
