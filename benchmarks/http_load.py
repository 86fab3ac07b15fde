"""HTTP load for the HTTP baseline: wrk where installed, else a bounded asyncio httpx client.

wrk (Debian package ``wrk``, an event loop in C) is the default. On a small machine the
load generator shares the cores with the service, and wrk costs a fraction of a core. A
Python client would take a core of its own and measure itself instead of the service.
wrk runs closed loop: ``connections`` clients each send the next request when the
previous one is answered. A run stops after ``duration_s`` or ``max_requests``,
whichever comes first. Only 127.0.0.1 URLs are accepted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks.errors import BenchError
from benchmarks import stats

WRK_MARKER = "WRK_JSON "

# The Lua script wrk runs: POST the same body on every connection, stop the thread after
# max_requests responses and print one JSON line from done(). Placeholders: {body},
# {max_requests}.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

local max_requests = {max_requests}
local responses = 0

function response(status, headers, body)
  responses = responses + 1
  if responses >= max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%f}}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def require_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"the HTTP load generator only targets 127.0.0.1, got host {host!r} in {url}")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def parse_wrk_output(output: str, max_requests: int) -> dict[str, Any]:
    """Turn the JSON line that the script's done() prints into requests/s and latency in ms.

    Only responses with a status below 400 count as requests. wrk divides by the full ``-d`` duration even when the script stopped early, so a run
    that reached ``max_requests`` gets no rate.
    """
    line = next((line for line in output.splitlines() if line.startswith(WRK_MARKER)), None)
    if line is None:
        raise BenchError(f"wrk printed no result line; its output was:\n{output[-2000:]}")
    raw = json.loads(line[len(WRK_MARKER):])
    errors = sum(raw[key] for key in raw if key.startswith("errors_"))
    # wrk counts responses with status 400 or above as completed requests.
    succeeded = raw["requests"] - raw["errors_status"]
    if raw["requests"] and succeeded <= 0:
        raise BenchError(f"every one of the {raw['requests']} HTTP requests failed with a status of 400 or above; "
                         "see the HTTP service's log")
    capped = raw["requests"] >= max_requests
    seconds = raw["duration_us"] / 1e6
    return {
        "generator": "wrk",
        "requests": succeeded,
        "errors": errors,
        "duration_s": seconds,
        "count_limit_reached": capped,
        "rps": None if capped or seconds <= 0 else succeeded / seconds,
        "latency_ms": {
            "p50": raw["p50_us"] / 1000.0,
            "p95": raw["p95_us"] / 1000.0,
            "p99": raw["p99_us"] / 1000.0,
            "max": raw["max_us"] / 1000.0,
            "mean": raw["mean_us"] / 1000.0,
        },
    }


def run_wrk(url: str, body: bytes, duration_s: float, connections: int, max_requests: int) -> dict[str, Any]:
    """Load ``url`` with wrk (one thread, ``connections`` connections) and return its figures."""
    require_loopback(url)
    script = WRK_SCRIPT.format(body=body.decode("ascii"), max_requests=max_requests)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = Path(handle.name)
    seconds = max(1, round(duration_s))
    try:
        completed = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script_path), url],
            capture_output=True, text=True, timeout=seconds + 60,
        )
    finally:
        script_path.unlink(missing_ok=True)
    if completed.returncode != 0:
        raise BenchError(f"wrk failed with exit code {completed.returncode}: {completed.stderr.strip()[-2000:]}")
    return parse_wrk_output(completed.stdout, max_requests)


async def _httpx_load(url: str, body: bytes, duration_s: float, connections: int,
                      max_requests: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + duration_s
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        async def one_connection() -> None:
            nonlocal errors, issued
            while time.monotonic() < deadline and issued < max_requests:
                issued += 1
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code >= 400:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000.0)

        started = time.monotonic()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        seconds = time.monotonic() - started
    return {
        "generator": "httpx",
        "requests": len(latencies),
        "errors": errors,
        "duration_s": seconds,
        "count_limit_reached": issued >= max_requests,
        "rps": len(latencies) / seconds if seconds > 0 else None,
        "latency_ms": stats.latency_summary(latencies),
    }


def run_httpx(url: str, body: bytes, duration_s: float, connections: int, max_requests: int) -> dict[str, Any]:
    """Load ``url`` from this process with ``connections`` concurrent httpx requests (the fallback)."""
    require_loopback(url)
    return asyncio.run(_httpx_load(url, body, duration_s, connections, max_requests))


def run_load(url: str, body: bytes, duration_s: float, connections: int, max_requests: int,
             generator: str = "auto") -> dict[str, Any]:
    """Run the chosen generator ("wrk", "httpx", or "auto": wrk if installed)."""
    if generator == "auto":
        generator = "wrk" if wrk_available() else "httpx"
    if generator == "wrk":
        if not wrk_available():
            raise BenchError("wrk not found: install it (Debian: apt-get install wrk) or choose the httpx generator")
        return run_wrk(url, body, duration_s, connections, max_requests)
    if generator == "httpx":
        return run_httpx(url, body, duration_s, connections, max_requests)
    raise ValueError(f"unknown HTTP load generator {generator!r}; expected auto, wrk or httpx")
