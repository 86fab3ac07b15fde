"""The inference job: Kafka requests → validate → micro-batches → newest snapshot → Kafka results.

Run on the embedded mini-cluster with ``python -m inference_job.job``, or submit to a
standalone cluster with ``flink run -py inference_job/job.py -pyfs shared,training_job,inference_job``.

Batching happens in a keyed process function because only a processing-time timer
releases a partial batch when traffic stops: a buffer inside a ``flat_map`` is flushed
only by the next record, so the last requests of a burst would never be answered.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from collections import deque
from pathlib import Path

if __package__ in (None, ""):
    # Started as a script by `flink run -py`: make the project's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext

from shared.config import Config, load_config
from shared.flink import (
    STRING,
    absolute_paths,
    create_environment,
    kafka_string_sink,
    kafka_string_source,
    sink_dead_letters,
)
from shared.wire import (
    Request,
    WireError,
    decode_request,
    encode_dead_letter,
    encode_request,
    encode_result,
    pixels_to_array,
)

logger = logging.getLogger("onml.inference")

JOB_NAME = "onml-inference"
# The execution mode when python_execution_mode is "auto". Thread mode runs the Python
# functions inside the TaskManager JVM and skips the copy of every record to a Python
# worker process (docs/inference-design.md has the measurements).
INFERENCE_MODE = "thread"
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class BatchingPredictor(KeyedProcessFunction):
    """Batch requests by size and maximum wait, and answer each batch with one forward pass.

    Requests that arrive before any snapshot exists are held, up to ``max_held_requests``,
    and answered once one is published; beyond that bound they go to the dead-letter
    topic with the reason. Held and partly filled batches live in memory only, so a
    failure loses them and a restart from the last checkpoint answers them again (at
    least once).
    """

    def __init__(self, config: Config, export_python: str) -> None:
        self.config = config
        # The interpreter that exports a snapshot stored without an ONNX model, in a child
        # process: in thread mode torch hangs inside the TaskManager JVM (when imported, in
        # convolutions and when the JVM exits), so the job never imports it.
        self.export_python = export_python

    def open(self, runtime_context: RuntimeContext) -> None:
        from inference_job.predictor import SnapshotWatcher
        from shared.batching import Batcher
        from shared.store import ModelStore

        self.watcher = SnapshotWatcher(
            ModelStore.from_config(self.config),
            self.config.model_poll_interval_s,
            threads=self.config.inference_threads,
            export_python=self.export_python,
        )
        self.watcher.start()
        self._new_batcher = lambda: Batcher(self.config.max_batch_size, self.config.max_batch_wait_ms)
        self.batchers = {}
        self.held: deque[Request] = deque()
        self.rejected = 0
        self.served = 0
        if self.watcher.current() is None:
            logger.warning("no snapshot in the model store yet: requests are held until one is published")

    def close(self) -> None:
        self.watcher.stop()

    def process_element(self, value: str, ctx: KeyedProcessFunction.Context):
        # 1. Decode; a malformed request goes to the dead-letter topic and the job goes on.
        try:
            request = decode_request(value)
        except WireError as error:
            self.rejected += 1
            logger.warning("rejected request (%d so far): %s", self.rejected, error.reason)
            yield DEAD_LETTERS, encode_dead_letter(self.config.request_topic, "inference-decode", error.reason, value).decode()
            return

        # 2. Add to this key's batch; a full batch is served at once.
        key = ctx.get_current_key()
        batcher = self.batchers.get(key)
        if batcher is None:
            batcher = self.batchers[key] = self._new_batcher()
        batch = batcher.add(request)
        if batch is not None:
            yield from self._serve(batch, ctx)
        elif len(batcher) == 1:
            # 3. The first request of a batch starts its max-wait timer.
            self._register_timer(ctx, self.config.max_batch_wait_ms)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        batcher = self.batchers.get(ctx.get_current_key())
        if batcher is not None and batcher.is_due():
            yield from self._serve(batcher.drain(), ctx)
        elif batcher is not None and len(batcher):
            # The batch this timer was set for was already served by size; time the new one.
            self._register_timer(ctx, batcher.remaining_ms())
        elif self.held:
            yield from self._serve([], ctx)

    def _register_timer(self, ctx, delay_ms: float) -> None:
        now_ms = ctx.timer_service().current_processing_time()
        ctx.timer_service().register_processing_time_timer(now_ms + max(1, int(delay_ms)))

    def _serve(self, batch: list[Request], ctx):
        model = self.watcher.current()

        # 1. No snapshot yet: hold the requests (bounded) and check again later.
        if model is None:
            for request in batch:
                if len(self.held) < self.config.max_held_requests:
                    self.held.append(request)
                else:
                    reason = f"no snapshot published yet and {self.config.max_held_requests} requests already held"
                    original = encode_request(request.id, request.pixels, request.ts_ms)
                    yield DEAD_LETTERS, encode_dead_letter(
                        self.config.request_topic, "inference-hold", reason, original
                    ).decode()
            if self.held:
                self._register_timer(ctx, self.config.model_poll_interval_s * 1000)
            return

        # 2. Answer held requests first, in batches of the usual size.
        if self.held:
            logger.info("snapshot version %d available: serving %d held requests", model.version, len(self.held))
            held, self.held = list(self.held), deque()
            for start in range(0, len(held), self.config.max_batch_size):
                yield from self._predict(model, held[start:start + self.config.max_batch_size])
        if batch:
            yield from self._predict(model, batch)

    def _predict(self, model, batch: list[Request]):
        probabilities = model.predict(pixels_to_array([request.pixels for request in batch]))
        labels = probabilities.argmax(axis=1)
        for request, label, probs in zip(batch, labels, probabilities):
            yield encode_result(request.id, int(label), probs, model.version, request.ts_ms, len(batch)).decode()
        self.served += len(batch)
        logger.debug("served batch of %d with version %d (%d served)", len(batch), model.version, self.served)


def build_job(env, config: Config) -> None:
    requests = kafka_string_source(env, config, config.request_topic, "inference", "requests")
    partitions = config.parallelism
    results = (
        requests.key_by(lambda value: zlib.crc32(value.encode("utf-8")) % partitions, key_type=Types.INT())
        .process(BatchingPredictor(config, sys.executable), output_type=STRING)
        .name("batching-predictor")
        .uid("batching-predictor")
    )
    results.sink_to(kafka_string_sink(config, config.result_topic)).name("results").uid("results-sink")
    sink_dead_letters(results.get_side_output(DEAD_LETTERS), config, "inference")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the onml inference job (Kafka requests -> CNN -> Kafka results).")
    parser.add_argument("--config", help="TOML config file (default: $ONML_CONFIG or ./onml.toml)")
    args = parser.parse_args(argv)

    config = absolute_paths(load_config(args.config))
    logger.info("starting %s with config %s", JOB_NAME, config.redacted())
    # Inference keeps no state worth restoring: Kafka offsets come from the consumer group.
    env = create_environment(config, JOB_NAME, resume=False, auto_mode=INFERENCE_MODE)
    build_job(env, config)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
