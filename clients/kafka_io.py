"""Kafka producers and consumers for the clients, with settings taken from the config."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Iterator

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shared.config import Config

logger = logging.getLogger(__name__)
# librdkafka's own messages (connection retries and the like) go through logging
# instead of straight to stderr.
_librdkafka_logger = logging.getLogger("librdkafka")


class KafkaUnavailableError(RuntimeError):
    """The broker did not respond; the message names the address and what to run."""


def make_producer(config: Config, **overrides: str | int) -> Producer:
    settings = {
        "bootstrap.servers": config.kafka_bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "logger": _librdkafka_logger,
    }
    settings.update(overrides)
    producer = Producer(settings)
    # Connect now, so the first message's send time does not include the connection set-up.
    try:
        producer.list_topics(timeout=10)
    except KafkaException as error:
        raise KafkaUnavailableError(
            f"Kafka at {config.kafka_bootstrap} did not respond ({error}); start it with 'onml stack up'"
        ) from None
    return producer


def make_consumer(config: Config, group_id: str | None = None, **overrides: str | int) -> Consumer:
    settings = {
        "bootstrap.servers": config.kafka_bootstrap,
        "group.id": group_id or f"{config.consumer_group_prefix}-client-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 5,
        "logger": _librdkafka_logger,
    }
    settings.update(overrides)
    return Consumer(settings)


def check_broker(config: Config, timeout_s: float = 5.0) -> None:
    """Raise :class:`KafkaUnavailableError` unless the broker lists its topics within ``timeout_s``."""
    producer = Producer({"bootstrap.servers": config.kafka_bootstrap})
    try:
        producer.list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise KafkaUnavailableError(
            f"Kafka at {config.kafka_bootstrap} did not respond within {timeout_s:.0f} s ({error}); "
            "start it with 'onml stack up'"
        ) from None


def assign_at_end(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> None:
    """Assign every partition of ``topic`` to ``consumer`` at its current end, so only new messages are read."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as error:
        raise KafkaUnavailableError(
            f"Kafka did not respond while looking up topic {topic!r} ({error}); start it with 'onml stack up'"
        ) from None
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None:
        raise KafkaUnavailableError(f"topic {topic!r} not found on {metadata.orig_broker_name}; run 'onml stack up'")
    partitions = []
    for partition in topic_metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        partitions.append(TopicPartition(topic, partition, high if high >= 0 else OFFSET_END))
    consumer.assign(partitions)


def poll_values(consumer: Consumer, deadline_s: float, batch: int = 1000) -> Iterator[bytes]:
    """Yield message values until the monotonic ``deadline_s``; skip partition-end events, raise on errors."""
    while time.monotonic() < deadline_s:
        # consume() waits for a full batch or its timeout, so wait for the first message
        # with poll() and then take only what is already there.
        first = consumer.poll(min(0.2, max(0.0, deadline_s - time.monotonic())))
        if first is None:
            continue
        messages = [first, *(consumer.consume(batch - 1, timeout=0) if batch > 1 else [])]
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            yield message.value()
