"""A pod's own read models (local_projections) on the embedded SQLite store: they follow
the whole log into a file of their own, survive a restart exactly once, and start over
on an empty volume."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from eventstore import EventStore, NewEvent
from eventstore.projections.bank import TABLE
from eventstore.projections.runner import (
    LOCAL_READ_MODELS,
    ProjectionRunner,
    local_projection_runner,
)
from eventstore.settings import ProjectionSettings, SettingsError, parse_projection_settings
from tests.unit.test_projections import Recorder

SETTINGS = ProjectionSettings(
    workers=2, batch_size=7, retry_attempts=1,
    local_projections={"balances": "eventstore.projections.bank:AccountBalances",
                       "recorder": "tests.unit.test_projections:Recorder"})


def _runner(store: EventStore, data_dir: Path) -> ProjectionRunner:
    runner = local_projection_runner(store, SETTINGS, data_dir)
    assert runner is not None
    runner.poll_interval = 0.05
    return runner


def _bank(store: EventStore, accounts: int, deposits: int, start: int = 0) -> None:
    for a in range(accounts):
        events = [NewEvent("Deposited", {"amount": 10 + a}) for _ in range(deposits)]
        if start == 0:
            events.insert(0, NewEvent("AccountOpened", {"owner": f"owner-{a}"}))
        store.append(f"acc-{a}", events)


def _caught_up(runner: ProjectionRunner, name: str = "balances") -> None:
    """No lag, and every partition claimed (a local runner owns them all, but claims them
    one by one, so under load the lag can reach 0 before the last claim)."""
    assert runner.wait_caught_up(name, timeout=30), runner.status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (status,) = [s for s in runner.status() if s.name == name]
        if len(status.owned_here) == status.partitions:
            return
        time.sleep(0.05)
    raise AssertionError(f"not every partition claimed: {runner.status()}")


def _applied(data_dir: Path) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(data_dir / LOCAL_READ_MODELS) as conn:
        rows = conn.execute(f"SELECT account_id, balance, events_applied FROM {TABLE}")
        return {r[0]: (r[1], r[2]) for r in rows}


def test_a_local_projection_follows_the_whole_log_into_its_own_file(
        store: EventStore, tmp_path: Path) -> None:
    data = tmp_path / "pod-0"
    _bank(store, accounts=20, deposits=5)
    runner = _runner(store, data)
    runner.start()
    try:
        _caught_up(runner)
        (balances,) = [s for s in runner.status() if s.name == "balances"]
        assert balances.scope == "local" and balances.partitions == 16
        assert sorted(balances.owned_here) == list(range(16))  # nothing is shared
        assert balances.events_handled == 20 * 6 and balances.lag_events == 0
        assert runner.lookup("balances", "acc-3") == {
            "account_id": "acc-3", "owner": "owner-3", "balance": 5 * 13,
            "transactions": 5, "version": 6}
        assert runner.lookup("balances", "nobody") is None
        with pytest.raises(NotImplementedError, match="Recorder does not serve lookups"):
            runner.lookup("recorder", "x")
    finally:
        runner.stop()
    assert _applied(data) == {f"acc-{a}": (5 * (10 + a), 6) for a in range(20)}
    # The read model and its checkpoints live in the pod's file, not next to the events.
    with sqlite3.connect(tmp_path / "events.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?",
                            (TABLE,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM es_projection_checkpoints").fetchone() == (0,)


def test_a_restart_goes_on_where_it_stopped_and_applies_nothing_twice(
        store: EventStore, tmp_path: Path) -> None:
    data = tmp_path / "pod-0"
    _bank(store, accounts=10, deposits=3)
    first = _runner(store, data)
    first.start()
    _caught_up(first)
    first.stop()
    _bank(store, accounts=10, deposits=4, start=1)
    second = _runner(store, data)
    second.start()
    try:
        _caught_up(second)
        (balances,) = [s for s in second.status() if s.name == "balances"]
        assert balances.events_handled == 10 * 8
    finally:
        second.stop()
    assert _applied(data) == {f"acc-{a}": (7 * (10 + a), 8) for a in range(10)}


def test_an_empty_volume_replays_from_the_first_event(store: EventStore, tmp_path: Path) -> None:
    _bank(store, accounts=5, deposits=2)
    old = _runner(store, tmp_path / "old-volume")
    old.start()
    _caught_up(old)
    old.stop()
    fresh = _runner(store, tmp_path / "new-volume")
    fresh.start()
    try:
        _caught_up(fresh)
    finally:
        fresh.stop()
    assert _applied(tmp_path / "new-volume") == _applied(tmp_path / "old-volume")


def test_rebuild_and_dead_letters_stay_in_the_pods_file(store: EventStore, tmp_path: Path
                                                        ) -> None:
    data = tmp_path / "pod-0"
    store.append("s-1", [NewEvent("Tick", {"n": 1}),
                         NewEvent("Tick", {"fail": True}), NewEvent("Tick", {})])
    runner = _runner(store, data)
    runner.start()
    try:
        _caught_up(runner, "recorder")
        letters = runner.dead_letters("recorder")
        assert [(d["stream_id"], d["version"], d["attempts"]) for d in letters] == [
            ("s-1", 2, 2)]
        recorder = runner.projections["recorder"]
        assert isinstance(recorder, Recorder)
        first_pass = list(recorder.calls)
        runner.rebuild("recorder")  # empties the read model and starts over
        _caught_up(runner, "recorder")
        assert len(runner.dead_letters("recorder")) == 1
        assert recorder.calls == first_pass * 2  # the same handling again, from the start
    finally:
        runner.stop()
    with sqlite3.connect(tmp_path / "events.db") as conn:
        assert conn.execute("SELECT count(*) FROM es_projection_dead_letters").fetchone() == (0,)
    with sqlite3.connect(data / LOCAL_READ_MODELS) as conn:
        assert sorted(conn.execute("SELECT stream, version FROM seen")) == [("s-1", 1),
                                                                            ("s-1", 3)]


def test_no_local_projections_no_runner_and_no_file(store: EventStore, tmp_path: Path) -> None:
    assert local_projection_runner(store, ProjectionSettings(), tmp_path / "data") is None
    assert not (tmp_path / "data").exists()


def test_a_name_in_both_lists_is_refused_naming_the_key() -> None:
    with pytest.raises(SettingsError, match=r"local_projections: balances also named"):
        parse_projection_settings(
            'projections:\n  balances: "a:B"\nlocal_projections:\n  balances: "a:B"\n',
            "projections.yaml")
