"""The HTTP API contract, through real HTTP clients, against `eventstore serve` on PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from eventstore import ConcurrencyError, ExpectedVersion, NewEvent, ValidationError
from eventstore.server.client import EventStoreClient, Unauthorized
from tests.server.conftest import TOKEN, ServerProcess

pytestmark = pytest.mark.postgres


def _append(http: httpx.Client, stream: str, expected: object, *events: Mapping[str, object]
            ) -> httpx.Response:
    return http.post(f"/streams/{stream}", json={"expected_version": expected,
                                                 "events": list(events)})


def test_append_read_and_conflict(server: ServerProcess) -> None:
    with server.client() as http:
        created = _append(http, "acc-1", 0, {"type": "AccountOpened", "payload": {"owner": "A"}},
                          {"type": "Deposited", "payload": {"amount": 5}})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["first_version"] == 1 and body["next_expected_version"] == 2
        assert len(body["positions"]) == 2 and body["positions"][0] < body["positions"][1]

        conflict = _append(http, "acc-1", 1, {"type": "Deposited", "payload": {"amount": 1}})
        assert conflict.status_code == 409
        assert conflict.json()["actual_version"] == 2
        assert conflict.json()["error"] == "conflict"
        assert _append(http, "acc-1", "no_stream",
                       {"type": "Deposited", "payload": {}}).json()["actual_version"] == 2
        assert _append(http, "new-1", "stream_exists",
                       {"type": "Deposited", "payload": {}}).status_code == 409
        assert _append(http, "acc-1", "any",
                       {"type": "Deposited", "payload": {"amount": 2}}).status_code == 201

        events = http.get("/streams/acc-1").json()["events"]
        assert [e["version"] for e in events] == [1, 2, 3]
        assert events[0]["payload"] == {"owner": "A"} and events[0]["stream_id"] == "acc-1"
        assert [e["version"] for e in http.get(
            "/streams/acc-1", params={"backwards": True, "limit": 2}).json()["events"]] == [3, 2]
        assert [e["version"] for e in http.get(
            "/streams/acc-1", params={"from_version": 2, "to_version": 2}).json()["events"]] == [2]
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        assert http.get("/streams/acc-1", params={"as_of": past}).json()["events"] == []

        page = http.get("/all", params={"limit": 2}).json()
        assert [e["version"] for e in page["events"]] == [1, 2]
        rest = http.get("/all", params={"from_position": page["next_position"]}).json()
        assert [e["version"] for e in rest["events"]] == [3]


def test_concurrent_appends_with_expected_versions(server: ServerProcess) -> None:
    """16 clients race for the next version of one stream: every acknowledged append is
    stored once, at the version it was acknowledged with, and every refusal names the
    version that beat it."""
    rounds, clients = 15, 16
    acknowledged: list[tuple[int, tuple[int, ...]]] = []
    errors: list[str] = []

    def client(n: int) -> None:
        with server.client() as http:
            expected, done = 0, 0
            while done < rounds:
                reply = _append(http, "race-1", expected,
                                {"type": "Deposited", "payload": {"client": n, "i": done}})
                if reply.status_code == 201:
                    body = reply.json()
                    acknowledged.append((body["first_version"], tuple(body["positions"])))
                    expected, done = body["next_expected_version"], done + 1
                elif reply.status_code == 409:
                    actual = reply.json()["actual_version"]
                    if actual <= expected:
                        errors.append(f"409 names version {actual}, not past {expected}")
                    expected = actual
                else:
                    errors.append(f"{reply.status_code}: {reply.text}")
                    return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(v for v, _ in acknowledged) == list(range(1, rounds * clients + 1))
    with server.client() as http:
        stored = []
        while page := http.get("/streams/race-1", params={
                "from_version": len(stored) + 1, "limit": 1000}).json()["events"]:
            stored += page
    assert [e["version"] for e in stored] == list(range(1, rounds * clients + 1))
    assert {e["version"]: (e["position"],) for e in stored} == dict(acknowledged)


def test_concurrent_appends_with_any_version_all_land(server: ServerProcess) -> None:
    def client(n: int) -> None:
        with server.client() as http:
            for i in range(20):
                reply = _append(http, "race-any", "any", {"type": "Deposited",
                                                          "payload": {"client": n, "i": i}})
                assert reply.status_code == 201, reply.text

    threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with server.client() as http:
        events = http.get("/streams/race-any", params={"limit": 1000}).json()["events"]
    assert [e["version"] for e in events] == list(range(1, 241))
    assert len({(e["payload"]["client"], e["payload"]["i"]) for e in events}) == 240


def test_large_appends_and_large_bad_bodies(server: ServerProcess) -> None:
    """Bodies over the inline limit take the worker-thread path: same replies."""
    blob = "x" * (100 * 1024)
    with server.client() as http:
        good = _append(http, "big-1", 0, {"type": "Blob", "payload": {"blob": blob}})
        assert good.status_code == 201, good.text
        assert good.json()["first_version"] == 1
        bad = _append(http, "big-1", 1, {"type": "bad type!", "payload": {"blob": blob}})
        assert bad.status_code == 422
        nul = _append(http, "big-1", 1, {"type": "Blob", "payload": {"blob": blob + "\u0000"}})
        assert nul.status_code == 400
        conflict = _append(http, "big-1", 0, {"type": "Blob", "payload": {"blob": blob}})
        assert conflict.status_code == 409 and conflict.json()["actual_version"] == 1
        events = http.get("/streams/big-1").json()["events"]
        assert len(events) == 1 and events[0]["payload"]["blob"] == blob


def test_idempotent_resend(server: ServerProcess) -> None:
    event = {"id": str(uuid.uuid4()), "type": "Deposited", "payload": {"amount": 1}}
    with server.client() as http:
        first = _append(http, "idem-1", "no_stream", event)
        again = _append(http, "idem-1", "no_stream", event)
        assert first.status_code == again.status_code == 201
        assert again.json()["idempotent"] is True
        assert again.json()["positions"] == first.json()["positions"]


@pytest.mark.parametrize("body,status", [
    ({"expected_version": 0, "events": []}, 422),                        # no events
    ({"expected_version": -1, "events": [{"type": "A", "payload": {}}]}, 422),
    ({"expected_version": "sometimes", "events": [{"type": "A", "payload": {}}]}, 422),
    ({"expected_version": True, "events": [{"type": "A", "payload": {}}]}, 422),
    ({"events": [{"type": "bad type!", "payload": {}}]}, 422),
    ({"events": [{"type": "A", "payload": []}]}, 422),
    ({"events": [{"type": "A", "payload": {}, "surprise": 1}]}, 422),
    ({"events": [{"type": "A", "payload": {"text": "nul\u0000"}}]}, 400),
    ({"events": [{"type": "A", "payload": {"x": 1}, "id": "not-a-uuid"}]}, 422),
])
def test_bad_requests(server: ServerProcess, body: dict[str, object], status: int) -> None:
    with server.client() as http:
        response = http.post("/streams/acc-bad", json=body)
        assert response.status_code == status, response.text
        assert http.get("/streams/acc-bad").json()["events"] == []


def test_bad_paths_params_and_bodies(server: ServerProcess) -> None:
    with server.client() as http:
        assert http.post("/streams/has space", json={"events": [{"type": "A", "payload": {}}]}
                         ).status_code == 422
        assert http.get("/all", params={"limit": 100_000}).status_code == 422
        assert http.get("/all", params={"from_position": -1}).status_code == 422
        assert http.get("/streams/x", params={"limit": 0}).status_code == 422
        not_json = http.post("/streams/x", content=b"{nope",
                             headers={"content-type": "application/json"})
        assert not_json.status_code == 422
        huge = {"events": [{"type": "A", "payload": {"blob": "x" * (5 * 1024 * 1024)}}]}
        assert http.post("/streams/x", json=huge).status_code == 413
        deep: dict[str, object] = {}
        node = deep
        for _ in range(100):
            node["a"] = {}
            node = node["a"]  # type: ignore[assignment]
        assert http.post("/streams/x", json={"events": [{"type": "A", "payload": deep}]}
                         ).status_code == 400


def test_tokens(server: ServerProcess) -> None:
    for path in ("/streams/acc-1", "/all", "/metrics", "/openapi.json", "/projections",
                 "/nowhere"):
        assert httpx.get(server.url + path).status_code == 401, path
        wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer wrong-token"})
        assert wrong.status_code == 401, path
        basic = httpx.get(server.url + path, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401, path
    refused = httpx.post(server.url + "/streams/acc-1",
                         json={"events": [{"type": "A", "payload": {}}]})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    with server.client() as http:
        assert http.get("/streams/acc-1").json()["events"] == []  # the refused append stored nothing
        schema = http.get("/openapi.json").json()
        assert "/streams/{stream_id}" in schema["paths"]
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_python_client(server: ServerProcess) -> None:
    with EventStoreClient(server.url, TOKEN) as client:
        result = client.append("cl-1", [NewEvent("AccountOpened", {"owner": "C"})],
                               ExpectedVersion.NO_STREAM)
        assert result.first_version == 1
        with pytest.raises(ConcurrencyError) as caught:
            client.append("cl-1", [NewEvent("Deposited", {"amount": 1})], expected_version=0)
        assert caught.value.actual_version == 1
        with pytest.raises(ValidationError):
            client.append("cl-1", [NewEvent("Deposited", {"bad": "\u0000"})])
        events = client.read_stream("cl-1")
        assert [e.type for e in events] == ["AccountOpened"]
        assert client.read_all()[0].id == events[0].id
        assert client.ready()
        assert "eventstore_events_appended_total" in client.metrics()
    with EventStoreClient(server.url, "wrong") as client, pytest.raises(Unauthorized):
        client.read_all()


def test_subscription_sees_live_appends(server: ServerProcess) -> None:
    received: list[str] = []
    with EventStoreClient(server.url, TOKEN) as client:
        client.append("sub-1", [NewEvent("Deposited", {"amount": 1})])

        def follow() -> None:
            for event in client.subscribe(from_position=0, idle_timeout=3):
                received.append(f"{event.aggregate_id}:{event.version}")
                if len(received) == 3:
                    return

        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.5)
        client.append("sub-2", [NewEvent("Deposited", {"amount": 1})])
        client.append("sub-1", [NewEvent("Deposited", {"amount": 2})])
        thread.join(timeout=20)
    assert received == ["sub-1:1", "sub-2:1", "sub-1:2"]


def test_snapshots_and_archive_endpoints(server: ServerProcess) -> None:
    with server.client() as http:
        _append(http, "snap-1", 0, {"type": "AccountOpened", "payload": {"owner": "S"}},
                {"type": "Deposited", "payload": {"amount": 9}})
        missing = http.get("/streams/snap-1/snapshot", params={"aggregate_type": "Account"})
        assert missing.status_code == 404
        ahead = http.put("/streams/snap-1/snapshot", json={
            "aggregate_type": "Account", "version": 3, "state": {"balance": 9}})
        assert ahead.status_code == 400
        stored = http.put("/streams/snap-1/snapshot", json={
            "aggregate_type": "Account", "version": 2, "state": {"balance": 9}})
        assert stored.status_code == 201, stored.text
        got = http.get("/streams/snap-1/snapshot", params={"aggregate_type": "Account"}).json()
        assert got["version"] == 2 and got["state"] == {"balance": 9}
        assert http.get("/streams/snap-1/archive").json()["events"] == []


def test_metrics_and_logs_without_secrets(server: ServerProcess) -> None:
    with server.client() as http:
        _append(http, "m-1", 0, {"type": "Deposited", "payload": {"amount": 1}})
        _append(http, "m-1", 0, {"type": "Deposited", "payload": {"amount": 1}})
        text = http.get("/metrics").text
    assert "eventstore_append_duration_seconds_bucket" in text
    assert "eventstore_events_appended_total 1.0" in text
    assert "eventstore_append_conflicts_total 1.0" in text
    assert TOKEN not in server.log()


@pytest.mark.mongo
def test_snapshots_on_the_mongodb_wire_server(servers: Callable[..., ServerProcess],
                                              postgres_url: str, mongo_url: str) -> None:
    server = servers({"EVENTSTORE_URL": postgres_url, "SNAPSHOT_STORE_URL": mongo_url})
    with EventStoreClient(server.url, TOKEN) as client:
        client.append("m-acc", [NewEvent("AccountOpened", {"owner": "M"}),
                                NewEvent("Deposited", {"amount": 3})])
        assert client.get_snapshot("m-acc", "Account") is None
        client.put_snapshot("m-acc", "Account", 1, {"owner": "M", "balance": 0})
        client.put_snapshot("m-acc", "Account", 2, {"owner": "M", "balance": 3})
        assert client.get_snapshot("m-acc", "Account")["state"]["balance"] == 3  # type: ignore[index]
        older = client.get_snapshot("m-acc", "Account", at_or_below_version=1)
        assert older is not None and older["version"] == 1
