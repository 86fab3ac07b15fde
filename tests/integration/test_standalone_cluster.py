"""Both jobs submitted with `flink run` to a standalone cluster started from PyFlink's scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clients.kafka_io import assign_at_end, make_consumer, make_producer
from clients.streams import collect_results, send_requests, stream_training
from deploy.stack import create_topics
from shared.data import load_split, prepare
from shared.flink import PROJECT_ROOT, absolute_paths, build_job_archive
from shared.store import ModelStore

pytestmark = pytest.mark.integration


def test_jobs_run_on_standalone_cluster(stack, flink_cluster):
    # Own topics, consumer groups and key prefix, so the mini-cluster tests' jobs and
    # data do not mix with these.
    config = absolute_paths(stack.replace(
        training_topic="standalone.training", request_topic="standalone.requests",
        result_topic="standalone.results", dead_letter_topic="standalone.dead-letter",
        consumer_group_prefix="standalone", model_key_prefix="standalone:model",
        snapshot_every_samples=1000, snapshot_interval_s=2.0, data_dir=str(PROJECT_ROOT / "data"),
    ))
    create_topics(config)
    prepare(config.data_dir, "mnist")
    cluster = type(flink_cluster)(config)
    # The project's packages travel with the job as one archive: nothing is installed
    # into the cluster's Python, so this fails if shipping them breaks.
    python_files = [str(build_job_archive(Path(config.var_dir) / "build"))]

    job_ids = [
        cluster.flink_run(PROJECT_ROOT / "training_job" / "job.py", python_files, [], [config.connector_jar]),
        cluster.flink_run(PROJECT_ROOT / "inference_job" / "job.py", python_files, [], [config.connector_jar]),
    ]
    try:
        store = ModelStore.from_config(config)
        consumer = make_consumer(config)
        assign_at_end(consumer, config.result_topic)
        producer = make_producer(config)

        train = load_split(config.data_dir, "mnist", "train")
        stream_training(producer, config, train.images, train.labels, limit=4000)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            latest = store.latest_version()
            if latest is not None and store.metadata(latest)["samples_seen"] >= 4000:
                break
            time.sleep(1.0)
        else:
            pytest.fail(f"no snapshot trained on 4,000 samples; job states {cluster.job_states()}")

        held_out = load_split(config.data_dir, "mnist", "t10k")
        sent = send_requests(producer, config, held_out.images[:200], held_out.labels[:200])
        summary = collect_results(consumer, sent, timeout_s=120).summary(sent)
        consumer.close()

        states = cluster.job_states()
        assert all(states.get(job_id) == "RUNNING" for job_id in job_ids), states
        assert summary["answered"] == 200
        assert summary["accuracy"] >= 0.8
    finally:
        for job_id in job_ids:
            cluster.cancel(job_id)
