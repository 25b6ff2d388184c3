"""What the throwaway servers of the tests share (PostgreSQL, FerretDB, versitygw): a free
loopback port, the CI cache of built binaries, one server process in its own session and
temp dir, the wait until it answers, its log tail on failure, stopping it by process group,
and `python -m tests.harness.X` running one in the foreground until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]

S = TypeVar("S", bound="ServerProcess")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` (loopback unless told) right now (another process may take it
    before we bind it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ci_cache_dir() -> Path:
    """Where scripts/*/build.sh cache what they build: $EVENTSTORE_CI_CACHE, else
    ${XDG_CACHE_HOME:-~/.cache}/eventstore-ci (scripts/lib/go-build.sh reads the same)."""
    explicit = os.environ.get("EVENTSTORE_CI_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eventstore-ci"


def ensure_go_binary(name: str, version: str, *, version_env: str) -> Path:
    """scripts/<name>/build.sh's cached binary, built now when missing (minutes, once per
    machine). `version_env` is the variable the script reads the version from."""
    binary = ci_cache_dir() / f"{name}-{version}" / name
    if binary.exists():
        return binary
    script = f"scripts/{name}/build.sh"
    if shutil.which("go") is None:
        raise RuntimeError(f"{name} is not built ({binary} is missing) and there is no Go "
                           f"toolchain to build it: install Go, then `bash {script}`")
    result = subprocess.run(["bash", str(REPO_ROOT / script)], capture_output=True, text=True,
                            env={**os.environ, version_env: version}, check=False)
    if result.returncode != 0 or not binary.exists():
        raise RuntimeError(f"{script} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return binary


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message carries its log tail."""

    def __init__(self, message: str, log_tail: str, *, exited: bool) -> None:
        super().__init__(f"{message}:\n{log_tail}")
        self.log_tail = log_tail
        self.exited = exited


def _terminate(process: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    """`sig` to the server's process group; SIGKILL when it lingers past `timeout`."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _cleanup(state: dict[str, subprocess.Popen[bytes] | None], tmp: Path,
             sig: signal.Signals, timeout: float) -> None:
    _terminate(state.get("process"), sig, timeout)
    state["process"] = None
    shutil.rmtree(tmp, ignore_errors=True)


class ServerProcess:
    """One server binary in a session of its own, with a temp dir for its data and log.

    Subclasses set `label` (for messages), `log_name`, and how to stop gracefully
    (`stop_signal`, `stop_timeout`), and implement `start()` with `_spawn` and
    `_wait_ready`. `stop()` keeps the temp dir (and so the data) for a later `start()`;
    `close()`, the context manager, or interpreter exit at the latest, stop the server and
    remove it.
    """

    label: ClassVar[str] = "server"
    log_name: ClassVar[str] = "server.log"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 10.0

    def __init__(self, *, tmp_prefix: str, start_timeout: float) -> None:
        self.start_timeout = start_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
        self.log_path = self.tmp / self.log_name
        # The finalizer holds the process through this dict (not through self), so it can
        # stop the server and remove the temp dir even when nobody calls close().
        self._state: dict[str, subprocess.Popen[bytes] | None] = {"process": None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state, self.tmp,
                                           self.stop_signal, self.stop_timeout)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._state["process"]

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise RuntimeError(f"this {type(self).__name__} was closed; create a new one")

    def _spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in the temp dir, stdout and stderr appended to the log."""
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            # A session of its own, so stop() can signal the whole process group.
            process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=self.tmp, start_new_session=True)
        self._state["process"] = process
        return process

    def _wait_ready(self, ready: Callable[[], bool], *, interval: float = 0.05) -> None:
        """Poll `ready` until true. ServerStartError with the log tail when the server exits
        first or `start_timeout` passes (then it is stopped)."""
        process = self.process
        assert process is not None, "_spawn first"
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            if process.poll() is not None:
                self._state["process"] = None
                raise ServerStartError(f"{self.label} exited with {process.returncode} at start",
                                       self.log_tail(), exited=True)
            if time.monotonic() > deadline:
                _terminate(process, self.stop_signal, self.stop_timeout)   # the log stays
                self._state["process"] = None
                raise ServerStartError(f"{self.label} did not answer within {self.start_timeout:g} s",
                                       self.log_tail(), exited=False)
            time.sleep(interval)

    def stop(self) -> None:
        """Stop the server gracefully; its temp dir (data, log) stays for a later `start()`."""
        _terminate(self.process, self.stop_signal, self.stop_timeout)
        self._state["process"] = None

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), keeping its data for a restart."""
        _terminate(self.process, signal.SIGKILL, self.stop_timeout)
        self._state["process"] = None

    def close(self) -> None:
        """Stop the server and remove its temp dir (data and log)."""
        self._finalizer()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self: S) -> S:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def serve_in_foreground(server: S, announce: Callable[[S], None]) -> None:
    """Start `server`, `announce` it (print what a shell should export), wait for Ctrl-C or
    SIGTERM, then close it. For `python -m tests.harness.X` (Makefile: pg-up, mongo-up,
    s3-up)."""
    # SIGTERM behaves like Ctrl-C, so `finally` closes the server in both cases, also during
    # start-up. Not by blocking the signals for sigwait: the server inherits the signal
    # mask, would then ignore the stop signal too, and be SIGKILLed after stop_timeout.
    # SIGINT gets the handler too: Python leaves it ignored when it started ignored (a
    # shell's background job: `make pg-up &`), and then Ctrl-C or kill -INT did nothing.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        server.start()
        announce(server)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
