"""Retention: move old events that a snapshot already covers from the log to the archive.

An event is archived when (1) it was recorded more than `retention_days` ago and (2) the
newest snapshot of its aggregate is at its version or later, so loading the aggregate
never needs it: the load starts from that snapshot. Each stream moves in one transaction
(`EventStore.archive_stream`); nothing is deleted. Archived events leave `read_stream`
and `read_all` and stay readable with `read_archived_stream` (HTTP:
`GET /streams/{id}/archive`); the repository reaches into the archive when a snapshot
becomes unusable, and projection rebuilds read the archive too.

`max_events_per_aggregate` is the other half of the bargain: it bounds how many events a
load replays after the newest snapshot (the repository forces a snapshot past it), so a
covered prefix keeps growing and retention keeps finding work.

Which snapshots cover a stream: those of the aggregates registered in `event-store.yaml`
(`aggregates:`), which the store pods' snapshotter takes, plus any snapshot kinds named in
EVENTSTORE_RETENTION_AGGREGATE_TYPES (for snapshots that clients write themselves).

One replica at a time: on PostgreSQL the job holds an advisory lock for its run. The
queries are the store's (`retention_candidates`, `retention_lock`, `archive_stream`): this
module speaks to no driver and opens no connection of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from eventstore.errors import EventStoreError
from eventstore.store.base import EventStore

if TYPE_CHECKING:
    from eventstore.snapshots.base import SnapshotStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    """What one run did."""

    ran: bool
    streams_examined: int = 0
    streams_archived: int = 0
    events_archived: int = 0
    streams_without_snapshot: int = 0


#: Candidate streams read per query. A run reads page after page to the last stream: the
#: streams it cannot archive (no snapshot, or none that covers an old event) stay
#: candidates, and a run that read one page only would examine the same ones every time.
PAGE_SIZE = 10_000


def candidate_streams(store: EventStore, older_than: datetime, page_size: int = PAGE_SIZE
                      ) -> Iterator[str]:
    """Every stream with events in the hot table recorded before `older_than`, read a
    page at a time in stream id order."""
    after = ""
    while True:
        page = store.retention_candidates(older_than, page_size, after)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1]


def run_retention(
    store: EventStore,
    snapshots: SnapshotStore,
    retention_days: int,
    aggregate_types: Sequence[str],
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
) -> RetentionReport:
    """One pass over every candidate stream; see the module docstring. `aggregate_types`
    are the snapshot kinds whose snapshots count as covering a stream (the stream id is
    the aggregate id)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    with store.retention_lock() as mine:
        if not mine:
            log.info("retention skipped: another replica is running it")
            return RetentionReport(ran=False)
        examined = archived_streams = archived_events = uncovered = 0
        for stream_id in candidate_streams(store, cutoff, page_size):
            examined += 1
            covered = _covered_version(snapshots, aggregate_types, stream_id)
            if covered is None:
                uncovered += 1
                continue
            moved = store.archive_stream(stream_id, covered, cutoff)
            if moved:
                archived_streams += 1
                archived_events += moved
        report = RetentionReport(True, examined, archived_streams, archived_events, uncovered)
    log.info("retention run finished", extra={
        "cutoff": cutoff.isoformat(), "streams_examined": report.streams_examined,
        "streams_archived": report.streams_archived,
        "events_archived": report.events_archived,
        "streams_without_snapshot": report.streams_without_snapshot})
    return report


def _covered_version(snapshots: SnapshotStore, aggregate_types: Sequence[str],
                     stream_id: str) -> int | None:
    best: int | None = None
    for kind in aggregate_types:
        snapshot = snapshots.latest(kind, stream_id)
        if snapshot is not None and (best is None or snapshot.version > best):
            best = snapshot.version
    return best


class RetentionJob:
    """Runs `run_retention` every `interval` seconds in a background thread."""

    def __init__(self, store: EventStore, snapshots: SnapshotStore, retention_days: int,
                 aggregate_types: Sequence[str], interval: float = 3600.0) -> None:
        self.store = store
        self.snapshots = snapshots
        self.retention_days = retention_days
        self.aggregate_types = list(aggregate_types)
        self.interval = interval
        self.last_report: RetentionReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.aggregate_types:
            log.info("retention is off: no aggregate is registered in event-store.yaml "
                     "(aggregates:) and EVENTSTORE_RETENTION_AGGREGATE_TYPES is empty, so no "
                     "snapshot can cover an event")
            return
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.last_report = run_retention(self.store, self.snapshots,
                                                 self.retention_days, self.aggregate_types)
            except (EventStoreError, OSError) as exc:
                log.warning("retention run failed; next try in %ss: %s", self.interval, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
