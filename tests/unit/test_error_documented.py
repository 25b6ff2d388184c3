"""Every kind of error reply the API sends, through the whole ASGI stack in process: each
is exactly a library error reply (eventstore.errors.error_reply, no body written by hand)
and validates against the schema /openapi.json documents for it. The same replies from a
real server on PostgreSQL: tests/server/test_error_replies_live.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from eventstore import EventStore, errors
from eventstore.errors import EventStoreError, StoreUnavailable, error_reply
from eventstore.server.app import Services, create_app
from eventstore.server.shutdown import Draining
from tests.harness.error_docs import (
    assert_documented,
    assert_library_reply,
    component_schema,
)
from tests.unit.test_error_replies import _library_errors, _sample

TOKEN = "test-token-0123456789abcdef"  # tests/server/conftest.py's, for the live cases
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 2048


class _Store:
    """A real SQLite store whose reads of stream `down-1` fail as a database outage would,
    and whose schema can be made to look stale (for /readyz)."""

    def __init__(self, real: EventStore) -> None:
        self.real = real
        self.current = True

    def read_stream(self, stream_id: str, *args: Any, **kwargs: Any) -> Any:
        if stream_id == "down-1":
            raise StoreUnavailable("the event database does not answer; retry later")
        return self.real.read_stream(stream_id, *args, **kwargs)

    def schema_is_current(self) -> bool:
        return self.current

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _NoLookups:
    """Stands where a ProjectionRunner stands: one projection that serves no lookups."""

    projections = {"ledger": object()}
    scope = "shared"

    def lookup(self, name: str, key: str) -> None:
        raise NotImplementedError("Ledger does not serve lookups")

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> list[Any]:
        return []


@dataclass
class Served:
    http: httpx.Client
    store: _Store
    draining: Draining
    doc: dict[str, Any]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    real = EventStore.connect(f"sqlite:///{tmp_path}/events.db")
    real.migrate()
    store = _Store(real)
    draining = Draining()
    app = create_app(Services(store=store, runner=_NoLookups()),  # type: ignore[arg-type]
                     TOKEN, max_body_bytes=MAX_BODY, max_subscribers=0, draining=draining)
    with TestClient(app) as http:
        doc = http.get("/openapi.json", headers=AUTH).json()
        yield Served(http, store, draining, doc)
    real.close()


def _append(expected: object) -> dict[str, Any]:
    return {"expected_version": expected, "events": [{"type": "Opened", "payload": {}}]}


@dataclass(frozen=True)
class Case:
    """One error reply: how to provoke it, and what comes back."""

    name: str
    method: str
    path: str  # as the OpenAPI document spells it
    send: Callable[[Any], httpx.Response]  # given an object with `http`, an httpx.Client
    status: int
    code: str


def _setup_conflict(s: Any) -> httpx.Response:
    assert s.http.post("/streams/acc-1", json=_append(0), headers=AUTH).status_code == 201
    return s.http.post("/streams/acc-1", json=_append(0), headers=AUTH)


def _setup_many_conflict(s: Any) -> httpx.Response:
    assert s.http.post("/streams/acc-2", json=_append(0), headers=AUTH).status_code == 201
    return s.http.post("/append-many", headers=AUTH, json={"appends": [
        {"stream_id": "acc-2", **_append("no_stream")}]})


def _setup_checkpoint_conflict(s: Any) -> httpx.Response:
    assert s.http.put("/checkpoints/mailer", json={"position": 5},
                      headers=AUTH).status_code == 200
    return s.http.put("/checkpoints/mailer", json={"position": 3}, headers=AUTH)


def _stale_schema(s: Served) -> httpx.Response:
    s.store.current = False
    return s.http.get("/readyz")


def _draining(s: Served) -> httpx.Response:
    s.draining.start()
    return s.http.get("/readyz")


CASES = [
    Case("no token", "get", "/streams/{stream_id}",
         lambda s: s.http.get("/streams/acc-1"), 401, "unauthorized"),
    Case("two tokens", "get", "/streams/{stream_id}",
         lambda s: s.http.get("/streams/acc-1", headers=[
             ("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")]),
         400, "bad_request"),
    Case("bad content-length", "post", "/streams/{stream_id}",
         lambda s: s.http.post("/streams/acc-1", content=b"{}", headers={
             **AUTH, "content-length": "lots", "content-type": "application/json"}),
         400, "bad_request"),
    Case("refused input", "get", "/all",
         lambda s: s.http.get("/all", params={"types": "not a type"}, headers=AUTH),
         400, "validation_error"),
    Case("no such projection", "get", "/projections/{name}/dead-letters",
         lambda s: s.http.get("/projections/nope/dead-letters", headers=AUTH),
         404, "not_found"),
    Case("append conflict", "post", "/streams/{stream_id}", _setup_conflict, 409, "conflict"),
    Case("append-many conflict", "post", "/append-many", _setup_many_conflict, 409,
         "conflict"),
    Case("checkpoint behind", "put", "/checkpoints/{consumer}", _setup_checkpoint_conflict,
         409, "checkpoint_conflict"),
    Case("body too large", "post", "/streams/{stream_id}",
         lambda s: s.http.post("/streams/acc-1", headers=AUTH, json={
             "events": [{"type": "Big", "payload": {"x": "y" * MAX_BODY}}]}),
         413, "body_too_large"),
    Case("not json", "post", "/streams/{stream_id}",
         lambda s: s.http.post("/streams/acc-1", content=b'{"events": []}',
                               headers={**AUTH, "content-type": "text/plain"}),
         415, "unsupported_media_type"),
    Case("schema mismatch", "get", "/streams/{stream_id}",
         lambda s: s.http.get("/streams/acc-1", params={"limit": "many"}, headers=AUTH),
         422, "invalid_request"),
    Case("append schema mismatch", "post", "/streams/{stream_id}",
         lambda s: s.http.post("/streams/acc-1", json={"events": []}, headers=AUTH),
         422, "invalid_request"),
    Case("no lookups", "get", "/projections/{name}/entries/{key}",
         lambda s: s.http.get("/projections/ledger/entries/k", headers=AUTH),
         501, "no_lookups"),
    Case("database down", "get", "/streams/{stream_id}",
         lambda s: s.http.get("/streams/down-1", headers=AUTH), 503, "unavailable"),
    Case("too many subscribers", "get", "/subscribe",
         lambda s: s.http.get("/subscribe", headers=AUTH), 503, "too_many_subscribers"),
    Case("not ready", "get", "/readyz", _stale_schema, 503, "not_ready"),
    Case("shutting down", "get", "/readyz", _draining, 503, "shutting_down"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_error_reply_is_a_library_reply_and_documented(served: Served, case: Case
                                                             ) -> None:
    reply = case.send(served)
    body = reply.json()
    assert (reply.status_code, body.get("error")) == (case.status, case.code), reply.text
    assert_library_reply(reply.status_code, body)
    assert_documented(served.doc, case.path, case.method, reply.status_code, body)


def test_a_conflict_reply_names_the_stream_and_both_versions(served: Served) -> None:
    body = _setup_conflict(served).json()
    assert (body["stream_id"], body["expected_version"], body["actual_version"]) == \
        ("acc-1", 0, 1)


@pytest.mark.parametrize("cls", _library_errors(), ids=lambda cls: cls.__name__)
def test_every_library_error_fits_the_documented_error_shape(
        served: Served, cls: type[EventStoreError]) -> None:
    """ErrorOut documents any error reply: a field a class adds to its reply (details())
    and ErrorOut does not name fails here."""
    _, body = error_reply(_sample(cls))
    jsonschema.validate(body, component_schema(served.doc, "ErrorOut"))
    specific = {errors.ConcurrencyError: "ConflictOut",
                errors.CheckpointConflict: "CheckpointConflictOut",
                errors.InvalidRequest: "InvalidRequestOut"}.get(cls)
    if specific is not None:
        jsonschema.validate(body, component_schema(served.doc, specific))


def test_the_document_forbids_fields_it_does_not_name(served: Served) -> None:
    """So the checks above can fail: a reply with an extra field does not validate."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": "conflict", "message": "m", "extra": 1},
                            component_schema(served.doc, "ErrorOut"))
    with pytest.raises(jsonschema.ValidationError):  # the 409's stream_id is required
        jsonschema.validate({"error": "conflict", "message": "m", "actual_version": 1,
                             "expected_version": 0},
                            component_schema(served.doc, "ConflictOut"))
    assert "HTTPValidationError" not in served.doc["components"]["schemas"]


@pytest.mark.parametrize(("method", "path", "status", "code", "allow"), [
    ("get", "/no-such-path", 404, "not_found", None),
    # Every method the path takes, not only the first matching route's (Starlette said POST).
    ("delete", "/streams/acc-1", 405, "method_not_allowed", "GET, HEAD, POST"),
    ("post", "/all", 405, "method_not_allowed", "GET, HEAD"),
    # Outside the document: the framework's own header is kept.
    ("post", "/openapi.json", 405, "method_not_allowed", "GET, HEAD"),
])
def test_the_frameworks_refusals_are_library_replies(served: Served, method: str, path: str,
                                                     status: int, code: str,
                                                     allow: str | None) -> None:
    """An unknown path or method: not in the document's paths, but in the one shape."""
    reply = served.http.request(method, path, headers=AUTH)
    body = reply.json()
    assert (reply.status_code, body["error"]) == (status, code), reply.text
    assert_library_reply(reply.status_code, body)
    jsonschema.validate(body, component_schema(served.doc, "ErrorOut"))
    assert reply.headers.get("allow") == allow
