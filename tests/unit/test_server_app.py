"""The HTTP app in-process (Starlette's TestClient) over a real SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from eventstore import EventStore
from eventstore.projections.bank import AccountBalances
from eventstore.projections.runner import ProjectionRunner
from eventstore.server.app import Services, create_app
from eventstore.settings import ProjectionSettings
from eventstore.snapshots.base import SnapshotStore

TOKEN = "unit-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
    store.migrate()
    runner = ProjectionRunner(store, {"balances": AccountBalances()},
                              ProjectionSettings(workers=2, batch_size=10), poll_interval=0.05)
    services = Services(store=store, snapshots=SnapshotStore.connect(
        f"sqlite:///{tmp_path}/snapshots.db"), runner=runner)
    with TestClient(create_app(services, TOKEN, max_body_bytes=64 * 1024)) as test_client:
        yield test_client


def test_probes_are_open_everything_else_needs_the_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    for path in ("/all", "/openapi.json", "/metrics", "/projections", "/docs"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/all", headers=AUTH).status_code == 200


def test_websockets_are_refused_before_routing(tmp_path: Path) -> None:
    """The guard checks http requests; a websocket route (an extension, a future
    version) must not become a way in without the token, so websockets are refused."""
    store = EventStore.connect(f"sqlite:///{tmp_path}/e.db")
    store.migrate()
    app = create_app(Services(store=store), TOKEN)
    api: Any = app
    while not isinstance(api, FastAPI):  # guard -> ... -> append route -> FastAPI
        api = api.app

    @api.websocket("/ws")
    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("in")
        await socket.close()

    received: list[str] = []
    with TestClient(app) as client:
        for headers in ({}, AUTH):
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
                    "/ws", headers=headers) as socket:
                received.append(socket.receive_text())
            assert refused.value.code == 1008
    assert received == []


def test_body_limits_with_and_without_content_length(client: TestClient) -> None:
    big = {"events": [{"type": "A", "payload": {"x": "y" * 70_000}}]}
    assert client.post("/streams/s", json=big, headers=AUTH).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"events": [{"type": "A", "payload": {"x": "'
        for _ in range(100):
            yield b"z" * 1000
        yield b'"}}]}'

    response = client.post("/streams/s", content=chunks(),
                           headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413
    assert client.get("/streams/s", headers=AUTH).json()["events"] == []


def test_projection_endpoints_and_read_model(client: TestClient) -> None:
    events = [{"type": "AccountOpened", "payload": {"owner": "U"}},
              {"type": "Deposited", "payload": {"amount": 70}},
              {"type": "Withdrawn", "payload": {"amount": 20}}]
    assert client.post("/streams/acc-u", json={"expected_version": 0, "events": events},
                       headers=AUTH).status_code == 201
    # Partitions are claimed one by one by the rebalance loop, so on a loaded machine the
    # events can be handled before the last partition is claimed: wait for both.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (status,) = client.get("/projections", headers=AUTH).json()["projections"]
        if (status["lag_events"] == 0 and status["events_handled"] == 3
                and len(status["owned_here"]) == 16):
            break
        time.sleep(0.05)
    assert status["events_handled"] == 3 and status["partitions"] == 16
    assert len(status["owned_here"]) == 16 and status["scope"] == "shared"
    entry = client.get("/projections/balances/entries/acc-u", headers=AUTH)
    assert entry.status_code == 200, entry.text
    assert entry.json() == {"projection": "balances", "scope": "shared", "key": "acc-u",
                            "entry": {"account_id": "acc-u", "owner": "U", "balance": 50,
                                      "transactions": 2, "version": 3}}
    assert client.get("/projections/balances/entries/none", headers=AUTH).status_code == 404
    assert client.get("/projections/nope/entries/acc-u", headers=AUTH).status_code == 404
    assert client.post("/projections/balances/rebuild", headers=AUTH).status_code == 202
    assert client.post("/projections/nope/rebuild", headers=AUTH).status_code == 404
    assert client.get("/projections/balances/dead-letters", headers=AUTH).json() == {
        "dead_letters": []}


def test_closed_store_is_503_and_not_ready(tmp_path: Path) -> None:
    store = EventStore.connect(f"sqlite:///{tmp_path}/e.db")
    services = Services(store=store, owned=False)
    with TestClient(create_app(services, TOKEN)) as client:
        assert client.get("/readyz").status_code == 503          # not migrated yet
        store.migrate()
        assert client.get("/readyz").status_code == 200
        store.close()
        response = client.get("/all", headers=AUTH)
        assert response.status_code == 503 and response.json()["error"] == "unavailable"
        assert client.get("/streams/x/snapshot", params={"aggregate_type": "A"},
                          headers=AUTH).status_code == 503  # no snapshot store configured


def test_undecodable_or_malformed_append_bodies_are_422(client: TestClient) -> None:
    for body in (b"\xff\xfe", b"{", b'{"events": "x"}', b"[]", b"", b'{"events": [{"type": "A", '
                 b'"payload": {"x": NaN}}]}'):
        response = client.post("/streams/s", content=body,
                               headers={**AUTH, "content-type": "application/json"})
        assert response.status_code in (400, 422), (body, response.text)
