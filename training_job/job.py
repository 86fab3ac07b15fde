"""The training job: Kafka training topic → validate → online mini-batch training → Redis snapshots.

Run on the embedded mini-cluster with ``python -m training_job.job``, or submit to a
standalone cluster with ``flink run -py training_job/job.py -pyfs shared,training_job,inference_job``.
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

import numpy as np
from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from shared.config import Config, load_config
from shared.flink import STRING, absolute_paths, create_environment, kafka_string_source, sink_dead_letters
from shared.wire import WireError, decode_training, encode_dead_letter, pixels_to_array

logger = logging.getLogger("onml.training")

JOB_NAME = "onml-training"
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class OnlineTrainer(KeyedProcessFunction):
    """Train one model on mini-batches and publish snapshots to the model store.

    All records share one key, so one subtask owns the model. The learner (weights,
    optimizer, counters) and the samples of the unfinished mini-batch live in Flink keyed
    state, so a restart from a checkpoint continues from the model of that checkpoint.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        import torch

        from shared.store import ModelStore
        from training_job.learner import OnlineLearner

        torch.set_num_threads(1)
        self.store = ModelStore.from_config(self.config)
        self.learner_state = runtime_context.get_state(
            ValueStateDescriptor("learner", Types.PICKLED_BYTE_ARRAY())
        )
        self.pending_state = runtime_context.get_list_state(
            ListStateDescriptor("pending-samples", Types.PICKLED_BYTE_ARRAY())
        )
        self._new_learner = lambda: OnlineLearner(
            self.config.architecture, self.config.learning_rate, self.config.accuracy_window, self.config.seed
        )
        self.learner = None
        self.pending: list[tuple[int, bytes]] = []
        self.samples_at_last_snapshot = 0
        self.timer_registered = False
        self.rejected = 0

    def _restore(self) -> None:
        """Load the learner and the unfinished mini-batch from keyed state, or start fresh."""
        from training_job.learner import ArchitectureMismatchError

        self.learner = self._new_learner()
        saved = self.learner_state.value()
        if saved is not None:
            try:
                self.learner.load_state_bytes(saved)
                logger.info(
                    "restored learner from state: samples_seen=%d accuracy=%s",
                    self.learner.samples_seen, self.learner.prequential_accuracy,
                )
            except ArchitectureMismatchError as error:
                # The configured architecture changed since the checkpoint: a new model
                # starts, and the snapshots of the old one stay readable in the store.
                logger.warning("starting a new %s model from scratch: %s", self.config.architecture, error)
                self.learner = self._new_learner()
        self.pending = list(self.pending_state.get() or [])
        self.samples_at_last_snapshot = self.learner.samples_seen

    def process_element(self, value: str, ctx: KeyedProcessFunction.Context):
        # 1. Decode; a malformed record goes to the dead-letter topic and the job goes on.
        try:
            record = decode_training(value)
        except WireError as error:
            self.rejected += 1
            logger.warning("rejected training record (%d so far): %s", self.rejected, error.reason)
            yield DEAD_LETTERS, encode_dead_letter(
                self.config.training_topic, "training-decode", error.reason, value
            ).decode()
            return

        if self.learner is None:
            self._restore()
        if not self.timer_registered:
            self._schedule_snapshot_timer(ctx)

        # 2. Collect the mini-batch, keeping it in state until it has been learned.
        sample = (record.label, record.pixels)
        self.pending.append(sample)
        self.pending_state.add(sample)
        if len(self.pending) < self.config.train_batch_size:
            return

        # 3. Test, then train, on the full mini-batch.
        labels = np.fromiter((label for label, _ in self.pending), dtype=np.int64, count=len(self.pending))
        images = pixels_to_array([pixels for _, pixels in self.pending])
        self.learner.learn_batch(images, labels)
        self.pending = []
        self.pending_state.clear()
        self.learner_state.update(self.learner.state_bytes())

        # 4. Publish a snapshot every N samples (the timer covers every T seconds).
        if self.learner.samples_seen - self.samples_at_last_snapshot >= self.config.snapshot_every_samples:
            self._publish()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        self.timer_registered = False
        if self.learner is not None and self.learner.samples_seen > self.samples_at_last_snapshot:
            self._publish()
        self._schedule_snapshot_timer(ctx)
        return iter(())

    def _schedule_snapshot_timer(self, ctx) -> None:
        now_ms = ctx.timer_service().current_processing_time()
        ctx.timer_service().register_processing_time_timer(now_ms + int(self.config.snapshot_interval_s * 1000))
        self.timer_registered = True

    def _publish(self) -> None:
        from shared.model import export_onnx

        metadata = self.learner.snapshot_metadata()
        metadata["trained_until"] = time.time()
        state_dict = self.learner.model.state_dict()
        try:
            onnx_model = export_onnx(self.learner.architecture, state_dict)
        except Exception:
            # Publish the snapshot anyway: the inference job serves one without an ONNX model with torch.
            logger.exception("exporting the model to ONNX failed; publishing the snapshot without an ONNX model")
            onnx_model = None
        try:
            self.store.publish(state_dict, metadata, onnx_model=onnx_model, with_onnx=False)
        except Exception:
            # A store outage must not kill training: the next snapshot retries.
            logger.exception("publishing a snapshot failed; training goes on and retries at the next one")
            return
        self.samples_at_last_snapshot = self.learner.samples_seen


def build_job(env, config: Config) -> None:
    records = kafka_string_source(env, config, config.training_topic, "training", "training")
    trained = (
        records.key_by(lambda _: 0, key_type=Types.INT())
        .process(OnlineTrainer(config), output_type=STRING)
        .name("online-trainer")
        .uid("online-trainer")
    )
    sink_dead_letters(trained.get_side_output(DEAD_LETTERS), config, "training")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the onml training job (Kafka -> online CNN -> Redis).")
    parser.add_argument("--config", help="TOML config file (default: $ONML_CONFIG or ./onml.toml)")
    parser.add_argument("--no-resume", action="store_true", help="ignore retained checkpoints and start fresh")
    args = parser.parse_args(argv)

    config = absolute_paths(load_config(args.config))
    logger.info("starting %s with config %s", JOB_NAME, config.redacted())
    env = create_environment(config, JOB_NAME, resume=not args.no_resume)
    build_job(env, config)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
