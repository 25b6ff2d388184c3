"""Aggregates registered in event-store.yaml, and the snapshotter the store pods run over them
(here on the embedded default: SQLite events and SQLite snapshots, the real runner)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventstore import EventStore, NewEvent, Repository, metrics
from eventstore.cli import main
from eventstore.errors import ReplayTooLong
from eventstore.events import AGGREGATE_TYPE_KEY, RecordedEvent
from eventstore.examples.bank import Account
from eventstore.projections.base import Projection
from eventstore.projections.runner import ProjectionRunner
from eventstore.registry import load_aggregate, load_aggregates
from eventstore.settings import (
    SNAPSHOTTER,
    ProjectionSettings,
    SettingsError,
    StoreSettings,
    parse_projection_settings,
    parse_store_settings,
)
from eventstore.snapshots.base import Snapshot, SnapshotStore, SnapshotUnavailable
from eventstore.snapshotter import Snapshotter, snapshot_due
from eventstore.upcasting import UpcasterRegistry

ACCOUNT = "eventstore.examples.bank:Account"


class Renamed(Account):
    aggregate_type = "Customer"


NOT_AN_AGGREGATE = object()


# -- registration ---------------------------------------------------------------------------

def test_aggregates_parse_and_load() -> None:
    settings = parse_store_settings(f'aggregates: {{Account: "{ACCOUNT}"}}')
    assert settings.aggregates == {"Account": ACCOUNT}
    assert load_aggregates(settings.aggregates) == {"Account": Account}
    assert StoreSettings().aggregates == {}


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('aggregates: {"1Account": "a.b:C"}', "aggregates.1Account", "not a valid type name"),
    ('aggregates: {"Acc ount": "a.b:C"}', "aggregates.Acc ount", "not a valid type name"),
    ("aggregates: {Account: nocolon}", "aggregates.Account", "must be 'module:object'"),
    ("aggregates: {Account: 5}", "aggregates.Account", "valid string"),
    ("aggregates: [Account]", "aggregates", "valid dictionary"),
])
def test_bad_registrations_are_refused_when_parsed(text: str, key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_store_settings(text)
    assert caught.value.key == key and reason in caught.value.reason
    assert caught.value.file == "event-store.yaml"


@pytest.mark.parametrize(("name", "target", "reason"), [
    ("Account", "no_such_module_xyz:Account", "cannot import 'no_such_module_xyz'"),
    ("Account", "eventstore.examples.bank:Nope", "has no 'Nope'"),
    ("Account", f"{__name__}:NOT_AN_AGGREGATE", "not a subclass of eventstore.Aggregate"),
    ("Account", "eventstore.examples.bank:InsufficientFunds", "not a subclass"),
    ("Account", f"{__name__}:Renamed", "has aggregate_type 'Customer'"),
])
def test_unimportable_registrations_are_refused_naming_the_key(name: str, target: str,
                                                               reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_aggregate(name, target)
    assert caught.value.key == f"aggregates.{name}"
    assert reason in caught.value.reason


def test_the_snapshotter_name_is_reserved_for_projections() -> None:
    for key in ("projections", "local_projections"):
        with pytest.raises(SettingsError, match="store's own snapshotter") as caught:
            parse_projection_settings(f'{key}: {{{SNAPSHOTTER}: "a.b:C"}}')
        assert caught.value.key == key


def test_check_config_refuses_an_unimportable_aggregate(tmp_path: Path) -> None:
    (tmp_path / "event-store.yaml").write_text('aggregates: {Account: "nowhere_xyz:Account"}\n')
    result = CliRunner().invoke(main, ["check-config", str(tmp_path)])
    assert result.exit_code != 0
    assert "event-store.yaml: aggregates.Account: cannot import 'nowhere_xyz'" in result.output
    (tmp_path / "event-store.yaml").write_text(f'aggregates: {{Account: "{ACCOUNT}"}}\n')
    result = CliRunner().invoke(main, ["check-config", str(tmp_path)])
    assert result.exit_code == 0, result.output


# -- tagging --------------------------------------------------------------------------------

def test_repository_tags_every_saved_event_with_its_aggregate_type(store: EventStore) -> None:
    repo = Repository(store, Account)
    account = Account("acc-1")
    account.open("ada")
    account.deposit(5)
    repo.save(account)
    assert [e.metadata for e in store.read_stream("acc-1")] == [
        {AGGREGATE_TYPE_KEY: "Account"}, {AGGREGATE_TYPE_KEY: "Account"}]
    # An explicit value is the caller's: kept as given.
    store.append("acc-2", [NewEvent("AccountOpened", {"owner": "x"},
                                    metadata={AGGREGATE_TYPE_KEY: "Legacy"})])
    assert store.read_stream("acc-2")[0].metadata == {AGGREGATE_TYPE_KEY: "Legacy"}


# -- the due rule ---------------------------------------------------------------------------

def test_snapshot_due_rule() -> None:
    assert [v for v in range(1, 31) if snapshot_due(v, 0, 10, 1000)] == [10, 20, 30]
    assert snapshot_due(31, 0, 1000, 30) and not snapshot_due(30, 0, 1000, 30)
    assert not snapshot_due(61, 31, 1000, 30) and snapshot_due(62, 31, 1000, 30)


# -- the snapshotter, run by the real projection runner on SQLite ---------------------------

@pytest.fixture
def snapshots(tmp_path: Path) -> Iterator[SnapshotStore]:
    snapshots = SnapshotStore.connect(f"sqlite:///{tmp_path}/snapshots.db", keep=100)
    yield snapshots
    snapshots.close()


def _run(store: EventStore, projection: Projection, until: float = 20) -> None:
    runner = ProjectionRunner(store, {SNAPSHOTTER: projection},
                              ProjectionSettings(workers=2, batch_size=7), poll_interval=0.05)
    runner.start()
    try:
        assert runner.wait_caught_up(SNAPSHOTTER, timeout=until)
    finally:
        runner.stop()


def _deposits(store: EventStore, account_id: str, count: int) -> None:
    repo = Repository(store, Account)
    account = Account(account_id)
    account.open("ada")
    repo.save(account)
    for amount in range(1, count):
        account.deposit(amount)
        repo.save(account)


def _versions(snapshots: SnapshotStore, account_id: str) -> list[int]:
    return sorted(s.version for s in snapshots.history("Account", account_id))


def test_snapshots_land_at_every_multiple_of_the_frequency_and_match_a_replay(
        store: EventStore, snapshots: SnapshotStore) -> None:
    _deposits(store, "acc-1", 95)
    _deposits(store, "acc-2", 9)
    store.append("untagged", [NewEvent("Deposited", {"amount": 1}) for _ in range(30)])
    settings = StoreSettings(snapshot_frequency=10, aggregates={"Account": ACCOUNT})
    _run(store, Snapshotter(store, snapshots, {"Account": Account}, settings))

    assert _versions(snapshots, "acc-1") == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert _versions(snapshots, "acc-2") == []
    assert snapshots.history("Account", "untagged") == []
    plain = Repository(store, Account)  # no snapshots: a replay from the first event
    for snapshot in snapshots.history("Account", "acc-1"):
        replayed = plain.load("acc-1", at_version=snapshot.version)
        assert snapshot.state == replayed.snapshot_state()

    # A restart with a new cadence goes on from the checkpoint at the new frequency.
    _deposits_more(store, "acc-1", 96, 160)
    faster = StoreSettings(snapshot_frequency=25, aggregates={"Account": ACCOUNT})
    _run(store, Snapshotter(store, snapshots, {"Account": Account}, faster))
    assert _versions(snapshots, "acc-1")[-3:] == [100, 125, 150]


def _deposits_more(store: EventStore, account_id: str, first: int, last: int) -> None:
    repo = Repository(store, Account)
    account = repo.load(account_id)
    for amount in range(first, last + 1):
        account.deposit(amount)
        repo.save(account)


def test_max_events_per_aggregate_bounds_every_load(store: EventStore,
                                                     snapshots: SnapshotStore) -> None:
    _deposits(store, "acc-1", 100)
    settings = StoreSettings(snapshot_frequency=1000, max_events_per_aggregate=30,
                             aggregates={"Account": ACCOUNT})
    _run(store, Snapshotter(store, snapshots, {"Account": Account}, settings))
    assert _versions(snapshots, "acc-1") == [31, 62, 93]
    repo = Repository(store, Account, snapshots=snapshots)
    for version in range(1, 101):
        _, info = repo.load_with_info("acc-1", at_version=version)
        assert info.events_replayed <= 30, version


class _Flaky(SnapshotStore):
    """A snapshot store that is down until told otherwise."""

    def __init__(self, inner: SnapshotStore) -> None:
        self.inner = inner
        self.down = True

    def _check(self) -> None:
        if self.down:
            raise SnapshotUnavailable("down for the test")

    def save(self, snapshot: Snapshot) -> None:
        self._check()
        self.inner.save(snapshot)

    def latest(self, *args: object, **kwargs: object) -> Snapshot | None:
        self._check()
        return self.inner.latest(*args, **kwargs)  # type: ignore[arg-type]

    def history(self, aggregate_type: str, aggregate_id: str) -> list[Snapshot]:
        return self.inner.history(aggregate_type, aggregate_id)

    def delete(self, aggregate_type: str, aggregate_id: str) -> int:
        return self.inner.delete(aggregate_type, aggregate_id)

    def ping(self) -> bool:
        return not self.down

    def close(self) -> None:
        pass


def test_a_snapshot_store_outage_delays_snapshots_and_parks_nothing(
        store: EventStore, snapshots: SnapshotStore) -> None:
    _deposits(store, "acc-1", 35)
    flaky = _Flaky(snapshots)
    settings = StoreSettings(snapshot_frequency=10, aggregates={"Account": ACCOUNT})
    runner = ProjectionRunner(store, {SNAPSHOTTER: Snapshotter(store, flaky, {"Account": Account},
                                                               settings)},
                              ProjectionSettings(workers=1, batch_size=5), poll_interval=0.05)
    runner.start()
    try:
        time.sleep(1.5)  # the runner keeps retrying the first due batch
        (status,) = runner.status()
        assert status.lag_events > 0 and status.dead_letters == 0
        assert _versions(snapshots, "acc-1") == []
        flaky.down = False
        assert runner.wait_caught_up(SNAPSHOTTER, timeout=20)
        (status,) = runner.status()
        assert status.dead_letters == 0
    finally:
        runner.stop()
    assert _versions(snapshots, "acc-1") == [10, 20, 30]


class Upcast(Account):
    """Account whose stored `Deposited` v1 events carry cents as a string."""

    aggregate_type = "Account"
    upcasters = UpcasterRegistry()


@Upcast.upcasters.register("Deposited", 1)
def _amount_to_int(payload: dict[str, object]) -> dict[str, object]:
    return {"amount": int(str(payload["cents"]))}


def test_the_snapshotter_applies_the_aggregates_upcasters(store: EventStore,
                                                          snapshots: SnapshotStore) -> None:
    tag = {AGGREGATE_TYPE_KEY: "Account"}
    store.append("acc-1", [NewEvent("AccountOpened", {"owner": "ada"}, metadata=tag)])
    store.append("acc-1", [NewEvent("Deposited", {"cents": "7"}, metadata=tag)
                           for _ in range(9)])
    store.append("acc-1", [NewEvent("Deposited", {"amount": 1}, metadata=tag, schema_version=2)
                           for _ in range(10)])
    settings = StoreSettings(snapshot_frequency=10)
    _run(store, Snapshotter(store, snapshots, {"Account": Upcast}, settings))
    states = {s.version: s.state for s in snapshots.history("Account", "acc-1")}
    assert states[10]["balance"] == 63 and states[20]["balance"] == 73


class Broken(Account):
    aggregate_type = "Account"

    def apply_Deposited(self, event: RecordedEvent) -> None:
        raise ValueError("this aggregate cannot apply its own history")


def test_an_aggregate_that_cannot_load_is_skipped_not_retried_forever(
        store: EventStore, snapshots: SnapshotStore) -> None:
    _deposits(store, "acc-1", 25)
    failures = metrics.SNAPSHOTTER_FAILURES.labels("Account", "error")
    before = failures._value.get()
    _run(store, Snapshotter(store, snapshots, {"Account": Broken},
                            StoreSettings(snapshot_frequency=10)))
    assert _versions(snapshots, "acc-1") == []
    assert failures._value.get() - before == 2  # versions 10 and 20, counted, not parked


def test_a_bounded_load_refuses_before_reading_everything(store: EventStore,
                                                          snapshots: SnapshotStore) -> None:
    _deposits(store, "acc-1", 50)
    repo = Repository(store, Account, snapshots=snapshots)
    with pytest.raises(ReplayTooLong, match="more than 20 events after version 0"):
        repo.load_with_info("acc-1", max_replay=20)
    assert repo.load_with_info("acc-1", at_version=20, max_replay=20)[1].events_replayed == 20
    snapshots.save(Snapshot("Account", "acc-1", 40, repo.load("acc-1", at_version=40)
                            .snapshot_state(), 1, datetime.now(UTC)))
    _, info = repo.load_with_info("acc-1", max_replay=20)
    assert (info.snapshot_version, info.events_replayed) == (40, 10)
