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
PostgreSQL only. Targets: a directory (a mounted volume) or an S3-compatible bucket.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from eventstore.errors import BackupError as BackupError  # re-exported

MANIFEST = "manifest.json"
FORMAT = 1
#: Events per restore transaction (a transaction numbers at most 2**20 positions).
IMPORT_CHUNK = 100_000


@dataclass(frozen=True)
class Segment:
    file: str
    after_position: int
    to_position: int
    events: int
    sha256: str
    created: str


class Target(Protocol):
    """Where segments and the manifest live: a directory (a mounted volume) or a bucket."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...


class DirectoryTarget:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __str__(self) -> str:
        return str(self.directory)

    def read(self, name: str) -> bytes | None:
        path = self.directory / name
        return path.read_bytes() if path.exists() else None

    def write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.directory / name)  # atomic: never a half-written manifest


class S3Target:
    """An S3-compatible bucket (AWS, MinIO, SeaweedFS, moto). Credentials come from the
    usual AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the endpoint from
    AWS_ENDPOINT_URL (or EVENTSTORE_S3_ENDPOINT)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        try:
            import boto3  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - depends on the install
            raise BackupError("s3:// targets need boto3: pip install boto3") from None
        endpoint = os.environ.get("EVENTSTORE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint or None)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            data: bytes = body.read()
            return data
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:  # botocore's errors: named for what failed, not leaked
            raise BackupError(f"{self}: cannot read {name}: {exc}") from None

    def write(self, name: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except Exception as exc:
            raise BackupError(f"{self}: cannot write {name}: {exc}") from None


def target(location: str | Path) -> Target:
    """`s3://bucket/prefix` or a directory path."""
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise BackupError(f"{text}: no bucket name (s3://bucket/prefix)")
        return S3Target(bucket, prefix)
    return DirectoryTarget(Path(text))


def _read_manifest(where: Target) -> list[Segment]:
    raw = where.read(MANIFEST)
    if raw is None:
        return []
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise BackupError(f"{where}/{MANIFEST}: unknown format {data.get('format')!r}")
        return [Segment(**s) for s in data["segments"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{where}/{MANIFEST}: unreadable manifest: {exc}") from None


def _write_manifest(where: Target, segments: list[Segment]) -> None:
    text = json.dumps({"format": FORMAT, "segments": [vars(s) for s in segments]}, indent=1)
    where.write(MANIFEST, text.encode())


def backup(store: Any, location: str | Path) -> Segment | None:
    """Write the events after the last segment as a new segment; None if there are none."""
    where = target(location)
    segments = _read_manifest(where)
    after = segments[-1].to_position if segments else 0
    head = int(store.head_position())
    if head <= after:
        return None
    rows = store.export_rows(after, head)
    if not rows:
        return None
    name = f"segment-{len(segments) + 1:06d}-{after}-{head}.jsonl.gz"
    text = "".join(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n" for row in rows)
    data = gzip.compress(text.encode("utf-8"), mtime=0)
    where.write(name, data)  # the segment first: a manifest never names a missing one
    segment = Segment(
        file=name,
        after_position=after,
        to_position=head,
        events=len(rows),
        sha256=hashlib.sha256(data).hexdigest(),
        created=datetime.now(UTC).isoformat(),
    )
    _write_manifest(where, [*segments, segment])
    return segment


def last_position(location: str | Path) -> int:
    """The highest position the backup at `location` holds (0: none)."""
    segments = _read_manifest(target(location))
    return segments[-1].to_position if segments else 0


def verify(location: str | Path) -> list[tuple[Segment, bytes]]:
    """The manifest's segments with their data, each present and matching its checksum,
    else BackupError naming the segment."""
    where = target(location)
    segments = _read_manifest(where)
    if not segments:
        raise BackupError(f"{where}: no backup here (no {MANIFEST} or no segments)")
    after = 0
    out = []
    for s in segments:
        if s.after_position != after:
            raise BackupError(f"segment {s.file}: starts after {s.after_position}, expected {after}")
        data = where.read(s.file)
        if data is None:
            raise BackupError(f"segment {s.file} is missing from {where}")
        if hashlib.sha256(data).hexdigest() != s.sha256:
            raise BackupError(f"segment {s.file} is corrupted: its sha256 does not match the manifest")
        out.append((s, data))
        after = s.to_position
    return out


def restore(store: Any, location: str | Path) -> int:
    """Restore every segment into an empty store; returns the number of events."""
    segments = verify(location)
    store.migrate()
    if not store.is_empty():
        raise BackupError("the target database is not empty: restore only into an empty one")
    total = 0
    for s, data in segments:
        rows = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines()]
        if len(rows) != s.events:
            raise BackupError(f"segment {s.file}: {len(rows)} events, the manifest says {s.events}")
        # One transaction per chunk: each takes a later transaction id, so order holds.
        for start in range(0, len(rows), IMPORT_CHUNK):
            store.import_rows(rows[start : start + IMPORT_CHUNK])
        total += len(rows)
    return total
