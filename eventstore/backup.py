"""Backups of the event log in chains of segments, their retention, and restores.

The log is append-only, so a backup is a chain of segments by position range. A full
backup writes every event (log and archive) up to the head as the chain's first segment
(`after_position` 0); each incremental one writes the events with
`after < position <= head` and records its range, event count and sha256 in
`manifest.json`. A restore checks every segment it needs against the manifest before it
writes anything (a corrupted or missing segment is refused, by name), needs an empty
database, and writes the segments in order. It stages nothing on local disk: it reads
each segment twice, streamed from the target, once to check it and once to import it,
checking it again on the way (a segment changed in between is named too).

Chains and retention (CloudNativePG's and pgBackRest's scheme, adapted to segments):
- A new chain (a full backup) starts when `full_every` segments are in the current chain,
  when there is none, or when the database is not the one the chain was taken from (each
  database has a random id: a restored copy numbers its positions anew, so continuing
  the old chain from it would skip events).
- Every segment is a restore point: its chain up to it. `expire` with a retention of D
  days removes a whole chain only when a later chain's full backup is at least D days old.
  So the newest restore point at or before any moment in the last D days survives (it is
  in that later chain or after it), and the newest chain is never removed. Retention
  holds a chain at most D days plus one chain's span: choose `full_every` with that in
  mind (daily backups, full_every 7: about D + 7 days of segments).

Retention of events (eventstore/retention.py) moves old events to the archive table. A
segment holds each event as it was when the segment was written (log or archive) and,
for an incremental one, the archive moves made since the previous segment of events at or
below its start (see eventstore/store/postgres_backup.py for how they are found). A
restore replays those moves, so the archive comes back as it was at the restore point.

What comes back: every event with its id, stream, version, type, schema version,
payload, metadata and timestamp, in the same global order, and the archive table.
Positions are renumbered (PostgreSQL positions are built from the writing transaction's
id, see eventstore/store/postgres_schema.py), so consumers' checkpoints start over after a
restore; snapshots are rebuilt by the snapshotter. PostgreSQL only.

One writer at a time: a backup and an expiry hold the location's lock (see `locked`) for
their whole run, and under it remove what interrupted backups of their database left (a
segment written but never recorded, a temporary file, an unfinished multipart upload).
Segment names carry the writing database's id, so two databases backing up into one
location (which their locks, taken in each database, do not keep apart) neither
overwrite nor clean up each other's segments; the manifest's conditional replace makes
the loser of a race fail.

Targets (eventstore/backup_targets.py): a directory (a mounted volume) or an
S3-compatible bucket (the `minio` client: AWS S3, MinIO, versitygw, SeaweedFS ...),
credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and never logged. Segments
are streamed into them as they are read, never staged on local disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from eventstore.backup_targets import DirectoryTarget, ReplaceConflict, S3Target, Target, target
from eventstore.errors import BackupError, BackupLocked, EventStoreError

__all__ = ["BackupError", "BackupLocked", "BackupRun", "DirectoryTarget", "Expiry", "S3Target",
           "Segment", "Target", "backup", "expire", "locked", "read_manifest", "restore",
           "target", "verify"]

MANIFEST = "manifest.json"
FORMAT = 1
#: Events per restore transaction (a transaction numbers at most 2**20 positions).
IMPORT_CHUNK = 100_000
#: Bytes of exported rows per restore transaction: one chunk travels as one jsonb value
#: (at most 256 MiB in PostgreSQL) and is held in memory while it is imported.
IMPORT_CHUNK_BYTES = 32 << 20
#: Segments per chain unless the caller says otherwise (0: never start a new chain).
DEFAULT_FULL_EVERY = 7


@dataclass(frozen=True)
class Segment:
    file: str
    after_position: int
    to_position: int
    events: int
    sha256: str
    created: str
    #: Archive moves of earlier events it carries (incremental segments).
    archived: int = 0
    #: The xmin of the snapshot it was read in: the next segment asks for later moves.
    snapshot_xmin: int = 0
    #: The random id of the database it was read from ("" before that was recorded).
    store_id: str = ""

    @property
    def full(self) -> bool:
        return self.after_position == 0

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)


def _where(location: str | Path | Target) -> Target:
    return location if not isinstance(location, str | Path) else target(location)


def read_manifest(where: Target) -> list[Segment]:
    return _parse_manifest(where, where.read(MANIFEST))


def _parse_manifest(where: Target, raw: bytes | None) -> list[Segment]:
    if raw is None:
        return []
    known = {f.name for f in fields(Segment)}
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise BackupError(f"{where}/{MANIFEST}: unknown format {data.get('format')!r}")
        return [Segment(**{k: v for k, v in s.items() if k in known}) for s in data["segments"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{where}/{MANIFEST}: unreadable manifest: {exc}") from None


def _write_manifest(where: Target, segments: list[Segment], tag: str) -> str:
    """Write the manifest if it is still the one this run read (`tag`, from
    Target.read_tagged); returns the new tag.

    The lock makes a change impossible between writers through one source database (and,
    in a directory, between any). The conditional write covers what the lock cannot see:
    two source databases writing one bucket at once. The loser gets an error, not a
    restore point silently dropped from the manifest."""
    text = json.dumps({"format": FORMAT, "segments": [asdict(s) for s in segments]}, indent=1)
    try:
        where.replace(MANIFEST, text.encode(), tag)
    except ReplaceConflict:
        raise BackupError(f"{where}/{MANIFEST} changed while this run held the location: "
                          "another writer (a backup from another database?) wrote it. Nothing "
                          "was recorded; the next backup or expire-backups removes the "
                          "unrecorded segment. Back up each database to its own location") from None
    return where.read_tagged(MANIFEST)[1]


def chains(segments: list[Segment]) -> list[list[Segment]]:
    """The manifest's segments grouped in chains, each starting with a full backup."""
    out: list[list[Segment]] = []
    for s in segments:
        if s.full or not out:
            out.append([s])
        else:
            out[-1].append(s)
    return out


def _sequence(segment: Segment) -> int:
    try:
        return int(segment.file.split("-")[1])
    except (IndexError, ValueError):
        return 0


@contextmanager
def locked(store: Any, where: Target, timeout: float = 0.0) -> Iterator[None]:
    """Hold the location for one writer (a backup, an expiry) or raise BackupLocked.

    Two writers of one location corrupt it: two segments claiming one position range, or
    an expiry rewriting the manifest while a backup extends it (the manifest would name
    deleted segments). The CronJob's concurrencyPolicy: Forbid covers the operator's Jobs
    only, not a person running `eventstore backup` by hand meanwhile. So:
    - a session advisory lock in the source database keyed by the normalised location
      (`Target.lock_key`: the real path, or bucket and prefix). It holds for both target
      kinds, needs nothing in the location, and dies with its connection: a killed Job
      never leaves a stale lock (a lock object in a bucket would, with no safe rule for
      when to break it);
    - for a directory, also a flock on LOCATION/.lock, which holds across source
      databases and mount paths and is dropped by the kernel when its process dies.
    Two source databases writing one bucket at the same moment are caught by the
    manifest's conditional write (see _write_manifest), not kept apart: give each
    database its own prefix (the operator's default, the EventStore's name).
    """
    from eventstore.store.postgres_backup import location_lock

    with location_lock(store, where.lock_key(), timeout) as mine:
        if not mine:
            raise BackupLocked(str(where), timeout)
        with where.local_lock(timeout):
            yield


#: What an interrupted backup leaves: a segment the manifest does not name (killed between
#: the segment and the manifest), or a directory's temporary file (killed mid-write).
#: A segment's name: its sequence number, position range and (since names carry it) the
#: first 12 hex digits of the id of the database that wrote it, so that two databases
#: backing up into one location never write the same name nor clean up each other's
#: files (see _remove_orphans).
_SEGMENT_NAME = r"segment-\d+-\d+-\d+(?:-(?P<writer>[0-9a-f]{12}))?\.jsonl\.gz"
_SEGMENT = re.compile(_SEGMENT_NAME)
_TEMPORARY = re.compile(rf"\.?({_SEGMENT_NAME}|manifest\.json)(\.[0-9a-f]+)?\.tmp")


def writer_token(store_id: str) -> str:
    """What a segment's name carries of the database that wrote it."""
    return store_id.replace("-", "")[:12]


def written_by(name: str, token: str) -> bool:
    """Whether a segment (or its temporary file or upload) is this database's to clean
    up: its name carries `token`, or no writer at all (named before names carried one)."""
    match = _SEGMENT.search(name)
    return match is None or match["writer"] in (None, token)


def _remove_orphans(where: Target, segments: list[Segment], token: str) -> list[str]:
    """Delete what interrupted backups of this database (`token`, see writer_token) left:
    segments the manifest does not name, temporary files, unfinished uploads. Only under
    `locked`, so never the files of a backup of this database in progress; and never
    another database's, whose backup into the same location may be running right now (the
    lock is taken in each source database, so two databases do not see each other's: on
    S3 nothing else holds between them). Other files in the location are not touched."""
    named = {s.file for s in segments}
    orphans = [n for n in where.names()
               if ((_SEGMENT.fullmatch(n) and n not in named) or _TEMPORARY.fullmatch(n))
               and written_by(n, token)]
    for name in orphans:
        where.delete(name)
    return orphans + where.abort_unfinished(lambda name: written_by(name, token))


@dataclass(frozen=True)
class BackupRun:
    """What one `backup` did: the new segment (None: nothing new), the segments expired
    by retention, and the leftovers of interrupted backups it removed."""

    segment: Segment | None
    expired: list[Segment]
    orphans: list[str]


def backup(store: Any, location: str | Path | Target, full_every: int = DEFAULT_FULL_EVERY,
           *, retention_days: float | None = None, lock_timeout: float = 0.0) -> BackupRun:
    """Under the location's lock (see `locked`): write the next segment (a full backup
    when one is due, see the module docstring, else the events since the last segment;
    none if there is nothing new), expire by `retention_days` if given, and remove what
    interrupted backups left."""
    if full_every < 0:
        raise BackupError(f"full_every must be 0 (never) or more, not {full_every}")
    if retention_days is not None and retention_days <= 0:
        raise BackupError(f"retention must be more than 0 days, not {retention_days}")
    where = _where(location)
    with locked(store, where, lock_timeout):
        store_id = _identity(store)
        raw, tag = where.read_tagged(MANIFEST)
        segments = _parse_manifest(where, raw)
        segment = _write_segment(store, store_id, where, segments, full_every)
        if segment is not None:
            segments = [*segments, segment]
            tag = _write_manifest(where, segments, tag)
        expired: list[Segment] = []
        if retention_days is not None:
            segments, expired = _expire(where, segments, tag, retention_days, datetime.now(UTC))
        return BackupRun(segment, expired,
                         _remove_orphans(where, segments, writer_token(store_id)))


def _write_segment(store: Any, store_id: str, where: Target, segments: list[Segment],
                   full_every: int) -> Segment | None:
    """Stream the next segment of `store` (whose identity is `store_id`) into the location
    (never staged on local disk), hashing it on the way; None when there is nothing new."""
    from eventstore.store.postgres_backup import open_export

    chain = chains(segments)[-1] if segments else []
    full = (not chain or chain[0].store_id != store_id
            or (full_every > 0 and len(chain) >= full_every))
    after = 0 if full else chain[-1].to_position
    since = None if full else chain[-1].snapshot_xmin
    with open_export(store, after, since) as export:
        rows = export.rows()
        first = next(rows, None)
        if first is None:
            return None
        seq = max((_sequence(s) for s in segments), default=0) + 1
        name = (f"segment-{seq:06d}-{after}-{export.to_position}-{writer_token(store_id)}"
                ".jsonl.gz")
        digest = hashlib.sha256()
        with where.open_writer(name) as sink:
            hashing = _HashingWriter(sink, digest)
            with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as out:
                for row in _chain(first, rows):
                    out.write(json.dumps(row, sort_keys=True, separators=(",", ":")).encode()
                              + b"\n")
    # The segment exists before the manifest names it: a manifest never names a missing one.
    return Segment(
        file=name, after_position=after, to_position=export.to_position,
        events=export.events, sha256=digest.hexdigest(), created=datetime.now(UTC).isoformat(),
        archived=export.archived, snapshot_xmin=export.snapshot_xmin, store_id=store_id)


def _identity(store: Any) -> str:
    from eventstore.store.postgres_backup import store_identity

    return store_identity(store)


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


class _HashingWriter:
    """Passes the compressed bytes on to the target's writer, hashing them on the way."""

    def __init__(self, sink: Any, digest: Any) -> None:
        self._sink = sink
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        pass


@dataclass(frozen=True)
class Expiry:
    """What one `expire` removed: whole chains, and leftovers of interrupted backups."""

    segments: list[Segment]
    orphans: list[str]


def expire(store: Any, location: str | Path | Target, retention_days: float,
           now: datetime | None = None, *, lock_timeout: float = 0.0) -> Expiry:
    """Under the location's lock (see `locked`, taken in `store`, the database the backups
    are taken from): remove the chains no restore point of the last `retention_days`
    needs (see the module docstring), and what interrupted backups left. The manifest is
    rewritten first, so an interrupted expiry leaves unreferenced files (removed by the
    next run), never a manifest naming a missing one."""
    if retention_days <= 0:
        raise BackupError(f"retention must be more than 0 days, not {retention_days}")
    where = _where(location)
    with locked(store, where, lock_timeout):
        raw, tag = where.read_tagged(MANIFEST)
        kept, removed = _expire(where, _parse_manifest(where, raw), tag, retention_days,
                                now or datetime.now(UTC))
        return Expiry(removed, _remove_orphans(where, kept, writer_token(_identity(store))))


def _expire(where: Target, segments: list[Segment], tag: str, retention_days: float,
            now: datetime) -> tuple[list[Segment], list[Segment]]:
    """(kept, removed) after expiring by retention; the caller holds the lock."""
    cutoff = now - timedelta(days=retention_days)
    groups = chains(segments)
    # The newest chain whose full backup is at or before the cutoff: older chains go.
    keep_from = max((i for i, c in enumerate(groups) if c[0].created_at <= cutoff), default=0)
    removed = [s for c in groups[:keep_from] for s in c]
    if not removed:
        return segments, []
    kept = [s for c in groups[keep_from:] for s in c]
    _write_manifest(where, kept, tag)
    for s in removed:
        where.delete(s.file)
    return kept, removed


def last_position(location: str | Path | Target) -> int:
    """The highest position the backup at `location` holds (0: none)."""
    segments = read_manifest(_where(location))
    return segments[-1].to_position if segments else 0


def restore_point(segments: list[Segment], as_of: datetime | None = None) -> list[Segment]:
    """The segments a restore needs: the chain of the newest segment written at or before
    `as_of` (default: the newest), up to that segment."""
    candidates = [i for i, s in enumerate(segments)
                  if as_of is None or s.created_at <= as_of]
    if not candidates:
        raise BackupError(f"no backup was written at or before {as_of.isoformat() if as_of else ''}"
                          f"; the oldest kept is from {segments[0].created}")
    last = candidates[-1]
    first = max(i for i in range(last + 1) if segments[i].full)
    return segments[first:last + 1]


def verify(location: str | Path | Target, as_of: datetime | None = None) -> list[Segment]:
    """The segments of the restore point, each present in the location, following the
    one before it and matching its checksum (streamed, nothing kept), else BackupError
    naming the segment."""
    where = _where(location)
    segments = read_manifest(where)
    if not segments:
        raise BackupError(f"{where}: no backup here (no {MANIFEST} or no segments)")
    after = 0
    needed = restore_point(segments, as_of)
    for s in needed:
        if s.after_position != after:
            raise BackupError(f"segment {s.file}: starts after {s.after_position}, expected {after}")
        with where.open_reader(s.file) as raw:
            if raw is None:
                raise BackupError(f"segment {s.file} is missing from {where}")
            hashed = _Hashed(raw)
            if hashed.finish() != s.sha256:
                raise BackupError(f"segment {s.file} is corrupted: its sha256 does not match the manifest")
        after = s.to_position
    return needed


class _Hashed(io.RawIOBase):
    """A segment being read, its sha256 computed from what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        self.digest.update(data)
        return len(data)

    def finish(self) -> str:
        """The sha256 of the whole segment: what is left unread is read first."""
        for block in iter(lambda: self.raw.read(1 << 20), b""):
            self.digest.update(block)
        return self.digest.hexdigest()


def _lines(segment: Segment, stream: BinaryIO) -> Iterator[tuple[dict[str, Any], int]]:
    """Each row of a segment, with the length of its line."""
    try:
        with gzip.open(stream, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line), len(line)
    except (OSError, ValueError, EOFError) as exc:
        raise BackupError(f"segment {segment.file} is unreadable: {exc}") from None


def restore(store: Any, location: str | Path | Target, as_of: datetime | None = None) -> int:
    """Restore a restore point (see `restore_point`) into an empty store; returns the
    number of events."""
    from eventstore.store.postgres_backup import apply_archive_moves

    where = _where(location)
    segments = verify(where, as_of)
    store.migrate()
    if not store.is_empty():
        raise BackupError("the target database is not empty: restore only into an empty one")
    imported = 0  # chunks committed: each is its own transaction, and stays
    try:
        total = 0
        for s in segments:
            with where.open_reader(s.file) as raw:
                if raw is None:
                    raise _changed(s, f"it is gone from {where}")
                hashed = _Hashed(raw)
                rows: list[dict[str, Any]] = []
                moves: list[dict[str, Any]] = []
                events = size = 0
                for row, length in _lines(s, io.BufferedReader(hashed, buffer_size=1 << 20)):
                    if "archived" in row:
                        moves.append(row)
                        continue
                    rows.append(row)
                    events += 1
                    size += length
                    # One transaction per chunk: each takes a later transaction id, so order holds.
                    if len(rows) >= IMPORT_CHUNK or size >= IMPORT_CHUNK_BYTES:
                        store.import_rows(rows)
                        imported += 1
                        rows, size = [], 0
                if hashed.finish() != s.sha256:
                    raise _changed(s, "its sha256 no longer matches the manifest")
            if rows:
                store.import_rows(rows)
                imported += 1
            if events != s.events or len(moves) != s.archived:
                raise BackupError(f"segment {s.file}: {events} events and {len(moves)} archive "
                                  f"moves, the manifest says {s.events} and {s.archived}")
            apply_archive_moves(store, moves)
            total += events
    except EventStoreError as exc:
        if not imported:
            raise  # the database is still empty: run the restore again as it is
        raise BackupError(f"{exc}; the database holds a partial restore: drop it and restore "
                          "again") from exc
    return total


def _changed(segment: Segment, how: str) -> BackupError:
    """A segment that passed the check and changed before its import."""
    return BackupError(f"segment {segment.file} changed during the restore ({how})")
