"""The bench's own stack, per-run topics, the systems under test and their processes.

Every measurement runs on topics created for it alone (``bench.<run>.*``) with a fresh
consumer group, so a run never reads another's requests, and the topics are deleted
afterwards. The systems under test (the inference job and the baselines) run as child
processes in their own process group and are stopped by that group's id.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from benchmarks.errors import BenchError
from benchmarks.rss import RssSampler, group_rss_bytes
from clients.demo import JobProcess
from shared.config import Config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# How long the processes of a stopped system may take to exit before the group gets SIGKILL.
GROUP_EXIT_TIMEOUT_S = 15.0
# How long a producer's full local queue may block the next message.
PRODUCE_TIMEOUT_S = 60.0

# The bench's private stack: its own state folder and ports that differ from the demo's
# defaults (19092, 19093, 16379, 18081, 16123), so a bench can run beside a demo.
BENCH_STACK_SETTINGS: dict[str, Any] = {
    "var_dir": "var/bench",
    "redis_password_file": "var/bench/redis.password",
    "kafka_bootstrap": "127.0.0.1:29092",
    "kafka_controller_port": 29093,
    "redis_port": 26379,
    "flink_rest_port": 28081,
    "flink_jobmanager_rpc_port": 26123,
}
# Settings the bench uses on any stack, its own or a running one.
BENCH_MODEL_SETTINGS: dict[str, Any] = {
    "model_key_prefix": "bench:model",
    # Keep every snapshot of a training run, so its rate can be read from all of them.
    "snapshots_kept": 1000,
}


def absolute_config(config: Config) -> Config:
    """Resolve the config's relative paths against the working directory, for child processes."""
    return config.replace(
        var_dir=str(Path(config.var_dir).resolve()),
        data_dir=str(Path(config.data_dir).resolve()),
        redis_password_file=str(Path(config.redis_password_file).resolve()),
    )


def bench_config(base: Config, use_running: bool, **overrides: Any) -> Config:
    """Return the config the bench runs with.

    Without ``use_running`` the stack settings are replaced by :data:`BENCH_STACK_SETTINGS`
    (a private stack under ``var/bench``). Overrides whose value is None are ignored.
    """
    changes = dict(BENCH_MODEL_SETTINGS)
    if not use_running:
        changes.update(BENCH_STACK_SETTINGS)
        # A password given in the environment belongs to the user's stack, not this one.
        changes["redis_password"] = ""
    changes.update({key: value for key, value in overrides.items() if value is not None})
    return absolute_config(base.replace(**changes))


def new_run_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:6]}"


def run_config(config: Config, run_id: str, **overrides: Any) -> Config:
    """Return ``config`` with topics and a consumer-group prefix of this run alone."""
    return config.replace(
        request_topic=f"bench.{run_id}.requests",
        result_topic=f"bench.{run_id}.results",
        dead_letter_topic=f"bench.{run_id}.dead-letter",
        training_topic=f"bench.{run_id}.training",
        consumer_group_prefix=f"bench-{run_id}",
        **{key: value for key, value in overrides.items() if value is not None},
    )


def delete_topics(config: Config, timeout_s: float = 30.0) -> None:
    """Delete the four topics of a run; failures are logged, because the results are already read."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    names = [config.training_topic, config.request_topic, config.result_topic, config.dead_letter_topic]
    admin = AdminClient({"bootstrap.servers": config.kafka_bootstrap})
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            logger.warning("deleting topic %s failed: %s", name, error)


def job_environment(config: Config) -> dict[str, str]:
    """Return the environment for a child process: the caller's, with ``config`` as ONML_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONML_")}
    env.update(config.to_environ())
    # The children run `python -m <module>` and must find this checkout's packages.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


@dataclass(frozen=True)
class SystemSpec:
    """A system under test: a Python module run as ``python -m <module> <args>`` with the run's config."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    description: str = ""


ONML_JOB = SystemSpec("onml", "inference_job.job",
                      description="onml inference job (Java micro-batcher, one Python call per batch)")
PER_RECORD_JOB = SystemSpec("per-record-udf", "benchmarks.per_record_job", ("--runtime", "torch"),
                            description="Flink job with a scalar map function, one eager torch forward pass per record")
PER_RECORD_ONNX_JOB = SystemSpec("per-record-onnx", "benchmarks.per_record_job", ("--runtime", "onnx"),
                                 description="Flink job with a scalar map function, one ONNX Runtime call per record")


def plain_consumer_spec(batch_size: int, max_wait_ms: int) -> SystemSpec:
    return SystemSpec(f"plain-consumer-b{batch_size}", "benchmarks.plain_consumer",
                      ("--batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms)),
                      description=f"plain confluent-kafka consumer → model → producer, batch {batch_size}")


@dataclass
class BenchContext:
    """Inputs of every measurement: the config, the model store and the request images."""

    config: Config
    store: Any
    images: np.ndarray
    progress: bool = True


@contextmanager
def bench_stack(config: Config, use_running: bool, keep_stack: bool = False) -> Iterator[Any]:
    """Start Kafka and Redis for ``config`` unless ``use_running``; stop them by pid afterwards.

    Yields the :class:`~shared.store.ModelStore` of the stack.
    """
    from deploy import stack
    from shared.store import ModelStore

    started = False
    try:
        if use_running:
            from clients.kafka_io import check_broker

            check_broker(config)
        else:
            print(f"starting the bench's Kafka ({config.kafka_bootstrap}) and Redis "
                  f"(127.0.0.1:{config.redis_port}) under {config.var_dir} ...", flush=True)
            started = True
            stack.up(config)
        yield ModelStore.from_config(config)
    finally:
        if started and not keep_stack:
            stack.down(config)


def load_request_images(config: Config) -> np.ndarray:
    """Return the held-out images the requests carry, preparing the data set if needed."""
    from shared.data import load_split, prepare

    prepare(config.data_dir, config.dataset)
    return load_split(config.data_dir, config.dataset, "t10k").images


def publish_untrained_snapshot(store: Any, config: Config) -> int:
    """Publish a seeded untrained model of ``config.architecture`` and return its version.

    Throughput does not depend on the weights, so the bench needs no training run.
    """
    from shared.model import build_model

    model = build_model(config.architecture, seed=config.seed)
    return store.publish(model.state_dict(), {
        "architecture": config.architecture,
        "samples_seen": 0,
        "accuracy": None,
        "note": "untrained model published by onml bench",
    })


def describe_served_model(store: Any) -> dict[str, Any]:
    """Load the latest snapshot as the inference job does and describe it (version, classes, runtime)."""
    from inference_job.predictor import load_model

    loaded = load_model(store)
    inner = getattr(loaded, "module", None)
    return {
        "version": loaded.version,
        "architecture": loaded.metadata.get("architecture"),
        "samples_seen": loaded.metadata.get("samples_seen"),
        "accuracy": loaded.metadata.get("accuracy"),
        "loaded_as": f"{type(loaded).__module__}.{type(loaded).__qualname__}",
        "module": None if inner is None else f"{type(inner).__module__}.{type(inner).__qualname__}",
        "runtime": getattr(loaded, "runtime", None),
    }


@contextmanager
def without_gc_pauses() -> Iterator[None]:
    """Turn off Python's cyclic garbage collector in this process for the duration of a measurement.

    A full collection walks every container object alive. A bench process keeps hundreds
    of thousands of arrival records, so a collection would stall the sender and the
    collector in the middle of a measurement. Reference counting still frees memory.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def progress_bar(total: int | None, description: str, enabled: bool = True, unit: str = "msg") -> tqdm:
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False,
                mininterval=0.5)


def run_with_time_bar(seconds: float, description: str, enabled: bool, action: Callable[[], Any]) -> Any:
    """Run ``action`` while a progress bar counts the seconds up to ``seconds``; return its result."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        with progress_bar(round(seconds), description, enabled, unit="s") as bar:
            while not done.wait(0.5):
                bar.update(min(round(seconds), int(time.monotonic() - started)) - bar.n)

    ticker = threading.Thread(target=tick, name="time-bar", daemon=True)
    ticker.start()
    try:
        return action()
    finally:
        done.set()
        ticker.join(timeout=2)


def produce(producer: Any, topic: str, value: bytes, timeout_s: float = PRODUCE_TIMEOUT_S) -> None:
    """Queue one message, waiting for librdkafka to deliver some first when its local queue is full.

    Raises :class:`BenchError` when the queue stays full for ``timeout_s`` (the broker is
    not taking messages).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.produce(topic, value)
            return
        except BufferError:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:.0f} s queueing a message for {topic}: the producer's "
                                 "queue stayed full, so the broker is not taking messages") from None
            producer.poll(0.05)


def prefill_requests(config: Config, images: np.ndarray, count: int, run_id: str,
                     enabled_progress: bool = True) -> list[str]:
    """Publish ``count`` requests to the run's request topic and return their ids, in order."""
    from clients.kafka_io import make_producer
    from shared.wire import encode_request, now_ms

    producer = make_producer(config)
    ids = []
    with progress_bar(count, "pre-filling requests", enabled_progress) as bar:
        for n in range(count):
            request_id = f"{run_id}-{n}"
            produce(producer, config.request_topic, encode_request(request_id, images[n % len(images)], now_ms()))
            ids.append(request_id)
            if n % 1000 == 999:
                producer.poll(0)
                bar.update(1000)
        bar.update(count % 1000)
        remaining = producer.flush(60)
    if remaining:
        raise BenchError(f"{remaining} of {count} requests were not delivered to {config.request_topic} within 60 s")
    return ids


class SystemProcess:
    """A system under test running as ``python -m module`` in its own process group, with RSS sampling."""

    def __init__(self, spec: SystemSpec, config: Config, run_id: str) -> None:
        self.spec = spec
        self.config = config
        self.run_id = run_id
        self.job = JobProcess(f"bench-{run_id}", spec.module, config, job_environment(config), list(spec.args))
        self.sampler: RssSampler | None = None
        self.started_ms: float | None = None

    def start(self) -> None:
        self.started_ms = time.time() * 1000.0
        self.job.start()
        self.sampler = RssSampler(self.job.pid).start()

    def alive(self) -> bool:
        return self.job.pid is not None and self.job.exit_code() is None

    def check_alive(self) -> None:
        if self.job.pid is not None and self.job.exit_code() is not None:
            raise BenchError(f"{self.spec.name} (pid {self.job.pid}) exited with status {self.job.exit_code()}; "
                             f"last lines of {self.job.log_path}:\n{self.job.log_tail()}")

    def stop(self) -> None:
        """Stop the process group and wait until every process in it is gone.

        JobProcess.stop waits for the group leader only. The JVM and Python workers may
        outlive it for a moment, and they would take CPU from the next measurement.
        """
        if self.sampler is not None:
            self.sampler.stop()
        self.job.stop()
        group_id = self.job.pid
        if group_id is None:
            return
        if not wait_until(lambda: group_rss_bytes(group_id)[1] == 0, GROUP_EXIT_TIMEOUT_S):
            logger.warning("processes of %s (process group %d) outlived it by %.0f s; sending SIGKILL to the group",
                           self.spec.name, group_id, GROUP_EXIT_TIMEOUT_S)
            try:
                os.killpg(group_id, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def peak_rss_mb(self) -> float | None:
        return None if self.sampler is None else self.sampler.peak_mb

    @property
    def log_path(self) -> Path:
        return self.job.log_path


@contextmanager
def run_session(context: BenchContext, spec: SystemSpec, label: str,
                **overrides: Any) -> Iterator[tuple[Config, SystemProcess]]:
    """Create a run's topics, yield its config and (not yet started) system, then stop it and delete the topics."""
    from deploy.stack import create_topics

    run_id = new_run_id(label)
    config = run_config(context.config, run_id, **overrides)
    create_topics(config)
    system = SystemProcess(spec, config, run_id)
    try:
        yield config, system
    finally:
        system.stop()
        delete_topics(config)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
