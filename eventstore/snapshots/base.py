"""The snapshot-store contract, the Snapshot record, and the encode/decode both backends share.

Snapshots are an optimisation: a load can always fall back to replaying events. So the
contract is built to fail soft: a store that is down raises SnapshotUnavailable (which the
Repository catches), and a stored snapshot that cannot be decoded is skipped with a warning
rather than trusted or raised.
"""

from __future__ import annotations

import abc
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventstore.errors import CorruptSnapshot as CorruptSnapshot  # re-exported
from eventstore.errors import SnapshotUnavailable as SnapshotUnavailable  # re-exported
from eventstore.errors import ValidationError

log = logging.getLogger("eventstore.snapshots")

#: Snapshots kept per aggregate unless a store is told otherwise.
DEFAULT_KEEP = 5
#: Seconds a store waits for its server before raising SnapshotUnavailable.
DEFAULT_TIMEOUT_S = 2.0

#: The fields of a stored snapshot, in both backends (the Mongo document's keys, the
#: SQLite row mapped to a dict). `state` is a JSON object, `taken_at` a UTC datetime.
FIELDS = ("aggregate_type", "aggregate_id", "version", "state", "state_schema_version", "taken_at")


@dataclass(frozen=True)
class Snapshot:
    """An aggregate's state as of `version`, so a load can skip replaying events 1..version.

    `taken_at` is UTC and stored with millisecond precision (MongoDB's date resolution;
    the SQLite store truncates the same way so both backends answer alike).
    """

    aggregate_type: str
    aggregate_id: str
    version: int
    state: dict[str, Any]
    state_schema_version: int
    taken_at: datetime


class SnapshotStore(abc.ABC):
    """Keeps the last `keep` snapshots of each aggregate, newest by version first.

    Pruning counts stored integer versions without decoding states (saves stay cheap
    however large the state), so a corrupt snapshot occupies a slot until newer saves
    push it out; one whose version is not even a number is left for `delete`.

    Use `SnapshotStore.connect(url)` to get the backend named by the URL's scheme.
    """

    keep: int = DEFAULT_KEEP

    @staticmethod
    def connect(url: str, **options: Any) -> SnapshotStore:
        """Open the backend named by `url`.

        mongodb://host[:port]/db or mongodb+srv://... -> MongoSnapshotStore (db defaults to
        "eventstore"); sqlite:///relative.db, sqlite:////absolute.db or sqlite://:memory:
        -> SQLiteSnapshotStore. Options (keep=, timeout_s=, ...) go to the backend.
        """
        if not isinstance(url, str):
            raise ValidationError(f"snapshot store URL must be a string, not {type(url).__name__}")
        if url.startswith(("mongodb://", "mongodb+srv://")):
            from eventstore.snapshots.mongo import MongoSnapshotStore

            return MongoSnapshotStore(url, **options)
        if url.startswith("sqlite://"):
            from eventstore.snapshots.sqlite import SQLiteSnapshotStore

            return SQLiteSnapshotStore.from_url(url, **options)
        scheme = url.split("://", 1)[0] if "://" in url else url
        raise ValidationError(
            f"unsupported snapshot store URL {scheme!r}: use mongodb://host:27017/dbname "
            "(or mongodb+srv://...), sqlite:///path/to/snapshots.db or sqlite://:memory:"
        )

    @abc.abstractmethod
    def save(self, snapshot: Snapshot) -> None:
        """Store `snapshot`, replacing one of the same aggregate and version (idempotent),
        then prune the aggregate's history to the newest `keep` versions.

        ValidationError for a snapshot that cannot be stored; SnapshotUnavailable when the
        store is down.
        """

    @abc.abstractmethod
    def latest(
        self,
        aggregate_type: str,
        aggregate_id: str,
        at_or_below_version: int | None = None,
        taken_at_or_before: datetime | None = None,
    ) -> Snapshot | None:
        """The newest decodable snapshot with version <= at_or_below_version and taken at or
        before `taken_at_or_before` (each when given), or None.

        Undecodable snapshots are skipped with a WARNING and the next older one is used.
        """

    @abc.abstractmethod
    def history(self, aggregate_type: str, aggregate_id: str) -> list[Snapshot]:
        """Every decodable snapshot kept for the aggregate, newest version first."""

    @abc.abstractmethod
    def delete(self, aggregate_type: str, aggregate_id: str) -> int:
        """Remove every snapshot of the aggregate (corrupt ones too). Returns how many."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the store answers; never raises."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- shared validation, encoding and decoding ------------------------------------------------


def check_keep(keep: object) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValidationError(f"keep must be an integer >= 1 (snapshots kept per aggregate), "
                              f"not {keep!r}")
    return keep


def check_key(aggregate_type: object, aggregate_id: object) -> None:
    for name, value in (("aggregate_type", aggregate_type), ("aggregate_id", aggregate_id)):
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{name} must be a non-empty string, not {value!r}")


def check_query(at_or_below_version: object, taken_at_or_before: object) -> datetime | None:
    """Validate `latest`'s bounds; returns taken_at_or_before as an aware UTC datetime."""
    if at_or_below_version is not None and (
        isinstance(at_or_below_version, bool) or not isinstance(at_or_below_version, int)
    ):
        raise ValidationError(f"at_or_below_version must be an integer or None, "
                              f"not {at_or_below_version!r}")
    if taken_at_or_before is None:
        return None
    if not isinstance(taken_at_or_before, datetime) or taken_at_or_before.tzinfo is None:
        raise ValidationError("taken_at_or_before must be a timezone-aware datetime "
                              f"(e.g. datetime.now(UTC)), not {taken_at_or_before!r}")
    return taken_at_or_before.astimezone(UTC)


def to_millis(moment: datetime) -> datetime:
    """`moment` in UTC, truncated to whole milliseconds (what MongoDB can store)."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, floored, in exact integer arithmetic (a float
    timestamp() * 1000 can land a millisecond low)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def state_to_json(state: Mapping[str, Any]) -> str:
    """The compact JSON text of a state, as stored where a document is not an option."""
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """Validate `snapshot` and return its stored form: FIELDS as plain JSON-able values, with
    `taken_at` an aware UTC datetime truncated to milliseconds.

    The state is round-tripped through JSON so that every backend stores and returns the
    same thing (tuples become lists, no NaN, no non-string keys): what a load restores
    never depends on the backend it came from.
    """
    if not isinstance(snapshot, Snapshot):
        raise ValidationError(f"expected a Snapshot, not {type(snapshot).__name__}")
    check_key(snapshot.aggregate_type, snapshot.aggregate_id)
    for name, lowest in (("version", 1), ("state_schema_version", 0)):
        value = getattr(snapshot, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < 2**63:
            raise ValidationError(f"snapshot {name} must be an integer >= {lowest}, not {value!r}")
    if not isinstance(snapshot.state, dict):
        raise ValidationError(f"snapshot state must be a dict (a JSON object), "
                              f"not {type(snapshot.state).__name__}")
    try:
        state = json.loads(json.dumps(snapshot.state, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"the state of {snapshot.aggregate_type} {snapshot.aggregate_id} at version "
            f"{snapshot.version} is not JSON-serializable: {exc}. Override the aggregate's "
            "snapshot_state() to return plain JSON values.") from exc
    if not isinstance(snapshot.taken_at, datetime) or snapshot.taken_at.tzinfo is None:
        raise ValidationError(f"snapshot taken_at must be a timezone-aware datetime, "
                              f"not {snapshot.taken_at!r}")
    return {
        "aggregate_type": snapshot.aggregate_type,
        "aggregate_id": snapshot.aggregate_id,
        "version": snapshot.version,
        "state": state,
        "state_schema_version": snapshot.state_schema_version,
        "taken_at": to_millis(snapshot.taken_at),
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_snapshot(doc: Mapping[str, Any]) -> Snapshot:
    """Turn a stored document into a Snapshot, or raise CorruptSnapshot saying why.

    Accepts what either backend returns: `state` as a JSON object or as the JSON text of
    one; `taken_at` as a datetime (naive ones are taken as UTC, as pymongo returns them
    without tz_aware) or as epoch milliseconds. Integral
    floats (1.0) pass as ints, because some servers and tools write numbers as doubles.
    """
    missing = [name for name in FIELDS if name not in doc]
    if missing:
        raise CorruptSnapshot(f"missing field(s) {', '.join(missing)}")
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in ("aggregate_type", "aggregate_id"):
        value = doc[name]
        if not isinstance(value, str) or not value:
            problems.append(f"{name} is {value!r}, not a non-empty string")
        values[name] = value
    for name, lowest in (("version", 1), ("state_schema_version", 0)):
        value = doc[name]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not _is_int(value) or value < lowest:
            problems.append(f"{name} is {value!r}, not an integer >= {lowest}")
        values[name] = value
    state = doc["state"]
    if isinstance(state, str):  # the JSON text form (SQLite; Mongo when BSON cannot hold it)
        try:
            state = json.loads(state)
        except ValueError as exc:
            problems.append(f"state is not valid JSON ({exc})")
            state = {}
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        problems.append(f"state is a {type(state).__name__}, not a JSON object")
    taken_at = doc["taken_at"]
    if _is_int(taken_at):
        try:
            taken_at = datetime.fromtimestamp(taken_at / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            problems.append(f"taken_at {taken_at!r} is out of range")
    elif isinstance(taken_at, datetime):
        taken_at = taken_at.replace(tzinfo=UTC) if taken_at.tzinfo is None else taken_at.astimezone(UTC)
    else:
        problems.append(f"taken_at is a {type(taken_at).__name__}, not a date")
    if problems:
        raise CorruptSnapshot("; ".join(problems))
    return Snapshot(aggregate_type=values["aggregate_type"], aggregate_id=values["aggregate_id"],
                    version=values["version"], state=dict(state),
                    state_schema_version=values["state_schema_version"], taken_at=taken_at)


def decode_or_warn(doc: Mapping[str, Any], aggregate_type: str, aggregate_id: str) -> Snapshot | None:
    """decode_snapshot, but a corrupt document is logged at WARNING and answered with None."""
    try:
        return decode_snapshot(doc)
    except CorruptSnapshot as exc:
        log.warning("skipping corrupt snapshot of %s %s at version %r: %s; an older snapshot "
                    "or a replay from events is used instead",
                    aggregate_type, aggregate_id, doc.get("version", "?"), exc)
        return None


def select_latest(docs: Iterable[Mapping[str, Any]], aggregate_type: str, aggregate_id: str,
                  at_or_below_version: int | None = None,
                  taken_at_or_before: datetime | None = None) -> Snapshot | None:
    """The first decodable snapshot in `docs` (newest first) within `latest`'s bounds.

    The bounds are checked again after decoding, so a document whose stored field types
    slipped past the backend's own filter is still never returned.
    """
    for doc in docs:
        snapshot = decode_or_warn(doc, aggregate_type, aggregate_id)
        if snapshot is not None and matches(snapshot, at_or_below_version, taken_at_or_before):
            return snapshot
    return None


def matches(snapshot: Snapshot, at_or_below_version: int | None,
            taken_at_or_before: datetime | None) -> bool:
    """Whether a decoded snapshot satisfies `latest`'s bounds."""
    if at_or_below_version is not None and snapshot.version > at_or_below_version:
        return False
    return taken_at_or_before is None or snapshot.taken_at <= taken_at_or_before
