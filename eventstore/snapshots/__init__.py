"""Snapshot stores: the newest aggregate states, so loads replay only the events after them."""

from __future__ import annotations

from eventstore.snapshots.base import CorruptSnapshot, Snapshot, SnapshotStore, SnapshotUnavailable

__all__ = ["CorruptSnapshot", "Snapshot", "SnapshotStore", "SnapshotUnavailable"]
