"""Drain: sustainable throughput of a Kafka-to-Kafka system.

The request topic is filled with N requests first, then the system starts, so the system
never waits for input. The first half of the results is its warm-up: the JVMs of the
job and of the broker still compile their hot paths for tens of seconds (a fifth to a
third of a core each on 2 cores, measured), so the rate runs from the last warm-up
result to the N-th and leaves start-up out too. The rate over all results is reported
beside it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from benchmarks import stats
from benchmarks.collector import ResultCollector
from benchmarks.harness import (
    BenchContext,
    SystemProcess,
    SystemSpec,
    prefill_requests,
    progress_bar,
    run_session,
    without_gc_pauses,
)
from shared.config import Config

logger = logging.getLogger(__name__)

# After the N-th result, results are read this much longer to count late duplicates.
SETTLE_S = 2.0
# The share of a drain's first results that warm the system up and are left out of its rate.
WARMUP_FRACTION = 0.5


def summarize_drain(sent_ids: list[str], arrivals: Iterable[tuple[str, float]], started_ms: float | None,
                    complete: bool, warmup_fraction: float = WARMUP_FRACTION) -> dict[str, Any]:
    """Turn the arrivals of one drain into counts, the rate and the start-up time.

    Of the first arrivals of sent ids, in time order, the first ``warmup_fraction`` are
    the warm-up: ``rps`` runs from the last of them to the last result, and
    ``rps_with_warmup`` from the first result to the last. ``startup_s`` is the time
    from starting the system to its first result, and ``results_per_second`` counts
    first arrivals in each second after the first result, which shows whether the rate
    was steady or still climbing.
    """
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be from 0 to below 1, got {warmup_fraction}")
    arrivals = list(arrivals)
    counts = stats.match_results(sent_ids, (request_id for request_id, _ in arrivals))
    first = stats.first_arrivals(arrivals, sent_ids)
    times = sorted(first.values())
    warmup = int(len(times) * warmup_fraction)
    return {
        **counts.as_dict(),
        "complete": complete,
        "rps": stats.rate_per_s(times[max(0, warmup - 1):]),
        "rps_with_warmup": stats.rate_per_s(times),
        "warmup_results": warmup,
        "drain_s": (times[-1] - times[0]) / 1000.0 if len(times) >= 2 else None,
        "startup_s": (times[0] - started_ms) / 1000.0 if times and started_ms is not None else None,
        "results_per_second": stats.per_second_counts(times),
    }


@without_gc_pauses()
def measure_drain(context: BenchContext, config: Config, system: SystemProcess, sent_ids: list[str],
                  timeout_s: float) -> dict[str, Any]:
    """Start ``system`` on a pre-filled request topic and time its results; the system keeps running."""
    collector = ResultCollector(config, from_beginning=True)
    collector.expect(sent_ids)
    collector.start()
    complete = False
    try:
        system.start()
        deadline = time.monotonic() + timeout_s
        with progress_bar(len(sent_ids), f"{system.spec.name}: results", context.progress) as bar:
            while time.monotonic() < deadline:
                bar.update(collector.answered - bar.n)
                if collector.answered >= len(sent_ids):
                    complete = True
                    break
                system.check_alive()
                time.sleep(0.1)
            bar.update(collector.answered - bar.n)
        if not complete:
            logger.warning("%s returned results for %d of %d requests within %.0f s; the rate covers those",
                           system.spec.name, collector.answered, len(sent_ids), timeout_s)
        time.sleep(SETTLE_S)
    finally:
        collector.stop()
    result = summarize_drain(sent_ids, collector.arrivals, system.started_ms, complete)
    result["malformed"] = collector.malformed
    return result


def run_drain(context: BenchContext, spec: SystemSpec, label: str, count: int, timeout_s: float,
              then: Callable[[Config, SystemProcess, dict[str, Any]], Any] | None = None,
              **overrides: Any) -> dict[str, Any]:
    """Pre-fill ``count`` requests, drain them through ``spec`` and stop it.

    ``then(config, system, drain_result)`` runs while the system is still up (the rate and
    lone measurements reuse the warm job); its result is stored under ``"then"``.
    ``overrides`` change the run's config (max_batch_size, parallelism, topic_partitions, ...).
    """
    with run_session(context, spec, label, **overrides) as (config, system):
        sent_ids = prefill_requests(config, context.images, count, system.run_id, context.progress)
        result = measure_drain(context, config, system, sent_ids, timeout_s)
        if then is not None:
            result["then"] = then(config, system, result)
        # None while the system still runs, which every system under test should.
        result["exit_code_before_stop"] = system.job.exit_code()
        result["peak_rss_mb"] = system.peak_rss_mb
    result.update(system=spec.name, description=spec.description, requests=count, log=str(system.log_path),
                  settings=run_settings(config))
    return result


def run_settings(config: Config) -> dict[str, Any]:
    """Return the settings that shape a run's figures."""
    keys = ("max_batch_size", "max_batch_wait_ms", "parallelism", "topic_partitions", "python_execution_mode",
            "bundle_size", "bundle_time_ms", "network_buffer_timeout_ms", "checkpoint_interval_ms")
    return {key: getattr(config, key) for key in keys}
