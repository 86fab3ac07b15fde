"""Tests of load_model and SnapshotWatcher against a real redis-server."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import inference_job.predictor as predictor
from inference_job.predictor import (
    LoadedModel,
    OnnxModel,
    SnapshotWatcher,
    TorchModel,
    export_onnx_in_child,
    load_model,
)
from shared.model import build_model
from shared.preprocess import to_model_input

ARCHITECTURE = "cnn-small-v1"
PICKUP_TIMEOUT_S = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def publish_model(store, seed: int, with_onnx: bool = True) -> tuple[int, torch.nn.Module]:
    """Publish an untrained model with the given seed and return its version and the module.

    ``with_onnx=False`` publishes it as the training job did before snapshots carried an ONNX model.
    """
    model = build_model(ARCHITECTURE, seed=seed)
    version = store.publish(model.state_dict(), {"architecture": ARCHITECTURE, "samples_seen": seed, "accuracy": None},
                            with_onnx=with_onnx)
    return version, model


def torch_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(to_model_input(images)), dim=1).numpy()


def corrupt_onnx(redis_client, store, version: int) -> None:
    key = store._onnx_key(version)
    onnx_model = bytearray(redis_client.get(key))
    onnx_model[-1] ^= 0xFF
    redis_client.set(key, bytes(onnx_model))


def corrupt_weights(redis_client, store, version: int) -> None:
    key = store._weights_key(version)
    weights = bytearray(redis_client.get(key))
    weights[-1] ^= 0xFF
    redis_client.set(key, bytes(weights))


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)


@pytest.fixture()
def watcher_factory():
    """Return ``make(store, poll_interval_s)``. Every watcher it makes is stopped after the test."""
    watchers: list[SnapshotWatcher] = []

    def make(store, poll_interval_s: float = 0.05) -> SnapshotWatcher:
        watcher = SnapshotWatcher(store, poll_interval_s)
        watchers.append(watcher)
        return watcher

    yield make
    for watcher in watchers:
        watcher.stop()


# load_model


def test_loaded_model_matches_source(make_store, images):
    store = make_store()
    version, source = publish_model(store, seed=3)
    source.eval()

    loaded = load_model(store)
    with torch.no_grad():
        expected = torch.softmax(source(to_model_input(images)), dim=1).numpy()

    assert loaded.version == version
    assert np.allclose(loaded.predict(images), expected, atol=1e-6, rtol=0)


def test_loaded_model_differs_from_other_seed(make_store, images):
    # The comparison above would also pass if both models were equal by chance.
    store = make_store()
    publish_model(store, seed=3)
    other = build_model(ARCHITECTURE, seed=4).eval()

    loaded = load_model(store)
    with torch.no_grad():
        other_probabilities = torch.softmax(other(to_model_input(images)), dim=1).numpy()

    assert not np.allclose(loaded.predict(images), other_probabilities, atol=1e-6, rtol=0)


def test_predict_returns_probabilities(make_store, images):
    store = make_store()
    publish_model(store, seed=3)

    probabilities = load_model(store).predict(images)

    assert probabilities.shape == (6, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


def test_load_model_by_version(make_store):
    store = make_store()
    first, _ = publish_model(store, seed=1)
    publish_model(store, seed=2)

    loaded = load_model(store, first)

    assert loaded.version == first
    assert loaded.metadata["samples_seen"] == 1


def test_loaded_model_uses_onnx_runtime(make_store):
    store = make_store()
    publish_model(store, seed=1)

    loaded = load_model(store)

    assert isinstance(loaded, OnnxModel)
    assert loaded.runtime.startswith("onnxruntime ")


def test_predict_accepts_flat_images(make_store, images):
    store = make_store()
    publish_model(store, seed=3)
    loaded = load_model(store)

    flat = loaded.predict(images.reshape(len(images), 784))

    assert np.array_equal(flat, loaded.predict(images))


def test_predict_rejects_float_images(make_store, images):
    store = make_store()
    publish_model(store, seed=3)

    with pytest.raises(TypeError):
        load_model(store).predict(images.astype(np.float32))


def test_old_snapshot_served_with_torch(make_store, images):
    store = make_store()
    version, source = publish_model(store, seed=3, with_onnx=False)

    loaded = load_model(store)

    assert isinstance(loaded, TorchModel)
    assert loaded.version == version
    assert loaded.runtime.startswith("torch ")
    assert not loaded.module.training
    assert np.allclose(loaded.predict(images), torch_probabilities(source, images), atol=1e-6, rtol=0)


def test_loaded_model_built_from_module(images):
    # Other modules build the torch-backed model directly, under its earlier name.
    module = build_model(ARCHITECTURE, seed=3).eval()

    loaded = LoadedModel(7, {"architecture": ARCHITECTURE}, module)

    assert loaded.version == 7
    assert loaded.runtime.startswith("torch ")
    assert np.allclose(loaded.predict(images), torch_probabilities(module, images), atol=1e-6, rtol=0)


def test_unfitting_weights_fail_at_load(make_store):
    # publish() cannot export weights that do not fit the architecture, so it stores them
    # without an ONNX model, and loading them fails as it did before ONNX models existed.
    store = make_store()
    version = store.publish({"unexpected": torch.zeros(2)},
                            {"architecture": ARCHITECTURE, "samples_seen": 0, "accuracy": None})

    assert "onnx_sha256" not in store.metadata(version)
    with pytest.raises(RuntimeError):
        load_model(store, version)


def test_old_snapshot_exported_in_child(make_store, images):
    store = make_store()
    version, source = publish_model(store, seed=3, with_onnx=False)

    loaded = load_model(store, export_python=sys.executable)

    assert isinstance(loaded, OnnxModel)
    assert loaded.version == version
    assert np.allclose(loaded.predict(images), torch_probabilities(source, images), atol=1e-6, rtol=0)


def test_child_export_failure_raises(make_store):
    store = make_store()
    version = store.publish({"unexpected": torch.zeros(2)},
                            {"architecture": ARCHITECTURE, "samples_seen": 0, "accuracy": None})

    with pytest.raises(RuntimeError) as caught:
        export_onnx_in_child(store.load_bytes(version), sys.executable)

    assert str(version) in str(caught.value)
    assert "exit status" in str(caught.value)


def test_onnx_and_torch_serving_agree(make_store, images):
    store = make_store()
    model = build_model(ARCHITECTURE, seed=5)
    metadata = {"architecture": ARCHITECTURE, "samples_seen": 0, "accuracy": None}
    with_onnx = store.publish(model.state_dict(), metadata)
    without_onnx = store.publish(model.state_dict(), metadata, with_onnx=False)

    onnx_probabilities = load_model(store, with_onnx).predict(images)
    torch_served = load_model(store, without_onnx).predict(images)

    assert np.allclose(onnx_probabilities, torch_served, atol=1e-6, rtol=0)


def test_serving_does_not_import_torch(redis_config):
    # In PyFlink's thread mode torch hung inside the TaskManager JVM, so the inference job
    # must serve both kinds of snapshot without importing it.
    from shared.store import ModelStore

    store = ModelStore.from_config(redis_config.replace(model_key_prefix="test:no-torch"))
    metadata = {"architecture": ARCHITECTURE, "samples_seen": 0, "accuracy": None}
    version = store.publish(build_model(ARCHITECTURE, seed=1).state_dict(), metadata)
    old_style = store.publish(build_model(ARCHITECTURE, seed=2).state_dict(), metadata, with_onnx=False)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from inference_job.predictor import load_model\n"
        "from shared.store import ModelStore, connect_redis\n"
        "from shared.config import load_config\n"
        f"config = load_config(overrides={{'redis_port': {redis_config.redis_port}, "
        f"'redis_password': {redis_config.redis_secret()!r}}}, read_env=False, read_file=False)\n"
        "store = ModelStore(connect_redis(config), 'test:no-torch')\n"
        f"model = load_model(store, {version})\n"
        "probabilities = model.predict(np.zeros((3, 28, 28), dtype=np.uint8))\n"
        "assert probabilities.shape == (3, 10), probabilities.shape\n"
        f"exported = load_model(store, {old_style}, export_python=sys.executable)\n"
        "assert exported.predict(np.zeros((3, 28, 28), dtype=np.uint8)).shape == (3, 10)\n"
        "assert 'torch' not in sys.modules, 'serving a snapshot imported torch'\n"
    )

    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=60)

    assert completed.returncode == 0, completed.stderr


# SnapshotWatcher.poll_once


def test_poll_of_empty_store(make_store, watcher_factory):
    watcher = watcher_factory(make_store())

    assert watcher.poll_once() is False
    assert watcher.current() is None


def test_poll_swaps_to_newer_version(make_store, watcher_factory):
    store = make_store()
    watcher = watcher_factory(store)
    first, _ = publish_model(store, seed=1)
    assert watcher.poll_once() is True
    assert watcher.current().version == first

    second, _ = publish_model(store, seed=2)

    assert watcher.poll_once() is True
    assert watcher.current().version == second


def test_poll_ignores_same_version(make_store, watcher_factory):
    store = make_store()
    watcher = watcher_factory(store)
    publish_model(store, seed=1)
    watcher.poll_once()
    loaded = watcher.current()

    assert watcher.poll_once() is False
    assert watcher.current() is loaded


def test_poll_refuses_corrupt_latest(make_store, watcher_factory, redis_client, images, caplog):
    store = make_store()
    watcher = watcher_factory(store)
    first, source = publish_model(store, seed=1)
    watcher.poll_once()
    second, _ = publish_model(store, seed=2)
    corrupt_weights(redis_client, store, second)

    with caplog.at_level(logging.ERROR):
        swapped = watcher.poll_once()

    assert swapped is False
    assert watcher.current().version == first
    assert any(record.levelno == logging.ERROR and str(second) in record.getMessage() for record in caplog.records)
    with torch.no_grad():
        expected = torch.softmax(source.eval()(to_model_input(images)), dim=1).numpy()
    assert np.allclose(watcher.current().predict(images), expected, atol=1e-6, rtol=0)


def test_poll_skips_refused_version(make_store, watcher_factory, redis_client, caplog):
    store = make_store()
    watcher = watcher_factory(store)
    publish_model(store, seed=1)
    watcher.poll_once()
    second, _ = publish_model(store, seed=2)
    corrupt_weights(redis_client, store, second)
    watcher.poll_once()
    caplog.clear()

    with caplog.at_level(logging.ERROR):
        swapped = watcher.poll_once()

    assert swapped is False
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_poll_after_refused_takes_next(make_store, watcher_factory, redis_client):
    store = make_store()
    watcher = watcher_factory(store)
    publish_model(store, seed=1)
    watcher.poll_once()
    second, _ = publish_model(store, seed=2)
    corrupt_weights(redis_client, store, second)
    watcher.poll_once()

    third, _ = publish_model(store, seed=3)

    assert watcher.poll_once() is True
    assert watcher.current().version == third


def test_poll_survives_unbuildable_snapshot(make_store, watcher_factory):
    store = make_store()
    watcher = watcher_factory(store)
    first, model = publish_model(store, seed=1)
    watcher.poll_once()
    store.publish(model.state_dict(), {"architecture": "no-such-architecture", "samples_seen": 0, "accuracy": None})

    swapped = watcher.poll_once()

    assert swapped is False
    assert watcher.current().version == first


def test_poll_refuses_corrupt_onnx(make_store, watcher_factory, redis_client, images):
    store = make_store()
    watcher = watcher_factory(store)
    first, source = publish_model(store, seed=1)
    watcher.poll_once()
    second, _ = publish_model(store, seed=2)
    corrupt_onnx(redis_client, store, second)

    swapped = watcher.poll_once()

    assert swapped is False
    assert watcher.current().version == first
    assert np.allclose(watcher.current().predict(images), torch_probabilities(source, images), atol=1e-6, rtol=0)


def test_poll_exports_old_snapshot_in_child(make_store, watcher_factory, images):
    store = make_store()
    watcher = SnapshotWatcher(store, 0.05, export_python=sys.executable)
    version, source = publish_model(store, seed=1, with_onnx=False)

    assert watcher.poll_once() is True

    assert watcher.current().version == version
    assert watcher.current().runtime.startswith("onnxruntime ")
    assert np.allclose(watcher.current().predict(images), torch_probabilities(source, images), atol=1e-6, rtol=0)


def test_poll_survives_unloadable_onnx(make_store, watcher_factory, caplog):
    # The checksum matches, but ONNX Runtime cannot parse the bytes.
    store = make_store()
    watcher = watcher_factory(store)
    first, model = publish_model(store, seed=1)
    watcher.poll_once()
    second = store.publish(model.state_dict(), {"architecture": ARCHITECTURE, "samples_seen": 0, "accuracy": None},
                           onnx_model=b"not an ONNX graph")

    with caplog.at_level(logging.ERROR):
        swapped = watcher.poll_once()

    assert swapped is False
    assert watcher.current().version == first
    assert any(str(second) in record.getMessage() for record in caplog.records if record.levelno == logging.ERROR)


def test_poll_serves_old_snapshot_with_torch(make_store, watcher_factory, images):
    store = make_store()
    watcher = watcher_factory(store)
    version, source = publish_model(store, seed=1, with_onnx=False)

    assert watcher.poll_once() is True

    assert watcher.current().version == version
    assert watcher.current().runtime.startswith("torch ")
    assert np.allclose(watcher.current().predict(images), torch_probabilities(source, images), atol=1e-6, rtol=0)


# SnapshotWatcher thread


def test_start_loads_existing_snapshot(make_store, watcher_factory):
    store = make_store()
    version, _ = publish_model(store, seed=1)

    watcher = watcher_factory(store, poll_interval_s=60.0).start()

    assert watcher.current().version == version


def test_start_loads_on_watcher_thread(make_store, watcher_factory, monkeypatch):
    # In PyFlink's thread mode importing a pybind11 module such as onnxruntime hung on the
    # operator's thread, so even the first load must run on the watcher's own thread.
    store = make_store()
    publish_model(store, seed=1)
    loading_threads = []
    real_load_model = predictor.load_model

    def recording_load_model(*args, **kwargs):
        loading_threads.append(threading.current_thread())
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(predictor, "load_model", recording_load_model)

    watcher = watcher_factory(store, poll_interval_s=60.0).start()

    assert watcher.current() is not None
    assert loading_threads == [watcher._thread]


def test_thread_picks_up_new_version(make_store, watcher_factory):
    store = make_store()
    first, _ = publish_model(store, seed=1)
    watcher = watcher_factory(store, poll_interval_s=0.05).start()
    assert watcher.current().version == first

    second, _ = publish_model(store, seed=2)
    deadline = time.monotonic() + PICKUP_TIMEOUT_S
    while watcher.current().version != second and time.monotonic() < deadline:
        time.sleep(0.02)

    assert watcher.current().version == second


def test_thread_starts_on_empty_store(make_store, watcher_factory):
    store = make_store()
    watcher = watcher_factory(store, poll_interval_s=0.05).start()
    assert watcher.current() is None

    version, _ = publish_model(store, seed=1)
    deadline = time.monotonic() + PICKUP_TIMEOUT_S
    while watcher.current() is None and time.monotonic() < deadline:
        time.sleep(0.02)

    assert watcher.current() is not None
    assert watcher.current().version == version


def test_stop_ends_thread(make_store):
    store = make_store()
    watcher = SnapshotWatcher(store, 0.05).start()

    watcher.stop()

    assert not watcher._thread.is_alive()


def test_torch_runtime_ignores_onnx_model(make_store, images):
    store = make_store()
    version, module = publish_model(store, seed=3)

    loaded = load_model(store, version, runtime="torch")

    assert isinstance(loaded, TorchModel)
    np.testing.assert_allclose(loaded.predict(images), torch_probabilities(module, images), atol=1e-5)


def test_unknown_runtime_rejected(make_store):
    with pytest.raises(ValueError, match="runtime"):
        load_model(make_store(), runtime="tensorflow")


def test_wait_for_first_snapshot(make_store, watcher_factory):
    store = make_store()
    watcher = watcher_factory(store, poll_interval_s=0.05).start()
    assert watcher.wait_for_model(0.01) is None

    version, _ = publish_model(store, seed=4)
    loaded = watcher.wait_for_model(PICKUP_TIMEOUT_S)

    assert loaded is not None
    assert loaded.version == version
