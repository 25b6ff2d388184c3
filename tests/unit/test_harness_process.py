"""tests/harness/process.py and fixtures.py, the plumbing of the throwaway servers, with a
small real server (`python -m http.server`) standing in for PostgreSQL, FerretDB and
versitygw: readiness, the log tail on failure, stop/kill/close, the foreground `main`,
and the start-or-skip fixture shape."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures import started_or_skipped
from tests.harness.process import ServerProcess, ServerStartError, ci_cache_dir, free_port


class HttpServer(ServerProcess):
    """`python -m http.server` on a free port, or `argv` instead when given (to fail)."""

    label = "http.server"
    log_name = "http.log"

    def __init__(self, argv: list[str] | None = None, start_timeout: float = 20.0) -> None:
        super().__init__(tmp_prefix="eventstore-unit-", start_timeout=start_timeout)
        self.port = free_port()
        self.argv = argv or [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)]

    def start(self) -> HttpServer:
        if self.is_running():
            return self
        self._check_open()
        self._spawn(self.argv)
        self._wait_ready(self.answers)
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as started:
        yield started


def test_start_waits_until_it_answers_and_stop_keeps_the_temp_dir(server: HttpServer) -> None:
    assert server.answers() and server.is_running()
    assert "starting:" in server.log_tail()          # the command line heads each start
    server.stop()
    assert not server.is_running() and not server.answers()
    assert server.tmp.is_dir()
    server.start()                                   # a restart, same port and dir
    assert server.answers()
    assert server.log_tail().count("starting:") == 2


def test_kill_then_start(server: HttpServer) -> None:
    process = server.process
    assert process is not None
    server.kill()
    assert process.returncode == -signal.SIGKILL
    assert server.start().answers()


def test_close_stops_it_and_removes_the_temp_dir() -> None:
    server = HttpServer().start()
    process = server.process
    assert process is not None
    server.close()
    assert process.poll() is not None
    assert not server.tmp.exists()
    with pytest.raises(RuntimeError, match="was closed; create a new one"):
        server.start()


def test_an_exit_at_start_raises_with_the_log_tail() -> None:
    argv = [sys.executable, "-c", "import sys; print('no such option: --bogus'); sys.exit(3)"]
    server = HttpServer(argv)
    try:
        with pytest.raises(ServerStartError) as caught:
            server.start()
    finally:
        server.close()
    assert caught.value.exited
    assert "http.server exited with 3 at start" in str(caught.value)
    assert "no such option: --bogus" in caught.value.log_tail


def test_no_answer_in_time_stops_it_and_keeps_the_log() -> None:
    server = HttpServer([sys.executable, "-c", "import time; print('stuck', flush=True); time.sleep(60)"],
                        start_timeout=0.5)
    try:
        with pytest.raises(ServerStartError, match=r"did not answer within 0.5 s") as caught:
            server.start()
        assert not caught.value.exited
        assert "stuck" in caught.value.log_tail
        assert not server.is_running()
    finally:
        server.close()


def test_the_cache_dir_knob(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EVENTSTORE_CI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ci_cache_dir() == tmp_path / "xdg" / "eventstore-ci"
    monkeypatch.setenv("EVENTSTORE_CI_CACHE", str(tmp_path / "ci"))
    assert ci_cache_dir() == tmp_path / "ci"


# An HTTP server that notes the stop signal it got in `marker` (outside its temp dir).
GRACEFUL = textwrap.dedent("""
    import http.server, pathlib, signal, sys
    def bye(signum, frame):
        pathlib.Path(sys.argv[2]).write_text(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                    http.server.SimpleHTTPRequestHandler).serve_forever(0.05)
""")

FOREGROUND = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.harness.process import serve_in_foreground
    from tests.unit.test_harness_process import GRACEFUL, HttpServer

    server = HttpServer()
    server.argv = [sys.executable, "-c", GRACEFUL, str(server.port), {marker!r}]
    serve_in_foreground(server, lambda s: print(s.port, s.tmp, flush=True))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_foreground_main_closes_the_server_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    marker = tmp_path / "stopped-by"
    proc = subprocess.Popen([sys.executable, "-c", FOREGROUND.format(root=root, marker=str(marker))],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        port, tmp = proc.stdout.readline().split()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
            pass
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=30) == 0
        assert not Path(tmp).exists(), "the temp dir outlived the signal"
        # The server got the graceful stop signal (not a SIGKILL after stop_timeout, as when
        # the signals were blocked for sigwait and the server inherited that mask).
        assert marker.read_text() == "SIGTERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _fixture(server: HttpServer, require_env: str) -> Iterator[HttpServer]:
    yield from started_or_skipped(server, "the test server", require_env)


def test_a_server_that_cannot_start_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("EVENTSTORE_REQUIRE_UNIT", raising=False)
    server = HttpServer([sys.executable, "-c", "print('cannot bind'); raise SystemExit(1)"])
    with pytest.raises(pytest.skip.Exception) as caught:
        next(_fixture(server, "EVENTSTORE_REQUIRE_UNIT"))
    message = str(caught.value)
    assert "the test server could not be started here" in message and "cannot bind" in message
    assert "set EVENTSTORE_REQUIRE_UNIT=1 to make this an error" in message
    assert not server.tmp.exists()


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_a_required_server_that_cannot_start_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                         value: str) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("EVENTSTORE_REQUIRE_UNIT", value)
    server = HttpServer([sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(ServerStartError):
        next(_fixture(server, "EVENTSTORE_REQUIRE_UNIT"))
    assert not server.tmp.exists()


@pytest.mark.parametrize(("ci", "value"), [("true", None), (None, "0"), (None, "no"),
                                            ("true", "")])
def test_only_the_require_variable_makes_it_an_error(monkeypatch: pytest.MonkeyPatch,
                                                      ci: str | None, value: str | None) -> None:
    """One rule for every EVENTSTORE_REQUIRE_*: 1, true or yes. CI alone implies nothing
    (a CI machine may lack Docker for kind; .ci/run sets each variable it needs)."""
    for name, setting in (("CI", ci), ("EVENTSTORE_REQUIRE_UNIT", value)):
        if setting is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, setting)
    server = HttpServer([sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(pytest.skip.Exception):
        next(_fixture(server, "EVENTSTORE_REQUIRE_UNIT"))
    assert not server.tmp.exists()


def test_the_fixture_closes_the_server_after_the_session() -> None:
    server = HttpServer()
    fixture = _fixture(server, "EVENTSTORE_REQUIRE_UNIT")
    assert next(fixture) is server and server.answers()
    with pytest.raises(StopIteration):
        next(fixture)
    assert not server.is_running() and not server.tmp.exists()
