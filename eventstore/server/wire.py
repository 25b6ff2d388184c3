"""The JSON shapes of the HTTP API: pydantic models that validate requests and describe
both directions in the OpenAPI document, and the body of every error reply."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio.to_thread
import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from pydantic.json_schema import SkipJsonSchema

from eventstore import errors
from eventstore.errors import (
    EventStoreError,
    InvalidRequest,
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


class StreamVersionOut(BaseModel):
    stream_id: str
    version: int = Field(description="The stream's current version, its archived events "
                                     "counted; 0 when it does not exist.")


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


def _optional(description: str) -> Any:
    """A field a reply carries only for some errors: absent (never null) otherwise."""
    def drop_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
    return Field(None, description=description, json_schema_extra=drop_default)


class ProblemOut(BaseModel):
    """Where and why a request did not match the API's schema (never the input itself)."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int]
    msg: str
    type: str


class SettingsProblemOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    key: str
    reason: str


class _ErrorFields(BaseModel):
    """What every error reply carries (eventstore.errors.error_reply)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="The error's code, e.g. conflict, validation_error, "
                                   "unavailable (one per class in eventstore/errors.py).")
    message: str


class ErrorOut(_ErrorFields):
    """Every error reply (eventstore.errors.error_reply): `error` is the error class's
    code, `message` says what to do; the other fields come with the classes that carry
    them and are absent otherwise. No other field is ever sent."""

    details: list[ProblemOut] | SkipJsonSchema[None] = _optional(
        "invalid_request (422): each problem, at most 20.")
    stream_id: str | SkipJsonSchema[None] = _optional("conflict (409).")
    actual_version: int | SkipJsonSchema[None] = _optional("conflict (409).")
    expected_version: int | str | SkipJsonSchema[None] = _optional(
        "conflict (409): a version, or any, no_stream, stream_exists.")
    consumer: str | SkipJsonSchema[None] = _optional("checkpoint_conflict (409).")
    position: int | SkipJsonSchema[None] = _optional(
        "checkpoint_conflict (409): the checkpoint refused.")
    stored_position: int | SkipJsonSchema[None] = _optional(
        "checkpoint_conflict (409): the checkpoint stored.")
    errors: list[SettingsProblemOut] | SkipJsonSchema[None] = _optional(
        "invalid_settings (400): every refusal of a settings edit.")


class InvalidRequestOut(_ErrorFields):
    """422 invalid_request: the request does not match the API's schema."""

    details: list[ProblemOut]


class ConflictOut(_ErrorFields):
    """409 conflict: the stream's version did not match the expected one."""

    stream_id: str
    actual_version: int
    expected_version: int | str


class CheckpointConflictOut(_ErrorFields):
    """409 checkpoint_conflict: the stored checkpoint is at or past the one given."""

    consumer: str
    position: int
    stored_position: int


class ProjectionsOut(BaseModel):
    projections: list[dict[str, Any]]


def _event_fields(event: RecordedEvent) -> dict[str, Any]:
    """An event's reply object, its id and time still a UUID and a datetime."""
    return {"id": event.id, "type": event.type, "stream_id": event.aggregate_id,
            "version": event.version, "payload": event.payload, "metadata": event.metadata,
            "timestamp": event.timestamp, "position": event.position,
            "schema_version": event.schema_version}


def event_to_dict(event: RecordedEvent) -> dict[str, Any]:
    fields = _event_fields(event)
    fields["id"] = str(event.id)
    fields["timestamp"] = event.timestamp.isoformat()
    return fields


def event_json(event: RecordedEvent) -> bytes:
    """`event_to_dict` as JSON, for pages of reads: orjson writes the id and the time
    itself, in the same forms (0.7 us an event against 9.2 us for json.dumps of the dict).
    An integer past 64 bits, which orjson refuses, takes json.dumps."""
    try:
        return orjson.dumps(_event_fields(event))
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(event_to_dict(event)).encode()


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


# -- duplicate keys ---------------------------------------------------------------------
# JSON parsers keep one value of a repeated key (pydantic and json.loads the last, others
# the first), so `{"amount": 1, "amount": 1000}` means different things to different
# readers of the stored event. The server refuses such bodies. The check scans the body
# once more with the C parser and a hook per object (about 2 us for a 1-event append, see
# the README's Security section); only a refused body pays for finding where the key was.

class _DuplicateKey(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _DuplicateKey
    return value


# One decoder for every call: json.loads(..., object_pairs_hook=) builds a new decoder and
# scanner each time, which cost more than the parse. The C scanner is safe to share across
# threads (its key memo is only a cache), like json's own default decoder.
_SCAN = json.JSONDecoder(object_pairs_hook=_unique).scan_once  # type: ignore[attr-defined]


def has_duplicate_keys(body: bytes) -> bool:
    """True when some JSON object in `body` repeats a key, or when `body` is not JSON that
    the standard parser reads (the caller's careful path, `duplicate_key`, decides those).

    Only the first JSON value is scanned: text after it is the validator's to refuse."""
    try:
        _SCAN(body.decode().lstrip(" \t\n\r"), 0)
    except _DuplicateKey:
        return True
    except (ValueError, RecursionError, StopIteration):
        # Not UTF-8 or not JSON, or an int past Python's 4300-digit limit.
        return True
    return False


class _Repeated(dict[str, Any]):
    """An object that repeated `key` (the careful path's marker)."""

    key = ""


def _mark(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    marked = _Repeated(value)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _find(value: Any, where: str) -> tuple[str, str] | None:
    """The first (in document order) repeated key and the path of its object."""
    if isinstance(value, _Repeated):
        return value.key, where
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if _NAME.fullmatch(k) else f"{where}[{json.dumps(k[:60])}]",
                  item) for k, item in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    for path, item in items:
        found = _find(item, path)
        if found is not None:
            return found
    return None


def duplicate_key(body: bytes) -> tuple[str, str] | None:
    """(key, path of its object such as `events[0].payload`, "" for the top level) of the
    first repeated key in `body`, or None (also when `body` is not JSON: the validator
    explains that)."""
    if not has_duplicate_keys(body):
        return None
    try:
        # Numbers are not needed to find keys; len() also spares Python's 4300-digit limit.
        value = json.loads(body, object_pairs_hook=_mark, parse_int=len, parse_float=len,
                           parse_constant=len)
    except (ValueError, RecursionError):
        return None
    found = _find(value, "")
    return None if found is None else (found[0], found[1].lstrip("."))


def refuse_duplicate_keys(body: bytes) -> None:
    """Raise ValidationError (a 400) naming the first repeated key and where it was."""
    found = duplicate_key(body)
    if found is not None:
        key, where = found
        raise ValidationError(
            f"duplicate key {json.dumps(key[:100])} in {where or 'the top-level object'}: "
            "send each key of a JSON object once (parsers disagree on which value a "
            "repeated key keeps)")


async def _no_duplicate_keys(request: Request) -> None:
    body = await request.body()  # the framework has read it already: this is its copy
    if len(body) > 64 * 1024:  # a long scan stays off the event loop
        await anyio.to_thread.run_sync(refuse_duplicate_keys, body)
    else:
        refuse_duplicate_keys(body)


#: A route dependency for every route with a JSON body (FastAPI parses it with json.loads,
#: which keeps the last value of a repeated key): a 400 naming the key instead.
NO_DUPLICATE_KEYS = Depends(_no_duplicate_keys)


def error_reply(exc: EventStoreError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for a library error, the same on every path: the
    class's own status and code (see eventstore/errors.py)."""
    status, body = errors.error_reply(exc)
    if status == 500:  # not a refusal nor an outage: the operator wants the traceback
        log.error("store error answered %d", status, exc_info=exc)
    if exc.code == EventStoreError.code:
        # No class of its own (the root, or an application's error): say which it was.
        body["message"] = f"{type(exc).__name__}: {body['message']}"
    return status, body


def invalid_request(problems: Sequence[Any]) -> InvalidRequest:
    """FastAPI's 422 (pydantic's errors) as the library error that reports it: where and
    why, at most 20 problems, never echoing the input (which may be megabytes)."""
    details = [{"loc": list(e.get("loc", ())), "msg": _explain(e.get("msg", "")),
                "type": e.get("type", "")} for e in list(problems)[:20]]
    where = "; ".join(": ".join(filter(None, (".".join(map(str, d["loc"])), d["msg"])))
                      for d in details[:5])
    return InvalidRequest(where[:2000], details)


def _explain(message: str) -> str:
    """The JSON parser's message, or a clearer one where it misleads: a lone UTF-16
    surrogate escape (\\ud800 to \\udfff) is reported as "unexpected end of hex escape"
    or, for a trailing one, as a "leading" surrogate."""
    if "unexpected end of hex escape" in message or "surrogate" in message:
        position = message.rsplit(" at ", 1)[-1] if " at line " in message else ""
        return ("Invalid JSON: an unpaired UTF-16 surrogate escape (\\ud800 to \\udfff)"
                + (f" at {position}" if position else "") + "; send valid Unicode")
    return message
