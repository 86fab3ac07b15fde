"""A results-topic reader on its own thread that stamps each result with its arrival time."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from benchmarks.errors import BenchError
from clients.kafka_io import KafkaUnavailableError, assign_at_end, make_consumer
from shared.config import Config
from shared.wire import WireError, decode_result

logger = logging.getLogger(__name__)


def result_stamp(message: bytes) -> tuple[str, float]:
    """Return a result message's request id and ``result_ts``; raise :class:`WireError` when it is malformed.

    The collector shares the CPU with the system it measures, so it reads only these two
    fields. A message without them gets the full decoder's reason.
    """
    try:
        value = orjson.loads(message)
        request_id, stamp = value["id"], value["result_ts"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        decode_result(message)
        raise WireError("result without 'id' or 'result_ts'") from None
    if not isinstance(request_id, str) or isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        raise WireError(f"result with id {request_id!r} and result_ts {stamp!r}")
    return request_id, float(stamp)


class ResultCollector:
    """Read ``config.result_topic`` on a thread and record ``(request id, arrival ms)`` for every result.

    Arrival is the wall clock (``time.time()``) when the consumer hands the message over,
    the same clock the senders stamp requests with. Set the ids to wait for with
    :meth:`expect` before the results can arrive; ``answered`` then counts how many of
    them have a result.
    """

    def __init__(self, config: Config, *, from_beginning: bool) -> None:
        self._consumer = make_consumer(config)
        if from_beginning:
            metadata = self._consumer.list_topics(config.result_topic, timeout=10)
            topic = metadata.topics.get(config.result_topic)
            if topic is None or topic.error is not None:
                raise KafkaUnavailableError(f"topic {config.result_topic!r} not found on {config.kafka_bootstrap}")
            self._consumer.assign([TopicPartition(config.result_topic, partition, OFFSET_BEGINNING)
                                   for partition in topic.partitions])
        else:
            assign_at_end(self._consumer, config.result_topic)
        self.arrivals: list[tuple[str, float]] = []
        # The ``result_ts`` that the system wrote into the first result of each id.
        self.emitted_ms: dict[str, float] = {}
        self.malformed = 0
        self._expected: set[str] = set()
        self._answered: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="result-collector", daemon=True)

    def expect(self, request_ids: Iterable[str]) -> None:
        """Set the ids that ``answered`` and :meth:`wait_for_all` count, replacing earlier ones."""
        with self._lock:
            self._expected = set(request_ids)
            self._answered = {request_id for request_id, _ in self.arrivals if request_id in self._expected}

    @property
    def answered(self) -> int:
        return len(self._answered)

    def is_answered(self, request_id: str) -> bool:
        return request_id in self._answered

    def start(self) -> "ResultCollector":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
        if self._error is not None:
            raise BenchError(f"reading results failed: {self._error}") from self._error

    def wait_for_all(self, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
        """Block until every expected id has a result, ``timeout_s`` passes or ``alive()`` returns false."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.answered >= len(self._expected) or self._error is not None or not alive():
                break
            time.sleep(0.05)
        return self.answered >= len(self._expected)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) waits for n messages or the whole timeout, which would
                # delay the arrival stamp at low rates: block on poll() for the first message,
                # then take whatever else is already fetched without waiting.
                first = self._consumer.poll(0.1)
                if first is None:
                    continue
                arrived_ms = time.time() * 1000.0
                messages = [first, *self._consumer.consume(2000, timeout=0)]
                results = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise BenchError(str(error))
                    try:
                        results.append(result_stamp(message.value()))
                    except WireError as wire_error:
                        self.malformed += 1
                        if self.malformed <= 5:
                            logger.warning("skipped a malformed result message: %s", wire_error.reason)
                # One lock per fetched batch: at tens of thousands of results per second the
                # collector shares the 2 cores with the system it measures.
                with self._lock:
                    for request_id, stamp in results:
                        self.arrivals.append((request_id, arrived_ms))
                        self.emitted_ms.setdefault(request_id, stamp)
                        if request_id in self._expected:
                            self._answered.add(request_id)
        except BaseException as error:  # reported by stop() and wait_for_all()
            logger.exception("the result collector stopped")
            self._error = error
