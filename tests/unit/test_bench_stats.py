"""Tests of the bench's arithmetic and result shapes on known data (nothing is timed)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import stats
from benchmarks.compare import compare_markdown, summarize_compare
from benchmarks.drain import summarize_drain
from benchmarks.environment import cpu_model, memory_total_mb
from benchmarks.errors import BenchError
from benchmarks.http_load import parse_wrk_output, require_loopback
from benchmarks.rate import summarize_rate
from benchmarks.report import write_json
from benchmarks.rss import PAGE_BYTES, parse_stat, resident_bytes
from benchmarks.sweep import sweep_grid
from benchmarks.training import last_snapshot_samples
from clients.bench_cli import NumberList


# Percentiles and latency summaries


def test_percentile_known_list():
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 100.0
    # Linear interpolation: rank 0.5 * 99 = 49.5, between 50 and 51.
    assert stats.percentile(values, 50) == 50.5
    # Rank 0.99 * 99 = 98.01, between 99 and 100.
    assert stats.percentile(values, 99) == pytest.approx(99.01)


def test_percentile_unsorted_and_single():
    assert stats.percentile([30.0, 10.0, 20.0], 50) == 20.0
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_empty_is_none():
    assert stats.percentile([], 50) is None


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match="from 0 to 100"):
        stats.percentile([1.0], 101)


def test_latency_summary_known_list():
    summary = stats.latency_summary([10.0, 20.0, 30.0, 40.0])
    assert summary["count"] == 4
    assert summary["p50"] == 25.0
    assert summary["max"] == 40.0
    assert summary["mean"] == 25.0
    assert summary["p99"] == pytest.approx(39.7)


def test_latency_summary_empty():
    summary = stats.latency_summary([])
    assert summary["count"] == 0
    assert summary["p50"] is None
    assert summary["max"] is None


# Rates


def test_rate_from_known_timestamps():
    # 11 results, 0 ms to 1000 ms: 10 intervals in 1 s.
    assert stats.rate_per_s([100.0 * i for i in range(11)]) == pytest.approx(10.0)


def test_per_second_counts():
    assert stats.per_second_counts([1000.0, 1500.0, 1999.0, 2000.0, 4100.0]) == [3, 1, 0, 1]
    assert stats.per_second_counts([]) == []


def test_rate_ignores_order():
    assert stats.rate_per_s([2000.0, 0.0, 1000.0]) == pytest.approx(1.0)


def test_rate_needs_two_distinct_times():
    assert stats.rate_per_s([]) is None
    assert stats.rate_per_s([5.0]) is None
    assert stats.rate_per_s([5.0, 5.0]) is None


def test_scheduled_send_times():
    assert stats.scheduled_send_ms(1000.0, 0, 200.0) == 1000.0
    assert stats.scheduled_send_ms(1000.0, 10, 200.0) == 1050.0


# Matching results to requests


def test_match_counts_on_crafted_results():
    sent = ["a", "b", "c", "d"]
    results = ["a", "b", "b", "b", "c", "x", "y", "x"]
    counts = stats.match_results(sent, results)
    assert counts.sent == 4
    assert counts.answered == 3
    assert counts.lost == 1  # d
    assert counts.duplicated == 2  # b twice more
    assert counts.foreign == 3  # x, y, x


def test_match_counts_all_answered_once():
    counts = stats.match_results(["a", "b"], ["b", "a"])
    assert counts.as_dict() == {"sent": 2, "answered": 2, "lost": 0, "duplicated": 0, "foreign": 0}


def test_match_counts_nothing_answered():
    counts = stats.match_results(["a", "b"], [])
    assert counts.answered == 0
    assert counts.lost == 2


def test_first_arrivals_keeps_earliest_of_sent_ids():
    arrivals = [("a", 30.0), ("b", 10.0), ("a", 20.0), ("z", 5.0)]
    assert stats.first_arrivals(arrivals, ["a", "b", "c"]) == {"a": 20.0, "b": 10.0}


def test_latencies_only_for_answered():
    assert stats.latencies_ms({"a": 100.0, "b": 200.0}, {"a": 150.0}) == [50.0]


def test_summarize_drain_counts_and_rate():
    sent = [f"r-{n}" for n in range(5)]
    arrivals = [("r-0", 1000.0), ("r-1", 1250.0), ("r-1", 1300.0), ("r-2", 1500.0), ("r-3", 2000.0),
                ("other", 1100.0)]
    result = summarize_drain(sent, arrivals, started_ms=0.0, complete=False, warmup_fraction=0.0)
    assert result["answered"] == 4
    assert result["lost"] == 1
    assert result["duplicated"] == 1
    assert result["foreign"] == 1
    # First arrivals 1000, 1250, 1500, 2000: 3 intervals in 1 s.
    assert result["rps"] == pytest.approx(3.0)
    assert result["drain_s"] == pytest.approx(1.0)
    assert result["startup_s"] == pytest.approx(1.0)
    assert result["results_per_second"] == [3, 1]


def test_drain_rate_skips_warmup():
    sent = [f"r-{n}" for n in range(8)]
    # Four slow warm-up results 1 s apart, then four results 100 ms apart.
    times = [0.0, 1000.0, 2000.0, 3000.0, 3100.0, 3200.0, 3300.0, 3400.0]
    result = summarize_drain(sent, list(zip(sent, times)), started_ms=0.0, complete=True, warmup_fraction=0.5)
    assert result["warmup_results"] == 4
    # From the last warm-up result (3000) to the last (3400): 4 results in 0.4 s.
    assert result["rps"] == pytest.approx(10.0)
    assert result["rps_with_warmup"] == pytest.approx(7 / 3.4)
    assert result["answered"] == 8


def test_drain_rejects_full_warmup():
    with pytest.raises(ValueError, match="warmup_fraction"):
        summarize_drain(["r-0"], [("r-0", 0.0)], started_ms=0.0, complete=True, warmup_fraction=1.0)


def test_summarize_rate_latency_from_scheduled_time():
    sent = {"a": 1000.0, "b": 1010.0, "c": 1020.0}
    arrivals = [("a", 1050.0), ("b", 1030.0), ("b", 1090.0)]
    result = summarize_rate(sent, arrivals)
    assert result["answered"] == 2
    assert result["lost"] == 1
    assert result["duplicated"] == 1
    assert result["latency_ms"]["count"] == 2
    assert result["latency_ms"]["max"] == 50.0  # a: 1050 - 1000; b's first copy: 20
    assert result["latency_ms"]["p50"] == 35.0
    assert "latency_to_result_ts_ms" not in result


def test_summarize_rate_with_result_timestamps():
    sent = {"a": 1000.0, "b": 1010.0}
    arrivals = [("a", 1050.0), ("b", 1030.0)]
    result = summarize_rate(sent, arrivals, emitted_ms={"a": 1040.0, "b": 1020.0, "z": 5.0})
    assert result["latency_to_result_ts_ms"]["count"] == 2
    assert result["latency_to_result_ts_ms"]["max"] == 40.0
    assert result["latency_to_result_ts_ms"]["p50"] == 25.0


# Ratios and compare.json


def test_ratio_handles_missing_and_zero():
    assert stats.ratio(10.0, 4.0) == 2.5
    assert stats.ratio(None, 4.0) is None
    assert stats.ratio(10.0, None) is None
    assert stats.ratio(10.0, 0.0) is None
    assert stats.ratio(10.0, math.inf) is None


def test_compare_ratios():
    summary = {"onml_rps": 9000.0, "ceiling_rps": 18000.0, "per_record_udf_rps": 3000.0,
               "plain_consumer_rps": 12000.0, "plain_consumer_batch1_rps": None, "http_service_rps": 1500.0}
    ratios = stats.compare_ratios(summary)
    assert ratios["ceiling_rps"] == 0.5
    assert ratios["per_record_udf_rps"] == 3.0
    assert ratios["plain_consumer_rps"] == 0.75
    assert ratios["plain_consumer_batch1_rps"] is None
    assert ratios["http_service_rps"] == 6.0


def _drain(rps: float, **extra) -> dict:
    return {"rps": rps, "peak_rss_mb": 1500.0, "settings": {"max_batch_size": 256}, **extra}


def test_compare_summary_has_required_keys(tmp_path):
    environment = {"git": {"commit": "abc123", "dirty": False}}
    onml = _drain(8000.0, then={
        "rates": [
            {"fraction_of_drain_rps": 0.25, "rate_per_s": 2000.0, "latency_ms": {"p99": 40.0}},
            {"fraction_of_drain_rps": 0.5, "rate_per_s": 4000.0, "latency_ms": {"p99": 80.0}},
        ],
        "lone": {"latency_ms": {"p50": 30.0, "p95": 35.0}},
    })
    ceiling = [{"batch_size": 64, "images_per_s": 10000.0}, {"batch_size": 256, "images_per_s": 16000.0}]
    training = {"samples_per_s": 2500.0, "samples_to_target": 24192}
    summary = summarize_compare(environment, 256, 20, onml, ceiling, _drain(2000.0), _drain(5000.0),
                                _drain(1000.0), _drain(4000.0), {"rps": 800.0}, training)

    assert stats.missing_compare_keys(summary) == []
    assert summary["onml_rps"] == 8000.0
    assert summary["ceiling_rps"] == 16000.0
    assert summary["ceiling_best_rps"] == 16000.0
    assert summary["ceiling_best_batch_size"] == 256
    assert summary["per_record_udf_rps"] == 2000.0
    assert summary["per_record_onnx_rps"] == 5000.0
    assert summary["onml_ratio_to"]["per_record_udf_rps"] == 4.0
    assert summary["onml_ratio_to"]["per_record_onnx_rps"] == 1.6
    assert summary["plain_consumer_rps"] == 4000.0
    assert summary["plain_consumer_batch1_rps"] == 1000.0
    assert summary["http_service_rps"] == 800.0
    assert summary["p99_ms_at_half_load"] == 80.0
    assert summary["half_load_rps"] == 4000.0
    assert summary["lone_request_ms"] == 30.0
    assert summary["max_batch_wait_ms"] == 20
    assert summary["inference_rss_mb"] == 1500.0
    assert summary["train_samples_per_s"] == 2500.0
    assert summary["commit"] == "abc123"
    assert summary["onml_ratio_to"]["http_service_rps"] == 10.0

    path = write_json(tmp_path / "compare.json", summary)
    written = json.loads(path.read_text())
    assert stats.missing_compare_keys(written) == []

    table = compare_markdown({**summary, "errors": {}})
    assert "| onml inference job" in table
    assert "10.00" in table


def test_compare_summary_with_every_step_failed():
    summary = summarize_compare({"git": {"commit": None}}, 256, 20, None, [], None, None, None, None, None, None)
    assert stats.missing_compare_keys(summary) == []
    assert summary["onml_rps"] is None
    assert all(value is None for value in summary["onml_ratio_to"].values())
    assert "| onml inference job" in compare_markdown({**summary, "errors": {"onml": "BenchError: boom"}})


def test_missing_compare_keys_lists_absent():
    assert stats.missing_compare_keys({"onml_rps": 1.0}) == [key for key in stats.REQUIRED_COMPARE_KEYS
                                                             if key != "onml_rps"]


def test_round_floats_nested_and_non_finite():
    assert stats.round_floats({"a": [1.23456, float("nan")], "b": 2}, 2) == {"a": [1.23, None], "b": 2}


# Training


def test_training_rate_from_snapshots():
    snapshots = [
        {"samples_seen": 6048, "created_at": 103.0},
        {"samples_seen": 2016, "created_at": 101.0},
        {"samples_seen": 4032, "created_at": 102.0},
    ]
    assert stats.training_rate(snapshots) == pytest.approx(2016.0)
    assert stats.training_rate(snapshots[:1]) is None


def test_samples_to_accuracy():
    snapshots = [
        {"samples_seen": 2016, "accuracy": 0.80},
        {"samples_seen": 4032, "accuracy": 0.97},
        {"samples_seen": 6048, "accuracy": 0.99},
        {"samples_seen": 8064, "accuracy": None},
    ]
    assert stats.samples_to_accuracy(snapshots, 0.97) == 4032
    assert stats.samples_to_accuracy(snapshots, 0.995) is None


def test_last_snapshot_samples():
    # Batches of 32 and a snapshot every 2000 samples: snapshots at multiples of 2016.
    assert last_snapshot_samples(40_000, 32, 2000) == 38_304
    assert last_snapshot_samples(2016, 32, 2000) == 2016
    assert last_snapshot_samples(2015, 32, 2000) == 0


# Parsing of tool output and /proc


def test_parse_wrk_output():
    line = ('WRK_JSON {"requests":12000,"duration_us":10000000,"errors_connect":0,"errors_read":1,'
            '"errors_write":0,"errors_status":2,"errors_timeout":0,"p50_us":4000,"p95_us":9000,'
            '"p99_us":15000,"max_us":30000,"mean_us":5000.5}')
    result = parse_wrk_output("Running 10s test\n" + line + "\n", max_requests=500_000)
    # Responses with status 400 or above do not count.
    assert result["rps"] == pytest.approx(1199.8)
    assert result["requests"] == 11998
    assert result["errors"] == 3
    assert result["latency_ms"]["p99"] == 15.0
    assert result["count_limit_reached"] is False


def test_wrk_count_limit_drops_rate():
    line = ('WRK_JSON {"requests":100,"duration_us":10000000,"errors_connect":0,"errors_read":0,'
            '"errors_write":0,"errors_status":0,"errors_timeout":0,"p50_us":1,"p95_us":1,'
            '"p99_us":1,"max_us":1,"mean_us":1}')
    result = parse_wrk_output(line, max_requests=100)
    assert result["count_limit_reached"] is True
    assert result["rps"] is None


def test_parse_wrk_output_all_failed_raises():
    line = ('WRK_JSON {"requests":50,"duration_us":1000000,"errors_connect":0,"errors_read":0,'
            '"errors_write":0,"errors_status":50,"errors_timeout":0,"p50_us":1,"p95_us":1,'
            '"p99_us":1,"max_us":1,"mean_us":1}')
    with pytest.raises(BenchError, match="every one of the 50 HTTP requests failed"):
        parse_wrk_output(line, max_requests=1000)


def test_http_load_rejects_other_hosts():
    require_loopback("http://127.0.0.1:8000/predict")
    for url in ("http://localhost:8000/", "http://10.0.0.1/", "http://example.org/"):
        with pytest.raises(ValueError, match="only targets 127.0.0.1"):
            require_loopback(url)


def test_parse_stat_with_spaces_in_name():
    stat = "1234 (python (worker) x) S 1 1200 1100 0 -1 4194560 100 0 0 0"
    fields = parse_stat(stat)
    assert fields.pid == 1234
    assert fields.process_group == 1200
    assert fields.session == 1100


def test_resident_bytes_from_statm():
    assert resident_bytes("5000 300 100 10 0 200 0") == 300 * PAGE_BYTES


def test_cpu_and_memory_parsing():
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n") == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\n") is None
    assert memory_total_mb("MemTotal:       2048000 kB\nMemFree: 1 kB\n") == 2000.0


# Sweep grid and CLI lists


def test_sweep_grid_is_full_product():
    grid = sweep_grid([64, 256], [5, 20], [1, 2], [2])
    assert len(grid) == 8
    assert grid[0] == {"max_batch_size": 64, "max_batch_wait_ms": 5, "parallelism": 1, "topic_partitions": 2}
    assert len({tuple(sorted(combo.items())) for combo in grid}) == 8


def test_number_list_parsing():
    assert NumberList(int).convert("1,2,30", None, None) == (1, 2, 30)
    assert NumberList(float).convert("0.5", None, None) == (0.5,)
    assert NumberList(int).convert("", None, None) == ()


def test_number_list_rejects_bad_values():
    import click

    with pytest.raises(click.BadParameter):
        NumberList(int).convert("1,x", None, None)
    with pytest.raises(click.BadParameter):
        NumberList(int, minimum=1).convert("0,2", None, None)
