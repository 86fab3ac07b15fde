"""Tests of the app's pipeline access: result routing, request timeouts and the diagnosis of what is down.

Kafka is replaced by small fakes only where the test is about the app's own logic:
routing by request id and the timeout path. The model store is a real Redis server, and
"Kafka unreachable" and "Redis unreachable" use real connections to closed local ports.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from clients.app_pipeline import (
    MAX_RECENT_RESULTS,
    BrokerUnreachableError,
    ModelCache,
    PipelineClient,
    PipelineUnavailableError,
    ResultRouter,
    SnapshotHistory,
    pick_versions,
    score_versions,
)
from shared.config import load_config
from shared.model import build_model
from shared.store import ModelStore
from shared.wire import decode_request, encode_dead_letter, encode_result

RESULTS = "onml.results"
DEAD_LETTERS = "onml.dead-letter"


def closed_port() -> int:
    """Return a local port with nothing listening on it (free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeMessage:
    def __init__(self, topic: str, value: bytes) -> None:
        self._topic = topic
        self._value = value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    """Replaces the router's consumer when messages are fed through ``handle``."""

    closed = False

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Records produced messages. ``on_produce`` may reply to them, as the inference job would."""

    def __init__(self, on_produce=None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._on_produce = on_produce

    def produce(self, topic: str, value: bytes) -> None:
        self.messages.append((topic, value))
        if self._on_produce is not None:
            self._on_produce(value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> int:
        return 0


def result_message(request_id: str, label: int = 3, version: int = 2, request_ts: float = 1000.0,
                   result_ts: float = 1012.0) -> FakeMessage:
    probabilities = [0.0] * 10
    probabilities[label] = 1.0
    value = encode_result(request_id, label, probabilities, version, request_ts, 4, result_ts_ms=result_ts)
    return FakeMessage(RESULTS, value)


def make_router(clock_ms=None) -> ResultRouter:
    return ResultRouter(FakeConsumer(), RESULTS, DEAD_LETTERS, window_s=60.0,
                        **({} if clock_ms is None else {"clock_ms": clock_ms}))


def image() -> np.ndarray:
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[4:24, 13:15] = 255
    return picture


# ResultRouter


def test_router_hands_result_to_waiter():
    router = make_router()
    router.expect("app-a-0")

    router.handle([result_message("someone-else-0"), result_message("app-a-0", label=7)])
    answered = router.wait("app-a-0", timeout_s=1.0)

    assert answered is not None
    result, received_ms = answered
    assert result.id == "app-a-0"
    assert result.label == 7
    assert received_ms > 0


def test_router_wait_from_another_thread():
    router = make_router()
    router.expect("app-b-0")
    timer = threading.Timer(0.1, router.handle, args=([result_message("app-b-0")],))
    timer.start()

    answered = router.wait("app-b-0", timeout_s=5.0)
    timer.join()

    assert answered is not None
    assert answered[0].id == "app-b-0"


def test_router_wait_times_out_and_unregisters():
    router = make_router()
    router.expect("app-c-0")

    started = time.monotonic()
    assert router.wait("app-c-0", timeout_s=0.2) is None
    assert time.monotonic() - started < 2.0

    with pytest.raises(KeyError):
        router.wait("app-c-0", timeout_s=0.0)


def test_router_keeps_first_of_duplicate_results():
    router = make_router()
    router.expect("app-d-0")

    router.handle([result_message("app-d-0", label=1), result_message("app-d-0", label=2)])

    assert router.wait("app-d-0", 0.1)[0].label == 1


def test_router_counts_malformed_results():
    router = make_router()

    router.handle([FakeMessage(RESULTS, b"not json"), FakeMessage(RESULTS, orjson.dumps({"v": 1, "id": "x"}))])

    assert router.malformed == 2
    assert router.inference_stats().count == 0


def test_router_inference_stats_over_window():
    now = [100_000.0]
    router = make_router(clock_ms=lambda: now[0])
    # Latencies 10, 20, ... 100 ms, answered 1 to 10 s ago; one result is older than the window.
    messages = [result_message(f"r-{i}", request_ts=now[0] - 1000 * i - 10 * i, result_ts=now[0] - 1000 * i)
                for i in range(1, 11)]
    messages.append(result_message("old", request_ts=now[0] - 90_000, result_ts=now[0] - 89_000))

    router.handle(messages)
    stats = router.inference_stats()

    assert stats.count == 10
    assert stats.requests_per_s == pytest.approx(10 / 60.0)
    assert stats.latency_ms["p50"] == pytest.approx(55.0)
    assert stats.latency_ms["p99"] == pytest.approx(99.1)
    assert len(stats.per_second) == 60
    assert sum(stats.per_second) == 10
    assert stats.per_second[-2] == 1  # answered between 1 and 2 s ago


def test_router_recent_results_bounded():
    router = make_router()

    router.handle([result_message(f"r-{i}", request_ts=1.0, result_ts=2.0) for i in range(10)])

    assert router._recent.maxlen == MAX_RECENT_RESULTS


def test_router_counts_dead_letters_by_source():
    router = make_router()

    router.handle([
        FakeMessage(DEAD_LETTERS, encode_dead_letter("onml.requests", "decode", "not valid JSON", b"x")),
        FakeMessage(DEAD_LETTERS, encode_dead_letter("onml.requests", "decode", "short image", b"y")),
        FakeMessage(DEAD_LETTERS, encode_dead_letter("onml.training", "decode", "no label", b"z")),
        FakeMessage(DEAD_LETTERS, b"garbage"),
    ])
    stats = router.dead_letter_stats()

    assert stats.recent == {("onml.requests", "decode"): 2, ("onml.training", "decode"): 1, ("?", "?"): 1}
    assert stats.total is None


# PipelineClient


def answering_pipeline(config, delay_s: float = 0.0) -> tuple[PipelineClient, FakeProducer, ResultRouter]:
    """A client whose fake producer answers each request through the router, like the inference job."""
    router = make_router()

    def answer(value: bytes) -> None:
        request = decode_request(value)
        message = result_message(request.id, label=1, version=9, request_ts=request.ts_ms,
                                 result_ts=request.ts_ms + 8.0)
        threading.Timer(delay_s, router.handle, args=([message],)).start()

    producer = FakeProducer(answer)
    client = PipelineClient(config, timeout_s=2.0, kafka_factory=lambda: (producer, router),
                            broker_check=lambda: None)
    return client, producer, router


def test_classify_returns_answer_for_its_request():
    client, producer, _ = answering_pipeline(load_config(read_env=False, read_file=False), delay_s=0.05)

    answer = client.classify(image())

    assert answer.label == 1
    assert answer.model_version == 9
    assert answer.pipeline_ms == pytest.approx(8.0)
    assert answer.round_trip_ms >= 40.0
    assert len(producer.messages) == 1
    topic, value = producer.messages[0]
    assert topic == "onml.requests"
    request = decode_request(value)
    assert request.id == answer.request_id
    assert np.frombuffer(request.pixels, dtype=np.uint8).reshape(28, 28).tolist() == image().tolist()


def test_timeout_names_missing_snapshot(redis_config):
    config = redis_config.replace(model_key_prefix="test:app:empty")
    router = make_router()
    client = PipelineClient(config, timeout_s=0.5, kafka_factory=lambda: (FakeProducer(), router),
                            broker_check=lambda: None)

    started = time.monotonic()
    with pytest.raises(PipelineUnavailableError) as raised:
        client.classify(image())

    assert time.monotonic() - started < 5.0
    assert raised.value.timed_out
    assert raised.value.diagnosis.component == "no_snapshot"


def test_timeout_names_inference_job(redis_config, redis_client):
    store = ModelStore(redis_client, "test:app:one")
    version = store.publish(build_model("cnn-small-v1").state_dict(),
                            {"architecture": "cnn-small-v1", "samples_seen": 10, "accuracy": 0.1})
    config = redis_config.replace(model_key_prefix="test:app:one")
    client = PipelineClient(config, timeout_s=0.5, kafka_factory=lambda: (FakeProducer(), make_router()),
                            broker_check=lambda: None)

    with pytest.raises(PipelineUnavailableError) as raised:
        client.classify(image())

    assert raised.value.timed_out
    assert raised.value.diagnosis.component == "inference"
    assert raised.value.diagnosis.latest_version == version


def test_timeout_after_broker_outage(redis_config):
    def broker_down() -> None:
        raise BrokerUnreachableError("127.0.0.1:1", "no answer within 3 s")

    client = PipelineClient(redis_config, timeout_s=0.3, kafka_factory=lambda: (FakeProducer(), make_router()),
                            broker_check=broker_down)

    with pytest.raises(PipelineUnavailableError) as raised:
        client.classify(image())

    assert raised.value.timed_out
    assert raised.value.diagnosis.component == "kafka"
    assert raised.value.diagnosis.error == "no answer within 3 s"


def test_classify_with_kafka_down():
    address = f"127.0.0.1:{closed_port()}"
    config = load_config(overrides={"kafka_bootstrap": address}, read_env=False, read_file=False)
    client = PipelineClient(config, timeout_s=1.0)

    started = time.monotonic()
    with pytest.raises(PipelineUnavailableError) as raised:
        client.classify(image())

    assert time.monotonic() - started < 10.0
    assert not raised.value.timed_out
    assert raised.value.diagnosis.component == "kafka"
    assert raised.value.diagnosis.address == address


def test_diagnose_redis_unreachable_real_port():
    config = load_config(overrides={"redis_port": closed_port(), "redis_password": "unused"},
                         read_env=False, read_file=False)
    client = PipelineClient(config, timeout_s=1.0, broker_check=lambda: None)

    diagnosis = client.diagnose()

    assert diagnosis.component == "redis"
    assert diagnosis.address == f"127.0.0.1:{config.redis_port}"
    assert "refused" in diagnosis.error.lower()


def test_diagnose_reconnects_to_redis(redis_config):
    attempts = []

    def store_factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise __import__("redis").ConnectionError("down for a moment")
        return ModelStore.from_config(redis_config.replace(model_key_prefix="test:app:again"))

    client = PipelineClient(redis_config, timeout_s=1.0, broker_check=lambda: None, store_factory=store_factory)

    assert client.diagnose().component == "redis"
    assert client.diagnose().component == "no_snapshot"
    assert len(attempts) == 2


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        PipelineClient(load_config(read_env=False, read_file=False), timeout_s=0)


def test_dashboard_kafka_retry_interval():
    calls = []

    def kafka_down() -> Any:
        calls.append(1)
        raise BrokerUnreachableError("127.0.0.1:1", "down")

    client = PipelineClient(load_config(read_env=False, read_file=False), timeout_s=1.0, kafka_factory=kafka_down)

    assert client.router() is None
    assert client.router() is None
    assert len(calls) == 1


# Stored snapshots


def publish(store: ModelStore, samples: int, accuracy: float, seed: int) -> int:
    model = build_model("cnn-small-v1", seed=seed)
    return store.publish(model.state_dict(), {"architecture": "cnn-small-v1", "samples_seen": samples,
                                              "accuracy": accuracy})


def test_model_cache_loads_each_version_once(make_store):
    store = make_store()
    first, second = publish(store, 100, 0.2, seed=1), publish(store, 200, 0.4, seed=2)
    cache = ModelCache(lambda: store, max_models=4)

    assert cache.get(first).version == first
    assert cache.get(second).version == second
    assert cache.get(first) is cache.get(first)
    assert cache.loads == 2


def test_model_cache_drops_least_recently_used(make_store):
    store = make_store()
    versions = [publish(store, 100 * i, 0.1, seed=i) for i in range(1, 4)]
    cache = ModelCache(lambda: store, max_models=2)

    for version in versions:
        cache.get(version)
    cache.get(versions[0])

    assert cache.loads == 4


def test_score_versions_reports_dropped_version(make_store):
    store = make_store()
    version = publish(store, 100, 0.2, seed=1)
    cache = ModelCache(lambda: store)

    scored = score_versions(cache, image(), [version, version + 50])

    assert scored[0].error is None
    assert len(scored[0].probabilities) == 10
    assert sum(scored[0].probabilities) == pytest.approx(1.0, abs=1e-4)
    assert scored[0].label == int(np.argmax(scored[0].probabilities))
    assert scored[1].error == "missing"
    assert scored[1].label is None


def test_score_versions_reports_unloadable_weights(make_store):
    store = make_store()
    version = store.publish({"unexpected": torch.zeros(2)}, {"architecture": "cnn-small-v1",
                                                            "samples_seen": 1, "accuracy": 0.1})

    scored = score_versions(ModelCache(lambda: store), image(), [version])

    assert scored[0].error == "failed"
    assert scored[0].error_detail


@pytest.mark.parametrize(("versions", "expected"), [
    ([], []),
    ([3], [3]),
    ([1, 2, 3, 4], [1, 2, 3, 4]),
    ([5, 1, 3], [1, 3, 5]),
    (list(range(1, 21)), [1, 7, 14, 20]),
])
def test_pick_versions_spread(versions, expected):
    assert pick_versions(versions, count=4) == expected


def test_snapshot_history_keeps_dropped_versions():
    history = SnapshotHistory(max_records=3)

    history.update([{"version": 1}, {"version": 2}])
    records = history.update([{"version": 2, "note": "again"}, {"version": 3}, {"version": 4}])

    assert [record["version"] for record in records] == [2, 3, 4]
    assert records[0]["note"] == "again"
