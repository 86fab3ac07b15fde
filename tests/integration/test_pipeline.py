"""End-to-end tests of the pipeline on real Kafka, Redis and Flink mini-clusters.

The tests in this module share one pair of running jobs and run in file order: the
first one streams the training data, later ones build on the model it trained.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pytest

from clients.demo import JobProcess
from clients.kafka_io import assign_at_end, make_consumer, make_producer, poll_values
from clients.streams import collect_results, send_requests, stream_training
from shared.config import Config
from shared.data import load_split, prepare
from inference_job.job import INFERENCE_MODE
from shared.flink import checkpoint_dir, execution_mode, latest_checkpoint
from shared.store import ModelStore
from shared.wire import decode_dead_letter, encode_request

pytestmark = pytest.mark.integration

TRAINING_SAMPLES = 8000
HELD_OUT_REQUESTS = 1000


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll ``condition`` until it returns a truthy value; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def pipeline_config(stack: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    data_dir = Path(os.environ.get("ONML_TEST_DATA_DIR", "data")).resolve()
    prepare(data_dir, "mnist")
    # A short snapshot interval and checkpoint interval keep the waits below short.
    return stack.replace(data_dir=str(data_dir), snapshot_every_samples=1000, snapshot_interval_s=2.0,
                         checkpoint_interval_ms=2000, model_key_prefix="e2e:model")


def start_job(name: str, module: str, config: Config) -> JobProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONML_")}
    env.update(config.to_environ())
    job = JobProcess(name, module, config, env)
    job.start()
    return job


@pytest.fixture(scope="module")
def jobs(pipeline_config: Config) -> Iterator[dict[str, JobProcess]]:
    started = {"inference": start_job("inference", "inference_job.job", pipeline_config)}
    try:
        yield started
    finally:
        for job in started.values():
            job.stop()


@pytest.fixture(scope="module")
def store(pipeline_config: Config) -> ModelStore:
    return ModelStore.from_config(pipeline_config)


@pytest.fixture(scope="module")
def held_out(pipeline_config: Config):
    return load_split(pipeline_config.data_dir, "mnist", "t10k")


def results_consumer(config: Config):
    consumer = make_consumer(config)
    assign_at_end(consumer, config.result_topic)
    return consumer


def test_pipeline_trains_and_answers_held_out(pipeline_config, jobs, store, held_out):
    config = pipeline_config
    consumer = results_consumer(config)
    producer = make_producer(config)

    # Requests sent before any snapshot exists are held, then answered by the first one.
    early = send_requests(producer, config, held_out.images[:100], held_out.labels[:100])
    assert store.latest_version() is None

    # Train from scratch on one pass over the 8,000-digit training stream.
    jobs["training"] = start_job("training", "training_job.job", config)
    train = load_split(config.data_dir, "mnist", "train")
    sent = stream_training(producer, config, train.images, train.labels, limit=TRAINING_SAMPLES)
    assert sent == TRAINING_SAMPLES
    wait_for(lambda: (v := store.latest_version()) and store.metadata(v)["samples_seen"] >= TRAINING_SAMPLES,
             240, f"a snapshot trained on {TRAINING_SAMPLES} samples")
    # The training job publishes every snapshot with an ONNX model, which the inference job
    # serves in thread mode without torch.
    latest = store.load_bytes()
    assert latest.onnx_model is not None
    assert latest.metadata["architecture"] == config.architecture

    early_results = collect_results(consumer, early, timeout_s=60)
    assert len(early_results.results) == 100, "held requests were not all answered"
    assert all(result.model_version >= 1 for result in early_results.results.values())

    # Held-out requests: every one answered exactly once, matched by id, tagged with a version.
    requests = send_requests(producer, config, held_out.images[100:100 + HELD_OUT_REQUESTS],
                             held_out.labels[100:100 + HELD_OUT_REQUESTS])
    collected = collect_results(consumer, requests, timeout_s=120)
    extra = list(poll_values(consumer, time.monotonic() + 3.0))
    summary = collected.summary(requests)
    consumer.close()

    assert summary["answered"] == HELD_OUT_REQUESTS
    assert summary["missing"] == 0
    assert summary["duplicates"] == 0
    assert extra == [], "results arrived after every request was already answered"
    assert all(result.model_version >= 1 for result in collected.results.values())
    assert summary["accuracy"] >= 0.90, summary


def test_new_snapshot_is_served_without_restart(pipeline_config, jobs, store, held_out):
    config = pipeline_config
    inference = jobs["inference"]
    pid_before = inference.pid
    current = store.load()

    # Publish a new version by hand: the inference job must switch to it while running.
    metadata = {key: current.metadata[key] for key in ("architecture", "samples_seen", "accuracy")}
    metadata["note"] = "republished by the hot-swap test"
    # Stop training from racing this test with its own snapshots.
    jobs["training"].stop()
    new_version = store.publish(current.state_dict, metadata)

    consumer = results_consumer(config)
    producer = make_producer(config)

    def served_by_new_version():
        sent = send_requests(producer, config, held_out.images[:20], held_out.labels[:20])
        collected = collect_results(consumer, sent, timeout_s=20)
        versions = {result.model_version for result in collected.results.values()}
        return versions == {new_version}

    wait_for(served_by_new_version, 60, f"results from version {new_version}", interval_s=0.0)
    consumer.close()
    assert inference.exit_code() is None
    assert inference.pid == pid_before


def test_snapshot_without_onnx_is_served_in_thread_mode(pipeline_config, jobs, store, held_out):
    # A publisher that stores no ONNX model, as publishers did before it existed, leaves
    # only the weights. The inference job, in thread mode by default, serves them with torch.
    config = pipeline_config
    assert execution_mode(config, INFERENCE_MODE) == "thread"
    inference = jobs["inference"]
    current = store.load()
    metadata = {key: current.metadata[key] for key in ("architecture", "samples_seen", "accuracy")}
    metadata["note"] = "published without an ONNX model by the integration test"
    old_style = store.publish(current.state_dict, metadata, with_onnx=False)
    assert store.load_bytes(old_style).onnx_model is None

    consumer = results_consumer(config)
    producer = make_producer(config)
    collected = {}

    def served_by_old_style_version():
        sent = send_requests(producer, config, held_out.images[:50], held_out.labels[:50])
        collected["last"] = collect_results(consumer, sent, timeout_s=20).summary(sent)
        return collected["last"]["model_versions"] == {old_style: 50}

    wait_for(served_by_old_style_version, 90, f"results from version {old_style}", interval_s=0.0)
    consumer.close()

    assert collected["last"]["accuracy"] >= 0.90, collected["last"]
    assert inference.exit_code() is None


def test_malformed_requests_go_to_dead_letter(pipeline_config, jobs, held_out):
    config = pipeline_config
    dead_letters = make_consumer(config)
    assign_at_end(dead_letters, config.dead_letter_topic)
    consumer = results_consumer(config)
    producer = make_producer(config)

    bad_messages = [
        b"not json at all",
        orjson.dumps({"v": 1, "id": "short-image", "ts": 1.0, "img": "AAAA"}),
        b"\xff\xfe binary garbage",
    ]
    for message in bad_messages:
        producer.produce(config.request_topic, message)
    producer.produce(config.training_topic, orjson.dumps({"v": 1, "id": "no-label", "ts": 1.0, "img": "AAAA"}))
    producer.flush(10)

    # The next valid request is still answered.
    sent = send_requests(producer, config, held_out.images[:1], held_out.labels[:1])
    collected = collect_results(consumer, sent, timeout_s=60)
    assert len(collected.results) == 1

    letters = []
    for value in poll_values(dead_letters, time.monotonic() + 60):
        letters.append(decode_dead_letter(value))
        if len(letters) >= len(bad_messages):
            break
    dead_letters.close()
    consumer.close()

    request_letters = [letter for letter in letters if letter["source_topic"] == config.request_topic]
    assert len(request_letters) == len(bad_messages)
    reasons = " | ".join(letter["reason"] for letter in request_letters)
    assert "not valid JSON" in reasons
    assert "expected 784" in reasons
    payloads = {letter["payload"] for letter in request_letters}
    assert "not json at all" in payloads


def test_training_resumes_from_checkpoint(pipeline_config, jobs, store):
    config = pipeline_config
    checkpoint = latest_checkpoint(checkpoint_dir(config, "onml-training"))
    assert checkpoint is not None, "the training job retained no checkpoint"
    before = store.metadata(store.latest_version())

    # The earlier test stopped the training job (SIGTERM to its process group, like a
    # crash of the whole mini-cluster). Start it again; it must restore, not start over.
    jobs["training"] = start_job("training", "training_job.job", config)
    train = load_split(config.data_dir, "mnist", "train")
    producer = make_producer(config)
    rng = np.random.default_rng(3)
    picks = rng.choice(len(train.labels), size=1500, replace=False)
    stream_training(producer, config, train.images[picks], train.labels[picks])

    def resumed_snapshot():
        latest = store.latest_version()
        record = store.metadata(latest)
        return record if record.get("note") is None and record["samples_seen"] > before["samples_seen"] else None

    after = wait_for(resumed_snapshot, 180, "a snapshot from the restarted training job")
    # Restored state: the sample count continues and accuracy stays far above chance (10 %).
    assert after["samples_seen"] >= TRAINING_SAMPLES
    assert after["accuracy"] >= 0.85
