"""Tests of the bench's parts that run without Kafka: the HTTP baseline app, the ceiling loop, RSS sampling."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from benchmarks.ceiling import ceiling_at, measure_ceiling
from benchmarks.http_service import create_app
from benchmarks.rss import RssSampler, group_rss_bytes
from inference_job.predictor import LoadedModel
from shared.model import build_model
from shared.wire import decode_result, encode_request


class CountingModel:
    """Stands in for a loaded model: returns uniform probabilities and counts the images it saw."""

    version = 7

    def __init__(self) -> None:
        self.images = 0
        self.batch_sizes: set[int] = set()

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.images += len(images)
        self.batch_sizes.add(len(images))
        return np.full((len(images), 10), 0.1, dtype=np.float32)


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)


@pytest.fixture()
def http_client() -> TestClient:
    model = LoadedModel(3, {"architecture": "cnn-small-v1"}, build_model("cnn-small-v1", seed=0).eval())
    return TestClient(create_app(model))


def test_http_app_answers_in_wire_format(http_client, images):
    response = http_client.post("/predict", content=encode_request("req-1", images[0], 123.0),
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    result = decode_result(response.content)
    assert result.id == "req-1"
    assert result.model_version == 3
    assert result.batch_size == 1
    assert result.request_ts_ms == 123.0
    assert len(result.probabilities) == 10
    assert 0 <= result.label <= 9


def test_http_app_rejects_short_image(http_client):
    body = b'{"v": 1, "id": "x", "ts": 1.0, "img": "AAAA"}'
    response = http_client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "expected 784" in response.text


def test_http_app_rejects_invalid_base64(http_client):
    body = b'{"v": 1, "id": "x", "ts": 1.0, "img": "not base64!"}'
    response = http_client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "not valid base64" in response.text


def test_http_app_health(http_client):
    response = http_client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_version": 3}


def test_ceiling_uses_each_batch_size(images):
    model = CountingModel()
    rows = measure_ceiling(model, images, [1, 4, 16], seconds_per_size=0.05, progress=False)
    assert [row["batch_size"] for row in rows] == [1, 4, 16]
    assert model.batch_sizes == {1, 4, 16}
    for row in rows:
        assert row["images"] % row["batch_size"] == 0
        assert row["images_per_s"] > 0
    assert ceiling_at(rows, 4) == rows[1]["images_per_s"]
    assert ceiling_at(rows, 256) is None


def test_ceiling_stops_at_image_limit(images):
    model = CountingModel()
    rows = measure_ceiling(model, images, [8], seconds_per_size=60.0, max_images_per_size=80, progress=False)
    assert rows[0]["images"] == 80


def test_group_rss_covers_own_process_group():
    total, count = group_rss_bytes(os.getpgid(0))
    assert count >= 1
    assert total > 0


def test_rss_sampler_keeps_peak():
    sampler = RssSampler(os.getpgid(0), interval_s=0.01).start()
    sampler.sample_once()
    sampler.stop()
    assert sampler.samples >= 1
    assert sampler.peak_mb > 0


def test_plots_and_tables_are_written(tmp_path):
    from benchmarks import report

    steps = [
        {"rate_per_s": 100.0, "send_rate_per_s": 99.0, "sent": 10, "answered": 10, "lost": 0, "duplicated": 0,
         "max_sender_lag_ms": 1.0, "latency_ms": {"count": 10, "p50": 20.0, "p95": 30.0, "p99": 31.0, "max": 33.0},
         "latency_to_result_ts_ms": {"p99": 25.0}},
        {"rate_per_s": 200.0, "send_rate_per_s": 198.0, "sent": 20, "answered": 19, "lost": 1, "duplicated": 0,
         "max_sender_lag_ms": 2.0, "latency_ms": {"count": 19, "p50": 25.0, "p95": 40.0, "p99": 45.0, "max": 50.0}},
    ]
    latency_png = report.plot_latency_vs_rate(tmp_path / "latency.png", steps, "latency")
    throughput_png = report.plot_throughput_vs_batch(
        tmp_path / "throughput.png", {"ceiling": [(1, 100.0), (64, 900.0)], "job": [(64, None)]}, "throughput")
    assert latency_png.stat().st_size > 0
    assert throughput_png.stat().st_size > 0

    table = report.markdown_table(report.RATE_HEADERS, report.rate_rows(steps))
    assert table.count("\n") == 4
    assert "19/20" in table


def test_result_stamp_reads_id_and_time():
    from benchmarks.collector import result_stamp
    from shared.wire import encode_result

    message = encode_result("req-1", 3, [0.1] * 10, 7, 1000.0, 16, result_ts_ms=1025.5)

    assert result_stamp(message) == ("req-1", 1025.5)


@pytest.mark.parametrize("message, reason", [
    (b"not json", "not valid JSON"),
    (b'{"v": 1, "id": "req-1"}', "invalid result message"),
    (b'{"v": 1, "id": 5, "result_ts": 1.0}', "id 5"),
    (b'{"v": 1, "id": "req-1", "result_ts": true}', "result_ts True"),
])
def test_result_stamp_rejects_malformed(message, reason):
    from benchmarks.collector import result_stamp
    from shared.wire import WireError

    with pytest.raises(WireError, match=reason):
        result_stamp(message)


def test_gc_off_during_measurement():
    import gc

    from benchmarks.harness import without_gc_pauses

    assert gc.isenabled()
    with without_gc_pauses():
        assert not gc.isenabled()
    assert gc.isenabled()
