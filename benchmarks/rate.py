"""Rate and lone: latency under open-loop load, and the latency of requests that arrive alone.

Open loop: the sender follows a fixed schedule (request ``i`` is due at ``start + i / rate``)
regardless of when results arrive, and a separate thread reads the results. Latency is
measured from a request's scheduled send time to the arrival of its result. A sender that
falls behind therefore adds its delay to the latency instead of hiding it, and the
sender's largest delay is reported beside the figures.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Sequence

from benchmarks.errors import BenchError
from benchmarks import stats
from benchmarks.collector import ResultCollector
from benchmarks.drain import SETTLE_S, run_settings
from benchmarks.harness import (
    BenchContext,
    SystemProcess,
    SystemSpec,
    produce,
    progress_bar,
    run_session,
    without_gc_pauses,
)
from clients.kafka_io import make_producer
from shared.config import Config
from shared.wire import encode_request, now_ms

logger = logging.getLogger(__name__)

# The sender may run this much past its planned duration (times 1.5, plus this) before it stops.
SENDER_GRACE_S = 5.0


def summarize_rate(sent_ms: dict[str, float], arrivals: Sequence[tuple[str, float]],
                   emitted_ms: dict[str, float] | None = None) -> dict[str, Any]:
    """Return counts and send→result latency percentiles for one open-loop step.

    ``emitted_ms`` (request id → the ``result_ts`` the system stamped) adds the latency
    up to the moment the system wrote each result, which separates the system's share
    from the delivery back to the bench.
    """
    counts = stats.match_results(sent_ms, (request_id for request_id, _ in arrivals))
    first = stats.first_arrivals(arrivals, sent_ms)
    summary = {
        **counts.as_dict(),
        "latency_ms": stats.latency_summary(stats.latencies_ms(sent_ms, first)),
        "result_rps": stats.rate_per_s(first.values()),
    }
    if emitted_ms is not None:
        summary["latency_to_result_ts_ms"] = stats.latency_summary(stats.latencies_ms(sent_ms, emitted_ms))
    return summary


def warm_up(context: BenchContext, config: Config, system: SystemProcess, count: int = 200,
            timeout_s: float = 180.0) -> float:
    """Send ``count`` requests and wait for all their results, so start-up is not measured; return the seconds taken."""
    collector = ResultCollector(config, from_beginning=False).start()
    started = time.monotonic()
    try:
        producer = make_producer(config)
        ids = [f"{system.run_id}-warm-{n}" for n in range(count)]
        collector.expect(ids)
        for n, request_id in enumerate(ids):
            produce(producer, config.request_topic, encode_request(request_id, context.images[n % len(context.images)]))
        producer.flush(30)
        if not collector.wait_for_all(timeout_s, alive=system.alive):
            system.check_alive()
            raise BenchError(f"timed out after {timeout_s:.0f} s: {system.spec.name} returned results for "
                             f"{collector.answered} of {count} warm-up requests; see {system.log_path}")
    finally:
        collector.stop()
    return time.monotonic() - started


@without_gc_pauses()
def measure_rate(context: BenchContext, config: Config, system: SystemProcess, rate_per_s: float,
                 duration_s: float, drain_timeout_s: float = 30.0) -> dict[str, Any]:
    """Send ``rate_per_s × duration_s`` requests on an open-loop schedule and measure their latency."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be above 0, got {rate_per_s}/s for {duration_s} s")
    count = max(1, round(rate_per_s * duration_s))
    prefix = f"{system.run_id}-r{uuid.uuid4().hex[:4]}"
    # The producer keeps librdkafka's 5 ms linger, whose wait counts in every latency. A
    # 1 ms linger sends produce requests up to five times as often. That work for the bench
    # and the broker, on the same 2 cores, raised the p99 at 15,000 requests/s from 32 ms
    # to 137 ms (one run each, after a warm-up).
    producer = make_producer(config)
    collector = ResultCollector(config, from_beginning=False).start()
    sent_ms: dict[str, float] = {}
    max_lag_ms = 0.0
    try:
        collector.expect(f"{prefix}-{n}" for n in range(count))
        start_mono = time.monotonic()
        start_ms = now_ms()
        hard_stop = start_mono + duration_s * 1.5 + SENDER_GRACE_S
        with progress_bar(count, f"{system.spec.name}: {rate_per_s:.0f}/s", context.progress) as bar:
            while len(sent_ms) < count and time.monotonic() < hard_stop:
                elapsed_s = time.monotonic() - start_mono
                due = min(count, int(elapsed_s * rate_per_s) + 1)
                for n in range(len(sent_ms), due):
                    request_id = f"{prefix}-{n}"
                    scheduled = stats.scheduled_send_ms(start_ms, n, rate_per_s)
                    produce(producer, config.request_topic,
                            encode_request(request_id, context.images[n % len(context.images)], scheduled))
                    sent_ms[request_id] = scheduled
                    max_lag_ms = max(max_lag_ms, start_ms + (time.monotonic() - start_mono) * 1000.0 - scheduled)
                producer.poll(0)
                bar.update(len(sent_ms) - bar.n)
                next_due_s = len(sent_ms) / rate_per_s
                time.sleep(min(0.01, max(0.0, next_due_s - (time.monotonic() - start_mono))))
            send_s = time.monotonic() - start_mono
        producer.flush(30)
        if len(sent_ms) < count:
            logger.warning("the sender sent %d of %d requests before its time limit", len(sent_ms), count)
            collector.expect(sent_ms)
        collector.wait_for_all(drain_timeout_s, alive=system.alive)
        time.sleep(SETTLE_S)
    finally:
        collector.stop()
    result = summarize_rate(sent_ms, collector.arrivals, collector.emitted_ms)
    result.update(
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        planned=count,
        not_sent=count - len(sent_ms),
        send_rate_per_s=len(sent_ms) / send_s if send_s > 0 else None,
        max_sender_lag_ms=max_lag_ms,
    )
    return result


@without_gc_pauses()
def measure_lone(context: BenchContext, config: Config, system: SystemProcess, count: int, spacing_ms: float,
                 timeout_s: float = 10.0) -> dict[str, Any]:
    """Send ``count`` requests one at a time, each after the previous one's result and a pause of ``spacing_ms``."""
    producer = make_producer(config, **{"linger.ms": 0})
    collector = ResultCollector(config, from_beginning=False).start()
    prefix = f"{system.run_id}-lone{uuid.uuid4().hex[:4]}"
    sent_ms: dict[str, float] = {}
    try:
        ids = [f"{prefix}-{n}" for n in range(count)]
        collector.expect(ids)
        with progress_bar(count, f"{system.spec.name}: lone requests", context.progress) as bar:
            for n, request_id in enumerate(ids):
                sent = now_ms()
                produce(producer, config.request_topic,
                        encode_request(request_id, context.images[n % len(context.images)], sent))
                producer.flush(5)
                sent_ms[request_id] = sent
                deadline = time.monotonic() + timeout_s
                while not collector.is_answered(request_id) and time.monotonic() < deadline and system.alive():
                    time.sleep(0.0005)
                bar.update(1)
                time.sleep(spacing_ms / 1000.0)
        time.sleep(SETTLE_S)
    finally:
        collector.stop()
    result = summarize_rate(sent_ms, collector.arrivals, collector.emitted_ms)
    result.pop("result_rps")
    result.update(spacing_ms=spacing_ms, max_batch_wait_ms=config.max_batch_wait_ms)
    return result


def run_rates(context: BenchContext, spec: SystemSpec, label: str, rates: Sequence[float], duration_s: float,
              lone_count: int = 0, lone_spacing_ms: float = 200.0, open_loop_warmup_s: float = 0.0,
              **overrides: Any) -> dict[str, Any]:
    """Start ``spec``, warm it up, then run each open-loop rate and, if ``lone_count``, the lone requests.

    With ``open_loop_warmup_s`` the warm-up ends with that many seconds of open-loop load
    at the highest rate, which is reported under ``open_loop_warmup`` and not among the rates.
    """
    with run_session(context, spec, label, **overrides) as (config, system):
        system.start()
        warm_up_s = warm_up(context, config, system)
        open_loop_warmup = (measure_rate(context, config, system, max(rates), open_loop_warmup_s)
                            if rates and open_loop_warmup_s > 0 else None)
        steps = [measure_rate(context, config, system, rate, duration_s) for rate in rates]
        lone = measure_lone(context, config, system, lone_count, lone_spacing_ms) if lone_count else None
        peak_rss_mb = system.peak_rss_mb
    return {
        "system": spec.name,
        "description": spec.description,
        "settings": run_settings(config),
        "warm_up_s": warm_up_s,
        "open_loop_warmup": open_loop_warmup,
        "rates": steps,
        "lone": lone,
        "peak_rss_mb": peak_rss_mb,
        "log": str(system.log_path),
    }
