"""Checks of deploy.stack against real Kafka, Redis and Flink processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from deploy import stack as stack_module
from deploy.stack import FlinkCluster, KafkaBroker, RedisServer, StackError
from shared.config import Config

pytestmark = pytest.mark.integration

# A PyFlink job that records its arguments and the value of a module shipped with
# --pyFiles, then reads one Kafka topic. With "bounded" it stops at the latest offsets,
# and otherwise it runs until cancelled. The Kafka source needs the connector jar on the
# client and the TaskManager, so a FINISHED job shows that jars reach both.
PROBE_JOB = """
import json
import sys
from pathlib import Path

from pyflink.common import WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

import probe_helper

output, bootstrap, topic, mode = sys.argv[1:5]
Path(output).write_text(json.dumps({"argv": sys.argv[1:], "helper": probe_helper.VALUE}))

builder = (
    KafkaSource.builder()
    .set_bootstrap_servers(bootstrap)
    .set_topics(topic)
    .set_group_id("probe-" + mode)
    .set_starting_offsets(KafkaOffsetsInitializer.earliest())
    .set_value_only_deserializer(SimpleStringSchema())
)
if mode == "bounded":
    builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
env = StreamExecutionEnvironment.get_execution_environment()
env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "probe-source").print()
env.execute("probe-" + mode)
"""


def _topic_names(config: Config) -> list[str]:
    return [
        config.training_topic, config.request_topic,
        config.result_topic, config.dead_letter_topic,
    ]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Only a zombie that init has not reaped yet may remain.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _consume_value(config: Config, topic: str, expected: bytes, timeout: float = 30.0) -> bool:
    """Read ``topic`` from the beginning of every partition until ``expected`` appears."""
    consumer = Consumer({
        "bootstrap.servers": config.kafka_bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([
            TopicPartition(topic, partition, -2)  # -2 is OFFSET_BEGINNING
            for partition in partitions
        ])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if message.value() == expected:
                return True
        return False
    finally:
        consumer.close()


def _redis_client(config: Config, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=config.redis_host, port=config.redis_port, password=password,
        socket_timeout=5, socket_connect_timeout=5,
    )


# --------------------------------------------------------------------------------------
# Kafka


def test_topics_exist_with_partitions(stack: Config) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    for name in _topic_names(stack):
        assert name in topics
        assert len(topics[name].partitions) == stack.topic_partitions


def test_topics_round_trip_message(stack: Config) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    payloads = {name: f"probe-{uuid.uuid4().hex}".encode() for name in _topic_names(stack)}
    for name, payload in payloads.items():
        producer.produce(name, value=payload)
    assert producer.flush(15) == 0

    for name, payload in payloads.items():
        assert _consume_value(stack, name, payload), f"message not read back from {name}"


def test_create_topics_is_idempotent(stack: Config) -> None:
    assert stack_module.create_topics(stack) == []


def test_auto_create_topics_disabled(stack: Config) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    missing = f"onml.test-missing-{uuid.uuid4().hex[:8]}"
    producer = Producer({
        "bootstrap.servers": stack.kafka_bootstrap,
        "message.timeout.ms": 2000,
    })
    producer.produce(missing, value=b"x")
    producer.flush(5)
    assert missing not in admin.list_topics(timeout=10).topics


# --------------------------------------------------------------------------------------
# Redis


def test_cli_stack_up_lists_services(stack: Config) -> None:
    # The stack is running already, so 'up' reuses it and lists what runs.
    environment = {**os.environ, **stack.to_environ()}
    completed = subprocess.run([sys.executable, "-m", "clients.cli", "stack", "up"], env=environment,
                               cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert any(line.startswith("kafka") and " running " in line for line in lines), completed.stdout
    assert any(line.startswith("redis") and " running " in line for line in lines), completed.stdout
    assert not any(line.startswith("flink") for line in lines), completed.stdout


def test_redis_accepts_password(stack: Config) -> None:
    client = _redis_client(stack, stack.redis_secret())
    assert client.ping()
    client.set("onml:test:auth", "ok")
    assert client.get("onml:test:auth") == b"ok"


def test_redis_rejects_wrong_password(stack: Config) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis_client(stack, "not-" + stack.redis_secret()).ping()


def test_redis_rejects_missing_password(stack: Config) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis_client(stack, None).ping()


def test_redis_writes_append_only_file(stack: Config) -> None:
    key = f"onml:test:aof:{uuid.uuid4().hex}"
    _redis_client(stack, stack.redis_secret()).set(key, "1")
    aof_dir = Path(stack.var_dir) / "redis" / "appendonlydir"

    # appendfsync everysec flushes the write within about a second.
    deadline = time.monotonic() + 10
    found = False
    while time.monotonic() < deadline and not found:
        found = any(key.encode() in path.read_bytes() for path in aof_dir.glob("*.aof"))
        time.sleep(0.2)
    assert found, f"{key} not found in {sorted(os.listdir(aof_dir))}"


def test_redis_creates_password_file(stack_config_factory) -> None:
    config = stack_config_factory("password", redis_password="")
    server = RedisServer(config)
    try:
        server.start()
        password_file = Path(config.redis_password_file)
        assert password_file.is_file()
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.conf_file.stat().st_mode) == 0o600
        assert _redis_client(config, config.redis_secret()).ping()
    finally:
        server.stop()


def test_redis_port_in_use_rejected(stack_config_factory) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        config = stack_config_factory("busy", redis_port=blocker.getsockname()[1])
        with pytest.raises(StackError, match="already in use"):
            RedisServer(config).start()


# --------------------------------------------------------------------------------------
# Status, pid files and restarts


def test_status_reports_running_services(stack: Config) -> None:
    report = stack_module.status(stack)
    for name in ("kafka", "redis"):
        entry = report[name]
        assert entry["running"] is True
        assert isinstance(entry["pid"], int)
        assert not _process_gone(entry["pid"])
        pid_file = Path(stack.var_dir) / "run" / f"{name}.pid"
        assert pid_file.read_text().strip() == str(entry["pid"])
    assert report["kafka"]["address"] == stack.kafka_bootstrap
    assert report["redis"]["address"] == f"{stack.redis_host}:{stack.redis_port}"


def test_stale_pid_file_removed(stack_config_factory) -> None:
    config = stack_config_factory("stale")
    finished = subprocess.Popen(["true"])
    finished.wait()
    pid_file = Path(config.var_dir) / "run" / "redis.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{finished.pid}\n")

    assert stack_module.status(config)["redis"]["running"] is False
    assert not pid_file.exists()


def test_foreign_pid_never_signalled(stack_config_factory) -> None:
    # A pid file that names a live process of another program, as after pid reuse.
    config = stack_config_factory("foreign")
    pid_file = Path(config.var_dir) / "run" / "kafka.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")

    stack_module.down(config)

    assert not pid_file.exists()
    assert not _process_gone(os.getpid())


def test_down_then_up_keeps_storage(stack_config_factory) -> None:
    config = stack_config_factory("restart")
    kept_topic = "onml.test-kept"
    try:
        first = stack_module.up(config)
        cluster_id = KafkaBroker(config).cluster_id()
        assert cluster_id
        admin = AdminClient({"bootstrap.servers": config.kafka_bootstrap})
        futures = admin.create_topics([NewTopic(kept_topic, num_partitions=1, replication_factor=1)])
        futures[kept_topic].result(timeout=30)
        _redis_client(config, config.redis_secret()).set("onml:test:kept", "yes")

        again = stack_module.up(config)
        for name in ("kafka", "redis"):
            assert again[name]["pid"] == first[name]["pid"], f"{name} was restarted"

        stack_module.down(config)
        for name in ("kafka", "redis"):
            assert _process_gone(first[name]["pid"]), f"{name} pid {first[name]['pid']} alive"
            assert not (Path(config.var_dir) / "run" / f"{name}.pid").exists()
        assert not any(entry["running"] for entry in stack_module.status(config).values())

        second = stack_module.up(config)
        assert second["kafka"]["running"]
        assert KafkaBroker(config).cluster_id() == cluster_id
        topics = AdminClient({"bootstrap.servers": config.kafka_bootstrap}).list_topics(timeout=10)
        assert kept_topic in topics.topics
        assert _redis_client(config, config.redis_secret()).get("onml:test:kept") == b"yes"
    finally:
        stack_module.down(config)


# --------------------------------------------------------------------------------------
# Flink


def test_flink_cluster_starts_and_stops(stack_config_factory) -> None:
    cluster = FlinkCluster(stack_config_factory("flink"))
    try:
        jobmanager_pid, taskmanager_pid = cluster.start()
        overview = cluster.overview()
        assert overview["taskmanagers"] == 1
        assert overview["slots-total"] == 2
        report = cluster.status()
        assert report["flink-jobmanager"]["pid"] == jobmanager_pid
        assert report["flink-taskmanager"]["pid"] == taskmanager_pid

        assert cluster.stop() is True
        assert _process_gone(jobmanager_pid)
        assert _process_gone(taskmanager_pid)
        assert not any(entry["running"] for entry in cluster.status().values())
        assert not list((Path(cluster.config.var_dir) / "run").rglob("*.pid"))
    finally:
        cluster.stop()


def _wait_for_state(cluster: FlinkCluster, job_id: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = cluster.job_states().get(job_id, "UNKNOWN")
        if state in states:
            return state
        time.sleep(0.5)
    return state


def test_flink_run_bounded_job(flink_cluster: FlinkCluster, stack: Config, tmp_path: Path) -> None:
    script = tmp_path / "probe_job.py"
    script.write_text(PROBE_JOB)
    helper = tmp_path / "probe_helper.py"
    helper.write_text("VALUE = 42\n")
    output = tmp_path / "probe.json"

    job_id = flink_cluster.flink_run(
        script, [helper],
        [str(output), stack.kafka_bootstrap, stack.training_topic, "bounded"],
        [stack.connector_jar],
    )

    state = _wait_for_state(flink_cluster, job_id, {"FINISHED", "FAILED", "CANCELED"}, 120)
    assert state == "FINISHED"
    recorded = json.loads(output.read_text())
    assert recorded["argv"] == [str(output), stack.kafka_bootstrap, stack.training_topic, "bounded"]
    assert recorded["helper"] == 42


def test_flink_cancel_running_job(flink_cluster: FlinkCluster, stack: Config, tmp_path: Path) -> None:
    script = tmp_path / "probe_job.py"
    script.write_text(PROBE_JOB)
    helper = tmp_path / "probe_helper.py"
    helper.write_text("VALUE = 1\n")

    job_id = flink_cluster.flink_run(
        script, [helper],
        [str(tmp_path / "probe.json"), stack.kafka_bootstrap, stack.request_topic, "unbounded"],
        [stack.connector_jar],
    )
    assert _wait_for_state(flink_cluster, job_id, {"RUNNING"}, 60) == "RUNNING"

    flink_cluster.cancel(job_id)

    assert _wait_for_state(flink_cluster, job_id, {"CANCELED"}, 60) == "CANCELED"


def test_flink_run_reports_failure(flink_cluster: FlinkCluster, tmp_path: Path) -> None:
    script = tmp_path / "broken_job.py"
    # Flink checks that the Python process is alive right after starting it, and a script
    # that has already exited by then is reported without its output. The pause lets the
    # check pass, so that the failure comes with the script's message.
    script.write_text("import time\ntime.sleep(2)\nraise SystemExit('probe failure')\n")
    with pytest.raises(StackError, match="probe failure"):
        flink_cluster.flink_run(script, [], [], [])
