"""A tiny end-to-end bench run on real Kafka, Redis and Flink: counts must match, nothing lost.

These tests check the bench's correctness (every request matched to exactly one result),
never its speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.drain import run_drain
from benchmarks.harness import (
    ONML_JOB,
    PER_RECORD_JOB,
    BenchContext,
    bench_config,
    load_request_images,
    plain_consumer_spec,
    publish_untrained_snapshot,
)
from benchmarks.http_bench import run_http_baseline
from benchmarks.rate import measure_lone, measure_rate
from shared.config import Config
from shared.store import ModelStore

pytestmark = pytest.mark.integration

DRAIN_REQUESTS = 2000
BASELINE_REQUESTS = 1000
RATE_PER_S = 100.0
RATE_DURATION_S = 4.0
LONE_REQUESTS = 3


@pytest.fixture(scope="module")
def bench_context(stack: Config) -> BenchContext:
    data_dir = Path(os.environ.get("ONML_TEST_DATA_DIR", "data")).resolve()
    config = bench_config(stack, use_running=True, data_dir=str(data_dir), model_key_prefix="bench-test:model")
    store = ModelStore.from_config(config)
    publish_untrained_snapshot(store, config)
    return BenchContext(config, store, load_request_images(config), progress=False)


def assert_all_answered_once(result: dict, sent: int) -> None:
    assert result["sent"] == sent
    assert result["answered"] == sent
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["foreign"] == 0


def test_drain_then_rate_and_lone_on_inference_job(bench_context):
    def then(config, system, _drain):
        return {
            "rate": measure_rate(bench_context, config, system, RATE_PER_S, RATE_DURATION_S),
            "lone": measure_lone(bench_context, config, system, LONE_REQUESTS, spacing_ms=50.0),
        }

    result = run_drain(bench_context, ONML_JOB, "tiny", DRAIN_REQUESTS, timeout_s=300.0, then=then)

    assert_all_answered_once(result, DRAIN_REQUESTS)
    assert result["complete"] is True
    assert result["malformed"] == 0
    assert result["rps"] is not None and result["rps"] > 0
    assert result["exit_code_before_stop"] is None
    assert result["peak_rss_mb"] > 0

    rate = result["then"]["rate"]
    planned = int(RATE_PER_S * RATE_DURATION_S)
    assert rate["planned"] == planned
    assert rate["not_sent"] == 0
    assert_all_answered_once(rate, planned)
    assert rate["latency_ms"]["count"] == planned

    lone = result["then"]["lone"]
    assert_all_answered_once(lone, LONE_REQUESTS)
    assert lone["max_batch_wait_ms"] == bench_context.config.max_batch_wait_ms


@pytest.mark.parametrize("spec", [PER_RECORD_JOB, plain_consumer_spec(1, 20), plain_consumer_spec(64, 20)],
                         ids=lambda spec: spec.name)
def test_baseline_drain_answers_everything(bench_context, spec):
    result = run_drain(bench_context, spec, "tiny-" + spec.name, BASELINE_REQUESTS, timeout_s=300.0)
    assert_all_answered_once(result, BASELINE_REQUESTS)
    assert result["malformed"] == 0


def test_http_baseline_answers_requests(bench_context):
    result = run_http_baseline(bench_context, duration_s=2.0, connections=2, warm_up_s=1.0)
    assert result["requests"] > 0
    assert result["rps"] is not None and result["rps"] > 0
    assert result["errors"] == 0
    assert result["count_limit_reached"] is False
