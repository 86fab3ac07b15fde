"""Tests of the model architectures and their ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from shared.model import (
    ARCHITECTURES,
    ONNX_INPUT,
    ONNX_OUTPUT,
    _verify_onnx,
    build_model,
    count_parameters,
    export_onnx,
)
from shared.preprocess import to_model_input
from training_job.learner import OnlineLearner

PARAMETERS = {"cnn-small-v1": 206_922, "cnn-tiny-bn-v1": 52_162}


def run_onnx(onnx_model: bytes, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: images})[0]


def torch_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(to_model_input(images)), dim=1).numpy()


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


def test_registry_matches_known_architectures():
    assert set(ARCHITECTURES) == set(PARAMETERS)


@pytest.mark.parametrize("architecture", sorted(PARAMETERS))
def test_parameter_count(architecture):
    assert count_parameters(build_model(architecture)) == PARAMETERS[architecture]


@pytest.mark.parametrize("architecture", sorted(PARAMETERS))
def test_output_shape(architecture, images):
    model = build_model(architecture, seed=0).eval()

    with torch.no_grad():
        logits = model(to_model_input(images))

    assert logits.shape == (7, 10)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError) as caught:
        build_model("no-such-architecture")

    assert "cnn-small-v1" in str(caught.value)


@pytest.mark.parametrize("architecture", sorted(PARAMETERS))
@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_matches_torch(architecture, batch, images):
    model = build_model(architecture, seed=2)

    probabilities = run_onnx(export_onnx(architecture, model.state_dict()), images[:batch])

    assert probabilities.shape == (batch, 10)
    assert probabilities.dtype == np.float32
    assert np.allclose(probabilities, torch_probabilities(model, images[:batch]), atol=1e-6, rtol=0)


def test_onnx_differs_for_other_weights(images):
    # The comparison above would also pass if the export ignored the weights.
    onnx_model = export_onnx("cnn-small-v1", build_model("cnn-small-v1", seed=2).state_dict())
    other = build_model("cnn-small-v1", seed=3)

    assert not np.allclose(run_onnx(onnx_model, images), torch_probabilities(other, images), atol=1e-6, rtol=0)


def test_onnx_of_trained_batch_norm_model(images):
    # After training steps the batch-norm running statistics differ from their initial
    # values; the export must use them as the model in eval mode does.
    learner = OnlineLearner("cnn-tiny-bn-v1", 1e-2, 100, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        learner.learn_batch(rng.integers(0, 256, size=(32, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=32))
    assert learner.model.training
    state = learner.model.state_dict()
    assert not torch.equal(state["features.1.running_mean"], torch.zeros(8))

    probabilities = run_onnx(export_onnx("cnn-tiny-bn-v1", state), images)

    assert learner.model.training
    assert np.allclose(probabilities, torch_probabilities(learner.model, images), atol=1e-5, rtol=0)


def test_onnx_probabilities_sum_to_one(images):
    onnx_model = export_onnx("cnn-tiny-bn-v1", build_model("cnn-tiny-bn-v1", seed=0).state_dict())

    probabilities = run_onnx(onnx_model, images)

    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


def test_export_rejects_other_architecture_weights():
    with pytest.raises(RuntimeError):
        export_onnx("cnn-tiny-bn-v1", build_model("cnn-small-v1", seed=0).state_dict())


def test_export_rejects_uint8_input_of_wrong_type():
    onnx_model = export_onnx("cnn-small-v1", build_model("cnn-small-v1", seed=0).state_dict())
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])

    with pytest.raises(Exception):
        session.run([ONNX_OUTPUT], {ONNX_INPUT: np.zeros((1, 28, 28), dtype=np.float32)})


def test_verify_rejects_mismatched_graph():
    onnx_model = export_onnx("cnn-small-v1", build_model("cnn-small-v1", seed=0).state_dict(), verify=False)

    with pytest.raises(RuntimeError) as caught:
        _verify_onnx(onnx_model, build_model("cnn-small-v1", seed=1).eval())

    assert "differs" in str(caught.value)
