"""Building blocks that both Flink jobs use: environment, Kafka source and sinks, recovery.

The jobs run unchanged on PyFlink's embedded mini-cluster (``python -m training_job.job``)
and on a standalone cluster (``flink run -py training_job/job.py -pyfs ...``). In both
cases the project's own packages are shipped with the job through
``add_python_file``, so workers never depend on the packages being installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
import uuid
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
# The Java operators the inference job runs around its Python function.
JAVA_SOURCES = PROJECT_ROOT / "inference_job" / "java"
# The bytecode level of those operators: the oldest Java that Flink 2.x runs on.
JAVA_RELEASE = "11"


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


def partial_path(target: Path) -> Path:
    """Return a path beside ``target`` for this process alone to write before renaming it to ``target``.

    Jobs started together (training and inference, or a job and a bench baseline) build
    the same files at the same time. With one shared partial name, one process renamed
    the other's half-written file away and the other failed with FileNotFoundError.
    """
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def build_job_archive(directory: Path) -> Path:
    """Zip the job packages' Python files into ``directory/onml-jobs.zip`` and return its path.

    Flink puts each shipped directory itself on the workers' PYTHONPATH, which would
    make ``shared/wire.py`` importable as ``wire`` rather than ``shared.wire``. A zip with
    the packages at its top level keeps the package names the code imports.
    """
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "onml-jobs.zip"
    partial = partial_path(archive)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
        for package in JOB_PACKAGES:
            for source in sorted((PROJECT_ROOT / package).rglob("*.py")):
                bundle.write(source, source.relative_to(PROJECT_ROOT).as_posix())
    partial.replace(archive)
    return archive


def build_operator_jar(directory: Path) -> Path:
    """Compile the Java operators under ``inference_job/java`` into a jar and return its path.

    They are compiled against the Flink jars that PyFlink ships, so they always match the
    Flink version that runs them. The jar's name carries a hash of the sources, the Flink
    version and the bytecode level: an unchanged jar is reused, a changed source gives a
    new jar. Needs ``javac`` on the PATH or in ``$JAVA_HOME/bin``.
    """
    import pyflink

    flink_lib = Path(pyflink.__file__).resolve().parent / "lib"
    sources = sorted(JAVA_SOURCES.rglob("*.java"))
    digest = hashlib.sha256(JAVA_RELEASE.encode())
    digest.update(",".join(sorted(jar.name for jar in flink_lib.glob("flink-*.jar"))).encode())
    for source in sources:
        digest.update(source.relative_to(JAVA_SOURCES).as_posix().encode())
        digest.update(source.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    jar = directory / f"onml-operators-{digest.hexdigest()[:12]}.jar"
    if jar.is_file():
        return jar

    javac = _find_javac()
    with tempfile.TemporaryDirectory(prefix="onml-javac-") as classes:
        command = [javac, "--release", JAVA_RELEASE, "-nowarn", "-encoding", "UTF-8",
                   "-cp", str(flink_lib / "*"), "-d", classes, *map(str, sources)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"compiling the Java operators failed:\n{completed.stderr.strip()}")
        partial = partial_path(jar)
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nCreated-By: onml\r\n\r\n")
            for compiled in sorted(Path(classes).rglob("*.class")):
                archive.write(compiled, compiled.relative_to(classes).as_posix())
        partial.replace(jar)
    logger.info("compiled the Java operators into %s", jar)
    return jar


def _find_javac() -> str:
    candidates = [os.path.join(os.environ["JAVA_HOME"], "bin", "javac")] if os.environ.get("JAVA_HOME") else []
    candidates.append(shutil.which("javac") or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "javac not found: the inference job compiles its Java operators on first start. "
        "Install a JDK (Debian: apt-get install openjdk-17-jdk-headless, which 'make deps' does) "
        "or set JAVA_HOME to one"
    )


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
