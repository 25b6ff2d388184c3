"""metrics.observe_ages: weighted observations must expose exactly what one observe()
per event would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from eventstore import metrics


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    made = []
    for _ in range(2):
        registry = CollectorRegistry()
        made += [registry, Histogram("latency", "l", ["projection"], registry=registry,
                                     buckets=(0.001, 0.01, 0.1, 1, 10))]
    return made[0], made[1], made[2], made[3]


@pytest.mark.parametrize("ages", [
    [],
    [0.5],
    [0.5] * 100,
    [0.5, 0.5, 2.0, 2.0, 2.0, 0.5],           # runs that come back
    [0.0, 0.001, 0.0011, 9.99, 10.0, 10.01, 500.0],  # bucket edges and +Inf
    [-3.0, -3.0, 0.2],                        # a clock behind the commit counts as 0
])
def test_observe_ages_exposes_what_observe_per_event_would(ages: list[float]) -> None:
    weighted_registry, weighted, plain_registry, plain = _pair()
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    moments = [now - timedelta(seconds=age) for age in ages]
    metrics.observe_ages(weighted.labels("p"), now, moments)
    child = plain.labels("p")
    for moment in moments:
        child.observe(max(0.0, (now - moment).total_seconds()))
    assert _samples(weighted_registry) == _samples(plain_registry)
    assert f'latency_count{{projection="p"}} {float(len(ages))}' in _samples(weighted_registry)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition without its `_created` lines (the two histograms' creation times)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]
