"""Building blocks that both Flink jobs use: environment, Kafka source and sinks, recovery.

The jobs run unchanged on PyFlink's embedded mini-cluster (``python -m training_job.job``)
and on a standalone cluster (``flink run -py training_job/job.py -pyfs ...``). In both
cases the project's own packages are shipped with the job through
``add_python_file``, so workers never depend on the packages being installed.
"""

from __future__ import annotations

import logging
import os
import site
import sys
import zipfile
from pathlib import Path

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import CheckpointingMode, DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from shared.config import Config

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The packages a job needs on the workers.
JOB_PACKAGES = ("shared", "training_job", "inference_job")


def absolute_paths(config: Config) -> Config:
    """Resolve the config's relative paths against the working directory of the client.

    Workers run with another working directory, so they must receive absolute paths.
    """
    return config.replace(
        var_dir=str(Path(config.var_dir).resolve()),
        data_dir=str(Path(config.data_dir).resolve()),
        redis_password_file=str(Path(config.redis_password_file).resolve()),
        connector_jar=str((PROJECT_ROOT / config.connector_jar).resolve()
                          if not Path(config.connector_jar).is_absolute() else Path(config.connector_jar)),
    )


def checkpoint_dir(config: Config, job_name: str) -> Path:
    return Path(config.var_dir) / "checkpoints" / job_name


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest completed checkpoint (a ``chk-N`` folder with ``_metadata``) under ``directory``."""
    if not directory.is_dir():
        return None
    completed = [meta.parent for meta in directory.glob("*/chk-*/_metadata")]
    if not completed:
        return None
    return max(completed, key=lambda path: path.stat().st_mtime)


def execution_mode(config: Config, auto_mode: str) -> str:
    """Return the PyFlink execution mode of a job: ``auto_mode`` when ``python_execution_mode`` is "auto"."""
    return auto_mode if config.python_execution_mode == "auto" else config.python_execution_mode


def create_environment(
    config: Config, job_name: str, resume: bool = True, auto_mode: str = "process"
) -> StreamExecutionEnvironment:
    """Create a stream environment with checkpointing, Python settings and the Kafka connector.

    With ``resume`` the job restores from the newest retained checkpoint of ``job_name``,
    so a killed job continues where its last checkpoint left it. The job runs in the
    execution mode of :func:`execution_mode`, which is ``auto_mode`` when the config's
    ``python_execution_mode`` is "auto".
    """
    connector = Path(config.connector_jar)
    if not connector.is_file():
        raise FileNotFoundError(
            f"Flink Kafka connector jar not found at {connector}; run 'make deps' "
            "(mvn -q -B -f deploy/flink/pom.xml package) to fetch it"
        )

    mode = execution_mode(config, auto_mode)
    settings = Configuration()
    if mode == "thread":
        # Thread mode runs Python inside the TaskManager JVM, whose interpreter finds pemja
        # and the rest of the virtualenv only through this path (without it: "No module
        # named 'pemja'"). The path must exist on the TaskManager's machine.
        settings.set_string("python.pythonpath", os.pathsep.join(site.getsitepackages()))

    checkpoints = checkpoint_dir(config, job_name)
    settings.set_string("python.executable", sys.executable)
    settings.set_string("python.client.executable", sys.executable)
    settings.set_string("python.execution-mode", mode)
    # Process mode hands records to the Python worker in bundles and runs timers only
    # between bundles, so a short bundle time is what bounds the latency of a lone request.
    settings.set_string("python.fn-execution.bundle.time", str(config.bundle_time_ms))
    settings.set_string("python.fn-execution.bundle.size", str(config.bundle_size))
    settings.set_string("execution.checkpointing.dir", checkpoints.resolve().as_uri())
    settings.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    settings.set_string("execution.checkpointing.num-retained", "2")
    if "PYFLINK_GATEWAY_PORT" not in os.environ:
        # Embedded mini-cluster (not `flink run`, whose driver sets that variable): keep its
        # REST endpoint on loopback and on a free port, so two jobs and a demo can coexist.
        settings.set_string("rest.bind-address", "127.0.0.1")
        settings.set_string("rest.address", "127.0.0.1")
        settings.set_string("rest.port", "0")
    if resume:
        restore_from = latest_checkpoint(checkpoints)
        if restore_from is not None:
            settings.set_string("execution.state-recovery.path", restore_from.resolve().as_uri())
            logger.info("%s restores from checkpoint %s", job_name, restore_from)
        else:
            logger.info("%s starts without a checkpoint (none under %s)", job_name, checkpoints)

    env = StreamExecutionEnvironment.get_execution_environment(settings)
    env.set_parallelism(config.parallelism)
    env.set_buffer_timeout(config.network_buffer_timeout_ms)
    env.enable_checkpointing(config.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    env.add_jars(connector.resolve().as_uri())
    env.add_python_file(str(build_job_archive(Path(config.var_dir) / "build")))
    return env


def build_job_archive(directory: Path) -> Path:
    """Zip the job packages' Python files into ``directory/onml-jobs.zip`` and return its path.

    Flink puts each shipped directory itself on the workers' PYTHONPATH, which would
    make ``shared/wire.py`` importable as ``wire`` rather than ``shared.wire``. A zip with
    the packages at its top level keeps the package names the code imports.
    """
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "onml-jobs.zip"
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
        for package in JOB_PACKAGES:
            for source in sorted((PROJECT_ROOT / package).rglob("*.py")):
                bundle.write(source, source.relative_to(PROJECT_ROOT).as_posix())
    partial.replace(archive)
    return archive


def kafka_string_source(
    env: StreamExecutionEnvironment, config: Config, topic: str, group_suffix: str, name: str
) -> DataStream:
    """Read ``topic`` as UTF-8 strings from the committed offsets of the group, or the earliest ones."""
    source = (
        KafkaSource.builder()
        .set_bootstrap_servers(config.kafka_bootstrap)
        .set_topics(topic)
        .set_group_id(f"{config.consumer_group_prefix}-{group_suffix}")
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("partition.discovery.interval.ms", "10000")
        .build()
    )
    return env.from_source(source, WatermarkStrategy.no_watermarks(), name).uid(f"{name}-source")


def kafka_string_sink(config: Config, topic: str) -> KafkaSink:
    """Write strings to ``topic`` at least once (records are flushed at every checkpoint)."""
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(config.kafka_bootstrap)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(topic)
            .set_value_serialization_schema(SimpleStringSchema())
            .build()
        )
        .set_property("linger.ms", "2")
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .build()
    )


def sink_dead_letters(stream: DataStream, config: Config, name: str) -> None:
    stream.sink_to(kafka_string_sink(config, config.dead_letter_topic)).name(f"{name}-dead-letter").uid(
        f"{name}-dead-letter-sink"
    )


STRING = Types.STRING()
