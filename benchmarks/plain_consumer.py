"""Baseline: a plain Python service, confluent-kafka consumer → model → producer in one process.

It reads up to ``--batch-size`` requests at a time (waiting at most ``--max-wait-ms`` for
them), runs one forward pass on them with the model the inference job serves
(:func:`inference_job.predictor.load_model`) and writes one result per request. With
``--batch-size 1`` each request gets its own forward pass.

Run with ``python -m benchmarks.plain_consumer``; the settings come from ``ONML_*``
variables. It stops on SIGTERM or SIGINT, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Producer

from shared.config import Config, load_config
from shared.wire import WireError, decode_request, encode_dead_letter, encode_result, pixels_to_array

logger = logging.getLogger("onml.bench.plain_consumer")


def serve(config: Config, batch_size: int, max_wait_ms: int, max_seconds: float, stop: threading.Event) -> int:
    """Serve requests until ``stop`` is set or ``max_seconds`` pass; return how many got a result."""
    import torch

    from clients.kafka_io import make_consumer
    from inference_job.predictor import load_model
    from shared.store import ModelStore

    # One thread, as the inference job sets it for each subtask.
    torch.set_num_threads(1)
    model = load_model(ModelStore.from_config(config))
    consumer = make_consumer(config, group_id=f"{config.consumer_group_prefix}-plain-consumer",
                             **{"enable.auto.commit": True})
    consumer.subscribe([config.request_topic])
    # The same linger as the Flink jobs' Kafka sink.
    producer = Producer({"bootstrap.servers": config.kafka_bootstrap, "linger.ms": 2,
                         "queue.buffering.max.messages": 1_000_000})
    logger.info("serving snapshot version %d from %s, batch size %d, max wait %d ms",
                model.version, config.request_topic, batch_size, max_wait_ms)
    answered = 0
    deadline = time.monotonic() + max_seconds
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            messages = consumer.consume(batch_size, timeout=max_wait_ms / 1000.0)
            requests = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                try:
                    requests.append(decode_request(message.value()))
                except WireError as wire_error:
                    producer.produce(config.dead_letter_topic, encode_dead_letter(
                        config.request_topic, "plain-consumer-decode", wire_error.reason, message.value()))
            if requests:
                probabilities = model.predict(pixels_to_array([request.pixels for request in requests]))
                for request, probs in zip(requests, probabilities):
                    value = encode_result(request.id, int(probs.argmax()), probs, model.version,
                                          request.ts_ms, len(requests))
                    while True:
                        try:
                            producer.produce(config.result_topic, value)
                            break
                        except BufferError:
                            # The local queue is full: let librdkafka deliver, unless it is time to stop.
                            if stop.is_set() or time.monotonic() > deadline:
                                logger.warning("stopping with a full producer queue; result %s not sent", request.id)
                                return answered
                            producer.poll(0.05)
                answered += len(requests)
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()
    logger.info("stopped after serving %d requests", answered)
    return answered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plain Kafka consumer -> model -> producer baseline.")
    parser.add_argument("--batch-size", type=int, default=1, help="requests per forward pass (default 1)")
    parser.add_argument("--max-wait-ms", type=int, default=20,
                        help="maximum wait for a batch to fill, in ms (default 20)")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="stop after this many seconds (default 1800)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_wait_ms < 0:
        parser.error(f"--batch-size must be at least 1 and --max-wait-ms 0 or more, "
                     f"got {args.batch_size} and {args.max_wait_ms}")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve(load_config(), args.batch_size, args.max_wait_ms, args.max_seconds, stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
