"""A throwaway MongoDB wire-protocol server for tests and benchmarks: FerretDB v1.24 on its
embedded SQLite backend (no PostgreSQL needed), a temp data dir, a free loopback port.

The binary is built once by scripts/ferretdb/build.sh and cached. `stop()` keeps the data
dir and port so `start()` brings the same server back (outage tests rely on that); the
temp dir goes away with `close()`, the context manager, or at interpreter exit at the
latest. `python -m tests.harness.ferretdb` (`make mongo-up`) runs one in the foreground and
prints `export SNAPSHOT_STORE_URL=...` for `eventstore serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

import pymongo
import pymongo.errors

VERSION = os.environ.get("FERRETDB_VERSION", "v1.24.2")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "ferretdb" / "build.sh"


def cached_binary() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eventstore-ci" / f"ferretdb-{VERSION}" / "ferretdb"


def ensure_binary() -> Path:
    """The FerretDB binary: $FERRETDB_BIN, else the cached build, else build it now
    (a few minutes, once per machine)."""
    explicit = os.environ.get("FERRETDB_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"FERRETDB_BIN={explicit} is not an executable file")
        return Path(explicit)
    binary = cached_binary()
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError(f"FerretDB is not built ({binary} is missing) and there is no Go "
                           "toolchain to build it: install Go, then run "
                           "`bash scripts/ferretdb/build.sh`")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                            env={**os.environ, "FERRETDB_VERSION": VERSION}, check=False)
    if result.returncode != 0 or not binary.exists():
        raise RuntimeError(f"scripts/ferretdb/build.sh failed (exit {result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _cleanup(state: dict[str, subprocess.Popen[bytes] | None], tmp: Path) -> None:
    _terminate(state.get("process"))
    shutil.rmtree(tmp, ignore_errors=True)


class FerretDBServer:
    """FerretDB on 127.0.0.1:`port` with its SQLite files in a temp dir.

    `start()` returns once a pymongo `ping` succeeds. `url` is mongodb://127.0.0.1:PORT/.
    """

    def __init__(self, port: int | None = None, *, log_level: str = "WARN",
                 start_timeout: float = 60.0) -> None:
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="eventstore-ferretdb-"))
        self.data = self.tmp / "data"
        self.log_path = self.tmp / "ferretdb.log"
        # The finalizer holds the process through this dict (not through self), so it can
        # stop the server and remove the temp dir even when nobody calls close().
        self._state: dict[str, subprocess.Popen[bytes] | None] = {"process": None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state, self.tmp)
        self._started_once = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._state["process"]

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> FerretDBServer:
        """Start (or restart, on the same port and data dir) and wait until it answers."""
        if self.is_running():
            return self
        if not self._finalizer.alive:
            raise RuntimeError("this FerretDBServer was closed; create a new one")
        binary = ensure_binary()
        self.data.mkdir(parents=True, exist_ok=True)
        # A port probed free can be taken before FerretDB binds it. On the first start
        # we may pick another; a restart must keep its port, so it only retries.
        for attempt in range(3):
            try:
                self._launch(binary)
                break
            except _PortTaken:
                if attempt == 2:
                    raise RuntimeError(f"port {self.port} stayed in use:\n{self.log_tail()}") from None
                if not self._started_once and not self._fixed_port:
                    self.port = free_port()
                time.sleep(0.5)
        self._started_once = True
        return self

    def _launch(self, binary: Path) -> None:
        argv = [
            str(binary),
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data}/",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",                 # no metrics/pprof HTTP listener (fixed port 8088)
            "--telemetry=disable",
            f"--state-dir={self.tmp}",
            f"--log-level={self.log_level}",
            "--log-format=text",
        ]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")},
               "DO_NOT_TRACK": "1"}
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=self.tmp, start_new_session=True)
        self._state["process"] = process
        deadline = time.monotonic() + self.start_timeout
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=250, connectTimeoutMS=250, directConnection=True)
        try:
            while True:
                if process.poll() is not None:
                    tail = self.log_tail()
                    self._state["process"] = None
                    if "address already in use" in tail.lower():
                        raise _PortTaken()
                    raise RuntimeError(f"FerretDB exited with {process.returncode} at start:\n{tail}")
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"FerretDB did not answer a ping within "
                                           f"{self.start_timeout:g} s:\n{self.log_tail()}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server gracefully; its port and data stay for a later `start()`."""
        _terminate(self.process)
        self._state["process"] = None

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), keeping its data for a restart."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._state["process"] = None

    def close(self) -> None:
        """Stop the server and remove its temp dir (data and log)."""
        self._finalizer()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> FerretDBServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _PortTaken(Exception):
    pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.ferretdb",
                                     description="Run a throwaway FerretDB in the foreground.")
    parser.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARN", "ERROR"])
    args = parser.parse_args(argv)
    # Block the stop signals so sigwait receives them (an unblocked SIGTERM would kill us
    # before `finally` could stop FerretDB and remove its temp dir).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server = FerretDBServer(port=args.port, log_level=args.log_level)
    try:
        server.start()
        # The variable `eventstore serve` reads its snapshot store from.
        print(f"export SNAPSHOT_STORE_URL={server.url}eventstore", flush=True)
        print(f"# FerretDB {VERSION}, data and log in {server.tmp}; Ctrl-C stops and removes it",
              file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.close()


if __name__ == "__main__":
    main()
