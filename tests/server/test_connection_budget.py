"""The connection budget of one store pod (eventstore/store/budget.py), measured: a running
`eventstore serve` with default pool settings, shared and local projections, the
snapshotter and retention all working under append and read load, never holds more
PostgreSQL connections than `POD_CONNECTIONS`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from eventstore.store.budget import (
    DEDICATED_CONNECTIONS,
    DEFAULT_APPEND_POOL_SIZE,
    POD_CONNECTIONS,
)
from tests.server.conftest import ServerProcess, write_settings

pytestmark = pytest.mark.postgres

STORE_YAML = 'snapshot_frequency: 5\naggregates:\n  Account: "eventstore.examples.bank:Account"\n'
PROJECTIONS_YAML = (
    'projections:\n  balances: "eventstore.projections.bank:AccountBalances"\n'
    'local_projections:\n  local-balances: "eventstore.projections.bank:AccountBalances"\n')
LOAD_SECONDS = 8.0


def _sessions(conn: psycopg.Connection[tuple[object, ...]]) -> Counter[str]:
    """The pod's sessions on this database now, by application_name ("" for pooled ones)."""
    rows = conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()").fetchall()
    return Counter(str(r[0]) for r in rows)


def test_a_pod_stays_within_its_connection_budget(
        servers: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    config = write_settings(tmp_path / "config", store=STORE_YAML, projections=PROJECTIONS_YAML)
    pod = servers({"EVENTSTORE_URL": postgres_url, "EVENTSTORE_CONFIG_DIR": str(config),
                   "EVENTSTORE_RETENTION_INTERVAL_SECONDS": "1"})
    stop = threading.Event()
    failures: list[str] = []

    def writer(index: int) -> None:
        with pod.client() as http:
            n = 0
            while not stop.is_set():
                account = f"acc-{index}-{n % 4}"
                events = [{"type": "Deposited", "payload": {"amount": 1},
                           "metadata": {"aggregate_type": "Account"}}]
                if n < 4:
                    events.insert(0, {"type": "AccountOpened", "payload": {"owner": account},
                                      "metadata": {"aggregate_type": "Account"}})
                reply = http.post(f"/streams/{account}",
                                  json={"expected_version": "any", "events": events})
                if reply.status_code != 201:
                    failures.append(reply.text)
                n += 1

    def reader(index: int) -> None:
        with pod.client() as http:
            while not stop.is_set():
                for path in ("/all", f"/streams/acc-{index}-0", "/projections",
                             f"/aggregates/Account/acc-{index}-1"):
                    reply = http.get(path)
                    if reply.status_code not in (200, 404):
                        failures.append(f"GET {path}: {reply.status_code} {reply.text}")

    peak: Counter[str] = Counter()
    with psycopg.connect(postgres_url, autocommit=True) as watcher:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(24)]
        threads += [threading.Thread(target=reader, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + LOAD_SECONDS
            while time.monotonic() < deadline:
                now = _sessions(watcher)
                if sum(now.values()) > sum(peak.values()):
                    peak = now
                time.sleep(0.02)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        with pod.client() as http:
            snapshots = http.get("/projections").json()["projections"]
    assert not failures, failures[:3]
    total = sum(peak.values())
    print(f"peak: {total} connections {dict(peak)}; budget {POD_CONNECTIONS}")
    assert total <= POD_CONNECTIONS, f"{total} connections at the peak: {dict(peak)}"
    # The count saw the pod at work: the async append pool (opened whole at start),
    # the pool and every dedicated session (LISTEN, NOTIFY, the runner's locks).
    named = {"eventstore-listen", "eventstore-notify", "eventstore-runner"}
    assert named <= set(peak), dict(peak)
    assert sum(peak[n] for n in named) == DEDICATED_CONNECTIONS
    assert total >= DEFAULT_APPEND_POOL_SIZE + DEDICATED_CONNECTIONS + 1, dict(peak)
    handled = {row["name"]: row["events_handled"] for row in snapshots}
    assert handled["snapshotter"] > 0 and handled["balances"] > 0, handled
    assert handled["local-balances"] > 0, handled
