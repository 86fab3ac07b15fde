"""Client-side streams: the training stream, image requests, and reading results back."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from confluent_kafka import Consumer, Producer
from PIL import Image

from clients.kafka_io import poll_values
from shared.config import Config
from shared.preprocess import drawing_to_mnist
from shared.wire import Result, WireError, decode_result, encode_request, encode_training, now_ms

logger = logging.getLogger(__name__)


class RatePacer:
    """Keep a sender on a fixed schedule of ``rate_per_s`` items (None: as fast as possible)."""

    def __init__(self, rate_per_s: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate must be above 0 items/s, got {rate_per_s}")
        self._interval_s = None if rate_per_s is None else 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._start_s = clock()

    def wait_for(self, index: int) -> None:
        """Sleep until item ``index`` (0-based) is due."""
        if self._interval_s is None:
            return
        delay = self._start_s + index * self._interval_s - self._clock()
        if delay > 0.001:
            self._sleep(delay)


def drift_permutation(seed: int = 7) -> np.ndarray:
    """Return a fixed label permutation with no fixed point, used to simulate concept drift."""
    rng = np.random.default_rng(seed)
    while True:
        permutation = rng.permutation(10)
        if not np.any(permutation == np.arange(10)):
            return permutation


class DeliveryError(RuntimeError):
    """Messages were still undelivered when the producer's flush timed out."""


def _flush(producer: Producer, timeout_s: float = 60.0) -> None:
    undelivered = producer.flush(timeout_s)
    if undelivered:
        raise DeliveryError(f"{undelivered} messages were not delivered to Kafka within {timeout_s:.0f} s; "
                            "check that the broker runs ('onml stack status')")


def _produce(producer: Producer, topic: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value)
            return
        except BufferError:
            # The local queue is full: let librdkafka deliver some, then retry.
            producer.poll(0.05)


def stream_training(
    producer: Producer,
    config: Config,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    rate_per_s: float | None = None,
    epochs: int = 1,
    drift_at: int | None = None,
    limit: int | None = None,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Publish labelled images to the training topic, epoch after epoch, and return how many were sent.

    From sample ``drift_at`` on, labels pass through :func:`drift_permutation`, so the
    model must unlearn and relearn: its prequential accuracy dips and recovers.
    """
    permutation = drift_permutation()
    pacer = RatePacer(rate_per_s)
    run = uuid.uuid4().hex[:8]
    sent = 0
    total = len(labels) * epochs if limit is None else min(limit, len(labels) * epochs)
    while sent < total and not stop():
        index = sent % len(labels)
        label = int(labels[index])
        if drift_at is not None and sent >= drift_at:
            label = int(permutation[label])
        pacer.wait_for(sent)
        _produce(producer, config.training_topic, encode_training(f"{run}-{sent}", label, images[index]))
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            progress(1000)
    _flush(producer)
    progress(sent % 1000)
    return sent


@dataclass
class SentBatch:
    """The requests one sender published: request id → expected label (-1 when unknown) and send time."""

    run_id: str
    expected: dict[str, int] = field(default_factory=dict)
    sent_ms: dict[str, float] = field(default_factory=dict)


def send_requests(
    producer: Producer,
    config: Config,
    images: Iterable[np.ndarray],
    labels: Iterable[int] | None = None,
    *,
    rate_per_s: float | None = None,
    run_id: str | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> SentBatch:
    """Publish one request per image (uint8 28×28); ids are ``<run_id>-<n>``."""
    batch = SentBatch(run_id or uuid.uuid4().hex[:8])
    pacer = RatePacer(rate_per_s)
    label_iter = iter(labels) if labels is not None else None
    for n, image in enumerate(images):
        pacer.wait_for(n)
        request_id = f"{batch.run_id}-{n}"
        ts = now_ms()
        _produce(producer, config.request_topic, encode_request(request_id, image, ts))
        batch.expected[request_id] = int(next(label_iter)) if label_iter is not None else -1
        batch.sent_ms[request_id] = ts
        if n % 1000 == 999:
            producer.poll(0)
            progress(1000)
    _flush(producer)
    progress(len(batch.expected) % 1000)
    return batch


def load_png(path: str | Path) -> np.ndarray:
    """Read a PNG (any size, either polarity) and turn it into an MNIST-style 28×28 image."""
    with Image.open(path) as image:
        return drawing_to_mnist(image.convert("RGBA"))


@dataclass
class Collected:
    """Results read back for one :class:`SentBatch`."""

    results: dict[str, Result] = field(default_factory=dict)
    duplicates: int = 0
    foreign: int = 0
    malformed: int = 0

    def summary(self, sent: SentBatch) -> dict:
        answered = [self.results[i] for i in sent.expected if i in self.results]
        known = [(r, sent.expected[r.id]) for r in answered if sent.expected[r.id] >= 0]
        latencies = np.array([r.result_ts_ms - r.request_ts_ms for r in answered]) if answered else np.array([])
        versions: dict[int, int] = {}
        for result in answered:
            versions[result.model_version] = versions.get(result.model_version, 0) + 1
        latency_ms = {}
        if latencies.size:
            latency_ms = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
            latency_ms["max"] = float(latencies.max())
        return {
            "sent": len(sent.expected),
            "answered": len(answered),
            "missing": len(sent.expected) - len(answered),
            "duplicates": self.duplicates,
            "accuracy": (sum(r.label == label for r, label in known) / len(known)) if known else None,
            "latency_ms": latency_ms,
            "model_versions": dict(sorted(versions.items())),
        }


def collect_results(consumer: Consumer, sent: SentBatch, timeout_s: float,
                    progress: Callable[[int], None] = lambda _: None) -> Collected:
    """Read the results topic until every request of ``sent`` is answered or ``timeout_s`` passes."""
    collected = Collected()
    deadline = time.monotonic() + timeout_s
    prefix = sent.run_id + "-"
    for value in poll_values(consumer, deadline):
        try:
            result = decode_result(value)
        except WireError as error:
            collected.malformed += 1
            logger.warning("skipped a malformed result message: %s", error.reason)
            continue
        if not result.id.startswith(prefix) or result.id not in sent.expected:
            collected.foreign += 1
            continue
        if result.id in collected.results:
            collected.duplicates += 1
            continue
        collected.results[result.id] = result
        progress(1)
        if len(collected.results) == len(sent.expected):
            break
    return collected
