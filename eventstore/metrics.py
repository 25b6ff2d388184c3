"""Prometheus metrics: the seed's four (event processing latency, store size growth,
snapshot creation time, replay performance) and their companions.

Metrics live in the default registry so that one `/metrics` endpoint shows library and
server figures together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from itertools import groupby

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

APPEND_LATENCY = Histogram(
    "eventstore_append_duration_seconds", "Time to append one batch of events.",
    buckets=_LATENCY_BUCKETS)
EVENTS_APPENDED = Counter("eventstore_events_appended_total", "Events appended.")
APPEND_BATCH_SIZE = Histogram(
    "eventstore_append_batch_size",
    "Appends written by one group-commit statement (one transaction), by executor: "
    "async (the server's event loop) or threads (threads sharing one store).",
    ["executor"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000))
APPEND_CONFLICTS = Counter("eventstore_append_conflicts_total",
                           "Appends refused because the expected version did not hold.")
EVENT_PROCESSING_LATENCY = Histogram(
    "eventstore_event_processing_seconds",
    "Time from an event's commit to its handling by a projection.", ["projection"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
PROJECTION_LAG_EVENTS = Gauge("eventstore_projection_lag_events",
                              "Events in the log not yet handled by a projection.", ["projection"])
PROJECTION_LAG_SECONDS = Gauge("eventstore_projection_lag_seconds",
                               "Age of the oldest unhandled event per projection.", ["projection"])
PROJECTION_EVENTS = Counter("eventstore_projection_events_total",
                            "Events handled by projections.", ["projection"])
PROJECTION_DEAD_LETTERS = Counter("eventstore_projection_dead_letters_total",
                                  "Events parked after their retries ran out.", ["projection"])
STORE_EVENTS = Gauge("eventstore_store_events", "Events in the hot table.")
STORE_ARCHIVED_EVENTS = Gauge("eventstore_store_archived_events", "Events in the archive table.")
STORE_STREAMS = Gauge("eventstore_store_streams", "Streams (aggregates) in the store.")
STORE_BYTES = Gauge("eventstore_store_bytes", "Bytes used by the event tables and indexes.")
SNAPSHOT_DURATION = Histogram(
    "eventstore_snapshot_creation_seconds", "Time to serialise and store one snapshot.",
    buckets=_LATENCY_BUCKETS)
SNAPSHOT_FAILURES = Counter("eventstore_snapshot_failures_total",
                            "Snapshot writes that failed (the save itself succeeded).")
SNAPSHOTTER_SNAPSHOTS = Counter(
    "eventstore_snapshotter_snapshots_total",
    "Snapshots the store pods' snapshotter wrote (snapshot_frequency, max_events_per_aggregate).",
    ["aggregate_type"])
SNAPSHOTTER_FAILURES = Counter(
    "eventstore_snapshotter_failures_total",
    "Snapshots the snapshotter could not write: reason unavailable (retried once the "
    "snapshot store is back) or error (skipped; see the log).", ["aggregate_type", "reason"])
SNAPSHOTS_IGNORED = Counter("eventstore_snapshots_ignored_total",
                            "Snapshots not used on load (store down, corrupt, old schema).",
                            ["reason"])
REPLAY_DURATION = Histogram(
    "eventstore_aggregate_replay_seconds", "Time to load one aggregate (snapshot + events).",
    buckets=_LATENCY_BUCKETS)
EVENTS_REPLAYED = Histogram(
    "eventstore_events_replayed_per_load", "Events applied per aggregate load.",
    buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 5000, 10000, 100000))


def observe_ages(histogram: Histogram, now: datetime, moments: Iterable[datetime]) -> None:
    """One observation of `now - moment` (seconds, at least 0) per moment, with a run of
    equal moments observed at the cost of one. A projection batch observes each event's
    latency, and the events of one append share their commit time, so most of a batch is
    one or two runs: per-event observe() calls were 7% of a catch-up's Python time
    (cProfile, one worker)."""
    for moment, run in groupby(moments):
        _observe_many(histogram, max(0.0, (now - moment).total_seconds()), sum(1 for _ in run))


def _observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """`count` observations of `amount` on a histogram child: what Histogram.observe
    does once, done with weight `count`. prometheus_client has no weighted observe; the
    attributes below are the ones observe() itself uses in the pinned version, and
    tests/unit/test_metrics.py checks the exposition against `count` observe() calls."""
    histogram._sum.inc(amount * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if amount <= bound:
            histogram._buckets[i].inc(count)
            break
