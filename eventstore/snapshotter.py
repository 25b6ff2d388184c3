"""The store pods' snapshotter: snapshots of registered aggregates, at the ConfigMap's cadence.

It is a projection over the global log, run by the shared projection runner under the
reserved name `snapshotter`, and opens no connection of its own: its loads go through the
event store's pool, a second connection next to the batch's (which is why that pool is at
least `workers` + 2, see eventstore/store/budget.py). So it inherits the runner's
guarantees: partitions (a stable hash of the stream id) are claimed across replicas, each
stream is handled by one pod at a time and in version order, and the checkpoint moves in
one transaction per batch. It only reads the log, so it never blocks an append.

For each event of a registered aggregate (its `metadata.aggregate_type`, see
`Repository.save`) at version v, a snapshot at v is due when
- v is a multiple of `snapshot_frequency`, or
- v is more than `max_events_per_aggregate` past the stream's newest snapshot.
The state is built like any load: the newest usable snapshot at or below v plus the events
after it, upcasters included. The snapshot is written before the batch's checkpoint
commits; saving the same (aggregate, version) twice is idempotent, so a batch replayed
after a crash or a partition handover rewrites, never corrupts.

A snapshot store outage (SnapshotUnavailable) fails the batch: the runner retries it
later and the checkpoint stays put, so the due snapshots are taken once the store is back.
Any other failure (an aggregate that cannot apply its own history, a state that is not
JSON) is counted and logged and the stream goes on without that snapshot: a snapshot is an
optimisation and must not stall the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from eventstore import metrics
from eventstore.aggregate import Aggregate
from eventstore.errors import EventStoreError, StoreUnavailable
from eventstore.events import AGGREGATE_TYPE_KEY, RecordedEvent
from eventstore.projections.base import Projection, ReadModelTx
from eventstore.repository import Repository
from eventstore.settings import StoreSettings
from eventstore.snapshots.base import Snapshot, SnapshotStore, SnapshotUnavailable
from eventstore.store.base import EventStore

log = logging.getLogger(__name__)

#: Streams whose newest snapshot version is remembered (least recently used are dropped).
REMEMBERED_STREAMS = 100_000


def snapshot_due(version: int, last_snapshot: int, frequency: int, max_events: int) -> bool:
    """Whether a snapshot at `version` is due (see the module docstring)."""
    return version % frequency == 0 or version - last_snapshot > max_events


class Snapshotter(Projection):
    """Takes the snapshots `event-store.yaml` asks for; see the module docstring."""

    def __init__(self, store: EventStore, snapshots: SnapshotStore,
                 aggregates: Mapping[str, type[Aggregate]], settings: StoreSettings) -> None:
        self.snapshots = snapshots
        self.frequency = settings.snapshot_frequency
        self.max_events = settings.max_events_per_aggregate
        self.repositories: dict[str, Repository[Aggregate]] = {
            name: Repository(store, cls, snapshots=snapshots,
                             snapshot_frequency=settings.snapshot_frequency,
                             max_events_per_aggregate=settings.max_events_per_aggregate)
            for name, cls in aggregates.items()}
        # (type, stream) -> newest snapshot version known; None until asked of the store.
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def handle_batch(self, events: Sequence[RecordedEvent], tx: ReadModelTx) -> None:
        for event in events:
            kind = event.metadata.get(AGGREGATE_TYPE_KEY)
            if not isinstance(kind, str):
                continue
            repository = self.repositories.get(kind)
            if repository is None:
                continue
            if self._due(kind, event):
                self._take(repository, event)

    def handle(self, event: RecordedEvent, tx: ReadModelTx) -> None:
        self.handle_batch([event], tx)

    def _due(self, kind: str, event: RecordedEvent) -> bool:
        if event.version % self.frequency == 0:
            return True
        if event.version <= self.max_events:
            return False  # nothing can be overdue yet: spare the snapshot store a query
        return snapshot_due(event.version, self._last_snapshot(kind, event.aggregate_id),
                            self.frequency, self.max_events)

    def _last_snapshot(self, kind: str, stream_id: str) -> int:
        key = (kind, stream_id)
        known = self._last.get(key)
        if known is None:
            latest = self.snapshots.latest(kind, stream_id)  # SnapshotUnavailable: retry later
            known = latest.version if latest is not None else 0
            self._remember(key, known)
        else:
            self._last.move_to_end(key)
        return known

    def _remember(self, key: tuple[str, str], version: int) -> None:
        self._last[key] = max(version, self._last.get(key, 0))
        self._last.move_to_end(key)
        while len(self._last) > REMEMBERED_STREAMS:
            self._last.popitem(last=False)

    def _take(self, repository: Repository[Aggregate], event: RecordedEvent) -> None:
        kind = repository.aggregate_cls.aggregate_type
        started = time.perf_counter()
        try:
            aggregate, _ = repository.load_with_info(event.aggregate_id, at_version=event.version,
                                                     strict_snapshots=True)
            snapshot = Snapshot(aggregate_type=kind, aggregate_id=event.aggregate_id,
                                version=aggregate.version, state=aggregate.snapshot_state(),
                                state_schema_version=repository.aggregate_cls.state_schema_version,
                                taken_at=datetime.now(UTC))
            self.snapshots.save(snapshot)
        except SnapshotUnavailable:
            metrics.SNAPSHOTTER_FAILURES.labels(kind, "unavailable").inc()
            raise
        except StoreUnavailable:
            raise  # the event database: the runner retries the batch
        except (EventStoreError, NotImplementedError, TypeError, ValueError, KeyError) as exc:
            # Not transient: retrying would fail the same way and hold the whole partition.
            metrics.SNAPSHOTTER_FAILURES.labels(kind, "error").inc()
            log.warning("snapshot skipped", extra={
                "aggregate_type": kind, "aggregate_id": event.aggregate_id,
                "version": event.version, "error": f"{type(exc).__name__}: {exc}"})
            return
        metrics.SNAPSHOT_DURATION.observe(time.perf_counter() - started)
        metrics.SNAPSHOTTER_SNAPSHOTS.labels(kind).inc()
        self._remember((kind, event.aggregate_id), event.version)
