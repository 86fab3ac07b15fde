"""The Gradio app's access to the running pipeline: Kafka requests and results, and the model store.

Nothing here imports Gradio, so the logic runs in unit tests without a browser:

- :class:`ResultRouter` owns the app's one long-lived consumer. A background thread reads
  the results and dead-letter topics, hands each result to the caller waiting for its
  request id, and keeps recent results for the dashboard.
- :class:`PipelineClient` sends a drawing as a request, waits for its result and, when
  none comes in time, finds out which part of the pipeline is down.
- :class:`ModelCache` loads stored snapshots read-only for the Compare tab.
- :class:`SnapshotHistory` remembers snapshot metadata that retention has since dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import redis
from confluent_kafka import OFFSET_END, KafkaError, KafkaException, Producer, TopicPartition

from clients.kafka_io import KafkaUnavailableError, make_consumer, make_producer
from clients.streams import send_requests
from inference_job.predictor import LoadedModel, load_model
from shared.config import Config, ConfigError
from shared.store import ModelStore, SnapshotCorruptError, SnapshotNotFoundError
from shared.wire import Result, WireError, decode_dead_letter, decode_result, now_ms

logger = logging.getLogger(__name__)

# How far back the router starts reading when the app starts, and how long it keeps
# results and dead letters for the dashboard.
DEFAULT_WINDOW_S = 300.0
# Upper bound on the results kept for the dashboard, whatever the request rate.
MAX_RECENT_RESULTS = 200_000
MAX_RECENT_DEAD_LETTERS = 10_000
# Seconds between queries of the dead-letter topic's offsets (its stored message count).
WATERMARK_INTERVAL_S = 10.0
# Seconds the diagnosis waits for Kafka to list its topics.
BROKER_PROBE_TIMEOUT_S = 3.0
# Seconds between the dashboard's attempts to reach Kafka while it is down.
DASHBOARD_RETRY_S = 30.0
# librdkafka repeats a connection failure every 50 to 1000 ms while a broker is down.
LIBRDKAFKA_LOG_INTERVAL_S = 30.0


class _RateLimit(logging.Filter):
    """Let one record through per ``interval_s``, counting the ones dropped in between."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._next = 0.0
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._dropped += 1
                return False
            if self._dropped:
                record.msg = f"{record.msg} ({self._dropped} similar librdkafka messages dropped)"
            self._dropped = 0
            self._next = now + self._interval_s
            return True


# The app's Kafka clients log here instead of writing librdkafka's lines to stderr.
librdkafka_logger = logging.getLogger("clients.app.librdkafka")
librdkafka_logger.addFilter(_RateLimit(LIBRDKAFKA_LOG_INTERVAL_S))


class BrokerUnreachableError(KafkaUnavailableError):
    """Kafka did not list its topics in time; ``reason`` is the short cause for the page."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"Kafka at {address} is unreachable: {reason}")
        self.reason = reason


def probe_broker(config: Config, timeout_s: float) -> None:
    """Raise :class:`BrokerUnreachableError` unless the broker lists its topics within ``timeout_s``."""
    producer = Producer({"bootstrap.servers": config.kafka_bootstrap, "logger": librdkafka_logger})
    try:
        producer.list_topics(timeout=timeout_s)
    except KafkaException as error:
        cause = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
        raise BrokerUnreachableError(config.kafka_bootstrap,
                                     f"no answer within {timeout_s:g} s, {cause}") from None


# What the pipeline returned, or why it did not.


@dataclass(frozen=True)
class Answer:
    """The result for one drawing, with the latency the app measured."""

    request_id: str
    label: int
    probabilities: list[float]
    model_version: int
    # From publishing the request to the app reading the result.
    round_trip_ms: float
    # From the request's timestamp to the inference job writing the result.
    pipeline_ms: float
    batch_size: int


@dataclass(frozen=True)
class Diagnosis:
    """The part of the pipeline found down: ``kafka``, ``redis``, ``no_snapshot`` or ``inference``."""

    component: str
    address: str = ""
    error: str = ""
    latest_version: int | None = None


class PipelineUnavailableError(RuntimeError):
    """A request got no result in time, or could not be sent. ``diagnosis`` names the part that is down."""

    def __init__(self, diagnosis: Diagnosis, timed_out: bool) -> None:
        super().__init__(f"pipeline unavailable: {diagnosis.component} {diagnosis.error}".strip())
        self.diagnosis = diagnosis
        self.timed_out = timed_out


# Reading the results and dead-letter topics


@dataclass(frozen=True)
class InferenceStats:
    """Results read over the last ``window_s`` seconds."""

    window_s: float
    count: int
    requests_per_s: float
    latency_ms: dict[str, float]
    # Results per second, oldest second first (len == window_s rounded up).
    per_second: list[int]


@dataclass(frozen=True)
class DeadLetterStats:
    """Stored dead letters (None until the first offset query) and recent ones by source and stage."""

    total: int | None
    window_s: float
    recent: dict[tuple[str, str], int]


class _Waiter:
    __slots__ = ("event", "result", "received_ms")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Result | None = None
        self.received_ms = 0.0


class ResultRouter:
    """Read the results and dead-letter topics on one thread and route results by request id.

    The consumer is used by the router's thread only, so callers never share it. Callers
    register a request id with :meth:`expect` before sending, then block in :meth:`wait`.
    """

    def __init__(self, consumer: Any, result_topic: str, dead_letter_topic: str,
                 window_s: float = DEFAULT_WINDOW_S, clock_ms: Callable[[], float] = now_ms) -> None:
        self._consumer = consumer
        self._result_topic = result_topic
        self._dead_letter_topic = dead_letter_topic
        self._window_ms = window_s * 1000.0
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        # (result_ts_ms, latency_ms) of recent results, oldest first.
        self._recent: deque[tuple[float, float]] = deque(maxlen=MAX_RECENT_RESULTS)
        # (ts_ms, source_topic, stage) of recent dead letters, oldest first.
        self._dead_letters: deque[tuple[float, str, str]] = deque(maxlen=MAX_RECENT_DEAD_LETTERS)
        self._dead_letter_total: int | None = None
        self._dead_letter_partitions: list[TopicPartition] = []
        self.malformed = 0
        self.last_error: str | None = None
        self._errors_logged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="app-result-router", daemon=True)

    # Lifecycle

    def start(self, timeout_s: float = 10.0) -> "ResultRouter":
        """Assign both topics from the start of the recent window and start the reading thread."""
        start_ms = int(self._clock_ms() - self._window_ms)
        partitions = []
        for topic in (self._result_topic, self._dead_letter_topic):
            partitions.extend(self._partitions_from(topic, start_ms, timeout_s))
        self._dead_letter_partitions = [TopicPartition(p.topic, p.partition)
                                        for p in partitions if p.topic == self._dead_letter_topic]
        self._consumer.assign(partitions)
        self._thread.start()
        logger.info("app reads %s and %s from %.0f s ago", self._result_topic, self._dead_letter_topic,
                    self._window_ms / 1000.0)
        return self

    def _partitions_from(self, topic: str, start_ms: int, timeout_s: float) -> list[TopicPartition]:
        metadata = self._consumer.list_topics(topic, timeout=timeout_s)
        topic_metadata = metadata.topics.get(topic)
        if topic_metadata is None or topic_metadata.error is not None:
            raise KafkaUnavailableError(f"topic {topic!r} not found; run 'onml stack up' to create it")
        wanted = [TopicPartition(topic, partition, start_ms) for partition in topic_metadata.partitions]
        found = self._consumer.offsets_for_times(wanted, timeout=timeout_s)
        # -1: no message at or after start_ms, so start at the end.
        return [TopicPartition(topic, p.partition, p.offset if p.offset >= 0 else OFFSET_END) for p in found]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()

    # Waiting for results

    def expect(self, request_id: str) -> None:
        """Register ``request_id`` so its result is kept; call before sending the request."""
        with self._lock:
            self._waiters[request_id] = _Waiter()

    def forget(self, request_id: str) -> None:
        """Remove the registration of a request that was never sent."""
        with self._lock:
            self._waiters.pop(request_id, None)

    def wait(self, request_id: str, timeout_s: float) -> tuple[Result, float] | None:
        """Return the result for ``request_id`` and the time it was read (ms), or None after ``timeout_s``.

        The registration is removed either way.
        """
        with self._lock:
            waiter = self._waiters.get(request_id)
        if waiter is None:
            raise KeyError(f"request id {request_id!r} was not registered with expect()")
        try:
            if not waiter.event.wait(max(0.0, timeout_s)):
                return None
            return waiter.result, waiter.received_ms
        finally:
            with self._lock:
                self._waiters.pop(request_id, None)

    # Statistics for the dashboard

    def inference_stats(self, window_s: float | None = None) -> InferenceStats:
        window_ms = self._window_ms if window_s is None else window_s * 1000.0
        now = self._clock_ms()
        with self._lock:
            recent = [entry for entry in self._recent if entry[0] >= now - window_ms]
        seconds = int(np.ceil(window_ms / 1000.0))
        per_second = [0] * seconds
        for result_ts, _ in recent:
            age = int((now - result_ts) // 1000)
            if 0 <= age < seconds:
                per_second[seconds - 1 - age] += 1
        latency_ms: dict[str, float] = {}
        if recent:
            latencies = np.array([latency for _, latency in recent])
            latency_ms = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
        return InferenceStats(window_ms / 1000.0, len(recent), len(recent) / (window_ms / 1000.0),
                              latency_ms, per_second)

    def dead_letter_stats(self) -> DeadLetterStats:
        now = self._clock_ms()
        recent: dict[tuple[str, str], int] = {}
        with self._lock:
            for ts, source, stage in self._dead_letters:
                if ts >= now - self._window_ms:
                    recent[(source, stage)] = recent.get((source, stage), 0) + 1
            total = self._dead_letter_total
        return DeadLetterStats(total, self._window_ms / 1000.0, recent)

    # The reading thread

    def _run(self) -> None:
        next_watermarks = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_watermarks:
                    self._refresh_dead_letter_total()
                    next_watermarks = time.monotonic() + WATERMARK_INTERVAL_S
                # consume() waits for a full batch or its timeout, which would delay a lone
                # result by up to 0.2 s, so wait for the first message with poll() instead.
                first = self._consumer.poll(0.2)
                if first is not None:
                    self.handle([first, *self._consumer.consume(499, timeout=0)])
            except Exception as error:  # noqa: BLE001 - the thread must outlive broker outages
                self._note_error(f"reading the results topic failed: {error!r}")
                self._stop.wait(1.0)

    def handle(self, messages: Iterable[Any]) -> None:
        """Route a batch of consumed messages; public so tests can feed messages without a broker."""
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._note_error(f"consumer error: {error}")
                continue
            if message.topic() == self._dead_letter_topic:
                self._handle_dead_letter(message.value())
            else:
                self._handle_result(message.value())

    def _handle_result(self, value: bytes) -> None:
        received_ms = self._clock_ms()
        try:
            result = decode_result(value)
        except WireError as error:
            self.malformed += 1
            if self.malformed <= 10 or self.malformed % 1000 == 0:
                logger.warning("skipped malformed result message (%d so far): %s", self.malformed, error.reason)
            return
        with self._lock:
            self._recent.append((result.result_ts_ms, result.result_ts_ms - result.request_ts_ms))
            self._trim(self._recent, received_ms)
            waiter = self._waiters.get(result.id)
            if waiter is not None and not waiter.event.is_set():
                waiter.result = result
                waiter.received_ms = received_ms
                waiter.event.set()

    def _handle_dead_letter(self, value: bytes) -> None:
        try:
            letter = decode_dead_letter(value)
        except WireError:
            source, stage, ts = "?", "?", self._clock_ms()
        else:
            source, stage = letter["source_topic"], letter["stage"]
            ts = letter.get("ts") if isinstance(letter.get("ts"), (int, float)) else self._clock_ms()
        with self._lock:
            self._dead_letters.append((float(ts), source, stage))
            self._trim(self._dead_letters, self._clock_ms())

    def _trim(self, entries: deque, now: float) -> None:
        while entries and entries[0][0] < now - self._window_ms:
            entries.popleft()

    def _refresh_dead_letter_total(self) -> None:
        total = 0
        for partition in self._dead_letter_partitions:
            low, high = self._consumer.get_watermark_offsets(partition, timeout=1.0)
            total += max(0, high - low)
        with self._lock:
            self._dead_letter_total = total

    def _note_error(self, message: str) -> None:
        self.last_error = message
        self._errors_logged += 1
        # The same broker outage repeats every poll: log the first few, then one in 100.
        if self._errors_logged <= 5 or self._errors_logged % 100 == 0:
            logger.warning("%s (%d errors so far)", message, self._errors_logged)


# Sending drawings and diagnosing failures


class Router(Protocol):
    def expect(self, request_id: str) -> None: ...
    def forget(self, request_id: str) -> None: ...
    def wait(self, request_id: str, timeout_s: float) -> tuple[Result, float] | None: ...
    def inference_stats(self, window_s: float | None = None) -> InferenceStats: ...
    def dead_letter_stats(self) -> DeadLetterStats: ...
    def stop(self) -> None: ...


def connect_kafka(config: Config, timeout_s: float, window_s: float) -> tuple[Any, ResultRouter]:
    """Create the app's producer and start its result router; raise KafkaUnavailableError if Kafka is down."""
    probe_broker(config, min(BROKER_PROBE_TIMEOUT_S, timeout_s))
    # A request that cannot be delivered fails after the app's timeout instead of
    # librdkafka's default of five minutes, so send_requests' flush returns in time.
    producer = make_producer(config, **{"message.timeout.ms": max(1000, int(timeout_s * 1000)),
                                        "logger": librdkafka_logger})
    consumer = make_consumer(config, group_id=f"{config.consumer_group_prefix}-app-{uuid.uuid4().hex[:8]}",
                             logger=librdkafka_logger)
    try:
        router = ResultRouter(consumer, config.result_topic, config.dead_letter_topic, window_s).start()
    except Exception:
        consumer.close()
        raise
    return producer, router


class PipelineClient:
    """Send drawings through the real pipeline and read their results, with one producer and router per app.

    Kafka and Redis are connected on first use and again after a failure, so the app
    starts and explains what is down even while the stack is not running.
    """

    def __init__(
        self,
        config: Config,
        timeout_s: float,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        kafka_factory: Callable[[], tuple[Any, Router]] | None = None,
        broker_check: Callable[[], None] | None = None,
        store_factory: Callable[[], ModelStore] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout must be above 0 s, got {timeout_s}")
        self.config = config
        self.timeout_s = timeout_s
        self.window_s = window_s
        self._kafka_factory = kafka_factory or (lambda: connect_kafka(config, timeout_s, window_s))
        self._broker_check = broker_check or (lambda: probe_broker(config, min(BROKER_PROBE_TIMEOUT_S, timeout_s)))
        self._store_factory = store_factory or (lambda: ModelStore.from_config(config))
        self._lock = threading.Lock()
        self._producer: Any = None
        self._router: Router | None = None
        self._store: ModelStore | None = None
        self._next_dashboard_retry = 0.0

    # Connections

    def kafka(self) -> tuple[Any, Router]:
        """Return the producer and router, connecting first if needed (raises KafkaUnavailableError)."""
        with self._lock:
            if self._router is None:
                self._producer, self._router = self._kafka_factory()
                logger.info("app connected to Kafka at %s", self.config.kafka_bootstrap)
            return self._producer, self._router

    def router(self) -> Router | None:
        """Return the router, or None while Kafka is unreachable.

        Unlike :meth:`kafka`, this tries to connect at most once per ``DASHBOARD_RETRY_S``,
        so a dashboard refreshing every few seconds does not wait on the broker each time.
        """
        with self._lock:
            if self._router is not None:
                return self._router
            if time.monotonic() < self._next_dashboard_retry:
                return None
            self._next_dashboard_retry = time.monotonic() + DASHBOARD_RETRY_S
        try:
            return self.kafka()[1]
        except (KafkaUnavailableError, KafkaException) as error:
            logger.info("the dashboard has no inference statistics, Kafka is unreachable: %s", error)
            return None

    def store(self) -> ModelStore:
        """Return the model store, connecting first if needed (raises redis or config errors)."""
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
            return self._store

    def forget_store(self) -> None:
        """Drop the store connection after an error, so the next call connects again."""
        with self._lock:
            self._store = None

    def close(self) -> None:
        with self._lock:
            if self._router is not None:
                self._router.stop()
            if self._producer is not None:
                self._producer.flush(5)
            self._router = self._producer = self._store = None

    # Requests

    def classify(self, image: np.ndarray) -> Answer:
        """Send one 28×28 uint8 image as a request and wait for its result.

        Raises :class:`PipelineUnavailableError` when Kafka is unreachable or no answer
        comes within the timeout; its diagnosis names the part that is down.
        """
        deadline = time.monotonic() + self.timeout_s
        try:
            producer, router = self.kafka()
        except (KafkaUnavailableError, KafkaException) as error:
            logger.warning("request not sent: %s", error)
            reason = getattr(error, "reason", str(error))
            raise PipelineUnavailableError(
                Diagnosis("kafka", self.config.kafka_bootstrap, reason), timed_out=False) from None

        # send_requests names requests "<run_id>-<n>", so the id is known before sending,
        # and the router keeps the result even if it arrives before send_requests returns.
        run_id = f"app-{uuid.uuid4().hex[:12]}"
        request_id = f"{run_id}-0"
        router.expect(request_id)
        try:
            sent = send_requests(producer, self.config, [image], run_id=run_id)
        except (KafkaException, BufferError) as error:
            router.forget(request_id)
            logger.warning("sending request %s failed: %s", request_id, error)
            raise PipelineUnavailableError(self.diagnose(), timed_out=False) from None
        if request_id not in sent.sent_ms:
            router.forget(request_id)
            raise RuntimeError(f"send_requests named the request {list(sent.sent_ms)}, expected {request_id}")

        answered = router.wait(request_id, deadline - time.monotonic())
        if answered is None:
            diagnosis = self.diagnose()
            logger.warning("request %s got no answer within %.1f s: %s is down", request_id, self.timeout_s,
                           diagnosis.component)
            raise PipelineUnavailableError(diagnosis, timed_out=True)
        result, received_ms = answered
        return Answer(
            request_id=request_id,
            label=result.label,
            probabilities=list(result.probabilities),
            model_version=result.model_version,
            round_trip_ms=received_ms - sent.sent_ms[request_id],
            pipeline_ms=result.result_ts_ms - result.request_ts_ms,
            batch_size=result.batch_size,
        )

    def diagnose(self) -> Diagnosis:
        """Check Kafka, then Redis, then the latest snapshot; blame the inference job if all are fine."""
        try:
            self._broker_check()
        except (KafkaUnavailableError, KafkaException) as error:
            return Diagnosis("kafka", self.config.kafka_bootstrap, getattr(error, "reason", str(error)))
        redis_address = f"{self.config.redis_host}:{self.config.redis_port}"
        try:
            latest = self.store().latest_version()
        except (redis.RedisError, ConfigError) as error:
            self.forget_store()
            return Diagnosis("redis", redis_address, str(error))
        if latest is None:
            return Diagnosis("no_snapshot", redis_address)
        return Diagnosis("inference", latest_version=latest)

    def snapshot_metadata(self, version: int) -> dict[str, Any] | None:
        """Return a snapshot's metadata, or None when Redis is down or the version is gone."""
        try:
            return self.store().metadata(version)
        except SnapshotNotFoundError:
            return None
        except (redis.RedisError, ConfigError) as error:
            logger.warning("reading metadata of version %d failed: %s", version, error)
            self.forget_store()
            return None


# Stored snapshots, read-only


class ModelCache:
    """Snapshots loaded with :func:`load_model`, kept by version (least recently used dropped first)."""

    def __init__(self, store: Callable[[], ModelStore], max_models: int = 16) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self._store = store
        self._max_models = max_models
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, version: int) -> LoadedModel:
        """Return version ``version``, loading it on first use (raises SnapshotNotFoundError if gone)."""
        with self._lock:
            model = self._models.get(version)
            if model is not None:
                self._models.move_to_end(version)
                return model
            # A stored version never changes, so it is loaded once and served from memory after.
            model = load_model(self._store(), version)
            self.loads += 1
            self._models[version] = model
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
            return model


@dataclass(frozen=True)
class ScoredVersion:
    """One snapshot's probabilities for a drawing, or the ``error`` (with the rest empty) that stopped it."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None
    error_detail: str = ""

    @property
    def label(self) -> int | None:
        return int(np.argmax(self.probabilities)) if self.probabilities else None


def score_versions(cache: ModelCache, image: np.ndarray, versions: Sequence[int]) -> list[ScoredVersion]:
    """Score one 28×28 uint8 image with each version, in the order given.

    A version that is gone or cannot be loaded becomes a row with an error. Redis and
    config errors concern every version, so they propagate.
    """
    batch = image.reshape(1, 28, 28)
    scored = []
    for version in versions:
        try:
            model = cache.get(version)
        except SnapshotNotFoundError:
            scored.append(ScoredVersion(version, error="missing"))
            continue
        except (SnapshotCorruptError, RuntimeError, KeyError, ValueError) as error:
            logger.warning("loading snapshot version %d for comparison failed: %s", version, error)
            scored.append(ScoredVersion(version, error="failed", error_detail=str(error)))
            continue
        probabilities = model.predict(batch)[0]
        scored.append(ScoredVersion(version, dict(model.metadata), [float(p) for p in probabilities]))
    return scored


def pick_versions(versions: Sequence[int], count: int = 4) -> list[int]:
    """Pick up to ``count`` versions spread from the oldest to the newest, newest always included."""
    ordered = sorted(set(versions))
    if len(ordered) <= count:
        return ordered
    positions = np.linspace(0, len(ordered) - 1, count)
    return sorted({ordered[int(round(position))] for position in positions})


class SnapshotHistory:
    """Metadata of every snapshot seen while the app runs, including versions retention dropped since.

    NOTE: the history grows only when the Training tab refreshes, so versions published
    and dropped while no one had that tab open are missing from the curve.
    """

    def __init__(self, max_records: int = 10_000) -> None:
        self._records: dict[int, dict[str, Any]] = {}
        self._max_records = max_records
        self._lock = threading.Lock()

    def update(self, snapshots: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Merge freshly listed snapshots and return every known record, oldest version first."""
        with self._lock:
            for record in snapshots:
                self._records[int(record["version"])] = dict(record)
            while len(self._records) > self._max_records:
                del self._records[min(self._records)]
            return [self._records[version] for version in sorted(self._records)]
