"""`eventstore backup` / `restore` / `expire-backups` against real PostgreSQL, onto a
directory and onto a real S3-compatible server (versitygw) (issue 13 #3): one set of
tests over both targets (the `location` fixture), and the S3-only failures apart."""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from eventstore import EventStore, ExpectedVersion, NewEvent
from eventstore import backup as backups
from eventstore.backup_targets import ReplaceConflict, temporary_name
from eventstore.cli import BACKUP_LOCKED, main
from eventstore.errors import BackupError, ValidationError
from eventstore.store import postgres, postgres_backup
from eventstore.store.postgres import PostgresEventStore
from tests.harness.postgres import PostgresServer
from tests.harness.s3 import S3Server


def _cli(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    """Run `eventstore ARGS`, check its exit code, return its output."""
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def _log(store: Any) -> list[tuple[Any, ...]]:
    """The whole log in order, every field but the position value."""
    events = store.read_all(from_position=0, limit=100_000)
    return [(e.id, e.aggregate_id, e.version, e.type, e.payload, e.metadata, e.timestamp,
             e.schema_version) for e in events]


def _append(store: Any, stream: str, n: int, start: int = 0) -> None:
    store.append(stream, [NewEvent(type="Deposited", payload={"amount": start + i})
                          for i in range(n)], expected_version=ExpectedVersion.ANY)


def _archive(store: Any, streams: list[str]) -> list[tuple[Any, ...]]:
    """The archive table of these streams, every field but the position value."""
    return [(e.id, e.aggregate_id, e.version, e.type, e.payload, e.timestamp)
            for s in streams for e in store.read_archived_stream(s)]


def _restored_log(postgres_server: PostgresServer, location: str, name: str) -> list[tuple[Any, ...]]:
    """Restore LOCATION into a new database and return its log."""
    url = postgres_server.create_database(name)
    _cli("restore", location, "--url", url)
    with EventStore.connect(url) as store:
        return _log(store)


def _assert_chain_valid(location: str) -> list[backups.Segment]:
    """Each chain's segments follow each other (no two claim one range) and exist."""
    where = backups.target(location)
    segments = backups.read_manifest(where)
    for chain in backups.chains(segments):
        assert chain[0].full
        for before, after in itertools.pairwise(chain):
            assert after.after_position == before.to_position, segments
    assert len({s.file for s in segments}) == len(segments)
    assert all(where.read(s.file) is not None for s in segments)
    return segments


@pytest.fixture(params=["directory", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backup location: a directory, or a prefix in a fresh bucket of the S3 server."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/demo"
    return str(tmp_path / "backup")


def test_backup_incremental_restore_gives_an_identical_log(
        postgres_server: PostgresServer, location: str, tmp_path: Path) -> None:
    source_url = postgres_server.create_database("backup_source")
    target_url = postgres_server.create_database("backup_target")
    assert "no backups in" in _cli("list-backups", location)
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(5):
            _append(store, f"account-{i}", 3)
        # retention: the first two events of account-0 go to the archive table
        assert store.archive_stream("account-0", 2, datetime.now(UTC) + timedelta(days=1)) == 2
        assert "events" in _cli("backup", location, "--url", source_url)
        _append(store, "account-1", 4, start=100)
        _append(store, "account-9", 2)
        _cli("backup", location, "--url", source_url)
        result_file = tmp_path / "result.json"
        again = _cli("backup", location, "--url", source_url,
                     env={"EVENTSTORE_BACKUP_RESULT_FILE": str(result_file)})
        assert "nothing new" in again
        assert json.loads(result_file.read_text()) == {"position": store.head_position(), "segment": None}
        expected_log = _log(store)
        expected_versions = {s: store.read_stream(s)[-1].version
                             for s in ("account-0", "account-1", "account-9")}
        expected_archive = [(e.id, e.version, e.timestamp) for e in store.read_archived_stream("account-0")]

    manifest = backups.read_manifest(backups.target(location))
    assert [s.events for s in manifest] == [15, 6]
    assert manifest[1].after_position == manifest[0].to_position
    assert manifest[0].full and not manifest[1].full

    # `list-backups` shows the restore points (no database needed); a time it shows,
    # given to `restore --as-of`, restores that point.
    lines = _cli("list-backups", location).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{manifest[0].created}  chain 1  full ")
    assert "15 events" in lines[0] and lines[0].endswith(manifest[0].file)
    assert lines[1].startswith(f"{manifest[1].created}  chain 1  incremental ")
    assert "6 events" in lines[1] and lines[1].endswith(manifest[1].file)
    listed = json.loads(_cli("list-backups", location, "--json"))["segments"]
    assert [(s["chain"], s["full"], s["file"], s["events"]) for s in listed] == [
        (1, True, manifest[0].file, 15), (1, False, manifest[1].file, 6)]
    first_point = postgres_server.create_database("backup_first_point")
    assert "restored 15 events" in _cli("restore", location, "--url", first_point,
                                        "--as-of", listed[0]["created"])

    assert "restored 21 events" in _cli("restore", location, "--url", target_url)
    with EventStore.connect(target_url) as store:
        assert _log(store) == expected_log
        assert {s: store.read_stream(s)[-1].version for s in expected_versions} == expected_versions
        assert [(e.id, e.version, e.timestamp) for e in store.read_archived_stream("account-0")] == (
            expected_archive)
        # The restored store takes appends after the restored log, in order.
        _append(store, "account-1", 1, start=999)
        tail = store.read_all(from_position=0, limit=100_000)
        assert tail[-1].aggregate_id == "account-1" and tail[-1].version == expected_versions["account-1"] + 1
        assert [e.position for e in tail] == sorted(e.position for e in tail)

    assert "not empty" in _cli("restore", location, "--url", target_url, code=1)


def _two_segments(postgres_server: PostgresServer, location: str, name: str
                  ) -> tuple[str, backups.Target, str, bytes]:
    """A source database `name` backed up twice into `location` (3 events each time):
    (its url, the location, the second segment's file, that segment with one payload
    changed)."""
    source_url = postgres_server.create_database(name)
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
        _cli("backup", location, "--url", source_url)
        _append(store, "b", 3)
        _cli("backup", location, "--url", source_url)
    where = backups.target(location)
    second = backups.read_manifest(where)[1].file
    data = where.read(second)
    assert data is not None
    return source_url, where, second, gzip.compress(
        gzip.decompress(data).replace(b'"amount":1', b'"amount":7'))


def test_a_corrupted_segment_is_refused_by_name(postgres_server: PostgresServer, location: str) -> None:
    _, where, second, tampered = _two_segments(postgres_server, location, "backup_corrupt_source")
    target_url = postgres_server.create_database("backup_corrupt_target")
    where.write(second, tampered)
    assert f"segment {second} is corrupted" in _cli("restore", location, "--url", target_url, code=1)
    with EventStore.connect(target_url) as store:
        store.migrate()
        assert store.read_all(0, 10) == []  # nothing written before the check


@pytest.mark.parametrize("url", ["sqlite:///x.db"])
def test_backup_needs_postgres(url: str, tmp_path: Path) -> None:
    assert "PostgreSQL" in _cli("backup", str(tmp_path), "--url", url, code=1)
    assert "PostgreSQL" in _cli("expire-backups", str(tmp_path), "--url", url,
                                "--retention-days", "1", code=1)


def test_wrong_s3_credentials_or_bucket_give_a_clear_error(
        postgres_server: PostgresServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source_url = postgres_server.create_database("backup_s3_auth")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
    wrong = "wrong-" + os.environ["AWS_SECRET_ACCESS_KEY"][:6]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    output = _cli("backup", f"s3://{s3_bucket}/x", "--url", source_url, code=1)
    assert "refused the credentials (SignatureDoesNotMatch)" in output, output
    assert "AWS_SECRET_ACCESS_KEY" in output and wrong not in output
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    # AWS says InvalidAccessKeyId, versitygw XAdminUserNotFound: both a 403, both named.
    assert "refused the credentials (" in _cli("restore", f"s3://{s3_bucket}/x", "--url", source_url,
                                               code=1)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert "no S3 credentials" in _cli("backup", f"s3://{s3_bucket}/x", "--url", source_url, code=1)


def test_a_missing_bucket_is_named(postgres_server: PostgresServer, s3_bucket: str) -> None:
    source_url = postgres_server.create_database("backup_s3_nobucket")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
    assert "bucket no-such-bucket does not exist" in _cli(
        "backup", "s3://no-such-bucket/x", "--url", source_url, code=1)
    assert "'My_Bucket' is not a valid S3 bucket name" in _cli(
        "backup", "s3://My_Bucket/x", "--url", source_url, code=1)
    assert "--s3-part-size" in _cli("backup", f"s3://{s3_bucket}/x", "--url", source_url,
                                    "--s3-part-size", "4", code=2)


def test_a_large_segment_is_streamed_never_staged(
        postgres_server: PostgresServer, location: str, s3_server: S3Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment past one 5 MiB part is streamed to the target: in parts to S3 (its ETag
    has the part count), through a temporary name in a directory, and never through the
    local temp directory (which does not exist during the backup). It restores whole,
    streamed back the same way: the temp directory does not exist during the restore
    either (the restore Job has no scratch volume)."""
    source_url = postgres_server.create_database("backup_large")
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(8):  # ~9 MiB of incompressible payload
            store.append(f"blob-{i}", [NewEvent(type="Blob", payload={"data": os.urandom(12_000).hex()})
                                       for _ in range(50)], expected_version=ExpectedVersion.ANY)
        expected = _log(store)
    with monkeypatch.context() as staging:
        staging.setattr(tempfile, "tempdir", str(tmp_path / "no-staging-here"))
        _cli("backup", location, "--url", source_url, "--s3-part-size", "5")
    assert not (tmp_path / "no-staging-here").exists()
    where = backups.target(location)
    segment = backups.read_manifest(where)[0]
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        stat = s3_server.client().stat_object(bucket, f"{prefix}/{segment.file}")
        assert stat.size > 5 << 20, stat.size
        assert stat.etag.endswith("-2"), stat.etag  # two parts of 5 MiB at most
    else:  # no temporary file left beside it
        assert sorted(where.names()) == sorted([".lock", backups.MANIFEST, segment.file])
    with monkeypatch.context() as staging:
        staging.setattr(tempfile, "tempdir", str(tmp_path / "no-staging-here"))
        assert _restored_log(postgres_server, location, "backup_large_restored") == expected
    assert not (tmp_path / "no-staging-here").exists()


def test_a_restore_bounds_each_transaction_by_bytes(
        postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore transaction carries its rows as one jsonb value, which PostgreSQL caps at
    256 MiB: a backup of 256 MiB of payload failed to restore ("total size of jsonb array
    elements exceeds the maximum", reported as "PostgreSQL is unavailable";
    `python -m bench.backup_memory`). Chunks are bounded by bytes as well as by count;
    here the bound is made small, so 300 events of ~1 KB take many transactions, in order."""

    source_url = postgres_server.create_database("backup_chunks_source")
    location = str(tmp_path / "backup")
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(30):
            store.append(f"s-{i % 7}", [NewEvent(type="Blob", payload={"data": os.urandom(500).hex()})
                                        for _ in range(10)], expected_version=ExpectedVersion.ANY)
        expected = _log(store)
    _cli("backup", location, "--url", source_url)
    monkeypatch.setattr(backups, "IMPORT_CHUNK_BYTES", 16 << 10)
    url = postgres_server.create_database("backup_chunks_restored")
    with EventStore.connect(url) as store:
        assert backups.restore(store, location) == 300
        assert _log(store) == expected
        assert isinstance(store, PostgresEventStore)
        with store.datastore.dedicated("test") as conn:
            row = conn.execute("SELECT count(DISTINCT tx_id) FROM es_events").fetchone()
        assert row is not None and row[0] >= 300 * 1000 // (16 << 10), row
        # One import past the store's own bound is refused before it is sent, by name.
        monkeypatch.setattr(postgres, "IMPORT_MAX_BYTES", 1000)
        with pytest.raises(ValidationError, match="bytes of rows in one import transaction: at most 1000"):
            store.import_rows([{"id": str(uuid.uuid4()), "data": "x" * 2000}])
        assert len(_log(store)) == 300


class _ChangingTarget:
    """A location whose `victim` segment reads as `changed` (None: gone) from the
    `after`-th time it is opened: a segment that passes the check and changes before its
    import."""

    def __init__(self, where: backups.Target, victim: str, changed: bytes | None, after: int) -> None:
        self.where, self.victim, self.changed, self.after = where, victim, changed, after
        self.opened = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.where, name)

    def __str__(self) -> str:
        return str(self.where)

    @contextlib.contextmanager
    def open_reader(self, name: str) -> Iterator[Any]:
        if name == self.victim:
            self.opened += 1
            if self.opened >= self.after:
                yield None if self.changed is None else io.BytesIO(self.changed)
                return
        with self.where.open_reader(name) as reader:
            yield reader


def test_a_segment_changed_between_its_check_and_its_import_is_named(
        postgres_server: PostgresServer, location: str) -> None:
    """The restore reads each segment twice (to check it, to import it): a segment that
    differs the second time, or is gone, is refused by name. The first segment is in by
    then, so the error says that the database holds a partial restore (a second restore
    is refused until it is dropped); had nothing been imported, it would not."""
    source_url, where, second, tampered = _two_segments(postgres_server, location,
                                                        "backup_changed_source")
    for name, changed, says in (("backup_changed_tampered", tampered, "its sha256 no longer matches"),
                                ("backup_changed_gone", None, "it is gone from")):
        url = postgres_server.create_database(name)
        with EventStore.connect(url) as store, pytest.raises(BackupError) as raised:
            backups.restore(store, _ChangingTarget(where, second, changed, after=2))
        assert str(raised.value).startswith(f"segment {second} changed during the restore ({says}")
        assert str(raised.value).endswith("; the database holds a partial restore: drop it and "
                                          "restore again")
        assert "restore only into an empty one" in _cli("restore", location, "--url", url, code=1)
    url = postgres_server.create_database("backup_changed_first")
    first = backups.read_manifest(where)[0].file
    with EventStore.connect(url) as store, pytest.raises(BackupError) as raised:
        backups.restore(store, _ChangingTarget(where, first, None, after=2))
    assert str(raised.value) == f"segment {first} changed during the restore (it is gone from {where})"
    with EventStore.connect(url) as store:
        assert isinstance(store, PostgresEventStore)
        assert store.is_empty()  # so the same restore may simply run again
    # The same location, unchanged, restores whole.
    with EventStore.connect(source_url) as store:
        assert _restored_log(postgres_server, location, "backup_changed_whole") == _log(store)


def test_events_archived_after_their_segment_come_back_archived(
        postgres_server: PostgresServer, location: str) -> None:
    """Retention moves events to the archive after a backup wrote them in the log: the next
    incremental backup carries the moves, and a restore puts them in the archive again
    (and a restore to the earlier point has them in the log, as they were then)."""
    source_url = postgres_server.create_database("backup_archive_source")
    streams = ["acc-1", "acc-2", "acc-3"]
    future = datetime.now(UTC) + timedelta(days=1)
    with EventStore.connect(source_url) as store:
        store.migrate()
        for s in streams:
            _append(store, s, 4)
        assert store.archive_stream("acc-3", 1, future) == 1  # archived before any backup
        _cli("backup", location, "--url", source_url)
        first_log, first_archive = _log(store), _archive(store, streams)
        # After the full backup: events of its segment go to the archive, more appends.
        assert store.archive_stream("acc-1", 3, future) == 3
        assert store.archive_stream("acc-3", 2, future) == 1
        _append(store, "acc-2", 2, start=50)
        assert "4 archive moves" in _cli("backup", location, "--url", source_url)
        # Archived after the incremental one too, with nothing appended since.
        assert store.archive_stream("acc-2", 2, future) == 2
        assert "0 events" in _cli("backup", location, "--url", source_url)
        expected_log, expected_archive = _log(store), _archive(store, streams)
    segments = backups.read_manifest(backups.target(location))
    assert [s.archived for s in segments] == [0, 4, 2]
    assert len(expected_archive) == 7

    target_url = postgres_server.create_database("backup_archive_target")
    _cli("restore", location, "--url", target_url)
    with EventStore.connect(target_url) as store:
        assert _log(store) == expected_log
        assert _archive(store, streams) == expected_archive
        assert store.stream_version("acc-1") == 4 and store.stream_version("acc-2") == 6

    earlier_url = postgres_server.create_database("backup_archive_earlier")
    assert "restored 12 events" in _cli("restore", location, "--url", earlier_url,
                                        "--as-of", segments[0].created)
    with EventStore.connect(earlier_url) as store:
        assert _log(store) == first_log and _archive(store, streams) == first_archive


def _backdate(location: str, days: list[float], base: datetime) -> None:
    """Pretend segment i was written `days[i]` days after `base` (the manifest's dates)."""
    where = backups.target(location)
    segments = backups.read_manifest(where)
    assert len(segments) == len(days)
    dated = [backups.Segment(**{**vars(s), "created": (base + timedelta(days=d)).isoformat()})
             for s, d in zip(segments, days, strict=True)]
    where.write(backups.MANIFEST, json.dumps(
        {"format": backups.FORMAT, "segments": [vars(s) for s in dated]}).encode())


def test_retention_expires_whole_chains_never_a_needed_one(
        postgres_server: PostgresServer, location: str) -> None:
    source_url = postgres_server.create_database("backup_retention_source")
    counts = []
    with EventStore.connect(source_url) as store:
        store.migrate()
        for day in range(5):  # full, incr, full, incr, full with --full-every 2
            _append(store, f"day-{day}", 2)
            _cli("backup", location, "--url", source_url, "--full-every", "2")
            counts.append(len(_log(store)))
        expected = _log(store)
        segments = backups.read_manifest(backups.target(location))
        assert [s.full for s in segments] == [True, False, True, False, True]
        assert [s.events for s in segments] == [2, 2, 6, 2, 10]
        base = datetime(2026, 1, 1, tzinfo=UTC)
        _backdate(location, [0, 1, 2, 3, 4], base)
        where = backups.target(location)

        # Keep 2 days at day 5.5: a restore to day 3.5 needs segment 4 (day 3), so its chain
        # (segments 3 and 4) stays; the first chain goes.
        removed = backups.expire(store, location, 2, now=base + timedelta(days=5.5)).segments
        assert [s.file for s in removed] == [s.file for s in segments[:2]]
        assert [s.file for s in backups.read_manifest(where)] == [s.file for s in segments[2:]]
        assert where.read(segments[0].file) is None and where.read(segments[1].file) is None
        assert where.read(segments[2].file) is not None
        at = (base + timedelta(days=3.5)).strftime("%Y-%m-%dT%H:%M:%S")
        url = postgres_server.create_database("backup_retention_day3")
        assert f"restored {counts[3]} events" in _cli("restore", location, "--url", url, "--as-of", at)
        at = (base + timedelta(days=1.5)).strftime("%Y-%m-%dT%H:%M:%S")
        assert "no backup was written at or before" in _cli("restore", location, "--url", url,
                                                             "--as-of", at, code=1)

        # Nothing else is due yet at day 5.5 with 2 days; 1 day later, only the newest chain stays.
        assert backups.expire(store, location, 2, now=base + timedelta(days=5.5)).segments == []
    assert "expired 2 segments" in _cli("expire-backups", location, "--url", source_url,
                                        "--retention-days", "2")
    assert [s.file for s in backups.read_manifest(where)] == [segments[4].file]
    # The newest chain is never expired, however old.
    assert "expired 0 segments" in _cli("expire-backups", location, "--url", source_url,
                                        "--retention-days", "0.5")
    assert _restored_log(postgres_server, location, "backup_retention_last") == expected


def test_backup_with_retention_expires_after_writing(
        postgres_server: PostgresServer, location: str) -> None:
    source_url = postgres_server.create_database("backup_retention_cli")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 1)
        _cli("backup", location, "--url", source_url)
        _backdate(location, [0], datetime(2026, 1, 1, tzinfo=UTC))
        _append(store, "a", 1)
        output = _cli("backup", location, "--url", source_url, "--full-every", "1",
                      "--retention-days", "1")
    # The new full backup is not yet a day old: the old chain still serves the window.
    assert "full backup" in output and "expired" not in output
    assert len(backups.read_manifest(backups.target(location))) == 2
    assert "--retention-days" in _cli("backup", location, "--url", source_url,
                                      "--retention-days", "0", code=2)


def test_a_restored_copy_starts_a_new_chain(postgres_server: PostgresServer, location: str) -> None:
    """A restored database numbers positions anew: continuing the old chain from it would
    skip events, so its first backup into the same location is a full one."""
    source_url = postgres_server.create_database("backup_copy_source")
    copy_url = postgres_server.create_database("backup_copy")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
    _cli("backup", location, "--url", source_url)
    _cli("restore", location, "--url", copy_url)
    with EventStore.connect(copy_url) as store:
        _append(store, "a", 1)
        expected = _log(store)
    assert "full backup" in _cli("backup", location, "--url", copy_url)
    assert _restored_log(postgres_server, location, "backup_copy_restored") == expected


def test_a_chain_written_before_database_ids_gets_a_new_full_backup(
        postgres_server: PostgresServer, location: str) -> None:
    """Segments from before this version name no database: the next backup cannot know it
    continues their chain, so it starts a new one; the old chain still restores."""
    source_url = postgres_server.create_database("backup_old_manifest")
    where = backups.target(location)
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
        _cli("backup", location, "--url", source_url)
        raw = where.read(backups.MANIFEST)
        assert raw is not None
        old = json.loads(raw)
        for segment in old["segments"]:
            for key in ("archived", "snapshot_xmin", "store_id"):
                del segment[key]
        where.write(backups.MANIFEST, json.dumps(old).encode())
        _append(store, "a", 1)
        assert "(full backup): 3 events" in _cli("backup", location, "--url", source_url)
    segments = backups.read_manifest(where)
    assert [s.full for s in segments] == [True, True] and segments[0].store_id == ""
    url = postgres_server.create_database("backup_old_manifest_restored")
    assert "restored 2 events" in _cli("restore", location, "--url", url,
                                       "--as-of", segments[0].created)


# -- one writer at a time ---------------------------------------------------------------

_HOLDER = """
import sys, time
from eventstore import EventStore
from eventstore import backup as backups
with EventStore.connect(sys.argv[1]) as store:
    with backups.locked(store, backups.target(sys.argv[2])):
        print("held", flush=True)
        time.sleep(600)
"""


def _hold_lock(url: str, location: str) -> subprocess.Popen[str]:
    """A process that holds LOCATION's backup lock (through the database at `url`)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url, location],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_and_a_killed_holder_releases(
        postgres_server: PostgresServer, location: str) -> None:
    """While a backup holds the location, another backup and expire-backups fail fast
    (exit 4, naming the location) or after --lock-timeout, writing nothing; once the
    holder is killed (no clean-up of its own), the next backup goes through."""
    source_url = postgres_server.create_database("backup_lock_source")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
        _cli("backup", location, "--url", source_url)
        _append(store, "a", 2)
        expected = _log(store)
    where = backups.target(location)
    before = where.read(backups.MANIFEST)
    holder = _hold_lock(source_url, location)
    try:
        output = _cli("backup", location, "--url", source_url, code=BACKUP_LOCKED)
        assert f"{where}: another backup or expire-backups holds this location" in output, output
        output = _cli("backup", location, "--url", source_url, "--lock-timeout", "0.5",
                      code=BACKUP_LOCKED)
        assert "(waited 0.5 s)" in output, output
        output = _cli("expire-backups", location, "--url", source_url, "--retention-days", "1",
                      code=BACKUP_LOCKED)
        assert f"{where}: another backup" in output, output
        assert where.read(backups.MANIFEST) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The lock died with the holder's connection (PostgreSQL notices at once, or within
    # the lock timeout).
    assert "incremental): 2 events" in _cli("backup", location, "--url", source_url,
                                           "--lock-timeout", "10")
    _assert_chain_valid(location)
    assert _restored_log(postgres_server, location, "backup_lock_restored") == expected


def test_concurrent_backups_are_serialised_into_one_valid_chain(
        postgres_server: PostgresServer, location: str) -> None:
    """Backups started at the same moment: without a wait one of them is refused (or finds
    nothing new, if the other was already done); with --lock-timeout they take turns. The
    chain stays valid and restores the whole log."""
    source_url = postgres_server.create_database("backup_race_source")
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(20):
            _append(store, f"s-{i}", 50)

        def race(timeout: float) -> list[str]:
            start = threading.Barrier(2)
            outcomes: list[str] = []

            def one() -> None:
                start.wait()
                try:
                    run = backups.backup(store, location, lock_timeout=timeout)
                    outcomes.append("segment" if run.segment else "nothing new")
                except backups.BackupLocked:
                    outcomes.append("locked")

            threads = [threading.Thread(target=one) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sorted(outcomes)

        assert race(0) in (["locked", "segment"], ["nothing new", "segment"])
        _append(store, "more", 5)
        assert race(30) == ["nothing new", "segment"]
        expected = _log(store)
    segments = _assert_chain_valid(location)
    assert [s.events for s in segments] == [1000, 5]
    assert _restored_log(postgres_server, location, "backup_race_restored") == expected


def test_a_backup_from_another_database_is_refused_by_the_directory_lock(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The database lock cannot see a writer through another database; in a directory the
    fcntl lock on LOCATION/.lock does (given under another path to the same directory)."""
    first = postgres_server.create_database("backup_dirlock_a")
    second = postgres_server.create_database("backup_dirlock_b")
    for url in (first, second):
        with EventStore.connect(url) as store:
            store.migrate()
            _append(store, "a", 1)
    location = tmp_path / "b"
    location.mkdir()
    (tmp_path / "link").symlink_to(location)
    holder = _hold_lock(first, str(location))
    try:
        output = _cli("backup", str(tmp_path / "link"), "--url", second, code=BACKUP_LOCKED)
        assert "a process holds .lock" in output, output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _cli("backup", str(tmp_path / "link"), "--url", second)


# -- leftovers of interrupted backups ---------------------------------------------------

def test_expiry_removes_what_interrupted_backups_left(
        postgres_server: PostgresServer, location: str, s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup killed between its segment and the manifest leaves an unrecorded segment;
    one killed mid-write a temporary file (directory) or an unfinished multipart upload
    (S3). expire-backups removes them while no backup holds the location (and leaves
    them while one does); complete chains and other files stay, the restore is identical."""
    source_url = postgres_server.create_database("backup_orphans_source")
    where = backups.target(location)
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
        _cli("backup", location, "--url", source_url)
        expected = _log(store)
        _append(store, "a", 2)

        # Interrupted after the segment, before the manifest.
        def crash(*_: Any) -> bytes:
            raise backups.BackupError("killed before the manifest")

        with monkeypatch.context() as m:
            m.setattr(backups, "_write_manifest", crash)
            assert "killed before the manifest" in _cli("backup", location, "--url", source_url,
                                                        code=1)
        # Interrupted in the middle of the stream: the writer cleans up after itself.
        def rows_then_crash(self: Any) -> Any:
            yield {"position": 1}
            raise backups.BackupError("killed mid-stream")

        with monkeypatch.context() as m:
            m.setattr(postgres_backup.SegmentExport, "rows", rows_then_crash)
            assert "killed mid-stream" in _cli("backup", location, "--url", source_url, code=1)
    recorded = [s.file for s in backups.read_manifest(where)]
    orphan = next(n for n in where.names() if n.startswith("segment-") and n not in recorded)
    left = [orphan]
    where.write("notes.txt", b"not ours")
    if location.startswith("s3://"):
        # What a killed process leaves: an upload with a part, never completed or aborted.
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        client = s3_server.client()
        key = f"{prefix}/segment-000009-5-9.jsonl.gz"
        upload_id = client._create_multipart_upload(bucket, key, {})
        client._upload_part(bucket, key, b"x" * 1024, None, upload_id, 1)
        assert [u.object_name for u in client._list_multipart_uploads(bucket, prefix=prefix).uploads] == [key]
        left.append("segment-000009-5-9.jsonl.gz")
    else:
        tmp = Path(location) / temporary_name("segment-000009-5-9.jsonl.gz")
        tmp.write_bytes(b"half a segment")
        left.append(tmp.name)

    holder = _hold_lock(source_url, location)
    try:
        _cli("expire-backups", location, "--url", source_url, "--retention-days", "1",
             code=BACKUP_LOCKED)
        assert orphan in where.names()  # never while a backup holds the location
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    output = _cli("expire-backups", location, "--url", source_url, "--retention-days", "1",
                  "--lock-timeout", "10")
    assert f"removed {len(left)} files of interrupted backups" in output, output
    assert all(name in output for name in left), output
    names = where.names()
    assert orphan not in names and not [n for n in names if n.endswith(".tmp")]
    assert "notes.txt" in names and recorded[0] in names
    if location.startswith("s3://"):
        assert not client._list_multipart_uploads(bucket, prefix=prefix).uploads
    assert [s.file for s in _assert_chain_valid(location)] == recorded
    assert _restored_log(postgres_server, location, "backup_orphans_restored") == expected


def test_another_databases_files_are_neither_overwritten_nor_removed(
        postgres_server: PostgresServer, location: str, s3_server: S3Server) -> None:
    """Two source databases backing up into one location (their locks, taken in each
    database, do not see each other): a segment's name carries its database, so a run of
    one never removes what the other has in flight (a segment not yet recorded, an
    unfinished upload); that database's own next run does."""
    a_url = postgres_server.create_database("backup_two_a")
    b_url = postgres_server.create_database("backup_two_b")
    where = backups.target(location)
    with EventStore.connect(a_url) as a, EventStore.connect(b_url) as b:
        a.migrate()
        b.migrate()
        _append(a, "a", 3)
        _append(b, "b", 2)
        tokens = [backups.writer_token(postgres_backup.store_identity(s))  # type: ignore[arg-type]
                  for s in (a, b)]
        expected_b = _log(b)
    assert tokens[0] != tokens[1]
    _cli("backup", location, "--url", a_url)
    # What A has in flight while B runs: its next segment, uploaded, not yet recorded.
    in_flight = [f"segment-000002-0-99-{tokens[0]}.jsonl.gz"]
    where.write(in_flight[0], b"A's next segment")
    mine: list[str] = []  # B's own leftover: removed by B's run
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        client = s3_server.client()
        for token, names in ((tokens[0], in_flight), (tokens[1], mine)):
            name = f"segment-000003-0-99-{token}.jsonl.gz"
            upload_id = client._create_multipart_upload(bucket, f"{prefix}/{name}", {})
            client._upload_part(bucket, f"{prefix}/{name}", b"x" * 1024, None, upload_id, 1)
            names.append(name)

    output = _cli("backup", location, "--url", b_url)
    assert all(name not in output for name in in_flight), output
    assert all(name in output for name in mine), output
    assert in_flight[0] in where.names()
    if location.startswith("s3://"):
        assert [u.object_name for u in client._list_multipart_uploads(
            bucket, prefix=prefix).uploads] == [f"{prefix}/{in_flight[1]}"]
    segments = _assert_chain_valid(location)
    assert [s.file.rsplit("-", 1)[1] for s in segments] == [f"{t}.jsonl.gz" for t in tokens]
    assert _restored_log(postgres_server, location, "backup_two_restored") == expected_b

    output = _cli("expire-backups", location, "--url", a_url, "--retention-days", "1000")
    assert all(name in output for name in in_flight), output
    assert in_flight[0] not in where.names()
    if location.startswith("s3://"):
        assert not client._list_multipart_uploads(bucket, prefix=prefix).uploads


def test_a_manifest_changed_by_another_writer_is_not_overwritten(
        postgres_server: PostgresServer, location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lock cannot see (a backup from another database into one bucket): the
    manifest is replaced only if it is still the one the run read; the loser fails,
    and the other writer's manifest stays."""
    source_url = postgres_server.create_database("backup_cas_source")
    where = backups.target(location)
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
        _cli("backup", location, "--url", source_url)
        _append(store, "a", 1)
        theirs = json.dumps({"format": backups.FORMAT, "segments": []}).encode()
        write_segment = backups._write_segment

        def meanwhile(*args: Any) -> Any:
            segment = write_segment(*args)
            where.write(backups.MANIFEST, theirs)  # the other writer, while this one streams
            return segment

        monkeypatch.setattr(backups, "_write_segment", meanwhile)
        output = _cli("backup", location, "--url", source_url, code=1)
    assert f"{where}/manifest.json changed while this run held the location" in output, output
    assert where.read(backups.MANIFEST) == theirs


def test_replace_is_conditional_on_the_server_too(location: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Target.replace: refused when the object changed since it was read, or exists when
    it was absent; on S3 by the server's conditional PUT even when the check just before
    it is fooled (the other writer came in between)."""
    where = backups.target(location)
    where.write("m", b"1")
    _, tag = where.read_tagged("m")
    where.write("m", b"2")
    with pytest.raises(ReplaceConflict):
        where.replace("m", b"3", tag)
    with pytest.raises(ReplaceConflict):
        where.replace("m", b"3", "")
    assert where.read("m") == b"2"
    where.replace("m", b"4", where.read_tagged("m")[1])
    where.replace("new", b"5", "")
    assert (where.read("m"), where.read("new")) == (b"4", b"5")
    if location.startswith("s3://"):
        monkeypatch.setattr(where, "read_tagged", lambda name: (b"1", tag))
        with pytest.raises(ReplaceConflict):
            where.replace("m", b"6", tag)
        monkeypatch.setattr(where, "read_tagged", lambda name: (None, ""))
        with pytest.raises(ReplaceConflict):
            where.replace("m", b"6", "")
        assert where.read("m") == b"4"


def test_numbers_come_back_from_a_restore_as_stored(postgres_server: PostgresServer,
                                                    tmp_path: Path) -> None:
    """A backup and restore keeps each number's type and value: integers past 64 bits,
    and floats of 1e16 and more (which jsonb would give back as integers had the restore
    written them as 1e+16)."""
    numbers = {"float_1e16": 1e16, "float_big": -1.5e300, "float": 0.1, "int": 7,
               "past_u64": 2**64, "nested": [1e22, {"f": 2.5e19}], "text": "1e+16"}
    source_url = postgres_server.create_database("numbers_source")
    with EventStore.connect(source_url) as store:
        store.migrate()
        store.append("n-1", [NewEvent("Measured", numbers, metadata={"scale": 1e18})])
    location = str(tmp_path / "backup")
    _cli("backup", location, "--url", source_url)
    restored = _restored_log(postgres_server, location, "numbers_target")
    assert len(restored) == 1
    payload, metadata = restored[0][4], restored[0][5]
    assert repr(sorted(payload.items())) == repr(sorted(numbers.items()))
    assert repr(metadata) == repr({"scale": 1e18})
