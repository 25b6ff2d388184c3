"""Event value types shared by every backend: what is appended and what is read back."""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventstore.errors import ValidationError

JSONObject = dict[str, Any]

#: Stream ids: letters, digits and a few separators; no whitespace, quotes or slashes,
#: so that an id is safe in a URL path, a log line and a metric label.
STREAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]{0,199}$")
#: Event types look like class names, optionally dotted or namespaced ("bank.Deposited").
EVENT_TYPE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
#: The metadata key that says which aggregate type a stream belongs to. `Repository.save`
#: sets it on every event it appends (locally or through the HTTP client); the store pods
#: snapshot, serve and retain only streams whose events carry a registered type.
AGGREGATE_TYPE_KEY = "aggregate_type"


class ExpectedVersion(enum.Enum):
    """Symbolic expectations for `append`; an int means 'the stream is at exactly n'."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"


Expected = int | ExpectedVersion

# UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, the version (7), 12 random bits,
# the variant (0b10), 62 random bits.
_UUID7_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID7_MARK = (0x7 << 76) | (0x2 << 62)


def uuid7() -> UUID:
    """A new time-ordered event id (UUIDv7, RFC 9562), NewEvent's default.

    Why not uuid4: every event id goes into a unique index. Random ids land on a random
    page of it, so once the index outgrows memory each insert reads a page, and after
    every checkpoint each first touch of a page writes the whole page to the WAL. Ids
    that start with the time land on the index's newest pages. On a store holding 2
    million events (10-event appends right after a checkpoint), uuid4 ids wrote 54 KiB
    of WAL per append and uuid7 ids 8.3 KiB (`python3 -m bench.run --only ids`). Ids of
    one millisecond are ordered at random among themselves and differ in 74 random bits
    (uuid4: 122)."""
    now_ms = time.time_ns() // 1_000_000
    return UUID(int=(now_ms << 80 | int.from_bytes(os.urandom(10))) & _UUID7_CLEAR
                | _UUID7_MARK)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. `id` makes a re-sent append idempotent; the default is a new
    time-ordered one (`uuid7`)."""

    type: str
    payload: JSONObject
    metadata: JSONObject = field(default_factory=dict)
    id: UUID = field(default_factory=uuid7)
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its place in its stream (`version`) and in the log (`position`).

    Positions increase in the order readers of the global log see events; they are not
    dense (see the PostgreSQL backend for why).
    """

    id: UUID
    type: str
    aggregate_id: str
    version: int
    payload: JSONObject
    metadata: JSONObject
    timestamp: datetime
    position: int
    schema_version: int = 1

    @property
    def stream_id(self) -> str:
        return self.aggregate_id


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append stored: the stream's new version and each event's position."""

    stream_id: str
    first_version: int
    next_expected_version: int
    positions: tuple[int, ...]
    #: True when every event id was already stored by an earlier identical append.
    idempotent: bool = False


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """One stream's part of `EventStore.append_many`: its events and its own expectation."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: Expected = ExpectedVersion.ANY


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A named consumer's position in the global log: the last position it has handled.

    Stored with `save_checkpoint`, or atomically with events by `append_many`. A
    checkpoint only moves forward: see `CheckpointConflict`.
    """

    consumer: str
    position: int


def validate_stream_id(stream_id: object) -> str:
    if not isinstance(stream_id, str) or not stream_id:
        raise ValidationError("stream id must be a non-empty string")
    if len(stream_id) > 200:
        raise ValidationError(f"stream id is {len(stream_id)} characters long; the limit is 200")
    if not STREAM_ID_PATTERN.fullmatch(stream_id):
        raise ValidationError(
            f"stream id {stream_id[:60]!r} has characters that are not allowed: use letters, "
            "digits and _ . : @ + = ~ - (and start with a letter, digit or _)"
        )
    return stream_id


def validate_expected(expected: object) -> Expected:
    if isinstance(expected, ExpectedVersion):
        return expected
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise ValidationError(
            f"expected_version must be an int >= 0 or an ExpectedVersion, not {expected!r}"
        )
    if expected < 0:
        raise ValidationError(
            f"expected_version {expected} is negative: use 0 or ExpectedVersion.NO_STREAM for "
            "a new stream, ExpectedVersion.ANY to skip the check"
        )
    return expected


def validate_checkpoint(checkpoint: object) -> Checkpoint:
    if not isinstance(checkpoint, Checkpoint):
        raise ValidationError(f"checkpoint must be a Checkpoint, not {type(checkpoint).__name__}")
    consumer = checkpoint.consumer
    if not isinstance(consumer, str) or not STREAM_ID_PATTERN.fullmatch(consumer):
        raise ValidationError(
            f"consumer name {str(consumer)[:60]!r} is not allowed: use 1-200 letters, digits "
            "and _ . : @ + = ~ - (the rules of stream ids)")
    position = checkpoint.position
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**63:
        raise ValidationError(f"checkpoint position must be an int >= 0, not {position!r}")
    return checkpoint
