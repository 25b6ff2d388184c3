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
import os
import sys
import time
from pathlib import Path

import pymongo
import pymongo.errors

from tests.harness.process import (
    ServerProcess,
    ServerStartError,
    ci_cache_dir,
    ensure_go_binary,
    free_port,
    serve_in_foreground,
)

VERSION = os.environ.get("FERRETDB_VERSION", "v1.24.2")


def cached_binary() -> Path:
    return ci_cache_dir() / f"ferretdb-{VERSION}" / "ferretdb"


def ensure_binary() -> Path:
    """The FerretDB binary: $FERRETDB_BIN, else the cached build, else build it now
    (a few minutes, once per machine)."""
    explicit = os.environ.get("FERRETDB_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"FERRETDB_BIN={explicit} is not an executable file")
        return Path(explicit)
    return ensure_go_binary("ferretdb", VERSION, version_env="FERRETDB_VERSION")


class FerretDBServer(ServerProcess):
    """FerretDB on 127.0.0.1:`port` with its SQLite files in a temp dir.

    `start()` returns once a pymongo `ping` succeeds. `url` is mongodb://127.0.0.1:PORT/.
    """

    label = "FerretDB"
    log_name = "ferretdb.log"

    def __init__(self, port: int | None = None, *, log_level: str = "WARN",
                 start_timeout: float = 60.0) -> None:
        super().__init__(tmp_prefix="eventstore-ferretdb-", start_timeout=start_timeout)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.log_level = log_level
        self.data = self.tmp / "data"
        self._started_once = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> FerretDBServer:
        """Start (or restart, on the same port and data dir) and wait until it answers."""
        if self.is_running():
            return self
        self._check_open()
        binary = ensure_binary()
        self.data.mkdir(parents=True, exist_ok=True)
        # A port probed free can be taken before FerretDB binds it. On the first start
        # we may pick another; a restart must keep its port, so it only retries.
        for attempt in range(3):
            try:
                self._launch(binary)
                break
            except ServerStartError as exc:
                if not (exc.exited and "address already in use" in exc.log_tail.lower()):
                    raise
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
        self._spawn(argv, env=env)
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=250, connectTimeoutMS=250, directConnection=True)
        try:
            self._wait_ready(lambda: _pings(client))
        finally:
            client.close()


def _pings(client: pymongo.MongoClient[dict[str, object]]) -> bool:
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.ferretdb",
                                     description="Run a throwaway FerretDB in the foreground.")
    parser.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARN", "ERROR"])
    args = parser.parse_args(argv)

    def announce(server: FerretDBServer) -> None:
        # The variable `eventstore serve` reads its snapshot store from.
        print(f"export SNAPSHOT_STORE_URL={server.url}eventstore", flush=True)
        print(f"# FerretDB {VERSION}, data and log in {server.tmp}; Ctrl-C stops and removes it",
              file=sys.stderr, flush=True)

    serve_in_foreground(FerretDBServer(port=args.port, log_level=args.log_level), announce)


if __name__ == "__main__":
    main()
