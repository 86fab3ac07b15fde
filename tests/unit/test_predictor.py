"""Tests of load_model and SnapshotWatcher against a real redis-server."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from inference_job.predictor import SnapshotWatcher, load_model
from shared.model import build_model
from shared.preprocess import to_model_input

ARCHITECTURE = "cnn-small-v1"
PICKUP_TIMEOUT_S = 5.0


def publish_model(store, seed: int) -> tuple[int, torch.nn.Module]:
    """Publish an untrained model with the given seed and return its version and the module."""
    model = build_model(ARCHITECTURE, seed=seed)
    version = store.publish(model.state_dict(), {"architecture": ARCHITECTURE, "samples_seen": seed, "accuracy": None})
    return version, model


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


def test_loaded_module_in_eval_mode(make_store):
    store = make_store()
    publish_model(store, seed=1)

    assert not load_model(store).module.training


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


# SnapshotWatcher thread


def test_start_loads_existing_snapshot(make_store, watcher_factory):
    store = make_store()
    version, _ = publish_model(store, seed=1)

    watcher = watcher_factory(store, poll_interval_s=60.0).start()

    assert watcher.current().version == version


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
