"""Serve one batch of request messages: decode, one forward pass, encode.

This is the whole per-batch work of the inference job, kept free of Flink so that it can
be tested and measured on its own. The job calls :func:`serve_batch` once for every
batch that the Java ``MicroBatcher`` operator releases.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from shared.wire import Request, WireError, decode_request, encode_dead_letter, encode_results, pixels_to_array

# The stage named in the dead letters that the inference job writes.
DECODE_STAGE = "inference-decode"
# The forward pass runs in chunks of this many images: the model's working set then stays
# in the CPU caches. One ONNX Runtime thread ran cnn-tiny-bn-v1 at 128 k images/s in
# batches of 64 and 103 k in batches of 256 (benchmarks/results/compare.json, ceiling).
FORWARD_CHUNK = 64


class Model(Protocol):
    version: int

    def predict(self, images: np.ndarray) -> np.ndarray: ...


def decode_batch(messages: Sequence[str], source_topic: str) -> tuple[list[Request], list[str]]:
    """Split messages into decoded requests and dead letters, each list in arrival order."""
    requests: list[Request] = []
    dead_letters: list[str] = []
    for message in messages:
        try:
            requests.append(decode_request(message))
        except WireError as error:
            dead_letters.append(encode_dead_letter(source_topic, DECODE_STAGE, error.reason, message).decode())
    return requests, dead_letters


def predict_batch(model: Model, requests: Sequence[Request]) -> list[str]:
    """Run one forward pass over the requests and return their result messages, in order."""
    if not requests:
        return []
    images = pixels_to_array([request.pixels for request in requests])
    if len(images) <= FORWARD_CHUNK:
        probabilities = model.predict(images)
    else:
        probabilities = np.concatenate([model.predict(images[start:start + FORWARD_CHUNK])
                                        for start in range(0, len(images), FORWARD_CHUNK)])
    return encode_results(requests, probabilities, model.version)


def serve_batch(messages: Sequence[str], model: Model, source_topic: str) -> tuple[list[str], list[str]]:
    """Decode, predict and encode one batch; return ``(results, dead_letters)``."""
    requests, dead_letters = decode_batch(messages, source_topic)
    return predict_batch(model, requests), dead_letters
