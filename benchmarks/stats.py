"""The benchmark's arithmetic: percentiles, rates, matching results to requests, ratios.

Every function here is pure (no clock, no I/O), so the unit tests check it on known data.
Times are milliseconds since the epoch unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# Keys that compare.json must contain; the values may be None where a step could not run.
REQUIRED_COMPARE_KEYS = (
    "onml_rps",
    "ceiling_rps",
    "per_record_udf_rps",
    "plain_consumer_rps",
    "http_service_rps",
    "p99_ms_at_half_load",
    "lone_request_ms",
    "max_batch_wait_ms",
    "inference_rss_mb",
    "train_samples_per_s",
    "commit",
)

# The baselines that compare's table sets against onml's drain rate, in table order.
BASELINE_KEYS = (
    ("ceiling_rps", "ceiling: batched forward pass in one process, at max_batch_size"),
    ("per_record_udf_rps", "Flink job, one eager torch forward pass per record (the replaced design)"),
    ("per_record_onnx_rps", "Flink job, one ONNX Runtime call per record"),
    ("plain_consumer_batch1_rps", "plain Kafka consumer, batch 1"),
    ("plain_consumer_rps", "plain Kafka consumer, batched"),
    ("http_service_rps", "HTTP service (FastAPI + uvicorn), one inference per request"),
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the ``q``-th percentile (0–100) with linear interpolation, or None for no values.

    The interpolation is numpy's default ("linear"): rank ``q/100 * (n - 1)`` between the
    two nearest sorted values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be from 0 to 100, got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Summarise latencies: count, p50, p95, p99, max and mean in milliseconds (None when empty)."""
    count = len(latencies_ms)
    return {
        "count": count,
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "p99": percentile(latencies_ms, 99),
        "max": float(max(latencies_ms)) if count else None,
        "mean": float(sum(latencies_ms) / count) if count else None,
    }


def rate_per_s(timestamps_ms: Iterable[float]) -> float | None:
    """Return events per second from the first to the last of ``timestamps_ms``.

    ``n`` events span ``n - 1`` intervals, so the rate is ``(n - 1) / (last - first)``.
    Returns None for fewer than two events or when all share one timestamp.
    """
    ordered = sorted(timestamps_ms)
    if len(ordered) < 2:
        return None
    span_ms = ordered[-1] - ordered[0]
    if span_ms <= 0:
        return None
    return (len(ordered) - 1) * 1000.0 / span_ms


@dataclass(frozen=True)
class MatchCounts:
    """Counts of results matched to the requests sent, by request id.

    ``answered``: sent ids with at least one result; ``lost``: sent ids with none;
    ``duplicated``: results beyond the first for a sent id; ``foreign``: results whose id
    was never sent in this run.
    """

    sent: int
    answered: int
    lost: int
    duplicated: int
    foreign: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def match_results(sent_ids: Iterable[str], result_ids: Iterable[str]) -> MatchCounts:
    """Match result ids to sent ids and count the outcomes (see :class:`MatchCounts`)."""
    sent = set(sent_ids)
    copies = Counter(result_ids)
    answered = sum(1 for request_id in sent if copies.get(request_id, 0) > 0)
    duplicated = sum(count - 1 for request_id, count in copies.items() if request_id in sent)
    foreign = sum(count for request_id, count in copies.items() if request_id not in sent)
    return MatchCounts(sent=len(sent), answered=answered, lost=len(sent) - answered,
                       duplicated=duplicated, foreign=foreign)


def first_arrivals(arrivals: Iterable[tuple[str, float]], sent_ids: Iterable[str]) -> dict[str, float]:
    """Return the earliest arrival time of each sent id among ``(id, time)`` pairs; other ids are skipped."""
    sent = set(sent_ids)
    earliest: dict[str, float] = {}
    for request_id, arrived in arrivals:
        if request_id in sent and (request_id not in earliest or arrived < earliest[request_id]):
            earliest[request_id] = arrived
    return earliest


def latencies_ms(sent_ms: Mapping[str, float], arrived_ms: Mapping[str, float]) -> list[float]:
    """Return arrival minus send time for every id present in both mappings."""
    return [arrived_ms[request_id] - sent for request_id, sent in sent_ms.items() if request_id in arrived_ms]


def per_second_counts(timestamps_ms: Iterable[float]) -> list[int]:
    """Count events in each whole second after the first one: element ``k`` covers ``[k, k + 1)`` s."""
    ordered = sorted(timestamps_ms)
    if not ordered:
        return []
    counts = [0] * (int((ordered[-1] - ordered[0]) // 1000.0) + 1)
    for timestamp in ordered:
        counts[int((timestamp - ordered[0]) // 1000.0)] += 1
    return counts


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or None when either is missing or the denominator is not above 0."""
    if numerator is None or denominator is None:
        return None
    if not math.isfinite(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def compare_ratios(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """Return onml's drain rate divided by each baseline's rate, keyed by the baseline's key."""
    onml = summary.get("onml_rps")
    return {key: ratio(onml, summary.get(key)) for key, _ in BASELINE_KEYS}


def missing_compare_keys(summary: Mapping[str, Any]) -> list[str]:
    """Return the required compare.json keys that ``summary`` lacks."""
    return [key for key in REQUIRED_COMPARE_KEYS if key not in summary]


def training_rate(snapshots: Sequence[Mapping[str, Any]]) -> float | None:
    """Return training samples per second from snapshot metadata.

    Each snapshot needs ``samples_seen`` and ``created_at`` (seconds since the epoch).
    The rate runs from the first to the last snapshot, so the job's start-up and the
    samples before the first snapshot are excluded. Returns None for fewer than two
    snapshots or no time between them.
    """
    ordered = sorted(snapshots, key=lambda record: record["created_at"])
    if len(ordered) < 2:
        return None
    samples = ordered[-1]["samples_seen"] - ordered[0]["samples_seen"]
    seconds = ordered[-1]["created_at"] - ordered[0]["created_at"]
    if seconds <= 0 or samples <= 0:
        return None
    return samples / seconds


def samples_to_accuracy(snapshots: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """Return ``samples_seen`` of the earliest snapshot whose ``accuracy`` is at least ``target``, else None."""
    reached = [record["samples_seen"] for record in snapshots
               if record.get("accuracy") is not None and record["accuracy"] >= target]
    return min(reached) if reached else None


def scheduled_send_ms(start_ms: float, index: int, rate_per_s: float) -> float:
    """Return when request ``index`` (0-based) is due on an open-loop schedule of ``rate_per_s``."""
    return start_ms + index * 1000.0 / rate_per_s


def round_floats(value: Any, digits: int = 3) -> Any:
    """Round every float inside nested dicts and lists, for readable JSON."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(item, digits) for item in value]
    return value
