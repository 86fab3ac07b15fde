"""The Gradio app in headless Chromium against the real pipeline.

Kafka and Redis come from the session's ``stack`` fixture. Both Flink jobs run on their
own mini-clusters, with a var_dir, consumer groups and model key prefix of this module,
so other modules' checkpoints and snapshots do not mix in. The test draws a digit with
mouse events, reads the result back from the page and visits every tab in both
languages, saving a screenshot of each.

With ONML_SCREENSHOT_DIR set, the screenshots are also saved there, and before the
Training tab is shown the test streams digits with permuted labels, so the accuracy
curve in the screenshots shows a drift's dip and recovery (about 30 s more).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from app_page import DIGIT_STROKES, AppPage
from clients.app import RunningApp, start_app
from clients.demo import JobProcess
from clients.kafka_io import make_producer
from clients.streams import stream_training
from shared.config import Config
from shared.data import load_split, prepare
from shared.store import ModelStore

pytestmark = [pytest.mark.browser, pytest.mark.integration]

TRAINING_SAMPLES = 4000
# Samples with permuted labels streamed for the documentation screenshots.
DRIFTED_SAMPLES = 8000
# The page is tested once a snapshot has learned from at least this many samples.
MIN_SNAPSHOT_SAMPLES = 3000
SNAPSHOT_WAIT_S = 180.0
APP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_config(stack: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    data_dir = Path(os.environ.get("ONML_TEST_DATA_DIR", "data")).resolve()
    prepare(data_dir, "mnist")
    return stack.replace(
        var_dir=str(tmp_path_factory.mktemp("browser") / "var"), data_dir=str(data_dir),
        snapshot_every_samples=1000, snapshot_interval_s=2.0, checkpoint_interval_ms=5000,
        model_key_prefix="browser:model", consumer_group_prefix="browser",
    )


def start_job(name: str, module: str, config: Config, args: list[str] | None = None) -> JobProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONML_")}
    env.update(config.to_environ())
    job = JobProcess(name, module, config, env, args)
    job.start()
    return job


def wait_for_snapshot(store: ModelStore, jobs: list[JobProcess], min_samples: int, timeout_s: float) -> dict:
    """Wait for a snapshot trained on ``min_samples``; fail early, with the log, if a job exits."""
    deadline = time.monotonic() + timeout_s
    metadata: dict = {}
    while time.monotonic() < deadline:
        for job in jobs:
            if job.exit_code() is not None:
                pytest.fail(f"the {job.name} job exited with status {job.exit_code()}:\n{job.log_tail(30)}")
        latest = store.latest_version()
        if latest is not None:
            metadata = store.metadata(latest)
            if metadata["samples_seen"] >= min_samples:
                return metadata
        time.sleep(1.0)
    pytest.fail(f"no snapshot trained on {min_samples} samples within {timeout_s:.0f} s; the latest is "
                f"version {metadata.get('version')} with {metadata.get('samples_seen')} samples")


@pytest.fixture(scope="module")
def trained_store(app_config: Config) -> Iterator[ModelStore]:
    """Both jobs running and a snapshot trained on at least MIN_SNAPSHOT_SAMPLES samples."""
    jobs = [start_job("inference", "inference_job.job", app_config),
            start_job("training", "training_job.job", app_config, ["--no-resume"])]
    try:
        train = load_split(app_config.data_dir, "mnist", "train")
        producer = make_producer(app_config)
        sent = stream_training(producer, app_config, train.images, train.labels, limit=TRAINING_SAMPLES)
        assert sent == TRAINING_SAMPLES
        assert producer.flush(60) == 0, "training samples were not all delivered to Kafka within 90 s"
        store = ModelStore.from_config(app_config)
        wait_for_snapshot(store, jobs, MIN_SNAPSHOT_SAMPLES, SNAPSHOT_WAIT_S)
        yield store
    finally:
        for job in jobs:
            job.stop()


@pytest.fixture(scope="module")
def running_app(app_config: Config, trained_store: ModelStore) -> Iterator[RunningApp]:
    app = start_app(app_config, host="127.0.0.1", port=free_port(), language="en", timeout_s=APP_TIMEOUT_S,
                    refresh_s=2.0)
    try:
        yield app
    finally:
        app.close()


def screenshot_folders(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("ONML_SCREENSHOT_DIR"):
        folders.append(Path(os.environ["ONML_SCREENSHOT_DIR"]))
    return folders


def stream_drift(app: RunningApp, store: ModelStore) -> None:
    """Stream digits with permuted labels and wait until the model has trained on them."""
    config = app.services.pipeline.config
    trained = store.metadata(store.latest_version())["samples_seen"]
    train = load_split(config.data_dir, "mnist", "train")
    producer = make_producer(config)
    stream_training(producer, config, train.images, train.labels, drift_at=0, limit=DRIFTED_SAMPLES)
    # stream_training flushes for at most 30 s; a loaded broker may need longer.
    assert producer.flush(60) == 0, "drifted samples were not all delivered to Kafka within 90 s"
    wait_for_snapshot(store, [], trained + DRIFTED_SAMPLES, SNAPSHOT_WAIT_S)


def test_app_draw_compare_training(running_app, trained_store, browser_context, tmp_path):
    folders = screenshot_folders(tmp_path)
    page = AppPage(browser_context.new_page(), running_app.url).open()

    # An empty canvas is not sent.
    assert "draw a digit" in page.classify()

    # A drawn '1' goes through Kafka and the inference job and comes back with a version.
    page.draw(DIGIT_STROKES[1])
    details = page.classify(timeout_s=APP_TIMEOUT_S + 10)
    digit = page.predicted_digit()
    version = page.answered_version(details)
    assert re.fullmatch(r"[0-9]", digit), f"no predicted digit on the page; answer text: {details!r}"
    # A straight vertical stroke is the plainest 1, so a model trained on 3,000 digits reads it as 1.
    assert digit == "1", details
    assert version is not None and version >= 1, details
    assert "Send → answer" in details
    page.screenshot("draw-en", folders)

    # Compare: the stored versions score the same drawing side by side.
    table = page.compare()
    compared = page.compared_versions(table)
    assert compared >= 2, f"expected at least two versions in the comparison, got {compared}: {table!r}"
    page.screenshot("compare-en", folders)

    if os.environ.get("ONML_SCREENSHOT_DIR"):
        stream_drift(running_app, trained_store)

    # Training: the dashboard shows the snapshot history and the request just answered.
    summary = page.training()
    assert "snapshots shown" in summary
    page.page.wait_for_function(
        "document.querySelector('#inference-summary') && "
        "/answered [1-9]/.test(document.querySelector('#inference-summary').innerText)", timeout=30_000)
    page.screenshot("training-en", folders)

    # The same three tabs in Chinese.
    page.set_language("zh")
    page.page.wait_for_function(
        "document.querySelector('#snapshot-summary').innerText.includes('快照')", timeout=30_000)
    page.screenshot("training-zh", folders)
    page.compare()
    assert "版本" in page.page.locator("#compare-table").inner_text()
    page.screenshot("compare-zh", folders)
    page.open_tab("draw")
    assert "版本" in page.page.locator("#answer-details").inner_text()
    page.screenshot("draw-zh", folders)

    assert browser_context.blocked_urls == [], "the page requested hosts other than 127.0.0.1"
