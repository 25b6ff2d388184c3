"""A throwaway S3-compatible server for the backup tests: versitygw (a real S3 gateway in
Go: SigV4 authentication, multipart uploads, checksums) on its POSIX backend in a temp
dir, on a free loopback port, with a random root access key and secret.

The binary is built once by scripts/versitygw/build.sh (`make deps`) and cached under
~/.cache/eventstore-ci/versitygw-<version>/. `python -m tests.harness.s3` runs one in the
foreground and prints the AWS_* variables for `eventstore backup s3://...`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.ferretdb import free_port

VERSION = os.environ.get("VERSITYGW_VERSION", "v1.8.0")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "versitygw" / "build.sh"


def cached_binary() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eventstore-ci" / f"versitygw-{VERSION}" / "versitygw"


def ensure_binary() -> Path:
    """versitygw: the cached build, else build it now (a few minutes, once per machine)."""
    binary = cached_binary()
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError(f"versitygw is not built ({binary} is missing) and there is no Go "
                           "toolchain to build it: install Go, then `bash scripts/versitygw/build.sh`")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                            env={**os.environ, "VERSITYGW_VERSION": VERSION}, check=False)
    if result.returncode != 0 or not binary.exists():
        raise RuntimeError(f"scripts/versitygw/build.sh failed (exit {result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return binary


def _cleanup(state: dict[str, subprocess.Popen[bytes] | None], tmp: Path) -> None:
    process = state.get("process")
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    shutil.rmtree(tmp, ignore_errors=True)


class S3Server:
    """versitygw on 127.0.0.1:`port`; `endpoint`, `access_key`, `secret_key`, `region`."""

    region = "us-east-1"

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.start_timeout = start_timeout
        self.access_key = "es" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.tmp = Path(tempfile.mkdtemp(prefix="eventstore-s3-"))
        self.root = self.tmp / "buckets"
        self.log_path = self.tmp / "versitygw.log"
        self._state: dict[str, subprocess.Popen[bytes] | None] = {"process": None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state, self.tmp)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What `eventstore backup s3://...` reads."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region}

    def start(self) -> S3Server:
        binary = ensure_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        # The secret goes through the environment, not argv (visible in `ps`).
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": self.access_key,
               "ROOT_SECRET_ACCESS_KEY": self.secret_key}
        argv = [str(binary), "--port", f"127.0.0.1:{self.port}", "--region", self.region,
                "--quiet", "posix", str(self.root)]
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=self.tmp, start_new_session=True)
        self._state["process"] = process
        deadline = time.monotonic() + self.start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"versitygw exited with {process.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # it answers (403 to an anonymous request): up
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"versitygw did not answer within {self.start_timeout:g} s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.05)

    def client(self, secret_key: str | None = None) -> Any:
        """A minio client for this server (test set-up and inspection)."""
        from minio import Minio

        return Minio(f"127.0.0.1:{self.port}", access_key=self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False, region=self.region)

    def close(self) -> None:
        self._finalizer()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with S3Server() as server:
        for key, value in server.env.items():
            print(f"export {key}={value}", flush=True)
        print(f"# versitygw {VERSION}, buckets under {server.root}; create one with "
              "`mkdir` there; Ctrl-C stops and removes it", file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
