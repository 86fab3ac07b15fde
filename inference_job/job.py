"""The inference job: Kafka requests → micro-batches → newest snapshot → Kafka results.

Run on the embedded mini-cluster with ``python -m inference_job.job``, or submit to a
standalone cluster with ``flink run -py inference_job/job.py -pyfs shared,training_job,inference_job``.

The job is three operators, chained in one task per subtask::

    Kafka source → MicroBatcher (Java) → BatchPredictor (Python) → BatchSplitter (Java) → Kafka sinks

The Java ``MicroBatcher`` collects requests into arrays of up to ``max_batch_size`` and
releases a partial one after ``max_batch_wait_ms`` with a processing-time timer, so a lone
request gets its result within its wait. The Python function is then called once per batch
instead of once per request: PyFlink's per-record cost, not the model, was what limited
a keyed Python batching function (docs/inference-design.md has the measurements).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Started as a script by `flink run -py`: make the project's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import MapFunction, RuntimeContext
from pyflink.java_gateway import get_gateway

from shared.config import Config, load_config
from shared.flink import (
    absolute_paths,
    build_operator_jar,
    create_environment,
    kafka_string_sink,
    kafka_string_source,
    sink_dead_letters,
)

logger = logging.getLogger("onml.inference")

JOB_NAME = "onml-inference"
# The execution mode when python_execution_mode is "auto". Thread mode runs the Python
# functions inside the TaskManager JVM and skips the copy of every batch to a Python
# worker process (docs/inference-design.md has the measurements).
INFERENCE_MODE = "thread"
# The Java batcher hands Python the request messages of one batch as a string array.
BATCH = Types.BASIC_ARRAY(Types.STRING())
# Python hands the splitter two string arrays: the batch's results and its dead letters.
OUTPUT = Types.TUPLE([BATCH, BATCH])
# How often a batch that waits for the first snapshot logs a warning.
WAIT_LOG_INTERVAL_S = 30.0


class BatchPredictor(MapFunction):
    """Serve each batch of requests with one forward pass of the newest snapshot.

    Before any snapshot exists the function waits for the first one: the batch in hand
    waits in memory and the rest stay in the request topic, since the Kafka source reads
    no further while the task is blocked. Nothing is dropped, and checkpoints wait too.
    """

    def __init__(self, config: Config, export_python: str) -> None:
        self.config = config
        # The interpreter that exports a snapshot stored without an ONNX model, in a child
        # process: in thread mode torch hangs inside the TaskManager JVM (when imported, in
        # convolutions and when the JVM exits), so the job never imports it.
        self.export_python = export_python

    def open(self, runtime_context: RuntimeContext) -> None:
        from inference_job.batch import serve_batch
        from inference_job.predictor import SnapshotWatcher
        from shared.store import ModelStore

        self.serve_batch = serve_batch
        self.watcher = SnapshotWatcher(
            ModelStore.from_config(self.config),
            self.config.model_poll_interval_s,
            threads=self.config.inference_threads,
            export_python=self.export_python,
        )
        self.watcher.start()
        self.rejected = 0
        if self.watcher.current() is None:
            logger.warning("no snapshot in the model store yet: requests wait until one is published")

    def close(self) -> None:
        self.watcher.stop()

    def map(self, batch):
        model = self.watcher.current() or self._wait_for_model(len(batch))
        results, dead_letters = self.serve_batch(batch, model, self.config.request_topic)
        if dead_letters:
            self.rejected += len(dead_letters)
            logger.warning("rejected %d malformed requests (%d so far)", len(dead_letters), self.rejected)
        return results, dead_letters

    def _wait_for_model(self, waiting: int):
        started = time.monotonic()
        while True:
            model = self.watcher.wait_for_model(WAIT_LOG_INTERVAL_S)
            if model is not None:
                logger.info("snapshot version %d available after %.0f s", model.version, time.monotonic() - started)
                return model
            logger.warning("%d requests have waited %.0f s for a first snapshot in the model store",
                           waiting, time.monotonic() - started)


def build_job(env, config: Config) -> None:
    env.add_jars(build_operator_jar(Path(config.var_dir) / "build").resolve().as_uri())
    operators = get_gateway().jvm.onml.flink
    java_batch = BATCH.get_java_type_info()

    requests = kafka_string_source(env, config, config.request_topic, "inference", "requests")
    batches = DataStream(
        requests._j_data_stream.transform(
            "micro-batcher", java_batch, operators.MicroBatcher(config.max_batch_size, config.max_batch_wait_ms)
        ).uid("micro-batcher")
    )
    outputs = (
        batches.map(BatchPredictor(config, sys.executable), output_type=OUTPUT)
        .name("batch-predictor")
        .uid("batch-predictor")
    )
    splitter = operators.BatchSplitter()
    results = DataStream(
        outputs._j_data_stream.process(splitter, Types.STRING().get_java_type_info())
        .name("batch-splitter")
        .uid("batch-splitter")
    )
    results.sink_to(kafka_string_sink(config, config.result_topic)).name("results").uid("results-sink")
    dead_letters = DataStream(results._j_data_stream.getSideOutput(operators.BatchSplitter.deadLetters()))
    sink_dead_letters(dead_letters, config, "inference")


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
