"""Tests of the app's handlers: Draw, Compare and Training, the CLI command and serving on loopback.

The model store is a real Redis server (tests/unit/conftest.py). Kafka is replaced by a
fake producer and a router fed by hand, which is what the handlers' own logic needs.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

import clients.app as app_module
import clients.cli as cli_module
from clients.app import (
    AppServices,
    build_app,
    build_dashboard,
    classify_drawing,
    compare_drawing,
    drawing_image,
    is_loopback,
    refresh_versions,
    render_compare,
    render_draw,
    start_app,
)
from clients.app_pipeline import ModelCache, PipelineClient, ResultRouter
from clients.cli import cli
from shared.config import ConfigError, load_config
from shared.store import ModelStore
from shared.wire import decode_request, encode_result
from training_job.learner import OnlineLearner

CANVAS = 400


def sketch(stroke: bool = True) -> dict[str, Any]:
    """Return what Gradio 6.31's Sketchpad passes with type='numpy': RGBA background, layers, composite."""
    background = np.full((CANVAS, CANVAS, 4), 255, dtype=np.uint8)
    layer = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    if stroke:
        layer[60:340, 185:215] = (0, 0, 0, 255)
    composite = background.copy()
    composite[layer[:, :, 3] == 255] = (0, 0, 0, 255)
    return {"background": background, "layers": [layer], "composite": composite}


class FakeMessage:
    def __init__(self, topic: str, value: bytes) -> None:
        self._topic, self._value = topic, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    def close(self) -> None:
        pass


class FakeKafka:
    """A producer and a router with no broker; ``answer`` makes it reply like the inference job."""

    def __init__(self, config, answer: bool) -> None:
        self.router = ResultRouter(FakeConsumer(), config.result_topic, config.dead_letter_topic, window_s=60.0)
        self.sent: list[bytes] = []
        self.answer = answer
        self.version = 1

    def produce(self, topic: str, value: bytes) -> None:
        self.sent.append(value)
        if self.answer:
            request = decode_request(value)
            probabilities = [0.02] * 10
            probabilities[1] = 0.82
            result = encode_result(request.id, 1, probabilities, self.version, request.ts_ms, 1,
                                   result_ts_ms=request.ts_ms + 6.0)
            threading.Timer(0.01, self.router.handle, args=([FakeMessage("onml.results", result)],)).start()

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> int:
        return 0


def make_services(config, answer: bool = True, timeout_s: float = 2.0) -> tuple[AppServices, FakeKafka]:
    kafka = FakeKafka(config, answer)
    factory_calls = []

    def kafka_factory():
        factory_calls.append(1)
        return kafka, kafka.router

    pipeline = PipelineClient(config, timeout_s, kafka_factory=kafka_factory, broker_check=lambda: None)
    kafka.factory_calls = factory_calls
    return AppServices(pipeline, ModelCache(pipeline.store)), kafka


def bar_digits(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A separable data set: digit k is a bright bar at its own place over dim noise."""
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 30, size=(count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 + 2 * label:4 + 2 * label, 4:24] = 255
    return images, labels


def publish_trained(store: ModelStore, samples: int, seed: int = 0) -> tuple[int, dict]:
    """Train a learner online on ``samples`` samples and publish its snapshot, as the training job does."""
    learner = OnlineLearner("cnn-small-v1", learning_rate=1e-3, accuracy_window=200, seed=seed)
    images, labels = bar_digits(samples, np.random.default_rng(seed))
    for start in range(0, samples, 32):
        learner.learn_batch(images[start:start + 32], labels[start:start + 32])
    metadata = learner.snapshot_metadata()
    return store.publish(learner.model.state_dict(), metadata), metadata


@pytest.fixture()
def store_config(redis_config, request):
    return redis_config.replace(model_key_prefix=f"test:app:{request.node.name[:40]}")


# Draw tab


def test_sketch_goes_through_drawing_to_mnist():
    image = drawing_image(sketch())

    assert image.shape == (28, 28)
    assert image.dtype == np.uint8
    # White ink on black, as in MNIST: the border is dark and the centre bright.
    assert image[0].max() == 0
    assert image[14, 12:16].max() > 200


def test_empty_sketch_has_no_image():
    assert drawing_image(None) is None
    assert drawing_image(sketch(stroke=False)) is None
    assert drawing_image({"background": None, "layers": [], "composite": None}) is None


def test_empty_canvas_sends_nothing(store_config):
    services, kafka = make_services(store_config)

    for drawing in (None, sketch(stroke=False)):
        outcome = classify_drawing(services, drawing)
        assert outcome.kind == "empty"

    assert kafka.sent == []
    assert kafka.factory_calls == []


def test_empty_canvas_message_per_language():
    outcome = app_module.DrawOutcome("empty")

    digit, details, probabilities, preview = render_draw(outcome, "en")
    assert "Please draw a digit" in details
    assert 'data-digit=""' in digit
    assert probabilities is None
    assert preview is None
    assert "请先画一个数字" in render_draw(outcome, "zh")[1]


def test_drawing_result_shows_version(store_config):
    store = ModelStore.from_config(store_config)
    version, _ = publish_trained(store, 64)
    services, kafka = make_services(store_config)
    kafka.version = version

    outcome = classify_drawing(services, sketch())
    digit, details, probabilities, preview = render_draw(outcome, "en")

    assert outcome.kind == "answer"
    assert len(kafka.sent) == 1
    assert decode_request(kafka.sent[0]).pixels == drawing_image(sketch()).tobytes()
    assert 'data-digit="1"' in digit
    assert f"version **{version}**" in details
    assert "64 samples seen" in details
    assert "Send → answer" in details
    assert list(probabilities)[0] == "1"
    assert probabilities["1"] == pytest.approx(0.82)
    assert preview.shape == (224, 224)
    assert f"模型版本 **{version}**" in render_draw(outcome, "zh")[1]


def test_no_answer_names_inference_job(store_config):
    store = ModelStore.from_config(store_config)
    publish_trained(store, 32)
    services, kafka = make_services(store_config, answer=False, timeout_s=0.5)

    outcome = classify_drawing(services, sketch())
    details = render_draw(outcome, "en")[1]

    assert outcome.kind == "down"
    assert len(kafka.sent) == 1
    assert "No answer within 0.5 s." in details
    assert "inference job is not answering" in details
    assert "推理作业没有回答" in render_draw(outcome, "zh")[1]


def test_no_answer_names_missing_snapshot(store_config):
    services, _ = make_services(store_config, answer=False, timeout_s=0.5)

    details = render_draw(classify_drawing(services, sketch()), "en")[1]

    assert "no snapshot yet" in details


# Compare tab


def test_compare_two_trained_versions(store_config):
    store = ModelStore.from_config(store_config)
    early, early_meta = publish_trained(store, 64, seed=1)
    late, late_meta = publish_trained(store, 1024, seed=1)
    services, _ = make_services(store_config)

    outcome = compare_drawing(services, sketch(), [late, early])
    status, table, figure = render_compare(outcome, "en")

    assert [entry.version for entry in outcome.scored] == [early, late]
    assert [entry.metadata["samples_seen"] for entry in outcome.scored] == [64, 1024]
    assert early_meta["accuracy"] != late_meta["accuracy"]
    assert [entry.metadata["accuracy"] for entry in outcome.scored] == [early_meta["accuracy"],
                                                                        late_meta["accuracy"]]
    assert status == "Scored by 2 versions."
    assert table["version"].tolist() == [early, late]
    assert table["samples seen"].tolist() == ["64", "1,024"]
    assert table["prequential accuracy"].tolist() == [f"{early_meta['accuracy']:.1%}",
                                                      f"{late_meta['accuracy']:.1%}"]
    assert all(value in [str(digit) for digit in range(10)] for value in table["predicted"])
    assert isinstance(figure, Figure)

    # The second comparison is served from the cache, loaded read-only once per version.
    compare_drawing(services, sketch(), [early, late])
    assert services.models.loads == 2


def test_compare_needs_drawing_and_versions(store_config):
    services, _ = make_services(store_config)

    assert compare_drawing(services, None, [1]).message_key == "empty_drawing"
    assert compare_drawing(services, sketch(), []).message_key == "compare_pick_versions"
    assert render_compare(compare_drawing(services, sketch(), []), "zh")[0] == "请至少选择一个版本。"


def test_compare_store_down_is_reported():
    config = load_config(overrides={"redis_port": free_port(), "redis_password": "unused"},
                         read_env=False, read_file=False)
    services, _ = make_services(config)

    outcome = compare_drawing(services, sketch(), [1])

    assert outcome.message_key == "store_unreachable"
    assert "model store is unreachable" in render_compare(outcome, "en")[0]


def test_refresh_versions_lists_store(store_config):
    store = ModelStore.from_config(store_config)
    versions = [publish_trained(store, 32, seed=seed)[0] for seed in range(6)]
    services, _ = make_services(store_config)

    update, status = refresh_versions(services, "en", None)

    assert status == ""
    assert [value for _, value in update["choices"]] == versions
    assert update["value"][-1] == versions[-1]
    assert len(update["value"]) == 4

    kept, _ = refresh_versions(services, "en", [versions[1], 999])
    assert kept["value"] == [versions[1]]


def test_refresh_versions_empty_store(store_config):
    services, _ = make_services(store_config)

    update, status = refresh_versions(services, "zh", None)

    assert update["choices"] == []
    assert status == "模型仓库里还没有快照：请先训练模型。"


# Training tab


def test_dashboard_from_store_and_results(store_config):
    store = ModelStore.from_config(store_config)
    for seed in range(3):
        publish_trained(store, 32 * (seed + 1), seed=seed)
    services, kafka = make_services(store_config)
    for _ in range(3):
        classify_drawing(services, sketch())

    board = build_dashboard(services, "en")

    assert "**3** snapshots shown" in board.summary
    assert "answered 3" in board.inference
    assert "Dead-letter topic" in board.inference
    assert isinstance(board.accuracy, Figure)
    assert isinstance(board.throughput, Figure)
    assert len(board.timeline) == 3
    assert "快照" in build_dashboard(services, "zh").summary


def test_dashboard_history_survives_store_outage(store_config):
    store = ModelStore.from_config(store_config)
    publish_trained(store, 32)
    services, _ = make_services(store_config)
    build_dashboard(services, "en")

    def store_down() -> ModelStore:
        raise __import__("redis").ConnectionError("Connection refused")

    services.pipeline._store_factory = store_down
    services.pipeline.forget_store()
    board = build_dashboard(services, "en")

    assert "model store is unreachable: Connection refused" in board.summary
    assert "**1** snapshots shown" in board.summary
    assert len(board.timeline) == 1


def test_dashboard_without_kafka(store_config):
    pipeline = PipelineClient(store_config.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}"), 0.5)
    services = AppServices(pipeline, ModelCache(pipeline.store))

    board = build_dashboard(services, "en")

    assert "Kafka is unreachable" in board.summary
    assert board.inference == ""


# Layout, CLI and serving


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_build_app_in_both_languages(store_config, language):
    services, _ = make_services(store_config)

    blocks = build_app(services, language)

    config = blocks.get_config_file()
    labels = {component.get("props", {}).get("label") for component in config["components"]}
    expected = "Draw a digit (0–9)" if language == "en" else "画一个数字（0–9）"
    assert expected in labels


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("example.invalid", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


class FakeRunningApp:
    url = "http://127.0.0.1:1/"
    closed = False

    def close(self) -> None:
        FakeRunningApp.closed = True


def run_app_command(monkeypatch, *args: str):
    started = {}

    def fake_start_app(config, **kwargs):
        started.update(kwargs)
        return FakeRunningApp()

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app_module, "start_app", fake_start_app)
    # The command waits in time.sleep until Ctrl-C; the fake presses Ctrl-C at once.
    monkeypatch.setattr(cli_module, "time", SimpleNamespace(sleep=interrupt))
    for name in [name for name in os.environ if name.startswith("ONML_")]:
        monkeypatch.delenv(name)
    # The command installs a SIGTERM handler; the test process keeps its own.
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(cli, ["app", *args])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result, started


def test_cli_app_defaults_to_loopback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result, started = run_app_command(monkeypatch)

    assert result.exit_code == 0, result.output
    assert started["host"] == "127.0.0.1"
    assert started["port"] is None
    assert started["timeout_s"] == 10.0
    assert "warning" not in result.output
    assert "app running at http://127.0.0.1:1/" in result.output
    assert "stopping the app" in result.output
    assert FakeRunningApp.closed


def test_cli_app_warns_on_all_interfaces(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result, started = run_app_command(monkeypatch, "--host", "0.0.0.0", "--port", "18000", "--language", "zh",
                                      "--timeout", "3")

    assert result.exit_code == 0, result.output
    assert started == {"host": "0.0.0.0", "port": 18000, "language": "zh", "timeout_s": 3.0}
    assert "warning: the app listens on 0.0.0.0" in result.stderr


def test_cli_app_rejects_unknown_language(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result, _ = run_app_command(monkeypatch, "--language", "fr")

    assert result.exit_code == 2
    assert "fr" in result.output


def test_app_settings_validated():
    assert load_config(environ={"ONML_APP_LANGUAGE": "zh"}, read_file=False).app_language == "zh"
    with pytest.raises(ConfigError, match="app_language"):
        load_config(overrides={"app_language": "fr"}, read_env=False, read_file=False)
    with pytest.raises(ConfigError, match="app_port"):
        load_config(overrides={"app_port": 70000}, read_env=False, read_file=False)
    defaults = load_config(read_env=False, read_file=False)
    assert (defaults.app_host, defaults.app_port, defaults.app_language) == ("127.0.0.1", 17860, "en")


def test_start_app_serves_on_loopback(store_config):
    config = store_config.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    running = start_app(config, port=free_port(), timeout_s=0.5)
    try:
        assert running.url.startswith("http://127.0.0.1:")
        response = httpx.get(running.url, timeout=10)
        assert response.status_code == 200
        assert "onml" in response.text
    finally:
        running.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url, timeout=2)
