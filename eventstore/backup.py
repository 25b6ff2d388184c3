"""Backups of the event log in chains of segments, their retention, and restores.

The log is append-only, so a backup is a chain of segments by position range. A full
backup writes every event (log and archive) up to the head as the chain's first segment
(`after_position` 0); each incremental one writes the events with
`after < position <= head` and records its range, event count and sha256 in
`manifest.json`. A restore checks every segment it needs against the manifest before it
writes anything (a corrupted or missing segment is refused, by name), needs an empty
database, and writes the segments in order.

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

Targets: a directory (a mounted volume) or an S3-compatible bucket (the `minio` client:
AWS S3, MinIO, versitygw, SeaweedFS ...), credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY and never logged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from eventstore.errors import BackupError as BackupError  # re-exported

MANIFEST = "manifest.json"
FORMAT = 1
#: Events per restore transaction (a transaction numbers at most 2**20 positions).
IMPORT_CHUNK = 100_000
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


class Target(Protocol):
    """Where segments and the manifest live: a directory (a mounted volume) or a bucket."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def upload(self, name: str, path: Path) -> None: ...

    def download(self, name: str, path: Path) -> bool: ...

    def delete(self, name: str) -> None: ...


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

    def upload(self, name: str, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (name + ".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(self.directory / name)

    def download(self, name: str, path: Path) -> bool:
        source = self.directory / name
        if not source.exists():
            return False
        shutil.copyfile(source, path)
        return True

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


#: S3's bucket naming rules (the client refuses other names before any request).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

#: S3 error codes that mean the credentials were refused (besides any 403).
#: XAdminUserNotFound: versitygw's answer (a 404) for an unknown access key.
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
               "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed",
               "XAdminUserNotFound"}


class S3Target:
    """An S3-compatible bucket, through the `minio` client (no botocore: it installs beside
    the kubernetes client). Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN); endpoint: the `endpoint` argument, else EVENTSTORE_S3_ENDPOINT or
    AWS_ENDPOINT_URL, else AWS S3; region: the argument, else AWS_REGION or
    AWS_DEFAULT_REGION. Error messages name the bucket, the object and the S3 error code,
    never a credential."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None = None,
                 region: str | None = None) -> None:
        import certifi
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        access_key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access_key or not secret_key:
            raise BackupError(f"{self}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (the operator sets them from the "
                              "target's credentialsSecret)")
        url = (endpoint or os.environ.get("EVENTSTORE_S3_ENDPOINT")
               or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise BackupError(f"S3 endpoint {url!r}: expected http(s)://host[:port] with no path")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        # Bounded waits: an unreachable endpoint fails in seconds, not minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
            cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
        self.client = Minio(
            parts.netloc, access_key=access_key, secret_key=secret_key,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            secure=parts.scheme == "https",
            region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            http_client=http)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, doing: str, name: str, exc: Exception) -> BackupError:
        """One place that turns the client's errors into messages naming what failed."""
        from minio.error import S3Error

        where = f"{self}: cannot {doing} {name}"
        if isinstance(exc, S3Error):
            status = getattr(exc.response, "status", None)
            if exc.code in _AUTH_CODES or status == 403:
                return BackupError(f"{where}: the S3 endpoint {self.endpoint} refused the "
                                   f"credentials ({exc.code}): check AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY (or the target's credentialsSecret)")
            if exc.code == "NoSuchBucket":
                return BackupError(f"{where}: bucket {self.bucket} does not exist at "
                                   f"{self.endpoint}: create it first")
            return BackupError(f"{where}: {exc.code}: {exc.message}")
        return BackupError(f"{where}: S3 endpoint {self.endpoint} unreachable or failing "
                           f"({type(exc).__name__}: {exc})")

    def read(self, name: str) -> bytes | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(name))
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise self._error("read", name, exc) from None
        except Exception as exc:  # urllib3's errors: the endpoint, named; never leaked
            raise self._error("read", name, exc) from None

    def write(self, name: str, data: bytes) -> None:
        try:
            self.client.put_object(self.bucket, self._key(name), io.BytesIO(data), len(data))
        except Exception as exc:
            raise self._error("write", name, exc) from None

    def upload(self, name: str, path: Path) -> None:
        # Multipart above the part size (5 MiB and up), parts checked by the client.
        try:
            self.client.fput_object(self.bucket, self._key(name), str(path))
        except Exception as exc:
            raise self._error("write", name, exc) from None

    def download(self, name: str, path: Path) -> bool:
        from minio.error import S3Error

        try:
            self.client.fget_object(self.bucket, self._key(name), str(path))
            return True
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return False
            raise self._error("read", name, exc) from None
        except Exception as exc:
            raise self._error("read", name, exc) from None

    def delete(self, name: str) -> None:
        try:
            self.client.remove_object(self.bucket, self._key(name))
        except Exception as exc:
            raise self._error("delete", name, exc) from None


def target(location: str | Path, *, s3_endpoint: str | None = None,
           s3_region: str | None = None) -> Target:
    """`s3://bucket/prefix` or a directory path."""
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise BackupError(f"{text}: no bucket name (s3://bucket/prefix)")
        if not _BUCKET.fullmatch(bucket):
            raise BackupError(f"{text}: {bucket!r} is not a valid S3 bucket name (3 to 63 "
                              "lowercase letters, digits, '.' and '-', starting and ending "
                              "with a letter or digit)")
        return S3Target(bucket, prefix, s3_endpoint, s3_region)
    return DirectoryTarget(Path(text))


def _where(location: str | Path | Target) -> Target:
    return location if not isinstance(location, str | Path) else target(location)


def read_manifest(where: Target) -> list[Segment]:
    raw = where.read(MANIFEST)
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


def _write_manifest(where: Target, segments: list[Segment]) -> None:
    text = json.dumps({"format": FORMAT, "segments": [asdict(s) for s in segments]}, indent=1)
    where.write(MANIFEST, text.encode())


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


def backup(store: Any, location: str | Path | Target, full_every: int = DEFAULT_FULL_EVERY,
           ) -> Segment | None:
    """Write the next segment: a full backup when one is due (see the module docstring),
    else the events since the last segment; None if there is nothing new."""
    from eventstore.store.postgres_backup import export_segment, store_identity

    if full_every < 0:
        raise BackupError(f"full_every must be 0 (never) or more, not {full_every}")
    where = _where(location)
    segments = read_manifest(where)
    chain = chains(segments)[-1] if segments else []
    store_id = store_identity(store)
    full = (not chain or chain[0].store_id != store_id
            or (full_every > 0 and len(chain) >= full_every))
    after = 0 if full else chain[-1].to_position
    since = None if full else chain[-1].snapshot_xmin
    with tempfile.TemporaryDirectory(prefix="eventstore-backup-") as tmp:
        path = Path(tmp) / "segment.jsonl.gz"
        with gzip.GzipFile(path, "wb", mtime=0) as out:
            def emit(row: dict[str, Any]) -> None:
                out.write(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")

            exported = export_segment(store, after, since, emit)
        if exported.events == 0 and exported.archived == 0:
            return None
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        seq = max((_sequence(s) for s in segments), default=0) + 1
        name = f"segment-{seq:06d}-{after}-{exported.to_position}.jsonl.gz"
        where.upload(name, path)  # the segment first: a manifest never names a missing one
    segment = Segment(
        file=name, after_position=after, to_position=exported.to_position,
        events=exported.events, sha256=digest.hexdigest(), created=datetime.now(UTC).isoformat(),
        archived=exported.archived, snapshot_xmin=exported.snapshot_xmin, store_id=store_id)
    _write_manifest(where, [*segments, segment])
    return segment


def expire(location: str | Path | Target, retention_days: float,
           now: datetime | None = None) -> list[Segment]:
    """Remove the chains no restore point of the last `retention_days` needs (see the
    module docstring); returns the removed segments. The manifest is rewritten first, so
    an interrupted expiry leaves unreferenced files, never a manifest naming a missing one."""
    if retention_days <= 0:
        raise BackupError(f"retention must be more than 0 days, not {retention_days}")
    where = _where(location)
    segments = read_manifest(where)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    groups = chains(segments)
    # The newest chain whose full backup is at or before the cutoff: older chains go.
    keep_from = max((i for i, c in enumerate(groups) if c[0].created_at <= cutoff), default=0)
    removed = [s for c in groups[:keep_from] for s in c]
    if not removed:
        return []
    _write_manifest(where, [s for c in groups[keep_from:] for s in c])
    for s in removed:
        where.delete(s.file)
    return removed


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


def verify(location: str | Path | Target, directory: Path,
           as_of: datetime | None = None) -> list[tuple[Segment, Path]]:
    """Download the segments of the restore point into `directory`, each present and
    matching its checksum, else BackupError naming the segment."""
    where = _where(location)
    segments = read_manifest(where)
    if not segments:
        raise BackupError(f"{where}: no backup here (no {MANIFEST} or no segments)")
    after = 0
    out = []
    for s in restore_point(segments, as_of):
        if s.after_position != after:
            raise BackupError(f"segment {s.file}: starts after {s.after_position}, expected {after}")
        path = directory / s.file
        if not where.download(s.file, path):
            raise BackupError(f"segment {s.file} is missing from {where}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != s.sha256:
            raise BackupError(f"segment {s.file} is corrupted: its sha256 does not match the manifest")
        out.append((s, path))
        after = s.to_position
    return out


def _lines(segment: Segment, path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
    except (OSError, ValueError, EOFError) as exc:
        raise BackupError(f"segment {segment.file} is unreadable: {exc}") from None


def restore(store: Any, location: str | Path | Target, as_of: datetime | None = None) -> int:
    """Restore a restore point (see `restore_point`) into an empty store; returns the
    number of events."""
    from eventstore.store.postgres_backup import apply_archive_moves

    with tempfile.TemporaryDirectory(prefix="eventstore-restore-") as tmp:
        segments = verify(location, Path(tmp), as_of)
        store.migrate()
        if not store.is_empty():
            raise BackupError("the target database is not empty: restore only into an empty one")
        total = 0
        for s, path in segments:
            rows: list[dict[str, Any]] = []
            moves: list[dict[str, Any]] = []
            events = 0
            for row in _lines(s, path):
                if "archived" in row:
                    moves.append(row)
                    continue
                rows.append(row)
                events += 1
                # One transaction per chunk: each takes a later transaction id, so order holds.
                if len(rows) >= IMPORT_CHUNK:
                    store.import_rows(rows)
                    rows = []
            if rows:
                store.import_rows(rows)
            if events != s.events or len(moves) != s.archived:
                raise BackupError(f"segment {s.file}: {events} events and {len(moves)} archive "
                                  f"moves, the manifest says {s.events} and {s.archived}")
            apply_archive_moves(store, moves)
            total += events
    return total
