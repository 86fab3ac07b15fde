"""Tests of OnlineLearner: prequential evaluation, optimizer steps and checkpointed state."""

from __future__ import annotations

import copy
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.preprocess import to_model_input
from training_job.learner import OnlineLearner

ARCHITECTURE = "cnn-small-v1"
ALL_ARCHITECTURES = ["cnn-small-v1", "cnn-tiny-bn-v1"]


def square_digits(count: int, rng: np.random.Generator, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return a separable data set: class k is a bright 6×4 square at its own place, over dim noise."""
    if label is None:
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
    else:
        labels = np.full(count, label, dtype=np.uint8)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for index, digit in enumerate(labels):
        top = 4 + (digit // 5) * 12
        left = 1 + (digit % 5) * 5
        images[index, top:top + 6, left:left + 4] = 255
    return images, labels


def predictions(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(to_model_input(images)).argmax(dim=1).numpy()


def parameters_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_new_learner_has_no_accuracy():
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)

    assert learner.prequential_accuracy is None
    assert learner.samples_seen == 0
    assert learner.batches_seen == 0


def test_learn_batch_changes_weights(rng):
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)
    before = copy.deepcopy(learner.model)
    images, labels = square_digits(32, rng)

    learner.learn_batch(images, labels)

    for (name, old), new in zip(before.state_dict().items(), learner.model.state_dict().values()):
        assert not torch.equal(old, new), name


def test_learn_batch_reduces_batch_loss(rng):
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)
    images, labels = square_digits(32, rng)

    first = learner.learn_batch(images, labels)["loss"]
    second = learner.learn_batch(images, labels)["loss"]

    assert second < first


def test_accuracy_uses_predictions_before_step(rng):
    # Every label is 3 and the learning rate is high, so one step changes how many of
    # these images the model gets right. The first assert checks that it did.
    learner = OnlineLearner(ARCHITECTURE, 1e-2, 100, seed=0)
    images, labels = square_digits(32, rng, label=3)
    model_before = copy.deepcopy(learner.model)
    hits_before = int((predictions(model_before, images) == labels).sum())

    result = learner.learn_batch(images, labels)
    hits_after = int((predictions(learner.model, images) == labels).sum())

    assert hits_after != hits_before  # otherwise this test could not tell the two apart
    assert result["hits"] == hits_before
    assert result["size"] == 32
    assert learner.prequential_accuracy == hits_before / 32


def test_batch_result_reports_loss(rng):
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)
    images, labels = square_digits(16, rng)

    result = learner.learn_batch(images, labels)

    assert math.isfinite(result["loss"])
    assert result["loss"] > 0
    assert result["loss"] == learner.last_loss


def test_counters_count_samples_and_batches(rng):
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)

    for size in (32, 32, 5):
        learner.learn_batch(*square_digits(size, rng))

    assert learner.samples_seen == 69
    assert learner.batches_seen == 3


def test_accuracy_window_keeps_last_samples(rng):
    learner = OnlineLearner(ARCHITECTURE, 1e-2, 8, seed=0)
    learner.learn_batch(*square_digits(32, rng, label=3))
    images, labels = square_digits(8, rng, label=3)
    expected_hits = int((predictions(copy.deepcopy(learner.model), images) == labels).sum())

    learner.learn_batch(images, labels)

    assert learner.prequential_accuracy == expected_hits / 8


@pytest.mark.parametrize("architecture", ALL_ARCHITECTURES)
def test_separable_stream_is_learned(rng, architecture):
    learner = OnlineLearner(architecture, 1e-3, 160, seed=0)

    for _ in range(25):
        learner.learn_batch(*square_digits(32, rng))

    # The window covers the last five batches of 32.
    assert learner.prequential_accuracy >= 0.95
    assert learner.samples_seen == 800


def test_snapshot_metadata_fields(rng):
    learner = OnlineLearner(ARCHITECTURE, 0.002, 100)
    learner.learn_batch(*square_digits(10, rng))

    record = learner.snapshot_metadata()

    assert record["architecture"] == ARCHITECTURE
    assert record["samples_seen"] == 10
    assert record["batches_seen"] == 1
    assert record["accuracy"] == learner.prequential_accuracy
    assert record["accuracy_window"] == 10
    assert record["loss"] == learner.last_loss
    assert record["learning_rate"] == 0.002


def test_same_seed_same_initial_weights():
    assert parameters_equal(OnlineLearner(ARCHITECTURE, 1e-3, 10, seed=5).model,
                            OnlineLearner(ARCHITECTURE, 1e-3, 10, seed=5).model)


def test_other_seed_other_weights():
    assert not parameters_equal(OnlineLearner(ARCHITECTURE, 1e-3, 10, seed=5).model,
                                OnlineLearner(ARCHITECTURE, 1e-3, 10, seed=6).model)


# Checkpointed state


def test_state_round_trip_restores_counters(rng):
    source = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=0)
    for _ in range(3):
        source.learn_batch(*square_digits(16, rng))

    target = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=1)
    target.load_state_bytes(source.state_bytes())

    assert parameters_equal(source.model, target.model)
    assert target.samples_seen == 48
    assert target.batches_seen == 3
    assert target.prequential_accuracy == source.prequential_accuracy


@pytest.mark.parametrize("architecture", ALL_ARCHITECTURES)
def test_state_round_trip_continues_identically(rng, architecture):
    # For the batch-norm architecture this also covers the running statistics, which are
    # buffers rather than parameters.
    source = OnlineLearner(architecture, 1e-3, 100, seed=0)
    for _ in range(3):
        source.learn_batch(*square_digits(16, rng))
    target = OnlineLearner(architecture, 1e-3, 100, seed=1)
    target.load_state_bytes(source.state_bytes())
    images, labels = square_digits(16, rng)

    source_result = source.learn_batch(images, labels)
    target_result = target.learn_batch(images, labels)

    assert target_result == source_result
    assert parameters_equal(source.model, target.model)
    assert target.prequential_accuracy == source.prequential_accuracy
    assert target.samples_seen == source.samples_seen


def test_state_restores_optimizer_moments(rng):
    # A fresh Adam optimizer takes a different first step than one with 3 steps of
    # history, so only a restored optimizer makes the next step match.
    source = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=0)
    for _ in range(3):
        source.learn_batch(*square_digits(16, rng))
    weights_only = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=1)
    weights_only.model.load_state_dict(source.model.state_dict())
    restored = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=1)
    restored.load_state_bytes(source.state_bytes())
    images, labels = square_digits(16, rng)

    for learner in (source, weights_only, restored):
        learner.learn_batch(images, labels)

    assert parameters_equal(source.model, restored.model)
    assert not parameters_equal(source.model, weights_only.model)


def test_state_of_new_learner_round_trips():
    source = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=0)
    target = OnlineLearner(ARCHITECTURE, 1e-3, 100, seed=1)

    target.load_state_bytes(source.state_bytes())

    assert parameters_equal(source.model, target.model)
    assert target.prequential_accuracy is None
    assert target.samples_seen == 0


class _OpensFile:
    """A pickle payload that creates ``path`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_state_bytes_refuse_code(tmp_path):
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save({"model": _OpensFile(marker)}, buffer)
    learner = OnlineLearner(ARCHITECTURE, 1e-3, 100)

    with pytest.raises(pickle.UnpicklingError):
        learner.load_state_bytes(buffer.getvalue())

    assert not marker.exists()


def test_state_of_other_architecture_rejected():
    from training_job.learner import ArchitectureMismatchError, OnlineLearner

    small = OnlineLearner("cnn-small-v1", 1e-3, 100, seed=0)
    tiny = OnlineLearner("cnn-tiny-bn-v1", 1e-3, 100, seed=0)
    before = {name: tensor.clone() for name, tensor in tiny.model.state_dict().items()}

    with pytest.raises(ArchitectureMismatchError):
        tiny.load_state_bytes(small.state_bytes())

    after = tiny.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert tiny.samples_seen == 0
