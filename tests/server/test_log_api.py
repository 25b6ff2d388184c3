"""The global log over HTTP (`eventstore serve` on PostgreSQL, through EventStoreClient):
append-many, checkpoints, filtered and backwards pages, the head, closeable subscriptions."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from eventstore import ConcurrencyError, ExpectedVersion, NewEvent, ValidationError
from eventstore.errors import CheckpointConflict
from eventstore.events import Checkpoint, StreamAppend
from eventstore.server.client import EventStoreClient
from tests.server.conftest import TOKEN, ServerProcess

pytestmark = pytest.mark.postgres


def test_append_many_and_checkpoints_over_http(server: ServerProcess) -> None:
    with EventStoreClient(server.url, TOKEN) as client:
        client.append("a-1", [NewEvent("Opened", {})])
        batch = [StreamAppend("a-1", [NewEvent("Moved", {"n": 1})], 1),
                 StreamAppend("b-1", [NewEvent("Moved", {"n": 2})], ExpectedVersion.NO_STREAM)]
        first = client.append_many(batch, checkpoint=Checkpoint("proc", 7))
        assert [(r.stream_id, r.first_version) for r in first] == [("a-1", 2), ("b-1", 1)]
        assert first[0].positions[0] < first[1].positions[0]
        again = client.append_many(batch, checkpoint=Checkpoint("proc", 7))
        assert [r.positions for r in again] == [r.positions for r in first]
        assert all(r.idempotent for r in again)
        assert client.read_checkpoint("proc") == 7 and client.read_checkpoint("none") is None

        with pytest.raises(ConcurrencyError) as conflict:
            client.append_many([StreamAppend("c-1", [NewEvent("X", {})]),
                                StreamAppend("b-1", [NewEvent("X", {})], 0)])
        assert (conflict.value.stream_id, conflict.value.actual_version) == ("b-1", 1)
        assert client.stream_version("c-1") == 0
        with pytest.raises(CheckpointConflict) as behind:
            client.append_many([StreamAppend("c-1", [NewEvent("X", {})])],
                               checkpoint=Checkpoint("proc", 7))
        assert behind.value.stored_position == 7 and client.stream_version("c-1") == 0
        client.save_checkpoint("proc", 8)
        with pytest.raises(CheckpointConflict):
            client.save_checkpoint("proc", 8)
        assert client.read_checkpoint("proc") == 8
        with pytest.raises(ValidationError):
            client.append_many([StreamAppend("d", [NewEvent("X", {})]),
                                StreamAppend("d", [NewEvent("X", {})])])

    with server.client() as http:
        reply = http.post("/append-many", json={"appends": [
            {"stream_id": "b-1", "expected_version": 0, "events": [{"type": "X", "payload": {}}]}]})
        assert reply.status_code == 409
        assert reply.json()["stream_id"] == "b-1" and reply.json()["actual_version"] == 1
        for bad in ({"appends": [{"stream_id": "a b", "events": [{"type": "X", "payload": {}}]}]},
                    {"appends": "x"}, {"appends": [], "checkpoint": {"consumer": "c",
                                                                     "position": -1}}):
            assert http.post("/append-many", json=bad).status_code == 422, bad
        assert http.post("/append-many", json={"appends": []}).status_code == 400
        assert http.put("/checkpoints/a%20b", json={"position": 1}).status_code == 422
        assert http.get("/all", params={"types": "not a type"}).status_code == 400
        assert http.get("/all", params={"stream_prefix": "a/b"}).status_code == 422
        paths = http.get("/openapi.json").json()["paths"]
        assert {"/append-many", "/checkpoints/{consumer}", "/all/head"} <= set(paths)
        params = {p["name"] for p in paths["/all"]["get"]["parameters"]}
        assert {"types", "stream_prefix", "to_position", "backwards"} <= params
        params = {p["name"] for p in paths["/subscribe"]["get"]["parameters"]}
        assert {"types", "stream_prefix", "to_position"} <= params


def test_filtered_reads_and_closeable_subscriptions_over_http(server: ServerProcess) -> None:
    with EventStoreClient(server.url, TOKEN) as client:
        for i in range(9):
            client.append(f"{['account', 'order', 'accounting'][i % 3]}-{i}",
                          [NewEvent(["Opened", "Placed"][i % 2], {"i": i})])
        log = client.read_all()
        assert client.head_position() == log[-1].position
        assert client.read_all(types=["Placed"]) == [e for e in log if e.type == "Placed"]
        assert client.read_all(stream_prefix="account-") == [
            e for e in log if e.aggregate_id.startswith("account-")]
        assert client.read_all(backwards=True, limit=3) == log[:-4:-1]
        assert client.read_all(to_position=log[2].position) == log[:3]
        with server.client() as http:
            page = http.get("/all", params={"backwards": True, "limit": 4}).json()
            assert page["next_position"] == log[-4].position - 1

        bounded = list(client.subscribe(types=["Opened"], to_position=log[6].position))
        assert bounded == [e for e in log[:7] if e.type == "Opened"]

        threads_before = threading.active_count()
        subscription = client.subscribe(stream_prefix="order-")
        received = []

        def follow() -> None:
            received.extend(subscription)

        thread = threading.Thread(target=follow)
        thread.start()
        deadline = time.monotonic() + 15
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert received == [e for e in log if e.aggregate_id.startswith("order-")]
        client.append("order-99", [NewEvent("Placed", {})])
        while len(received) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert received[-1].aggregate_id == "order-99"
        started = time.monotonic()
        subscription.close()
        thread.join(5)
        assert not thread.is_alive(), "the subscription did not end after close()"
        assert time.monotonic() - started < 2
        assert threading.active_count() == threads_before
        assert client.read_all(limit=1)  # the client's connections still work
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/all/head").status_code == 401
