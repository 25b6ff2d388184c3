"""Where backups live (eventstore/backup.py): a directory or an S3-compatible bucket, with
segments streamed in and out, never staged on local disk.

A segment is written through `Target.open_writer`, which the backup fills as it reads the
log and which makes the object appear only when the writer closes cleanly: in a
directory a temporary file (`.NAME.RANDOM.tmp`) that is fsync'd and renamed; in a bucket
a multipart upload of unknown length whose parts (`part_size` each, 5 MiB at least) are
sent as they fill, completed at the end and aborted on an error. Memory stays at about
one part plus a small pipe, local disk at nothing, whatever the segment's size.

Both kinds also give `lock_key` (the location normalised, for the backup lock in the
source database) and `names` (the files in the location, for the removal of what an
interrupted backup left behind).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from eventstore.errors import BackupError, BackupLocked

log = logging.getLogger("eventstore.backup")

#: S3's smallest part; a multipart upload of unknown length needs a part size.
MIN_PART_SIZE = 5 << 20
#: The default part: memory per upload, and with S3's 10,000 parts a cap of ~156 GiB.
DEFAULT_PART_SIZE = 16 << 20
#: Listings of unfinished uploads one clean-up goes through (1,000 uploads each).
_ABORT_ROUNDS = 10
#: A directory's lock file (see DirectoryTarget.local_lock).
LOCK_FILE = ".lock"


class Target(Protocol):
    """Where segments and the manifest live: a directory (a mounted volume) or a bucket."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def read_tagged(self, name: str) -> tuple[bytes | None, str]: ...

    def replace(self, name: str, data: bytes, tag: str) -> None: ...

    def open_writer(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def open_reader(self, name: str) -> contextlib.AbstractContextManager[BinaryIO | None]: ...

    def delete(self, name: str) -> None: ...

    def names(self) -> list[str]: ...

    def lock_key(self) -> str: ...

    def local_lock(self, timeout: float) -> contextlib.AbstractContextManager[None]: ...

    def abort_unfinished(self, ours: Callable[[str], bool]) -> list[str]: ...


class ReplaceConflict(BackupError):
    """`Target.replace` found the object changed since it was read."""


def temporary_name(name: str) -> str:
    """A directory's temporary file for `name`: hidden, unique per writer, `.tmp`."""
    return f".{name}.{secrets.token_hex(4)}.tmp"


class DirectoryTarget:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __str__(self) -> str:
        return str(self.directory)

    def read(self, name: str) -> bytes | None:
        path = self.directory / name
        return path.read_bytes() if path.exists() else None

    def write(self, name: str, data: bytes) -> None:
        with self.open_writer(name) as out:  # atomic: never a half-written manifest
            out.write(data)

    def read_tagged(self, name: str) -> tuple[bytes | None, str]:
        """The content and a tag for `replace`: its sha256 ("" when absent)."""
        data = self.read(name)
        return data, hashlib.sha256(data).hexdigest() if data is not None else ""

    def replace(self, name: str, data: bytes, tag: str) -> None:
        """Write `name` if it still has `tag` (see read_tagged), else ReplaceConflict.
        Check and write are one step for writers holding the directory's flock."""
        if self.read_tagged(name)[1] != tag:
            raise ReplaceConflict(f"{self}/{name}")
        self.write(name, data)

    @contextlib.contextmanager
    def open_writer(self, name: str) -> Iterator[BinaryIO]:
        """A temporary file in the directory, fsync'd and renamed to `name` on a clean
        exit (so a crash leaves a `.tmp` file, never a partial `name`), removed on an error."""
        tmp = self.directory / temporary_name(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.directory / name)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # a full or read-only volume: named, not a traceback
                raise BackupError(f"{self}: cannot write {name}: {exc}") from None
            raise
        _fsync_directory(self.directory)

    @contextlib.contextmanager
    def open_reader(self, name: str) -> Iterator[BinaryIO | None]:
        """The file to read, or None when there is none."""
        try:
            source = (self.directory / name).open("rb")
        except FileNotFoundError:
            yield None
            return
        with source:
            yield source

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_file())

    def lock_key(self) -> str:
        return f"dir:{os.path.realpath(self.directory)}"

    @contextlib.contextmanager
    def local_lock(self, timeout: float) -> Iterator[None]:
        """A flock on LOCATION/.lock, beside the database lock: it also holds between
        writers from different source databases, or with the volume mounted at different
        paths (on one host; NFS clients too, where Linux maps flock to NFS byte-range
        locks), and the kernel drops it when its process dies. flock, not lockf: a POSIX
        lock is the process's, so another thread closing the file would drop it. The
        file itself stays, empty: it is the lock's handle, not a flag."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BackupError(f"{self}: cannot open {LOCK_FILE}: {exc}") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                        # A file system without locks (ENOLCK, EOPNOTSUPP: some network and
                        # FUSE mounts): the database lock still holds for one source database.
                        log.warning("%s: cannot lock %s (%s): relying on the database lock "
                                    "alone", self, LOCK_FILE, exc)
                        break
                    if time.monotonic() >= deadline:
                        raise BackupLocked(str(self), timeout, f"a process holds {LOCK_FILE} "
                                           "(a backup from another database or host)") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock

    def abort_unfinished(self, ours: Callable[[str], bool]) -> list[str]:
        return []  # a directory's unfinished writes are `.tmp` files, in `names`


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (a crash right after it must not bring back the old name)."""
    with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Pipe(io.RawIOBase):
    """A bounded in-memory pipe between the backup (writing) and the upload thread
    (reading): `write` blocks while `depth` chunks wait, so memory stays bounded however
    fast the log is read. `fail` makes the reader raise (the upload is aborted); a failed
    reader makes the writer raise instead of blocking forever."""

    _EOF = b""

    def __init__(self, chunk: int = 1 << 20, depth: int = 4) -> None:
        super().__init__()
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._pending = bytearray()
        self._buffer = b""
        self._done = False
        self.reader_failed: BaseException | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _put(self, item: bytes | BaseException) -> None:
        while True:
            if self.reader_failed is not None:
                raise BackupError(f"the upload stopped: {self.reader_failed}")
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def write(self, data: Any) -> int:
        self._pending += data
        while len(self._pending) >= self._chunk:
            self._put(bytes(self._pending[:self._chunk]))
            del self._pending[:self._chunk]
        return len(data)

    def finish(self) -> None:
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._put(self._EOF)

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(BackupError):
            self._put(exc)

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all, if negative), fewer only at the end. Whole parts in
        one read: minio's reader concatenates short reads (`part += data`), which would
        copy a 16 MiB part about 8 times over from 1 MiB chunks."""
        pieces: list[bytes] = []
        wanted = size if size >= 0 else float("inf")
        got = 0
        while got < wanted:
            if not self._buffer:
                if self._done:
                    break
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item == self._EOF:
                    self._done = True
                    continue
                self._buffer = item
            take = self._buffer if got + len(self._buffer) <= wanted else (
                self._buffer[:int(wanted - got)])
            self._buffer = self._buffer[len(take):]
            pieces.append(take)
            got += len(take)
        return b"".join(pieces)


#: S3's bucket naming rules (the client refuses other names before any request).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

#: S3 error codes that mean the credentials were refused (besides any 403).
#: XAdminUserNotFound: versitygw's answer (a 404) for an unknown access key.
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
               "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed",
               "XAdminUserNotFound"}


class _S3Body(io.RawIOBase):
    """An object's body being read; the HTTP client's errors become `error(exc)`."""

    def __init__(self, response: Any, error: Callable[[Exception], BackupError]) -> None:
        self._response = response
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.read(len(buffer))
        except Exception as exc:  # urllib3's: a reset, a timeout, a short body
            raise self._error(exc) from None
        buffer[:len(data)] = data
        return len(data)


class S3Target:
    """An S3-compatible bucket, through the `minio` client (no botocore: it installs beside
    the kubernetes client). Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN); endpoint: the `endpoint` argument, else EVENTSTORE_S3_ENDPOINT or
    AWS_ENDPOINT_URL, else AWS S3; region: the argument, else AWS_REGION or
    AWS_DEFAULT_REGION. Error messages name the bucket, the object and the S3 error code,
    never a credential."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None = None,
                 region: str | None = None, part_size: int = DEFAULT_PART_SIZE) -> None:
        import certifi
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if part_size < MIN_PART_SIZE:
            raise BackupError(f"S3 part size {part_size} bytes: S3 needs at least "
                              f"{MIN_PART_SIZE >> 20} MiB")
        self.part_size = part_size
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

        if isinstance(exc, BackupError):
            return exc
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

    def read_tagged(self, name: str) -> tuple[bytes | None, str]:
        """The content and a tag for `replace`: its ETag ("" when absent)."""
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(name))
            try:
                return bytes(response.read()), str(response.headers.get("ETag") or "")
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None, ""
            raise self._error("read", name, exc) from None
        except Exception as exc:
            raise self._error("read", name, exc) from None

    def replace(self, name: str, data: bytes, tag: str) -> None:
        """Write `name` if its ETag is still `tag` ("": if it does not exist), else
        ReplaceConflict: a conditional PUT (If-Match / If-None-Match: *), which AWS S3,
        MinIO and versitygw honour, so the check and the write are one step. A server
        that ignores the headers still gets the check just before the write. (minio's
        put_object would turn these headers into user metadata: its _put_object sends
        them as they are.)"""
        from minio.error import S3Error

        if self.read_tagged(name)[1] != tag:
            raise ReplaceConflict(f"{self}/{name}")
        condition = {"If-Match": tag} if tag else {"If-None-Match": "*"}
        try:
            self.client._put_object(self.bucket, self._key(name), data,
                                    {"Content-Type": "application/octet-stream", **condition})
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ReplaceConflict(f"{self}/{name}") from None
            raise self._error("write", name, exc) from None
        except Exception as exc:
            raise self._error("write", name, exc) from None

    @contextlib.contextmanager
    def open_writer(self, name: str) -> Iterator[BinaryIO]:
        """A streamed upload: the client reads the pipe on a thread and sends a part each
        `part_size` bytes (one PUT if the whole object fits in one part). The object
        exists only once the block ends cleanly; on an error the upload is aborted."""
        pipe = _Pipe()
        outcome: dict[str, BaseException] = {}

        def upload() -> None:
            try:
                self.client.put_object(self.bucket, self._key(name), pipe, -1,  # type: ignore[arg-type]
                                       part_size=self.part_size)
            except BaseException as exc:  # handed to the writer, raised there
                outcome["error"] = exc
                pipe.reader_failed = exc

        thread = threading.Thread(target=upload, name="eventstore-backup-upload", daemon=True)
        thread.start()
        try:
            yield pipe  # type: ignore[misc]
            pipe.finish()
        except BaseException:
            upload_failed = pipe.reader_failed is not None  # before ours is injected
            pipe.fail(BackupError(f"the backup stopped writing {name}"))
            thread.join()
            if upload_failed:  # the writer raised because the upload had failed: say why
                raise self._error("write", name, outcome["error"]) from None  # type: ignore[arg-type]
            raise
        thread.join()
        if "error" in outcome:
            raise self._error("write", name, outcome["error"]) from None  # type: ignore[arg-type]

    @contextlib.contextmanager
    def open_reader(self, name: str) -> Iterator[BinaryIO | None]:
        """The object as a stream (its body as it arrives), or None when there is none; an
        error while reading it is a BackupError naming it, as any other."""
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(name))
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                yield None
                return
            raise self._error("read", name, exc) from None
        except Exception as exc:
            raise self._error("read", name, exc) from None
        try:
            yield io.BufferedReader(_S3Body(response, lambda exc: self._error("read", name, exc)),
                                    buffer_size=1 << 20)
        finally:
            response.close()
            response.release_conn()

    def delete(self, name: str) -> None:
        try:
            self.client.remove_object(self.bucket, self._key(name))
        except Exception as exc:
            raise self._error("delete", name, exc) from None

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            return sorted(o.object_name[len(start):]
                          for o in self.client.list_objects(self.bucket, prefix=start)
                          if o.object_name and not o.is_dir)
        except Exception as exc:
            raise self._error("list", "the objects", exc) from None

    def lock_key(self) -> str:
        # The endpoint is left out: one bucket is reached by different URLs (in the
        # cluster, from outside); two services with one bucket name only share a lock.
        return f"s3:{self.bucket}/{self.prefix}"

    @contextlib.contextmanager
    def local_lock(self, timeout: float) -> Iterator[None]:
        yield  # the database lock only: see eventstore/backup.py on writers of one bucket

    def abort_unfinished(self, ours: Callable[[str], bool]) -> list[str]:
        """Abort the multipart uploads of segments left by killed backups (a process killed
        mid-upload leaves its parts stored, unlisted and billed) whose names `ours` accepts
        (another database's upload may be running); the names aborted.
        Through the client's ListMultipartUploads/AbortMultipartUpload calls, which minio
        exposes only as `_`-methods."""
        start = f"{self.prefix}/" if self.prefix else ""
        aborted: list[str] = []
        try:
            # A listing holds up to 1,000 uploads; the aborted ones leave it, so list again
            # (a bounded number of times: a server that keeps them must not loop us forever).
            for _ in range(_ABORT_ROUNDS):
                result = self.client._list_multipart_uploads(self.bucket, prefix=start + "segment-")
                mine = [u for u in result.uploads
                        if ours(str(u.object_name)[len(start):])]
                if not mine:
                    break
                for upload in mine:
                    self.client._abort_multipart_upload(self.bucket, upload.object_name,
                                                        str(upload.upload_id))
                    aborted.append(str(upload.object_name)[len(start):])
        except Exception as exc:
            raise self._error("abort unfinished uploads of", "segments", exc) from None
        return aborted


def target(location: str | Path, *, s3_endpoint: str | None = None,
           s3_region: str | None = None, s3_part_size: int = DEFAULT_PART_SIZE) -> Target:
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
        return S3Target(bucket, prefix, s3_endpoint, s3_region, s3_part_size)
    return DirectoryTarget(Path(text))
