"""The issue's HTTP figure: `wrk` (a C load generator, so the client does not eat the
server's CPU) with 64 keep-alive connections, one event per append, each request to its
own stream, against the raw floor of 8 threads doing a 1-row INSERT + COMMIT, measured in
the same run (alternating, so that both see the same background load).

Called by bench/run.py: `run(server, scale)` returns rows {name, unit, value, floor_name,
floor, ratio, goal}.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from bench.bench_server import TOKEN, start_server
from bench.store_bench import raw_threads
from tests.harness.postgres import PostgresServer

CONNECTIONS = 64
RAW_THREADS = 8

# Each wrk thread numbers its own requests; every append goes to a new stream with
# expected_version "no_stream", so no two requests ever conflict.
_SCRIPT = """
counter = 0
id = 0
threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer @TOKEN@"
  wrk.body = '{"expected_version":"no_stream","events":[{"type":"Deposited",' ..
             '"payload":{"amount":1250,"currency":"EUR","note":"benchmark deposit"}}]}'
end
function request()
  counter = counter + 1
  return wrk.format(nil, "/streams/wrk-@RUN@-" .. id .. "-" .. counter)
end
function response(status, headers, body)
  if status ~= 201 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\\n")
  end
end
"""


def wrk(base: str, run: str, seconds: int, connections: int = CONNECTIONS) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency (ms), non-201 replies."""
    script = _SCRIPT.replace("@TOKEN@", TOKEN).replace("@RUN@", run)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(textwrap.dedent(script))
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name,
             base], capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        Path(f.name).unlink()
    text = out.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    if bad or errors or "unexpected status" in out.stderr:
        raise RuntimeError(f"wrk saw failed appends:\n{text}\n{out.stderr[-2000:]}")

    def percentile(p: str) -> float:
        match = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", text)
        assert match, text
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rate": rate, "p50": percentile("50"), "p99": percentile("99")}


def run(server: PostgresServer, scale: float = 1.0, rounds: int = 3) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        print("HTTP benchmark skipped: wrk is not installed (apt-get install -y wrk)")
        return []
    url = server.create_database("bench_http")
    seconds = max(3, int(10 * scale))
    raw_per_thread = max(200, int(1500 * scale))
    with tempfile.TemporaryDirectory(prefix="eventstore-bench-") as tmp:
        process, base = start_server(url, Path(tmp))
        try:
            wrk(base, "warm", 2)
            raw_threads(url, RAW_THREADS, 100)
            http, floors = [], []
            for r in range(rounds):
                http.append(wrk(base, str(r), seconds))
                floors.append(raw_threads(url, RAW_THREADS, raw_per_thread))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    rate = statistics.median(h["rate"] for h in http)
    floor = statistics.median(floors)
    p50 = statistics.median(h["p50"] for h in http)
    p99 = statistics.median(h["p99"] for h in http)
    return [{"name": f"HTTP append (wrk), {CONNECTIONS} connections, 1 event each",
             "unit": f"events/s, median of {rounds}; p50 {p50:.2f} ms, p99 {p99:.2f} ms",
             "value": round(rate, 1),
             "floor_name": f"{RAW_THREADS} threads of raw 1-row INSERT + COMMIT",
             "floor": round(floor, 1), "ratio": round(rate / floor, 3), "goal": 1.0,
             "p50_ms": p50, "p99_ms": p99, "runs": http, "floors": floors}]
