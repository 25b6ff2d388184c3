"""Every library error crosses HTTP as itself: the server answers it with the class's own
status and code (eventstore/errors.py), and the client raises the same class again."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventstore import EventStore, errors
from eventstore.errors import (
    AggregateNotFound,
    CheckpointConflict,
    ConcurrencyError,
    EventStoreError,
    InvalidRequest,
    SettingsError,
    SnapshotUnavailable,
    StoreUnavailable,
    error_from_reply,
    error_reply,
)
from eventstore.events import ExpectedVersion
from eventstore.server.app import Services, create_app
from eventstore.server.client import EventStoreClient

TOKEN = "unit-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _library_errors() -> list[type[EventStoreError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, EventStoreError) and cls.__module__ == errors.__name__]


#: One instance of every class, built the way the library raises it.
SAMPLES: dict[type[EventStoreError], EventStoreError] = {
    ConcurrencyError: ConcurrencyError("acc-1", ExpectedVersion.NO_STREAM, 4),
    CheckpointConflict: CheckpointConflict("mailer", 10, 12),
    SettingsError: SettingsError("event-store.yaml", "snapshot_frequency", "must be >= 1",
                                 others=(("projections.yaml", "workers", "not an int"),)),
    InvalidRequest: InvalidRequest("events: field required",
                                   [{"loc": ["events"], "msg": "field required",
                                     "type": "missing"}]),
}


def _sample(cls: type[EventStoreError]) -> EventStoreError:
    return SAMPLES.get(cls) or cls(f"a {cls.__name__} for the test")


def test_every_error_class_lives_in_errors_and_has_its_own_code() -> None:
    classes = _library_errors()
    names = {cls.__name__ for cls in classes}
    assert {"SnapshotUnavailable", "CorruptSnapshot", "ConfigError", "SettingsError",
            "AggregateNotFound", "BackupError", "Unauthorized"} <= names
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes
    assert all(errors.error_class(cls.code) is cls for cls in classes)


def test_old_import_paths_still_work() -> None:
    from eventstore.backup import BackupError
    from eventstore.repository import AggregateNotFound as FromRepository
    from eventstore.server.client import Unauthorized
    from eventstore.server.config import ConfigError
    from eventstore.settings import SettingsError as FromSettings
    from eventstore.snapshots import CorruptSnapshot
    from eventstore.snapshots.base import SnapshotUnavailable as FromBase

    assert (BackupError, FromRepository, Unauthorized, ConfigError, FromSettings,
            CorruptSnapshot, FromBase) == (errors.BackupError, AggregateNotFound,
                                           errors.Unauthorized, errors.ConfigError,
                                           SettingsError, errors.CorruptSnapshot,
                                           SnapshotUnavailable)


def test_the_most_derived_class_answers() -> None:
    """SnapshotUnavailable is a StoreUnavailable, but answers as itself (it used to be
    matched by name after StoreUnavailable had already caught it)."""
    status, body = error_reply(SnapshotUnavailable("mongo is down"))
    assert (status, body["error"]) == (503, "snapshot_store_unavailable")
    assert isinstance(error_from_reply(status, body), SnapshotUnavailable)


class _FailingStore:
    """Stands where an EventStore stands; its reads raise the error under test."""

    def __init__(self, real: EventStore) -> None:
        self.real = real
        self.error: EventStoreError | None = None

    def read_stream(self, *args: Any, **kwargs: Any) -> Any:
        assert self.error is not None
        raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_FailingStore, EventStoreClient]]:
    real = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
    real.migrate()
    failing = _FailingStore(real)
    app = create_app(Services(store=failing), TOKEN)  # type: ignore[arg-type]
    with TestClient(app) as http:
        client = EventStoreClient("http://testserver", TOKEN)
        client._http = http  # the same client, over the in-process transport
        http.headers.update(AUTH)
        yield failing, client
    real.close()


@pytest.mark.parametrize("cls", _library_errors(), ids=lambda cls: cls.__name__)
def test_every_error_class_round_trips_server_to_client_as_itself(
        cls: type[EventStoreError], served: tuple[_FailingStore, EventStoreClient]) -> None:
    failing, client = served
    sent = _sample(cls)
    failing.error = sent
    with pytest.raises(EventStoreError) as raised:
        client.read_stream("acc-1")
    got = raised.value
    assert type(got) is cls, f"{cls.__name__} came back as {type(got).__name__}: {got}"
    assert got.details() == sent.details()
    if cls is not EventStoreError:
        assert str(got) == str(sent)


def test_a_snapshot_store_outage_is_answered_as_such(tmp_path: Path) -> None:
    class DownSnapshots:
        def latest(self, *args: Any, **kwargs: Any) -> None:
            raise SnapshotUnavailable("the snapshot database does not answer")

        def close(self) -> None:
            pass

    store = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
    store.migrate()
    app = create_app(Services(store=store, snapshots=DownSnapshots()),  # type: ignore[arg-type]
                     TOKEN)
    with TestClient(app) as http:
        reply = http.get("/streams/acc-1/snapshot", params={"aggregate_type": "Account"},
                         headers=AUTH)
    assert reply.status_code == 503
    assert reply.json() == {"error": "snapshot_store_unavailable",
                            "message": "the snapshot database does not answer"}


def test_framework_422_is_an_invalid_request_in_the_one_shape(
        served: tuple[_FailingStore, EventStoreClient]) -> None:
    _, client = served
    with pytest.raises(InvalidRequest) as raised:
        client.read_stream("acc-1", from_version=0)
    assert raised.value.errors and raised.value.errors[0]["loc"] == ["query", "from_version"]
    reply = client._http.get("/streams/acc-1", params={"limit": "many"})
    body = reply.json()
    assert reply.status_code == 422 and set(body) == {"error", "message", "details"}
    assert body["error"] == "invalid_request" and "limit" in body["message"]


def test_a_reply_missing_fields_or_from_an_unknown_code_falls_back_by_status() -> None:
    assert type(error_from_reply(409, {"error": "conflict", "message": "m"})) is EventStoreError
    assert type(error_from_reply(503, {"error": "brand_new", "message": "m"})) \
        is StoreUnavailable
    assert type(error_from_reply(404, {"error": "not_found"})) is errors.NotFound
    assert str(error_from_reply(418, {}, "teapot")) == "HTTP 418: teapot"


def test_a_code_cannot_be_taken_twice() -> None:
    with pytest.raises(TypeError, match="taken by AggregateNotFound"):
        type("Other", (EventStoreError,), {"code": "aggregate_not_found"})


def test_an_application_error_without_a_code_is_internal_and_named(
        served: tuple[_FailingStore, EventStoreClient]) -> None:
    from eventstore.examples.bank import InsufficientFunds

    failing, client = served
    failing.error = InsufficientFunds("balance 3, withdrawal 5")
    with pytest.raises(EventStoreError) as raised:
        client.read_stream("acc-1")
    assert type(raised.value) is EventStoreError
    assert str(raised.value) == "HTTP 500: InsufficientFunds: balance 3, withdrawal 5"


def test_a_conflict_reply_without_a_stream_id_names_the_stream_of_the_path() -> None:
    import httpx

    def older_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": "conflict", "message": "m",
                                         "actual_version": 2, "expected_version": 0})

    client = EventStoreClient("http://old", TOKEN, transport=httpx.MockTransport(older_server))
    with pytest.raises(ConcurrencyError) as raised:
        client.append("acc-9", [], expected_version=0)
    assert (raised.value.stream_id, raised.value.actual_version) == ("acc-9", 2)


def test_a_reply_not_in_the_stores_shape_says_who_answered() -> None:
    """Seen in CI: an egress proxy answered a Service address with an empty 404, and the
    workload reported a bare "NotFound: " for an append."""
    import httpx

    replies = {"http://proxy": httpx.Response(404, headers={"server": "keryx"}),
               "http://gateway": httpx.Response(502, text="<html>bad gateway</html>",
                                                headers={"server": "nginx"}),
               "http://plain": httpx.Response(404)}
    for base, reply in replies.items():
        client = EventStoreClient(base, TOKEN, transport=httpx.MockTransport(lambda _, r=reply: r))
        with pytest.raises(EventStoreError) as raised:
            client.append("acc-9", [], expected_version=0)
        assert f"is something else answering at {base}" in str(raised.value)
        if reply.status_code == 404:
            assert type(raised.value) is errors.NotFound
    proxy = EventStoreClient("http://proxy", TOKEN,
                             transport=httpx.MockTransport(lambda _: replies["http://proxy"]))
    with pytest.raises(errors.NotFound, match=r"^not an event store's reply \(server 'keryx', empty body\)"):
        proxy.read_stream("acc-9")
    gateway = EventStoreClient("http://gateway", TOKEN,
                               transport=httpx.MockTransport(lambda _: replies["http://gateway"]))
    with pytest.raises(EventStoreError, match=r"^HTTP 502: not an event store's reply \(server 'nginx', "
                                              r"body '<html>bad gateway</html>'\)"):
        gateway.head_position()
    plain = EventStoreClient("http://plain", TOKEN,
                             transport=httpx.MockTransport(lambda _: replies["http://plain"]))
    with pytest.raises(errors.NotFound, match=r"^not an event store's reply \(empty body\)"):
        plain.read_checkpoint("c")
    # A proxy's 404 is not the store's "no snapshot" (which would mean: replay it all).
    with pytest.raises(errors.NotFound, match="not an event store's reply"):
        proxy.get_snapshot("acc-9", "Account")
    store = EventStoreClient("http://store", TOKEN, transport=httpx.MockTransport(
        lambda _: httpx.Response(404, json={"error": "not_found", "message": "no snapshot"})))
    assert store.get_snapshot("acc-9", "Account") is None
