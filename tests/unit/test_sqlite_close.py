"""Closing a SQLite store under running readers: never a crash, only StoreUnavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs in a child process, so that a segmentation fault fails the test instead of
# killing pytest. Each round: a store with a few thousand events, four threads reading
# the whole log (and appending) in a loop, and close() from the main thread mid-read.
CHILD = textwrap.dedent(r"""
    import collections, sqlite3, sys, threading, time
    from eventstore import EventStore, NewEvent, StoreUnavailable

    path, rounds = sys.argv[1], int(sys.argv[2])
    outcomes = collections.Counter()
    for n in range(rounds):
        store = EventStore.connect(f"sqlite:///{path}/r{n}.db")
        store.migrate()
        store.append("s", [NewEvent("E", {"i": i, "pad": "x" * 200}) for i in range(3000)])
        started = threading.Barrier(5)

        def read() -> None:
            started.wait()
            try:
                while True:
                    store.read_all(limit=3000)
                    store.read_stream("s", limit=500)
            except StoreUnavailable:
                outcomes["StoreUnavailable"] += 1
            except BaseException as exc:
                outcomes[f"{type(exc).__module__}.{type(exc).__name__}: {exc}"] += 1

        def write() -> None:
            started.wait()
            try:
                while True:
                    store.append("w", [NewEvent("E", {})])
            except StoreUnavailable:
                outcomes["StoreUnavailable"] += 1
            except BaseException as exc:
                outcomes[f"{type(exc).__module__}.{type(exc).__name__}: {exc}"] += 1

        threads = [threading.Thread(target=read) for _ in range(3)]
        threads.append(threading.Thread(target=write))
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(0.02 * (n % 5))
        store.close()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive(), "a reader hung after close()"
    print(dict(outcomes), flush=True)
    sys.exit(0 if set(outcomes) == {"StoreUnavailable"} else 1)
""")


def test_close_under_running_readers_gives_store_unavailable(tmp_path: Path) -> None:
    """On the old code this crashed the interpreter ("Fatal Python error: Segmentation
    fault" in read_all) or leaked sqlite3.ProgrammingError to the readers."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, str(tmp_path), "12"],
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")
