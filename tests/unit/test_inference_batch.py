"""Tests of the inference job's per-batch work: decode, forward pass in chunks, encode."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from inference_job import batch as batch_module
from inference_job.batch import DECODE_STAGE, serve_batch, decode_batch, predict_batch
from shared.wire import decode_dead_letter, decode_result, encode_request, encode_result

TOPIC = "onml.requests"


class RecordingModel:
    """A model whose class is the image's first pixel modulo 10; it records each call's batch size."""

    version = 7

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        probabilities = np.full((len(images), 10), 0.01, dtype=np.float32)
        probabilities[np.arange(len(images)), images.reshape(len(images), -1)[:, 0] % 10] = 0.91
        return probabilities


def request_messages(count: int) -> list[str]:
    return [encode_request(f"req-{n}", np.full(784, n, dtype=np.uint8), ts_ms=1000.0 + n).decode()
            for n in range(count)]


def test_serve_batch_keeps_order():
    model = RecordingModel()

    results, dead_letters = serve_batch(request_messages(5), model, TOPIC)

    decoded = [decode_result(message) for message in results]
    assert [result.id for result in decoded] == [f"req-{n}" for n in range(5)]
    assert [result.label for result in decoded] == [0, 1, 2, 3, 4]
    assert {result.model_version for result in decoded} == {7}
    assert {result.batch_size for result in decoded} == {5}
    assert [result.request_ts_ms for result in decoded] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert dead_letters == []


def test_malformed_messages_become_dead_letters():
    messages = request_messages(3)
    bad = ["not json", orjson.dumps({"v": 1, "id": "x", "ts": 1.0, "img": "AAAA"}).decode()]

    results, dead_letters = serve_batch([messages[0], bad[0], messages[1], bad[1], messages[2]],
                                         RecordingModel(), TOPIC)

    assert [decode_result(message).id for message in results] == ["req-0", "req-1", "req-2"]
    letters = [decode_dead_letter(message) for message in dead_letters]
    assert [letter["payload"] for letter in letters] == bad
    assert {letter["stage"] for letter in letters} == {DECODE_STAGE}
    assert {letter["source_topic"] for letter in letters} == {TOPIC}
    assert "not valid JSON" in letters[0]["reason"]
    assert "expected 784" in letters[1]["reason"]


def test_all_malformed_skips_forward_pass():
    model = RecordingModel()

    results, dead_letters = serve_batch(["{}", "[]"], model, TOPIC)

    assert results == []
    assert len(dead_letters) == 2
    assert model.calls == []


def test_forward_pass_in_chunks():
    model = RecordingModel()
    count = 2 * batch_module.FORWARD_CHUNK + 3
    requests, _ = decode_batch(request_messages(count), TOPIC)

    results = predict_batch(model, requests)

    assert model.calls == [batch_module.FORWARD_CHUNK, batch_module.FORWARD_CHUNK, 3]
    decoded = [decode_result(message) for message in results]
    assert [result.id for result in decoded] == [f"req-{n}" for n in range(count)]
    assert [result.label for result in decoded] == [n % 256 % 10 for n in range(count)]
    assert {result.batch_size for result in decoded} == {count}


def test_batch_encoder_matches_single_encoder():
    model = RecordingModel()
    requests, _ = decode_batch(request_messages(4), TOPIC)

    results = predict_batch(model, requests)

    probabilities = RecordingModel().predict(np.stack([np.frombuffer(r.pixels, np.uint8) for r in requests]))
    for message, request, probs in zip(results, requests, probabilities):
        single = orjson.loads(encode_result(request.id, int(probs.argmax()), probs, 7, request.ts_ms, 4))
        batched = orjson.loads(message)
        assert batched.pop("result_ts") == pytest.approx(single.pop("result_ts"), abs=5000)
        assert batched == single
