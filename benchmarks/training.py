"""Training throughput: samples/s of the training job, read from its snapshots.

The training topic is filled with N labelled samples first (the training split, epoch
after epoch), then the training job starts from scratch. It publishes a snapshot every
``snapshot_every`` samples with ``samples_seen`` and its publish time, and the rate runs
from the first snapshot to the last, so the job's start-up is left out.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from benchmarks import stats
from benchmarks.harness import BenchContext, SystemSpec, progress_bar, run_session

logger = logging.getLogger(__name__)

TRAINING_JOB = SystemSpec("training", "training_job.job", ("--no-resume",),
                          description="onml training job (online mini-batch training)")
TARGET_ACCURACY = 0.97
# Only count-triggered snapshots are wanted: the timer-triggered ones would put idle time
# into the rate, so their interval is set far beyond any run.
SNAPSHOT_INTERVAL_S = 3600.0


def last_snapshot_samples(samples: int, train_batch_size: int, snapshot_every: int) -> int:
    """Return ``samples_seen`` of the last count-triggered snapshot that ``samples`` records produce.

    The job trains only full mini-batches and publishes once ``snapshot_every`` samples
    have passed since the last snapshot, so snapshots fall on multiples of
    ``ceil(snapshot_every / train_batch_size) * train_batch_size``.
    """
    trained = samples // train_batch_size * train_batch_size
    step = math.ceil(snapshot_every / train_batch_size) * train_batch_size
    return trained // step * step


def run_training(context: BenchContext, samples: int, timeout_s: float, snapshot_every: int = 2000,
                 target_accuracy: float = TARGET_ACCURACY) -> dict[str, Any]:
    """Stream ``samples`` training samples into a fresh training job and measure its rate from the snapshots."""
    from clients.kafka_io import make_producer
    from clients.streams import stream_training
    from shared.data import load_split

    train = load_split(context.config.data_dir, context.config.dataset, "train")
    with run_session(context, TRAINING_JOB, "train", snapshot_every_samples=snapshot_every,
                     snapshot_interval_s=SNAPSHOT_INTERVAL_S) as (config, system):
        expected_last = last_snapshot_samples(samples, config.train_batch_size, snapshot_every)
        if expected_last == 0:
            raise ValueError(f"{samples} training samples produce no snapshot with snapshot_every={snapshot_every}; "
                             f"send at least {snapshot_every + config.train_batch_size}")
        epochs = math.ceil(samples / len(train.labels))
        with progress_bar(samples, "pre-filling training samples", context.progress) as bar:
            stream_training(make_producer(config), config, train.images, train.labels, epochs=epochs,
                            limit=samples, progress=bar.update)

        system.start()
        started_s = time.time()
        deadline = time.monotonic() + timeout_s
        snapshots: list[dict[str, Any]] = []
        with progress_bar(expected_last, "training: samples in snapshots", context.progress, unit="sample") as bar:
            while time.monotonic() < deadline:
                system.check_alive()
                snapshots = [record for record in context.store.list_snapshots()
                             if record["created_at"] >= started_s and record.get("samples_seen") is not None]
                seen = max((record["samples_seen"] for record in snapshots), default=0)
                bar.update(seen - bar.n)
                if seen >= expected_last:
                    break
                time.sleep(0.5)
        complete = bool(snapshots) and max(record["samples_seen"] for record in snapshots) >= expected_last
        if not complete:
            logger.warning("the training job did not reach %d samples within %.0f s", expected_last, timeout_s)
        peak_rss_mb = system.peak_rss_mb

    points = [{key: record.get(key) for key in ("version", "samples_seen", "accuracy", "created_at")}
              for record in sorted(snapshots, key=lambda record: record["created_at"])]
    return {
        "system": TRAINING_JOB.name,
        "samples": samples,
        "epochs": epochs,
        "snapshot_every_samples": snapshot_every,
        "train_batch_size": config.train_batch_size,
        "complete": complete,
        "samples_per_s": stats.training_rate(points),
        "target_accuracy": target_accuracy,
        "samples_to_target": stats.samples_to_accuracy(points, target_accuracy),
        "final_accuracy": points[-1]["accuracy"] if points else None,
        "snapshots": points,
        "startup_s": (points[0]["created_at"] - started_s) if points else None,
        "peak_rss_mb": peak_rss_mb,
        "log": str(system.log_path),
    }
