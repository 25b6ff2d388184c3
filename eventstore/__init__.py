"""Event sourcing for Python: an event store with optimistic concurrency, aggregates,
snapshots, projections and schema evolution, on PostgreSQL or embedded SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventstore.aggregate import Aggregate
from eventstore.errors import (
    CheckpointConflict,
    ConcurrencyError,
    EventStoreError,
    SchemaError,
    StoreUnavailable,
    UpcastError,
    ValidationError,
)
from eventstore.events import (
    AppendResult,
    Checkpoint,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from eventstore.repository import AggregateNotFound, LoadInfo, Repository
from eventstore.store.base import EventStore, StoreStats, Subscription
from eventstore.upcasting import UpcasterRegistry

if TYPE_CHECKING:
    from eventstore.snapshots.base import Snapshot, SnapshotStore

__all__ = [
    "Aggregate", "AggregateNotFound", "AppendResult", "Checkpoint", "CheckpointConflict",
    "ConcurrencyError", "EventStore", "EventStoreError", "ExpectedVersion", "LoadInfo",
    "NewEvent", "RecordedEvent", "Repository", "SchemaError", "Snapshot", "SnapshotStore",
    "StoreStats", "StoreUnavailable", "StreamAppend", "Subscription", "UpcastError",
    "UpcasterRegistry", "ValidationError",
]


def __getattr__(name: str) -> Any:
    # Snapshot stores import pymongo; load them only when asked for.
    if name in ("SnapshotStore", "Snapshot"):
        from eventstore.snapshots import base

        return getattr(base, name)
    raise AttributeError(f"module 'eventstore' has no attribute {name!r}")
