"""The record of where a benchmark ran: machine, versions and git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# Distributions whose versions a result records; None where one is not installed.
RECORDED_DISTRIBUTIONS = {
    "flink": "apache-flink",
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "confluent_kafka": "confluent-kafka",
    "numpy": "numpy",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
}


def cpu_model(cpuinfo: str) -> str | None:
    """Return the first ``model name`` in the text of /proc/cpuinfo, or None."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def memory_total_mb(meminfo: str) -> float | None:
    """Return MemTotal in MiB from the text of /proc/meminfo, or None."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024.0
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """Return cores, CPU model, memory and the load average at the time of the call."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(_read("/proc/cpuinfo")) or platform.processor() or None,
        "memory_mb": memory_total_mb(_read("/proc/meminfo")),
        "os": platform.platform(),
        "load_average_1_5_15": list(load) if load else None,
    }


def versions() -> dict[str, str | None]:
    """Return the versions of Python and of the packages that shape the figures."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name, distribution in RECORDED_DISTRIBUTIONS.items():
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> dict[str, Any]:
    """Return the checkout's commit and whether tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes) if changes is not None else None}


def describe_environment() -> dict[str, Any]:
    """Return machine, versions, git commit and the time, as recorded in every result file."""
    return {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
    }
