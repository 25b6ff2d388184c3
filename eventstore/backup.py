"""Incremental backups of the event log to a directory, and restores from one.

The log is append-only, so a backup is a chain of segments by position range: each run
writes the events (and archived events) with `after < position <= head` to one
gzip'd JSON-lines file, records its range, event count and sha256 in `manifest.json`,
and the next run starts after that range. A restore checks every segment against the
manifest before it writes anything (a corrupted or missing segment is refused, by name),
needs an empty database, and writes the segments in order, one transaction per segment.

What comes back: every event with its id, stream, version, type, schema version,
payload, metadata and timestamp, in the same global order, and the archive table
(events retention had archived when their segment was written). Positions are
renumbered (PostgreSQL positions are built from the writing transaction's id, see
eventstore/store/postgres_schema.py), so consumers' checkpoints start over after a
restore; snapshots are rebuilt by the snapshotter. Limits: an event archived by
retention after its segment was written comes back in the log, not in the archive;
PostgreSQL only (the target is a directory: a mounted volume, or a synced bucket).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventstore.errors import EventStoreError

MANIFEST = "manifest.json"
FORMAT = 1
#: Events per restore transaction (a transaction numbers at most 2**20 positions).
IMPORT_CHUNK = 100_000


class BackupError(EventStoreError):
    """A backup could not be written or a restore was refused; the message says why."""


@dataclass(frozen=True)
class Segment:
    file: str
    after_position: int
    to_position: int
    events: int
    sha256: str
    created: str


def _read_manifest(directory: Path) -> list[Segment]:
    path = directory / MANIFEST
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise BackupError(f"{path}: unknown format {data.get('format')!r}")
        return [Segment(**s) for s in data["segments"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path}: unreadable manifest: {exc}") from None


def _write_manifest(directory: Path, segments: list[Segment]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "segments": [vars(s) for s in segments]}, indent=1))
    tmp.replace(directory / MANIFEST)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backup(store: Any, directory: Path) -> Segment | None:
    """Write the events after the last segment as a new segment; None if there are none."""
    directory.mkdir(parents=True, exist_ok=True)
    segments = _read_manifest(directory)
    after = segments[-1].to_position if segments else 0
    head = int(store.head_position())
    if head <= after:
        return None
    rows = store.export_rows(after, head)
    if not rows:
        return None
    name = f"segment-{len(segments) + 1:06d}-{after}-{head}.jsonl.gz"
    path = directory / name
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n")
    segment = Segment(
        file=name,
        after_position=after,
        to_position=head,
        events=len(rows),
        sha256=_sha256(path),
        created=datetime.now(UTC).isoformat(),
    )
    _write_manifest(directory, [*segments, segment])
    return segment


def verify(directory: Path) -> list[Segment]:
    """The manifest's segments, each present and matching its checksum, else BackupError."""
    segments = _read_manifest(directory)
    if not segments:
        raise BackupError(f"{directory}: no backup here (no {MANIFEST} or no segments)")
    after = 0
    for s in segments:
        path = directory / s.file
        if s.after_position != after:
            raise BackupError(f"segment {s.file}: starts after {s.after_position}, expected {after}")
        if not path.exists():
            raise BackupError(f"segment {s.file} is missing from {directory}")
        if _sha256(path) != s.sha256:
            raise BackupError(f"segment {s.file} is corrupted: its sha256 does not match the manifest")
        after = s.to_position
    return segments


def restore(store: Any, directory: Path) -> int:
    """Restore every segment into an empty store; returns the number of events."""
    segments = verify(directory)
    store.migrate()
    if not store.is_empty():
        raise BackupError("the target database is not empty: restore only into an empty one")
    total = 0
    for s in segments:
        with gzip.open(directory / s.file, "rt", encoding="utf-8") as src:
            rows = [json.loads(line) for line in src]
        if len(rows) != s.events:
            raise BackupError(f"segment {s.file}: {len(rows)} events, the manifest says {s.events}")
        # One transaction per chunk: each takes a later transaction id, so order holds.
        for start in range(0, len(rows), IMPORT_CHUNK):
            store.import_rows(rows[start : start + IMPORT_CHUNK])
        total += len(rows)
    return total
