"""JSON encoding of payloads and metadata, and the input checks every backend shares."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventstore.errors import ValidationError
from eventstore.events import (
    EVENT_TYPE_PATTERN,
    AppendResult,
    Checkpoint,
    Expected,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    validate_expected,
    validate_stream_id,
)

#: One encoder for every payload: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
#: In encoded JSON, a string (skipped whole) or a float in exponent notation with a
#: positive exponent (group 1), the form Python writes for a float of 1e16 or more.
_STRING_OR_EXPONENT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|(-?\d+(?:\.\d+)?e\+\d+)')
#: What such a float contains; most payloads have none, strings included. (A pattern
#: that starts with a literal is searched for quickly: 0.6 ms for 450 KB, 6 ms with \d
#: first.)
_EXPONENT = re.compile(r"e\+\d")


def _positional(match: re.Match[str]) -> str:
    number = match.group(1)
    return match.group(0) if number is None else f"{Decimal(number):f}.0"


def floats_stay_floats(text: str) -> str:
    """Rewrite floats written as 1e+16 as 10000000000000000.0.

    PostgreSQL's jsonb keeps a number as `numeric` and writes it back in positional
    notation with the scale it was given: `1e+16` comes back as `10000000000000000`, which
    any JSON decoder reads as an int (1.5e+300 as an int of 301 digits), while
    `10000000000000000.0` comes back as written, a float equal to the one appended. Both
    backends store the same text."""
    if "e+" not in text or not _EXPONENT.search(text):  # the usual case
        return text
    return _STRING_OR_EXPONENT.sub(_positional, text)


def encode_json(value: Any, what: object) -> str:
    """Encode a payload or metadata object, refusing anything JSON cannot carry faithfully
    and what PostgreSQL's jsonb cannot store (so both backends accept the same events).
    `what` names the value in a refusal; it is made a string only then (see _Field)."""
    if type(value) is dict and not value:  # most metadata: no encoder needed
        return "{}"
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object (a dict), not {type(value).__name__}")
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"{what} is not JSON-serializable ({exc}). Convert it to JSON types "
            "(dict, list, str, int, float, bool, None) before appending."
        ) from exc
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to encode") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValidationError(f"{what} contains a NUL character (\\u0000), which cannot be "
                              "stored; remove it or encode the value (e.g. base64)")
    return floats_stay_floats(text)


def check_append(
    stream_id: str, events: Sequence[NewEvent], max_payload_bytes: int, max_events: int
) -> list[tuple[str, str]]:
    """Validate an append's input and return each event's encoded (payload, metadata)."""
    validate_stream_id(stream_id)
    if isinstance(events, NewEvent) or not isinstance(events, Sequence):
        raise ValidationError("events must be a list of NewEvent")
    if not events:
        raise ValidationError(f"append to {stream_id!r} has no events")
    if len(events) > max_events:
        raise ValidationError(
            f"append to {stream_id!r} has {len(events)} events; the limit is {max_events} "
            "per append: split it into several appends"
        )
    encoded: list[tuple[str, str]] = []
    seen_ids: set[int] = set()  # UUID.int: its hash is C code, a UUID's is Python's
    check_ids = len(events) > 1
    # This loop runs once per event of every append, so the common case takes the
    # cheapest test first (exact types, known event types, empty metadata) and every
    # refusal's text is built only when it is raised (_check_type, _Field ...).
    for index, event in enumerate(events):
        if type(event) is not NewEvent and not isinstance(event, NewEvent):
            raise ValidationError(f"{_where(index, stream_id)} is a {type(event).__name__}, "
                                  "not a NewEvent")
        event_type = event.type
        if type(event_type) is not str or event_type not in _TYPES_SEEN:
            _check_type(event_type, index, stream_id)
        schema_version = event.schema_version
        if type(schema_version) is not int or schema_version < 1:
            _check_schema_version(schema_version, index, stream_id)
        event_id = event.id
        if type(event_id) is not UUID and not isinstance(event_id, UUID):
            raise ValidationError(f"{_where(index, stream_id)} has id {event_id!r}: an event id "
                                  "is a uuid.UUID (the default, events.uuid7(), is a new one)")
        if check_ids:
            if event_id.int in seen_ids:
                raise ValidationError(f"{_where(index, stream_id)} repeats event id {event_id} "
                                      "within one append")
            seen_ids.add(event_id.int)
        payload = encode_json(event.payload, _Field("payload", index, stream_id))
        given = event.metadata
        metadata = "{}" if type(given) is dict and not given else \
            encode_json(given, _Field("metadata", index, stream_id))
        if payload.isascii() and metadata.isascii():  # O(1): one byte per character
            size = len(payload) + len(metadata)
        else:
            try:
                size = len(payload.encode()) + len(metadata.encode())
            except UnicodeEncodeError:
                raise ValidationError(f"{_where(index, stream_id)} contains an unpaired UTF-16 "
                                      "surrogate, which is not valid Unicode and cannot be "
                                      "stored") from None
        if size > max_payload_bytes:
            raise ValidationError(
                f"{_where(index, stream_id)} is {size} bytes of JSON; the limit is "
                f"{max_payload_bytes} bytes. Store large blobs elsewhere and put a reference "
                "in the event."
            )
        encoded.append((payload, metadata))
    return encoded


#: Event types that passed _check_type (most stores use a few dozen); bounded, so that
#: a stream of distinct types cannot grow it without limit.
_TYPES_SEEN: set[str] = set()
_TYPES_SEEN_MAX = 4096


def _check_type(event_type: object, index: int, stream_id: str) -> None:
    if not isinstance(event_type, str) or not event_type:
        raise ValidationError(f"{_where(index, stream_id)} has no type")
    if not EVENT_TYPE_PATTERN.fullmatch(event_type):
        raise ValidationError(
            f"{_where(index, stream_id)} has type {event_type[:60]!r}: a type is a name "
            "such as 'Deposited' or 'bank.Deposited' (letters, digits, _ . : -; at most 200)"
        )
    if type(event_type) is str and len(_TYPES_SEEN) < _TYPES_SEEN_MAX:
        _TYPES_SEEN.add(event_type)


def _check_schema_version(schema_version: object, index: int, stream_id: str) -> None:
    if isinstance(schema_version, bool) or not isinstance(schema_version, int) \
            or schema_version < 1:
        raise ValidationError(f"{_where(index, stream_id)} has schema_version "
                              f"{schema_version!r}; use 1 or more")


def _where(index: int, stream_id: str) -> str:
    return f"event {index} of the append to {stream_id!r}"


class _Field:
    """Names a payload or metadata in a refusal. Built for every event of every append,
    so its text is composed only when a refusal prints it."""

    __slots__ = ("index", "name", "stream_id")

    def __init__(self, name: str, index: int, stream_id: str) -> None:
        self.name, self.index, self.stream_id = name, index, stream_id

    def __str__(self) -> str:
        return f"{self.name} of {_where(self.index, self.stream_id)}"


def check_read_stream(
    stream_id: str, from_version: int, to_version: int | None, limit: int | None
) -> None:
    validate_stream_id(stream_id)
    for name, value in (("from_version", from_version), ("to_version", to_version),
                        ("limit", limit)):
        if value is None and name != "from_version":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name != "limit" else 1):
            raise ValidationError(f"{name} must be an int >= {0 if name != 'limit' else 1}, not {value!r}")


#: The most event types one filtered read of the global log may name.
MAX_FILTER_TYPES = 100
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]{0,199}$")


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A checked read of the global log (see EventStore.read_all)."""

    from_position: int
    to_position: int | None
    limit: int
    types: tuple[str, ...]
    stream_prefix: str | None
    backwards: bool


def check_read_all(from_position: int, limit: int, to_position: int | None = None,
                   types: Sequence[str] | None = None, stream_prefix: str | None = None,
                   backwards: bool = False) -> LogQuery:
    if isinstance(from_position, bool) or not isinstance(from_position, int) or from_position < 0:
        raise ValidationError(f"from_position must be an int >= 0, not {from_position!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
        raise ValidationError(f"limit must be an int from 1 to 100000, not {limit!r}")
    if to_position is not None and (isinstance(to_position, bool) or
                                    not isinstance(to_position, int) or to_position < 0):
        raise ValidationError(f"to_position must be an int >= 0 or None, not {to_position!r}")
    if isinstance(types, str) or (types is not None and not isinstance(types, Sequence)):
        raise ValidationError(f"types must be a list of event types, not {types!r}")
    checked = tuple(dict.fromkeys(types or ()))
    if len(checked) > MAX_FILTER_TYPES:
        raise ValidationError(f"types names {len(checked)} event types; the limit is "
                              f"{MAX_FILTER_TYPES} per read")
    for name in checked:
        if not isinstance(name, str) or not EVENT_TYPE_PATTERN.fullmatch(name):
            raise ValidationError(f"types has {str(name)[:60]!r}, which is not an event type")
    if stream_prefix is not None and (not isinstance(stream_prefix, str) or
                                      not _PREFIX_PATTERN.fullmatch(stream_prefix)):
        raise ValidationError(
            f"stream_prefix {str(stream_prefix)[:60]!r} is not the start of a stream id "
            "(letters, digits and _ . : @ + = ~ -, at most 200)")
    if not isinstance(backwards, bool):
        raise ValidationError(f"backwards must be a bool, not {backwards!r}")
    return LogQuery(from_position, to_position, limit, checked, stream_prefix or None, backwards)


def check_append_many(appends: Sequence[StreamAppend], max_payload_bytes: int, max_events: int
                      ) -> list[tuple[StreamAppend, Expected, list[tuple[str, str]]]]:
    """Validate an append_many's input: each stream's append as for `append`, every stream
    once, every event id once, at most `max_events` events in all."""
    if isinstance(appends, StreamAppend) or not isinstance(appends, Sequence):
        raise ValidationError("appends must be a list of StreamAppend")
    out = []
    streams: set[str] = set()
    ids: set[UUID] = set()
    total = 0
    for index, item in enumerate(appends):
        if not isinstance(item, StreamAppend):
            raise ValidationError(f"append {index} is a {type(item).__name__}, not a StreamAppend")
        encoded = check_append(item.stream_id, item.events, max_payload_bytes, max_events)
        expected = validate_expected(item.expected_version)
        if item.stream_id in streams:
            raise ValidationError(f"stream {item.stream_id!r} appears twice in one append_many: "
                                  "put all of a stream's events in one StreamAppend")
        streams.add(item.stream_id)
        for event in item.events:
            if event.id in ids:
                raise ValidationError(f"event id {event.id} appears twice in one append_many")
            ids.add(event.id)
        total += len(item.events)
        out.append((item, expected, encoded))
    if total > max_events:
        raise ValidationError(f"append_many has {total} events; the limit is {max_events} in "
                              "all: split it")
    return out


def earlier_appends(appends: Sequence[StreamAppend],
                    stored: Sequence[tuple[str, str, int, int]]) -> list[AppendResult] | None:
    """As `earlier_append`, for a whole append_many: the first results when every one of
    its appends is stored (a re-send), None when none is; ValidationError otherwise."""
    by_id = {str(row[0]): row for row in stored}
    results = []
    for item in appends:
        ids = [str(e.id) for e in item.events]
        rows = sorted((by_id[i] for i in ids if i in by_id), key=lambda r: int(r[2]))
        results.append(earlier_append(item.stream_id, ids, rows))
    if all(r is None for r in results):
        return None
    if any(r is None for r in results):
        raise ValidationError(
            "append_many: some of its appends are already stored and others are not, so this "
            "is not a re-send of one earlier append_many. Give new events new ids; re-send "
            "an append_many only unchanged.")
    return [r for r in results if r is not None]


def earlier_append(stream_id: str, ids: Sequence[str],
                   stored: Sequence[tuple[str, str, int, int]]) -> AppendResult | None:
    """Decide what a re-sent append gets, from the rows (id, stream, version, position) in
    version order already stored under its event ids.

    None when none is stored (a new append); the first result when exactly these events
    are (an idempotent re-send); ValidationError when only some are, or elsewhere.
    """
    if not stored:
        return None
    if [str(r[0]) for r in stored] == list(ids) and all(r[1] == stream_id for r in stored):
        return AppendResult(stream_id=stream_id, first_version=int(stored[0][2]),
                            next_expected_version=int(stored[-1][2]),
                            positions=tuple(int(r[3]) for r in stored), idempotent=True)
    raise ValidationError(
        f"append to {stream_id!r}: some of its event ids are already stored, but not as this "
        "exact append (different stream, order or companions). Give new events new ids; "
        "re-send an append only unchanged."
    )


def conflicts(expected: Expected, current: int) -> bool:
    """True when a stream at version `current` does not meet `expected`."""
    if expected is ExpectedVersion.ANY:
        return False
    if expected is ExpectedVersion.NO_STREAM:
        return current > 0
    if expected is ExpectedVersion.STREAM_EXISTS:
        return current == 0
    return expected != current


def check_resent_checkpoint(checkpoint: Checkpoint | None, stored: int | None) -> None:
    """A re-sent append_many is idempotent only with its checkpoint already in place: its
    events stored without that checkpoint make it a different unit, refused."""
    if checkpoint is not None and (stored is None or stored < checkpoint.position):
        raise ValidationError(
            f"append_many: its events are already stored, but consumer "
            f"{checkpoint.consumer!r} is at {stored}, not at or past {checkpoint.position}: "
            "this is not a re-send of the append_many that stored them")
