"""`eventstore backup` / `restore` / `expire-backups` against real PostgreSQL, onto a
directory and onto a real S3-compatible server (versitygw) (issue 13 #3)."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from eventstore import EventStore, ExpectedVersion, NewEvent
from eventstore import backup as backups
from eventstore.cli import main
from tests.harness.postgres import PostgresServer
from tests.harness.s3 import S3Server


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
    runner = CliRunner()
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(5):
            _append(store, f"account-{i}", 3)
        # retention: the first two events of account-0 go to the archive table
        assert store.archive_stream("account-0", 2, datetime.now(UTC) + timedelta(days=1)) == 2
        first = runner.invoke(main, ["backup", location, "--url", source_url])
        assert first.exit_code == 0, first.output
        assert "events" in first.output
        _append(store, "account-1", 4, start=100)
        _append(store, "account-9", 2)
        second = runner.invoke(main, ["backup", location, "--url", source_url])
        assert second.exit_code == 0, second.output
        result_file = tmp_path / "result.json"
        again = runner.invoke(main, ["backup", location, "--url", source_url],
                              env={"EVENTSTORE_BACKUP_RESULT_FILE": str(result_file)})
        assert "nothing new" in again.output
        assert json.loads(result_file.read_text()) == {"position": store.head_position(), "segment": None}
        expected_log = _log(store)
        expected_versions = {s: store.read_stream(s)[-1].version
                             for s in ("account-0", "account-1", "account-9")}
        expected_archive = [(e.id, e.version, e.timestamp) for e in store.read_archived_stream("account-0")]

    manifest = backups.read_manifest(backups.target(location))
    assert [s.events for s in manifest] == [15, 6]
    assert manifest[1].after_position == manifest[0].to_position
    assert manifest[0].full and not manifest[1].full

    restored = runner.invoke(main, ["restore", location, "--url", target_url])
    assert restored.exit_code == 0, restored.output
    assert "restored 21 events" in restored.output
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

    again = runner.invoke(main, ["restore", location, "--url", target_url])
    assert again.exit_code == 1 and "not empty" in again.output


def test_a_corrupted_segment_is_refused_by_name(postgres_server: PostgresServer, location: str) -> None:
    source_url = postgres_server.create_database("backup_corrupt_source")
    target_url = postgres_server.create_database("backup_corrupt_target")
    runner = CliRunner()
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
        assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
        _append(store, "b", 3)
        assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
    where = backups.target(location)
    second = backups.read_manifest(where)[1].file
    data = where.read(second)
    assert data is not None
    rows = gzip.decompress(data).replace(b'"amount":1', b'"amount":7')
    where.write(second, gzip.compress(rows))
    result = runner.invoke(main, ["restore", location, "--url", target_url])
    assert result.exit_code == 1
    assert f"segment {second} is corrupted" in result.output
    with EventStore.connect(target_url) as store:
        store.migrate()
        assert store.read_all(0, 10) == []  # nothing written before the check


@pytest.mark.parametrize("url", ["sqlite:///x.db"])
def test_backup_needs_postgres(url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["backup", str(tmp_path), "--url", url])
    assert result.exit_code == 1 and "PostgreSQL" in result.output




def test_wrong_s3_credentials_or_bucket_give_a_clear_error(
        postgres_server: PostgresServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source_url = postgres_server.create_database("backup_s3_auth")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
    runner = CliRunner()
    wrong = "wrong-" + os.environ["AWS_SECRET_ACCESS_KEY"][:6]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    result = runner.invoke(main, ["backup", f"s3://{s3_bucket}/x", "--url", source_url])
    assert result.exit_code == 1
    assert "refused the credentials (SignatureDoesNotMatch)" in result.output, result.output
    assert "AWS_SECRET_ACCESS_KEY" in result.output and wrong not in result.output
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    result = runner.invoke(main, ["restore", f"s3://{s3_bucket}/x", "--url", source_url])
    # AWS says InvalidAccessKeyId, versitygw XAdminUserNotFound: both a 403, both named.
    assert result.exit_code == 1 and "refused the credentials (" in result.output, result.output
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    result = runner.invoke(main, ["backup", f"s3://{s3_bucket}/x", "--url", source_url])
    assert result.exit_code == 1 and "no S3 credentials" in result.output


def test_a_missing_bucket_is_named(postgres_server: PostgresServer, s3_bucket: str) -> None:
    source_url = postgres_server.create_database("backup_s3_nobucket")
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
    result = CliRunner().invoke(main, ["backup", "s3://no-such-bucket/x", "--url", source_url])
    assert result.exit_code == 1 and "bucket no-such-bucket does not exist" in result.output
    result = CliRunner().invoke(main, ["backup", "s3://My_Bucket/x", "--url", source_url])
    assert result.exit_code == 1 and "'My_Bucket' is not a valid S3 bucket name" in result.output


def test_a_large_segment_goes_up_in_parts_and_restores(
        postgres_server: PostgresServer, s3_bucket: str, s3_server: S3Server) -> None:
    """A segment past the client's 5 MiB part size is a multipart upload (its ETag has
    the part count), read back whole."""
    source_url = postgres_server.create_database("backup_s3_large")
    target_url = postgres_server.create_database("backup_s3_large_target")
    location = f"s3://{s3_bucket}/large"
    with EventStore.connect(source_url) as store:
        store.migrate()
        for i in range(8):  # ~9 MiB of incompressible payload
            store.append(f"blob-{i}", [NewEvent(type="Blob", payload={"data": os.urandom(12_000).hex()})
                                       for _ in range(50)], expected_version=ExpectedVersion.ANY)
        result = CliRunner().invoke(main, ["backup", location, "--url", source_url])
        assert result.exit_code == 0, result.output
        expected = _log(store)
    segment = backups.read_manifest(backups.target(location))[0]
    stat = s3_server.client().stat_object(s3_bucket, f"large/{segment.file}")
    assert stat.size > 5 << 20 and "-" in stat.etag, (stat.size, stat.etag)
    result = CliRunner().invoke(main, ["restore", location, "--url", target_url])
    assert result.exit_code == 0, result.output
    with EventStore.connect(target_url) as store:
        assert _log(store) == expected


def test_events_archived_after_their_segment_come_back_archived(
        postgres_server: PostgresServer, location: str) -> None:
    """Retention moves events to the archive after a backup wrote them in the log: the next
    incremental backup carries the moves, and a restore puts them in the archive again
    (and a restore to the earlier point has them in the log, as they were then)."""
    source_url = postgres_server.create_database("backup_archive_source")
    runner = CliRunner()
    streams = ["acc-1", "acc-2", "acc-3"]
    future = datetime.now(UTC) + timedelta(days=1)
    with EventStore.connect(source_url) as store:
        store.migrate()
        for s in streams:
            _append(store, s, 4)
        assert store.archive_stream("acc-3", 1, future) == 1  # archived before any backup
        assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
        first_log, first_archive = _log(store), _archive(store, streams)
        # After the full backup: events of its segment go to the archive, more appends.
        assert store.archive_stream("acc-1", 3, future) == 3
        assert store.archive_stream("acc-3", 2, future) == 1
        _append(store, "acc-2", 2, start=50)
        result = runner.invoke(main, ["backup", location, "--url", source_url])
        assert result.exit_code == 0 and "4 archive moves" in result.output, result.output
        # Archived after the incremental one too, with nothing appended since.
        assert store.archive_stream("acc-2", 2, future) == 2
        result = runner.invoke(main, ["backup", location, "--url", source_url])
        assert result.exit_code == 0 and "0 events" in result.output, result.output
        expected_log, expected_archive = _log(store), _archive(store, streams)
    segments = backups.read_manifest(backups.target(location))
    assert [s.archived for s in segments] == [0, 4, 2]
    assert len(expected_archive) == 7

    target_url = postgres_server.create_database("backup_archive_target")
    result = runner.invoke(main, ["restore", location, "--url", target_url])
    assert result.exit_code == 0, result.output
    with EventStore.connect(target_url) as store:
        assert _log(store) == expected_log
        assert _archive(store, streams) == expected_archive
        assert store.stream_version("acc-1") == 4 and store.stream_version("acc-2") == 6

    earlier_url = postgres_server.create_database("backup_archive_earlier")
    result = runner.invoke(main, ["restore", location, "--url", earlier_url,
                                  "--as-of", segments[0].created])
    assert result.exit_code == 0 and "restored 12 events" in result.output, result.output
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
    runner = CliRunner()
    counts = []
    with EventStore.connect(source_url) as store:
        store.migrate()
        for day in range(5):  # full, incr, full, incr, full with --full-every 2
            _append(store, f"day-{day}", 2)
            result = runner.invoke(main, ["backup", location, "--url", source_url, "--full-every", "2"])
            assert result.exit_code == 0, result.output
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
    removed = backups.expire(location, 2, now=base + timedelta(days=5.5))
    assert [s.file for s in removed] == [s.file for s in segments[:2]]
    assert [s.file for s in backups.read_manifest(where)] == [s.file for s in segments[2:]]
    assert where.read(segments[0].file) is None and where.read(segments[1].file) is None
    assert where.read(segments[2].file) is not None
    at = (base + timedelta(days=3.5)).strftime("%Y-%m-%dT%H:%M:%S")
    url = postgres_server.create_database("backup_retention_day3")
    result = runner.invoke(main, ["restore", location, "--url", url, "--as-of", at])
    assert result.exit_code == 0 and f"restored {counts[3]} events" in result.output, result.output
    at = (base + timedelta(days=1.5)).strftime("%Y-%m-%dT%H:%M:%S")
    result = runner.invoke(main, ["restore", location, "--url", url, "--as-of", at])
    assert result.exit_code == 1 and "no backup was written at or before" in result.output

    # Nothing else is due yet at day 5.5 with 2 days; 1 day later, only the newest chain stays.
    assert backups.expire(location, 2, now=base + timedelta(days=5.5)) == []
    result = runner.invoke(main, ["expire-backups", location, "--retention-days", "2"])
    assert result.exit_code == 0 and "expired 2 segments" in result.output, result.output
    assert [s.file for s in backups.read_manifest(where)] == [segments[4].file]
    # The newest chain is never expired, however old.
    result = runner.invoke(main, ["expire-backups", location, "--retention-days", "0.5"])
    assert result.exit_code == 0 and "expired 0 segments" in result.output
    url = postgres_server.create_database("backup_retention_last")
    result = runner.invoke(main, ["restore", location, "--url", url])
    assert result.exit_code == 0, result.output
    with EventStore.connect(url) as store:
        assert _log(store) == expected


def test_backup_with_retention_expires_after_writing(postgres_server: PostgresServer, tmp_path: Path) -> None:
    source_url = postgres_server.create_database("backup_retention_cli")
    location = str(tmp_path / "b")
    runner = CliRunner()
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 1)
        assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
        _backdate(location, [0], datetime(2026, 1, 1, tzinfo=UTC))
        _append(store, "a", 1)
        result = runner.invoke(main, ["backup", location, "--url", source_url, "--full-every", "1",
                                      "--retention-days", "1"])
    # The new full backup is not yet a day old: the old chain still serves the window.
    assert result.exit_code == 0 and "full backup" in result.output and "expired" not in result.output
    assert len(backups.read_manifest(backups.target(location))) == 2
    bad = runner.invoke(main, ["backup", location, "--url", source_url, "--retention-days", "0"])
    assert bad.exit_code == 2 and "--retention-days" in bad.output


def test_a_restored_copy_starts_a_new_chain(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A restored database numbers positions anew: continuing the old chain from it would
    skip events, so its first backup into the same location is a full one."""
    source_url = postgres_server.create_database("backup_copy_source")
    copy_url = postgres_server.create_database("backup_copy")
    location = str(tmp_path / "b")
    runner = CliRunner()
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 3)
    assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
    assert runner.invoke(main, ["restore", location, "--url", copy_url]).exit_code == 0
    with EventStore.connect(copy_url) as store:
        _append(store, "a", 1)
        expected = _log(store)
    result = runner.invoke(main, ["backup", location, "--url", copy_url])
    assert result.exit_code == 0 and "full backup" in result.output, result.output
    last = postgres_server.create_database("backup_copy_restored")
    assert runner.invoke(main, ["restore", location, "--url", last]).exit_code == 0
    with EventStore.connect(last) as store:
        assert _log(store) == expected


def test_a_chain_written_before_database_ids_gets_a_new_full_backup(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """Segments from before this version name no database: the next backup cannot know it
    continues their chain, so it starts a new one; the old chain still restores."""
    source_url = postgres_server.create_database("backup_old_manifest")
    location = str(tmp_path / "b")
    runner = CliRunner()
    with EventStore.connect(source_url) as store:
        store.migrate()
        _append(store, "a", 2)
        assert runner.invoke(main, ["backup", location, "--url", source_url]).exit_code == 0
        old = json.loads((tmp_path / "b" / "manifest.json").read_text())
        for segment in old["segments"]:
            for key in ("archived", "snapshot_xmin", "store_id"):
                del segment[key]
        (tmp_path / "b" / "manifest.json").write_text(json.dumps(old))
        _append(store, "a", 1)
        result = runner.invoke(main, ["backup", location, "--url", source_url])
        assert result.exit_code == 0 and "(full backup): 3 events" in result.output, result.output
    segments = backups.read_manifest(backups.target(location))
    assert [s.full for s in segments] == [True, True] and segments[0].store_id == ""
    url = postgres_server.create_database("backup_old_manifest_restored")
    result = runner.invoke(main, ["restore", location, "--url", url, "--as-of", segments[0].created])
    assert result.exit_code == 0 and "restored 2 events" in result.output, result.output
