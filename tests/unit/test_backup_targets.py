"""The streamed segment writers of eventstore/backup_targets.py, with a fake S3 client (the
real one against versitygw is in tests/integration/test_backup_restore.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from eventstore.backup_targets import DirectoryTarget, S3Target, _Pipe
from eventstore.errors import BackupError


def test_the_pipe_holds_at_most_depth_chunks() -> None:
    """A writer faster than the upload blocks once `depth` chunks wait: memory is bounded
    by the pipe, not by the segment."""
    pipe = _Pipe(chunk=4, depth=2)
    writer = threading.Thread(target=lambda: (pipe.write(b"x" * 40), pipe.finish()))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and pipe._queue.qsize() == 2 and len(pipe._pending) <= 32
    data = b""
    while chunk := pipe.read(3):
        data += chunk
    writer.join()
    assert data == b"x" * 40


def test_a_failed_upload_stops_the_writer_instead_of_blocking_it() -> None:
    pipe = _Pipe(chunk=4, depth=1)
    pipe.write(b"abcd")
    pipe.reader_failed = OSError("connection reset")
    with pytest.raises(BackupError, match="the upload stopped: connection reset"):
        pipe.write(b"efgh")


class _FakeClient:
    """put_object as minio does it for an unknown length: read the stream to its end."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_after = fail_after
        self.aborted = False

    def put_object(self, bucket: str, key: str, data: Any, length: int, part_size: int) -> None:
        assert length == -1 and part_size == 5 << 20
        body = b""
        try:
            while chunk := data.read(1 << 16):
                body += chunk
                if self.fail_after is not None and len(body) >= self.fail_after:
                    raise OSError("the endpoint went away")
        except BaseException:
            self.aborted = True
            raise
        self.objects[key] = body


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> S3Target:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    return S3Target("b", "p", endpoint="http://127.0.0.1:9", part_size=5 << 20)


def test_an_s3_writer_streams_the_whole_object(bucket: S3Target) -> None:
    bucket.client = _FakeClient()
    with bucket.open_writer("seg") as out:
        for _ in range(50):
            out.write(b"y" * 100_000)
    assert bucket.client.objects == {"p/seg": b"y" * 5_000_000}


def test_an_s3_upload_that_fails_is_named_to_the_writer(bucket: S3Target) -> None:
    bucket.client = _FakeClient(fail_after=3 << 20)
    with pytest.raises(BackupError) as raised, bucket.open_writer("seg") as out:
        for _ in range(200):
            out.write(b"z" * 100_000)
    assert "s3://b/p: cannot write seg" in str(raised.value)
    assert "the endpoint went away" in str(raised.value)
    assert bucket.client.objects == {}


def test_a_writer_that_fails_aborts_the_upload(bucket: S3Target) -> None:
    bucket.client = _FakeClient()
    with pytest.raises(RuntimeError, match="the database went away"), bucket.open_writer("seg") as out:
        out.write(b"w" * (2 << 20))
        raise RuntimeError("the database went away")
    assert bucket.client.aborted and bucket.client.objects == {}


def test_a_directory_writer_leaves_nothing_on_an_error(tmp_path: Path) -> None:
    where = DirectoryTarget(tmp_path)
    with pytest.raises(RuntimeError), where.open_writer("seg") as out:
        out.write(b"half")
        raise RuntimeError("killed")
    assert where.names() == []
    with where.open_writer("seg") as out:
        out.write(b"whole")
    assert where.names() == ["seg"] and where.read("seg") == b"whole"


def test_a_directory_without_file_locks_relies_on_the_database_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """ENOLCK (a mount without lock support) must not stop backups: a warning, and on."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with DirectoryTarget(tmp_path).local_lock(0):
        pass
    assert "relying on the database lock alone" in caplog.text


def test_a_held_directory_lock_is_refused_by_name(tmp_path: Path) -> None:
    from eventstore.errors import BackupLocked

    where = DirectoryTarget(tmp_path)
    with where.local_lock(0), pytest.raises(BackupLocked, match=r"a process holds \.lock"), \
            DirectoryTarget(tmp_path).local_lock(0.2):
        pass


def test_an_unwritable_directory_is_named(tmp_path: Path) -> None:
    """A read-only or full volume: a BackupError naming the location and the file (the CLI
    prints it), not an OSError traceback."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    where = DirectoryTarget(blocked / "backup")
    with pytest.raises(BackupError, match="cannot write seg"), where.open_writer("seg") as out:
        out.write(b"x")
    with pytest.raises(BackupError, match=r"cannot open \.lock"), where.local_lock(0):
        pass
