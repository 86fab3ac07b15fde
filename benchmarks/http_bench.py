"""Run the HTTP baseline: start the FastAPI service, warm it up, load it, stop it."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

from benchmarks.errors import BenchError
from benchmarks.harness import BenchContext, SystemProcess, SystemSpec, new_run_id, run_with_time_bar
from benchmarks.http_load import run_load
from shared.wire import encode_request

# Requests per second that a run's count limit allows for. A service that responded
# faster would hit the limit, and its rate would be dropped.
MAX_EXPECTED_RPS = 50_000


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, system: SystemProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        system.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting for the HTTP service at {url}; "
                     f"see {system.log_path}")


def run_http_baseline(context: BenchContext, duration_s: float, connections: int, warm_up_s: float = 3.0,
                      generator: str = "auto") -> dict[str, Any]:
    """Measure requests/s of the HTTP baseline over loopback and return the figures."""
    port = free_loopback_port()
    spec = SystemSpec("http-service", "benchmarks.http_service", ("--port", str(port)),
                      description="FastAPI + uvicorn (1 worker), one forward pass per request")
    system = SystemProcess(spec, context.config, new_run_id("http"))
    base_url = f"http://127.0.0.1:{port}"
    body = encode_request("http-bench-request", context.images[0])
    try:
        system.start()
        wait_for_health(f"{base_url}/health", system, timeout_s=120.0)
        url = f"{base_url}/predict"
        run_with_time_bar(warm_up_s, "HTTP service: warm-up", context.progress, lambda: run_load(
            url, body, warm_up_s, connections, int(MAX_EXPECTED_RPS * warm_up_s), generator))
        result = run_with_time_bar(duration_s, f"HTTP service: {connections} connections", context.progress,
                                   lambda: run_load(url, body, duration_s, connections,
                                                    int(MAX_EXPECTED_RPS * duration_s), generator))
        system.check_alive()
    finally:
        system.stop()
    result.update(system=spec.name, description=spec.description, connections=connections,
                  peak_rss_mb=system.peak_rss_mb, log=str(system.log_path))
    return result
