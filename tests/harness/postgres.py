"""A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries, a temp data
dir, a free loopback port. Installs the `postgresql` package when the binaries are missing.

`python -m tests.harness.postgres` runs one in the foreground and prints its URL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.harness.process import ServerProcess, free_port, serve_in_foreground

__all__ = ["PostgresServer", "ensure_installed", "find_bin_dir", "free_port", "main"]


def find_bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "postgres").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def ensure_installed() -> Path:
    """Return PostgreSQL's bin dir, installing Debian's package if it is not there."""
    found = find_bin_dir()
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("PostgreSQL is not installed and we are not root: "
                           "apt-get install postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
                   check=True, env=env)
    found = find_bin_dir()
    if not found:
        raise RuntimeError("apt-get install postgresql did not provide initdb/postgres")
    return found


class PostgresServer(ServerProcess):
    """Start with `start()`, always `stop()` (or `close()`). `url` is a libpq URL for the
    `eventstore` db. `kill()` then `start()` brings the same data back."""

    label = "PostgreSQL"
    log_name = "postgres.log"
    stop_signal = signal.SIGINT      # "fast shutdown": roll back open transactions, exit
    stop_timeout = 30.0

    def __init__(self, *, durable: bool = False, port: int | None = None,
                 max_connections: int = 200) -> None:
        super().__init__(tmp_prefix="eventstore-pg-", start_timeout=60.0)
        self.durable = durable
        self.port = port or free_port()
        self.max_connections = max_connections
        self.data = self.tmp / "data"
        self.user = "eventstore"
        self.database = "eventstore"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _as_db_user(self, argv: list[str]) -> list[str]:
        # postgres refuses to run as root; run it as the package's `postgres` user.
        if os.geteuid() != 0:
            return argv
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        # setpriv execs (runuser forks), so our child *is* postgres and signals reach it.
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def start(self) -> PostgresServer:
        if self.is_running():
            return self
        self._check_open()
        bin_dir = ensure_installed()
        if os.geteuid() == 0:
            self._as_db_user(["true"])
            shutil.chown(self.tmp, "postgres")
        if not self.data.exists():
            subprocess.run(
                self._as_db_user([str(bin_dir / "initdb"), "-D", str(self.data), "-U", self.user,
                                  "--auth=trust", "--encoding=UTF8", "--no-sync"]),
                check=True, stdout=subprocess.DEVNULL)
        options = [
            "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.tmp}",
            "-c", f"max_connections={self.max_connections}",
            "-c", "shared_buffers=256MB",
        ]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]
        self._spawn(self._as_db_user([str(bin_dir / "postgres"), "-D", str(self.data), *options]))
        self._wait_ready(self._database_exists, interval=0.1)
        return self

    def _database_exists(self) -> bool:
        """Connects, and creates the `eventstore` database on the first start."""
        try:
            with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=2) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                      (self.database,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
        except psycopg.OperationalError:
            return False
        return True

    def stop(self, remove: bool = True) -> None:
        """Stop the server; with `remove` (the default) also delete its data (`close()`)."""
        if remove:
            self.close()
        else:
            super().stop()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"


def main() -> None:
    server = PostgresServer(durable="--durable" in sys.argv)
    serve_in_foreground(server, lambda s: print(f"export EVENTSTORE_TEST_POSTGRES_URL={s.url}", flush=True))


if __name__ == "__main__":
    main()
