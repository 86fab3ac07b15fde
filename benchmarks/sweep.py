"""Sweep: drain (and optionally open-loop rates) of the inference job over a grid of settings.

Every combination of max batch size × max batch wait × parallelism × partitions gets a
fresh job on fresh topics. The rate steps reuse the job that has just drained.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import report
from benchmarks.drain import run_drain
from benchmarks.harness import ONML_JOB, BenchContext
from benchmarks.modes import base_document, finish
from benchmarks.rate import measure_rate


def sweep_grid(batch_sizes: Sequence[int], waits_ms: Sequence[int], parallelisms: Sequence[int],
               partitions: Sequence[int]) -> list[dict[str, int]]:
    """Return every combination of the settings as config overrides, in a fixed order."""
    return [
        {"max_batch_size": size, "max_batch_wait_ms": wait, "parallelism": parallelism, "topic_partitions": count}
        for size, wait, parallelism, count in itertools.product(batch_sizes, waits_ms, parallelisms, partitions)
    ]


def sweep_mode(context: BenchContext, grid: list[dict[str, int]], requests: int, timeout_s: float,
               rates: Sequence[float], rate_duration_s: float, out_dir: Path,
               parameters: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    started = time.monotonic()
    document = base_document("sweep", context, parameters)

    def rate_steps(config, system, _drain):
        return [measure_rate(context, config, system, rate, rate_duration_s) for rate in rates]

    results = []
    for index, overrides in enumerate(grid, start=1):
        label = ", ".join(f"{key}={value}" for key, value in overrides.items())
        print(f"[{index}/{len(grid)}] {label}", flush=True)
        results.append(run_drain(context, ONML_JOB, f"sweep{index}", requests, timeout_s,
                                 then=rate_steps if rates else None, **overrides))
    document["results"] = results

    markdown = report.markdown_table(report.DRAIN_HEADERS, report.drain_rows(results))
    if rates:
        for result in results:
            settings = ", ".join(f"{key} {result['settings'][key]}" for key in
                                 ("max_batch_size", "max_batch_wait_ms", "parallelism", "topic_partitions"))
            markdown += f"\n### Open-loop latency, {settings}\n\n"
            markdown += report.markdown_table(report.RATE_HEADERS, report.rate_rows(result["then"]))

    series: dict[str, list[tuple[int, float | None]]] = {}
    for result in results:
        settings = result["settings"]
        key = (f"wait {settings['max_batch_wait_ms']} ms, parallelism {settings['parallelism']}, "
               f"{settings['topic_partitions']} partitions")
        series.setdefault(key, []).append((settings["max_batch_size"], result["rps"]))
    plot = report.plot_throughput_vs_batch(out_dir / "sweep-throughput.png", series,
                                           "onml inference job: drain throughput by max batch size")
    markdown += f"\n![throughput vs batch size]({plot.name})\n"
    return document, finish(document, started, out_dir, "sweep", markdown) + [plot]
