"""Peak memory and local disk of `eventstore backup` and `restore` as the backup grows.

Backups stream their segment to the target (eventstore/backup_targets.py), and restores
stream it back (twice: to check it, to import it): the peak RSS should stay flat from one
size to the next (a few S3 parts above the directory's), and the temp directory should
stay empty. Runs `eventstore backup`, then `eventstore restore` into a new database, under
/usr/bin/time -v, into and from a directory and versitygw, with TMPDIR pointing at an
empty directory that is checked afterwards.

    python -m bench.backup_memory     # BENCH_BACKUP_MIB (default 64,256): MiB of payload
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from eventstore import EventStore, ExpectedVersion, NewEvent
from tests.harness.postgres import PostgresServer
from tests.harness.s3 import S3Server

SIZES_MIB = tuple(int(x) for x in os.environ.get("BENCH_BACKUP_MIB", "64,256").split(","))


def _fill(url: str, mib: int) -> None:
    with EventStore.connect(url) as store:
        store.migrate()
        chunk = 100  # events of ~20 KB of hex (10 KB random bytes) per append
        for i in range(mib * 1024 * 1024 // (20_000 * chunk) + 1):
            store.append(f"blob-{i}", [NewEvent(type="Blob", payload={"data": os.urandom(10_000).hex()})
                                       for _ in range(chunk)], expected_version=ExpectedVersion.ANY)


def _measured(command: str, location: str, url: str, env: dict[str, str]) -> tuple[int, float, str]:
    """(peak RSS in KiB, wall seconds, the first output line) of `eventstore COMMAND`."""
    result = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "eventstore.cli", command, location,
         "--url", url], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)",
                     result.stderr)
    assert peak is not None and wall is not None, result.stderr
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return int(peak.group(1)), seconds, result.stdout.strip().splitlines()[0]


def main() -> None:
    pg = PostgresServer().start()
    try:
        _run(pg)
    finally:
        pg.stop()


def _run(pg: PostgresServer) -> None:
    with S3Server() as s3, tempfile.TemporaryDirectory() as work:
        s3.client().make_bucket("bench")
        staging = Path(work) / "tmp"
        staging.mkdir()
        env = {**os.environ, **s3.env, "TMPDIR": str(staging)}
        print(f"{'payload':>8} {'target':>10} {'segment':>10} {'backup RSS':>11} {'restore RSS':>12} "
              f"{'restore':>8} {'temp dir':>9}")
        for mib in SIZES_MIB:
            url = pg.create_database(f"bench_backup_{mib}")
            _fill(url, mib)
            for kind, location in (("directory", str(Path(work) / f"dir-{mib}")),
                                   ("s3", f"s3://bench/size-{mib}")):
                peak, _, line = _measured("backup", location, url, env)
                restored = pg.create_database(f"bench_restore_{mib}_{kind}")
                restore_peak, restore_seconds, _ = _measured("restore", location, restored, env)
                size = re.search(r"segment-\S+", line)
                seg = size.group(0) if size else "?"
                on_disk = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
                segment_bytes = (Path(location) / seg).stat().st_size if kind == "directory" else (
                    s3.client().stat_object("bench", f"size-{mib}/{seg}").size)
                print(f"{mib:>6}Mi {kind:>10} {segment_bytes / 2**20:>8.1f}Mi {peak / 1024:>9.1f}Mi "
                      f"{restore_peak / 1024:>10.1f}Mi {restore_seconds:>7.1f}s {on_disk:>8}B", flush=True)


if __name__ == "__main__":
    main()
