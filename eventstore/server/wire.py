"""The JSON shapes of the HTTP API: pydantic models that validate requests and describe
both directions in the OpenAPI document, and the body of every error reply."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from eventstore.errors import (
    ConcurrencyError,
    EventStoreError,
    SchemaError,
    StoreUnavailable,
    ValidationError,
)
from eventstore.events import EVENT_TYPE_PATTERN, RecordedEvent
from eventstore.store.base import MAX_EVENTS_PER_APPEND

log = logging.getLogger(__name__)

#: Largest page a read may ask for. (An HTTP append carries at most
#: store.base.MAX_EVENTS_PER_APPEND events, as a library append does.)
MAX_PAGE = 1000
#: Deepest JSON nesting accepted in payloads, metadata and snapshot states.
MAX_JSON_DEPTH = 64
BIGINT = 2**63 - 1
INT = 2**31 - 1


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID | None = Field(None, description="Makes a re-sent append idempotent.")
    type: str = Field(pattern=EVENT_TYPE_PATTERN.pattern, max_length=200)
    payload: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    schema_version: StrictInt = Field(1, ge=1, le=INT)


class AppendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: Annotated[StrictInt, Field(ge=0, le=BIGINT)] | Literal[
        "any", "no_stream", "stream_exists"] = Field(
        "any", description="The stream's version the append expects (0: a new stream).")
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_APPEND)


class AppendOut(BaseModel):
    stream_id: str
    first_version: int
    next_expected_version: int
    positions: list[int]
    idempotent: bool


class EventOut(BaseModel):
    id: UUID
    type: str
    stream_id: str
    version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]
    timestamp: datetime
    position: int
    schema_version: int


class StreamOut(BaseModel):
    stream_id: str
    events: list[EventOut]
    truncated: bool = Field(False, description="The byte budget cut the page short.")
    next_version: int | None = Field(None, description="When truncated: pass as from_version "
                                     "(as to_version when reading backwards) to read on.")


class PageOut(BaseModel):
    events: list[EventOut]
    next_position: int = Field(description="Pass as from_position to read on.")
    truncated: bool = Field(False, description="The byte budget cut the page short.")


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aggregate_type: str = Field(pattern=EVENT_TYPE_PATTERN.pattern, max_length=200)
    version: StrictInt = Field(ge=1, le=BIGINT)
    state: dict[str, Any]
    state_schema_version: StrictInt = Field(1, ge=1, le=INT)


class SnapshotOut(BaseModel):
    aggregate_type: str
    aggregate_id: str
    version: int
    state: dict[str, Any]
    state_schema_version: int
    taken_at: datetime


class ErrorOut(BaseModel):
    error: str
    message: str


class ConflictOut(ErrorOut):
    actual_version: int
    expected_version: int | str


class ProjectionsOut(BaseModel):
    projections: list[dict[str, Any]]


def event_to_dict(event: RecordedEvent) -> dict[str, Any]:
    return {"id": str(event.id), "type": event.type, "stream_id": event.aggregate_id,
            "version": event.version, "payload": event.payload, "metadata": event.metadata,
            "timestamp": event.timestamp.isoformat(), "position": event.position,
            "schema_version": event.schema_version}


def check_json(value: Any, where: str, depth: int = 0) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (NUL characters, lone surrogates) and
    absurd nesting, as a 400 instead of a database error."""
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            check_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, where, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**300:
        raise ValidationError(f"{where} has an integer too large to store")


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ValidationError(f"{where} contains a NUL character (\\u0000), which cannot be "
                              "stored; remove it or encode the value (e.g. base64)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{where} contains an unpaired UTF-16 surrogate; send valid "
                              "Unicode") from None


def error_reply(exc: EventStoreError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for a store error, the same on every path."""
    message = str(exc)
    if isinstance(exc, ValidationError):
        return 400, {"error": "validation_error", "message": message}
    if isinstance(exc, ConcurrencyError):
        expected = exc.expected if isinstance(exc.expected, int | str) else str(exc.expected)
        return 409, {"error": "conflict", "message": message,
                     "actual_version": exc.actual_version, "expected_version": expected}
    if isinstance(exc, StoreUnavailable):
        return 503, {"error": "unavailable", "message": message}
    if isinstance(exc, SchemaError):
        return 503, {"error": "schema", "message": message}
    name = type(exc).__name__
    if name == "SnapshotUnavailable":
        return 503, {"error": "snapshot_store_unavailable", "message": message}
    if name == "CorruptSnapshot":
        return 500, {"error": "corrupt_snapshot", "message": message}
    log.error("unexpected store error", exc_info=exc)
    return 500, {"error": "internal", "message": f"{name}: {message}"}
