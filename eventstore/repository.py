"""Loading and saving aggregates: optimistic concurrency, snapshots and temporal loads."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from eventstore import metrics
from eventstore.aggregate import Aggregate
from eventstore.errors import AggregateNotFound as AggregateNotFound  # re-exported
from eventstore.errors import ConcurrencyError, ReplayTooLong, ValidationError
from eventstore.events import (
    AGGREGATE_TYPE_KEY,
    AppendResult,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from eventstore.upcasting import UpcasterRegistry

if TYPE_CHECKING:
    from eventstore.snapshots.base import Snapshot, SnapshotStore

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True, slots=True)
class LoadInfo:
    """How a load was done: from which snapshot, and how many events it replayed."""

    snapshot_version: int | None
    events_replayed: int
    snapshot_ignored: str | None = None


#: Archived events read at a time when a load looks for the version at a past time.
ARCHIVE_PAGE = 1000


class AggregateStore(Protocol):
    """What a Repository needs of a store: a library `EventStore`, or the HTTP
    `EventStoreClient` (so `Repository(EventStoreClient(url, token), Account)` works)."""

    def append(self, stream_id: str, events: Sequence[NewEvent],
               expected_version: Expected = ...) -> AppendResult: ...

    def read_stream(self, stream_id: str, from_version: int = ..., to_version: int | None = ...,
                    as_of: datetime | None = ..., backwards: bool = ...,
                    limit: int | None = ...) -> list[RecordedEvent]: ...

    def read_archived_stream(self, stream_id: str, from_version: int = ..., *,
                             to_version: int | None = ..., limit: int | None = ...
                             ) -> list[RecordedEvent]: ...

    def stream_version(self, stream_id: str) -> int: ...


class Repository(Generic[A]):
    """Loads aggregates from their events (starting at the newest usable snapshot) and saves
    their new events with the loaded version as the expected version.

    Every event saved carries `metadata.aggregate_type` (the class's `aggregate_type`): that
    is how the store pods know which streams belong to a registered aggregate.

    Snapshots are taken after a successful save whenever the aggregate passes a multiple of
    `snapshot_frequency`, or when more than `max_events_per_aggregate` events would have to
    be replayed after the newest snapshot. A failed snapshot never fails the save. Over
    HTTP (`Repository(EventStoreClient(...), Account)`) loads start from the server's
    snapshots and the repository takes none itself: the store pods' snapshotter does, at
    the cadence of their ConfigMap.
    """

    def __init__(
        self,
        store: AggregateStore,
        aggregate_cls: type[A],
        snapshots: SnapshotStore | None = None,
        snapshot_frequency: int = 100,
        max_events_per_aggregate: int | None = None,
        upcasters: UpcasterRegistry | None = None,
    ) -> None:
        if isinstance(snapshot_frequency, bool) or snapshot_frequency < 1:
            raise ValidationError(f"snapshot_frequency must be >= 1, not {snapshot_frequency}")
        if snapshots is None:
            # The HTTP client serves the server's snapshots (eventstore.server.client).
            remote = getattr(store, "snapshot_store", None)
            snapshots = remote() if callable(remote) else None
        self.store = store
        self.aggregate_cls = aggregate_cls
        self.snapshots = snapshots
        self.snapshot_frequency = snapshot_frequency
        self.max_events_per_aggregate = max_events_per_aggregate
        self.upcasters = aggregate_cls.upcasters if upcasters is None else upcasters
        #: False when the snapshot store is the server's: its pods take the snapshots.
        self.takes_snapshots = snapshots is not None and not getattr(
            snapshots, "taken_by_server", False)

    # -- loading -----------------------------------------------------------------------

    def load(self, aggregate_id: str, at_version: int | None = None,
             as_of: datetime | None = None) -> A:
        return self.load_with_info(aggregate_id, at_version=at_version, as_of=as_of)[0]

    def load_with_info(self, aggregate_id: str, at_version: int | None = None,
                       as_of: datetime | None = None, *, strict_snapshots: bool = False,
                       max_replay: int | None = None) -> tuple[A, LoadInfo]:
        """The aggregate and how it was loaded. With `strict_snapshots` an unreachable
        snapshot store raises SnapshotUnavailable instead of replaying from the first event
        (the snapshotter would rather wait than replay whole streams during an outage).
        With `max_replay`, a load that would apply more events than that after its snapshot
        raises ReplayTooLong before reading them all (a server's bound on memory)."""
        started = time.perf_counter()
        if at_version is not None and (isinstance(at_version, bool) or at_version < 1):
            raise ValidationError(f"at_version must be >= 1, not {at_version!r}")
        target = at_version
        if as_of is not None:
            # Resolve the time to a version with the store's own clock, so that snapshot
            # choice never depends on clock skew between this process and the database.
            last = self.store.read_stream(aggregate_id, as_of=as_of, backwards=True, limit=1)
            # None: perhaps retention archived the events of that time.
            version_then = last[0].version if last else self._archived_version_at(
                aggregate_id, as_of)
            if version_then is None:
                raise AggregateNotFound(
                    f"{self.aggregate_cls.__name__} {aggregate_id!r} has no events at or "
                    f"before {as_of.isoformat()}")
            target = version_then if target is None else min(target, version_then)

        aggregate = self.aggregate_cls(aggregate_id)
        snapshot, ignored = self._usable_snapshot(aggregate_id, target, strict_snapshots)
        if snapshot is not None:
            aggregate.restore_state(snapshot.state)
            aggregate.version = snapshot.version
            aggregate._snapshot_version = snapshot.version  # type: ignore[attr-defined]
        events = self._history(aggregate_id, aggregate.version + 1, target, max_replay)
        aggregate.load_from_history(self.upcasters.upcast_all(events))
        if aggregate.version == 0 or (target is not None and aggregate.version < target
                                      and at_version is not None and as_of is None):
            raise AggregateNotFound(
                f"{self.aggregate_cls.__name__} {aggregate_id!r} has no events"
                + (f" up to version {target}" if target is not None else "")
                + (f" (it is at version {aggregate.version})" if aggregate.version else ""))
        metrics.REPLAY_DURATION.observe(time.perf_counter() - started)
        metrics.EVENTS_REPLAYED.observe(len(events))
        return aggregate, LoadInfo(snapshot.version if snapshot else None, len(events), ignored)

    def _history(self, aggregate_id: str, from_version: int, to_version: int | None,
                 max_replay: int | None = None) -> list[RecordedEvent]:
        """Events from_version..to_version, reaching into the archive for what retention
        moved there: the start of the stream (a load without a usable snapshot), or, over
        HTTP, versions it moved between two pages of the read. At most `max_replay`
        events are read from either table (ReplayTooLong past it)."""
        limit = None if max_replay is None else max_replay + 1
        events = self.store.read_stream(aggregate_id, from_version=from_version,
                                        to_version=to_version, limit=limit)
        self._check_replay(aggregate_id, from_version, len(events), max_replay)
        if _unbroken(events, from_version):
            return events
        # Archived events are a prefix of the stream: those below the first live one read,
        # or in a hole between two pages. With no live event, the archive alone says
        # whether the stream reaches from_version.
        archived = self.store.read_archived_stream(
            aggregate_id, from_version, to_version=events[-1].version if events else to_version,
            limit=limit)
        merged = {e.version: e for e in archived} | {e.version: e for e in events}
        self._check_replay(aggregate_id, from_version, len(merged), max_replay)
        return [merged[version] for version in sorted(merged)]

    def _archived_version_at(self, aggregate_id: str, as_of: datetime) -> int | None:
        """The newest version among the archived events recorded at or before `as_of` (as
        the live read's as_of picks it), reading ARCHIVE_PAGE events at a time: a long
        stream's archive is never held whole."""
        found: int | None = None
        from_version = 1
        while True:
            page = self.store.read_archived_stream(aggregate_id, from_version,
                                                   limit=ARCHIVE_PAGE)
            found = max([e.version for e in page if e.timestamp <= as_of], default=found)
            if len(page) < ARCHIVE_PAGE:
                return found
            from_version = page[-1].version + 1

    def _check_replay(self, aggregate_id: str, from_version: int, count: int,
                      max_replay: int | None) -> None:
        if max_replay is not None and count > max_replay:
            raise ReplayTooLong(
                f"{self.aggregate_cls.__name__} {aggregate_id!r}: loading it would replay more "
                f"than {max_replay} events after version {from_version - 1}; no snapshot is "
                "close enough yet (the snapshotter may still be catching up)")

    def _usable_snapshot(self, aggregate_id: str, target: int | None,
                         strict: bool = False) -> tuple[Snapshot | None, str | None]:
        if self.snapshots is None:
            return None, None
        from eventstore.snapshots.base import SnapshotUnavailable

        kind = self.aggregate_cls.aggregate_type
        try:
            snapshot = self.snapshots.latest(kind, aggregate_id, at_or_below_version=target)
        except SnapshotUnavailable as exc:
            if strict:
                raise
            log.warning("snapshot store unavailable, replaying %s %s from events: %s",
                        kind, aggregate_id, exc)
            metrics.SNAPSHOTS_IGNORED.labels("unavailable").inc()
            return None, "unavailable"
        if snapshot is None:
            return None, None
        wanted = self.aggregate_cls.state_schema_version
        if snapshot.state_schema_version != wanted:
            converted = None
            if snapshot.state_schema_version < wanted:
                converted = self.aggregate_cls.upcast_state(dict(snapshot.state),
                                                            snapshot.state_schema_version)
            if converted is None:
                log.warning(
                    "ignoring snapshot of %s %s at version %d: state schema v%d, the class "
                    "wants v%d; replaying from events", kind, aggregate_id, snapshot.version,
                    snapshot.state_schema_version, wanted)
                metrics.SNAPSHOTS_IGNORED.labels("schema").inc()
                return None, "schema"
            snapshot = dataclasses.replace(snapshot, state=converted,
                                           state_schema_version=wanted)
        return snapshot, None

    # -- saving ------------------------------------------------------------------------

    def save(self, aggregate: A) -> AppendResult | None:
        """Append the aggregate's new events; ConcurrencyError if someone saved first."""
        changes = self._tagged(aggregate.get_uncommitted_changes())
        if not changes:
            return None
        loaded_version = aggregate.version - len(changes)
        expected = loaded_version if loaded_version > 0 else ExpectedVersion.NO_STREAM
        started = time.perf_counter()
        try:
            result = self.store.append(aggregate.id, changes, expected_version=expected)
        except ConcurrencyError:
            metrics.APPEND_CONFLICTS.inc()
            raise
        metrics.APPEND_LATENCY.observe(time.perf_counter() - started)
        metrics.EVENTS_APPENDED.inc(len(changes))
        aggregate.mark_changes_committed()
        self._maybe_snapshot(aggregate, loaded_version)
        return result

    def _tagged(self, events: list[NewEvent]) -> list[NewEvent]:
        """The events with `metadata.aggregate_type` set (an explicit value is kept)."""
        kind = self.aggregate_cls.aggregate_type
        return [e if AGGREGATE_TYPE_KEY in e.metadata else
                dataclasses.replace(e, metadata={**e.metadata, AGGREGATE_TYPE_KEY: kind})
                for e in events]

    def _maybe_snapshot(self, aggregate: A, loaded_version: int) -> None:
        if self.snapshots is None or not self.takes_snapshots:
            return
        new_version = aggregate.version
        crossed = loaded_version // self.snapshot_frequency < new_version // self.snapshot_frequency
        last_snapshot = getattr(aggregate, "_snapshot_version", 0) or 0
        overdue = (self.max_events_per_aggregate is not None
                   and new_version - last_snapshot > self.max_events_per_aggregate)
        if crossed or overdue:
            self.take_snapshot(aggregate)

    def take_snapshot(self, aggregate: A) -> bool:
        """Store the aggregate's current state; logs and counts a failure instead of raising."""
        from eventstore.snapshots.base import Snapshot

        assert self.snapshots is not None
        started = time.perf_counter()
        try:
            self.snapshots.save(Snapshot(
                aggregate_type=self.aggregate_cls.aggregate_type, aggregate_id=aggregate.id,
                version=aggregate.version, state=aggregate.snapshot_state(),
                state_schema_version=self.aggregate_cls.state_schema_version,
                taken_at=datetime.now(UTC)))
        except Exception as exc:
            metrics.SNAPSHOT_FAILURES.inc()
            log.warning("snapshot of %s %s at version %d failed (the save succeeded): %s",
                        self.aggregate_cls.aggregate_type, aggregate.id, aggregate.version, exc)
            return False
        aggregate._snapshot_version = aggregate.version  # type: ignore[attr-defined]
        metrics.SNAPSHOT_DURATION.observe(time.perf_counter() - started)
        return True

    # -- commands ----------------------------------------------------------------------

    def execute(self, aggregate_id: str, command: Callable[[A], object], *,
                create: bool = False, attempts: int = 5) -> A:
        """Load, run `command`, save; on ConcurrencyError reload and run it again.

        The command must be a pure function of the aggregate's state (it may run more than
        once). With create=True a missing aggregate starts new instead of raising.
        """
        for attempt in range(1, attempts + 1):
            try:
                aggregate = self.load(aggregate_id)
            except AggregateNotFound:
                if not create:
                    raise
                aggregate = self.aggregate_cls(aggregate_id)
            command(aggregate)
            try:
                self.save(aggregate)
                return aggregate
            except ConcurrencyError:
                if attempt == attempts:
                    raise
                time.sleep(min(0.001 * 2 ** attempt, 0.05))
        raise AssertionError("unreachable")


def _unbroken(events: list[RecordedEvent], from_version: int) -> bool:
    """True when `events` are versions from_version, from_version + 1, ... with no hole."""
    return bool(events) and events[0].version == from_version and (
        events[-1].version - from_version == len(events) - 1)
