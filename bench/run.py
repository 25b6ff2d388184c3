"""`make bench`: every benchmark in one run on one throwaway PostgreSQL server.

Prints a table and writes bench-results/results.json. Goals are printed next to the
figures; nothing here fails a build (speed is measured, never asserted in tests).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import store_bench
from tests.harness.postgres import PostgresServer

BENCHMARKS = ["store", "ids", "partitions", "http", "snapshots", "server", "snapshotter"]


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max([44, *(len(row["name"]) for row in rows)])
    print(f"\n{'benchmark':<{width}} {'value':>12} {'floor':>12} {'ratio':>7} {'goal':>6}")
    print("-" * (width + 42))
    for row in rows:
        floor = f"{row['floor']:,.0f}" if row.get("floor") else "-"
        ratio = f"{row['ratio']:.0%}" if row.get("ratio") is not None else "-"
        goal = f"{row['goal']:.0%}" if isinstance(row.get("goal"), float) else str(row.get("goal", ""))
        mark = f"  {row['verdict']}" if row.get("verdict") else ""
        if isinstance(row.get("goal"), float) and row.get("ratio") is not None:
            mark = "  ok" if row["ratio"] >= row["goal"] else "  BELOW GOAL"
        print(f"{row['name']:<{width}} {row['value']:>12,.1f} {floor:>12} {ratio:>7} {goal:>6}{mark}")
        if row.get("floor_name"):
            print(f"{'':<4}{row['unit']}; floor: {row['floor_name']}")
        elif row.get("unit"):
            print(f"{'':<4}{row['unit']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    parser.add_argument("--out", default="bench-results/results.json")
    parser.add_argument("--only", choices=BENCHMARKS, action="append")
    args = parser.parse_args()
    only = set(args.only or BENCHMARKS)

    server = PostgresServer(durable=True).start()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "postgres": "durable (fsync on, synchronous_commit on)", "results": [],
    }
    try:
        if "store" in only:
            results["results"] += store_bench.run(server.create_database("bench_store"),
                                                  args.scale)
        if "ids" in only:
            from bench import id_locality_bench

            results["results"] += id_locality_bench.run(server, args.scale)
        if "partitions" in only:
            from bench import partition_read_bench

            results["results"] += partition_read_bench.run(server, args.scale)
        if "http" in only:
            from bench import http_bench

            results["results"] += http_bench.run(server, args.scale)
        if "snapshots" in only:
            try:
                from bench import snapshot_bench
            except ImportError as exc:
                print(f"snapshot benchmark not available: {exc}")
            else:
                results["results"] += snapshot_bench.run(server, args.scale)
        if "snapshotter" in only:
            from bench import snapshotter_bench

            results["results"] += snapshotter_bench.run(server, args.scale)
        if "server" in only:
            try:
                from bench import bench_server
            except ImportError as exc:
                print(f"server benchmark not available: {exc}")
            else:
                bench_server.run(results, server=server, scale=args.scale)
    finally:
        server.stop()
    print_table(results["results"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
