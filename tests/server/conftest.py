"""Fixtures that run `eventstore serve` as real subprocesses on the throwaway PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"


@dataclass
class ServerProcess:
    """One `eventstore serve` child: its URL, token, log file and process."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    log_path: Path
    env: dict[str, str] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=30, **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def write_settings(directory: Path, store: str = "", projections: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "event-store.yaml").write_text(store)
    (directory / "projections.yaml").write_text(projections)
    return directory


def start_server(tmp_path: Path, env: dict[str, str], *, name: str = "server",
                 wait: bool = True, args: list[str] | None = None) -> ServerProcess:
    port = free_port()
    log_path = tmp_path / f"{name}.log"
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "EVENTSTORE_DATA_DIR": str(tmp_path / f"{name}-data"),
        "EVENTSTORE_CONFIG_DIR": str(tmp_path / "config-missing-ok"),
        "EVENTSTORE_API_TOKEN": TOKEN,
        "EVENTSTORE_TLS_CERT_FILE": str(tmp_path / "no-cert"),
        "EVENTSTORE_TLS_KEY_FILE": str(tmp_path / "no-key"),
        # SIGTERM stops at once, as tests expect; test_lifecycle covers the drain delay.
        "EVENTSTORE_DRAIN_DELAY_SECONDS": "0",
        **env,
    }
    if not Path(full_env["EVENTSTORE_CONFIG_DIR"]).exists():
        write_settings(Path(full_env["EVENTSTORE_CONFIG_DIR"]))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventstore.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), *(args or [])],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", full_env["EVENTSTORE_API_TOKEN"],
                           log_path, full_env)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with `servers(env, name=...)`; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], **kwargs: object) -> ServerProcess:
        server = start_server(tmp_path, env, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(signal.SIGKILL, timeout=10)


@pytest.fixture
def server(servers: Callable[..., ServerProcess], postgres_url: str) -> ServerProcess:
    """One server on a fresh PostgreSQL database, snapshots in SQLite under its data dir."""
    return servers({"EVENTSTORE_URL": postgres_url})
