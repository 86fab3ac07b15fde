"""Peak resident memory of a whole process tree, sampled from /proc while it runs.

A job started in its own session (``start_new_session=True``) leads a process group and
a session whose id is its pid. The JVM and the Python workers it starts stay in that
group, so summing the RSS of every process whose group or session id matches covers
the whole tree without walking parent links.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class StatFields:
    pid: int
    process_group: int
    session: int


def parse_stat(text: str) -> StatFields:
    """Parse pid, process group and session from the text of /proc/<pid>/stat.

    The command name is in brackets and may contain spaces or brackets, so the fields
    are split after the last ``)``.
    """
    head, _, tail = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # After the name: state, ppid, pgrp, session, ...
    return StatFields(pid=pid, process_group=int(fields[2]), session=int(fields[3]))


def resident_bytes(statm: str) -> int:
    """Return the resident set size in bytes from the text of /proc/<pid>/statm (its second field, in pages)."""
    return int(statm.split()[1]) * PAGE_BYTES


def group_rss_bytes(group_id: int, proc: Path = Path("/proc")) -> tuple[int, int]:
    """Return the summed RSS and the number of processes whose group or session id is ``group_id``."""
    total = 0
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = parse_stat((entry / "stat").read_text())
            if group_id not in (fields.process_group, fields.session):
                continue
            total += resident_bytes((entry / "statm").read_text())
        except (OSError, ValueError, IndexError):
            # The process exited between listing and reading, or is not ours to read.
            continue
        count += 1
    return total, count


class RssSampler:
    """Sample the RSS of a process group on a background thread and keep the peak."""

    def __init__(self, group_id: int, interval_s: float = 0.25) -> None:
        self.group_id = group_id
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{group_id}", daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mb(self) -> float | None:
        return self.peak_bytes / (1024 * 1024) if self.samples else None

    def sample_once(self) -> None:
        total, count = group_rss_bytes(self.group_id)
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_processes = count

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)
