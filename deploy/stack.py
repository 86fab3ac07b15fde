"""Start, stop and inspect the local Kafka broker, Redis server and Flink cluster.

Each service runs as a child process in its own session, so it outlives the command that
started it. Its pid goes to ``<var_dir>/run/<name>.pid`` and its stdout and stderr to
``<var_dir>/log/<name>.log``. Every service listens on 127.0.0.1 only. Services are
stopped by the pid in their pid file, after checking that the pid still belongs to the
process this module started, so a recycled pid is never signalled.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from shared.config import Config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_LIB = REPO_ROOT / "deploy" / "kafka" / "target" / "lib"

LOOPBACK = "127.0.0.1"
_LOCAL_HOSTS = ("127.0.0.1", "localhost")

# Log lines quoted in an error when a service exits during start.
_LOG_TAIL_LINES = 20


class StackError(RuntimeError):
    """A local service could not be started, reached or stopped."""


# --------------------------------------------------------------------------------------
# Processes


# Popen handles of the services started by this Python process. Polling them reaps a
# child that has exited, which would otherwise stay a zombie that `kill -0` reports alive.
_children: dict[int, subprocess.Popen] = {}


def _proc_state(pid: int) -> str | None:
    """Return the state letter from /proc/<pid>/stat, or None where /proc has no entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The pid exists but belongs to another user.
        return True
    return _proc_state(pid) not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(log file missing)"
    return "\n".join(text.splitlines()[-lines:])


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_until(ready: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _require_local(host: str, setting: str) -> None:
    if host not in _LOCAL_HOSTS:
        raise StackError(
            f"{setting} points at {host!r}, but the local stack only starts services on "
            f"127.0.0.1; set {setting} to a 127.0.0.1 address"
        )


def _split_host_port(address: str, setting: str) -> tuple[str, int]:
    """Return host and port of the first entry in a comma-separated ``host:port`` list."""
    first = address.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise StackError(f"invalid {setting} {address!r}: expected host:port")
    return host, int(port)


@dataclass
class ManagedProcess:
    """One long-running service process, tracked through its pid file.

    ``markers`` are substrings of the process's command line that identify it. A pid
    whose command line lacks any of them belongs to another program after pid reuse, so
    its pid file is treated as stale. Where /proc is missing the check is skipped.
    """

    name: str
    var_dir: Path
    markers: tuple[str, ...]

    @property
    def pid_file(self) -> Path:
        return self.var_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.var_dir / "log" / f"{self.name}.log"

    def _owns(self, pid: int) -> bool:
        cmdline = _cmdline(pid)
        if cmdline is None:
            return True
        return all(marker in cmdline for marker in self.markers)

    def pid(self) -> int | None:
        """Return the pid of the running service, removing a stale pid file."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        pid = int(text) if text.isdigit() else None
        if pid is not None and pid_alive(pid) and self._owns(pid):
            return pid
        log.info("Removing stale pid file %s (pid %s is not running)", self.pid_file, text or "?")
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self,
        argv: Sequence[str],
        ready: Callable[[], bool],
        *,
        timeout: float,
        address: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv``, write its pid file and wait until ``ready()`` returns true.

        Returns the pid. A service that is already running is only waited for. On a
        timeout the new process is stopped and :class:`StackError` names the log file.
        """
        running = self.pid()
        if running is not None:
            log.info("%s is already running (pid %d) on %s", self.name, running, address)
            self._wait_ready(running, ready, timeout)
            return running

        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_file, "ab") as log_handle:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # A new session keeps the service alive when the starting terminal sends
                # SIGINT or SIGHUP to its process group.
                start_new_session=True,
            )
        _children[process.pid] = process
        self.pid_file.write_text(f"{process.pid}\n")

        try:
            self._wait_ready(process.pid, ready, timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Started %s (pid %d) on %s in %.1f s",
            self.name, process.pid, address, time.monotonic() - started,
        )
        return process.pid

    def _wait_ready(self, pid: int, ready: Callable[[], bool], timeout: float) -> None:
        def check() -> bool:
            if not pid_alive(pid):
                child = _children.get(pid)
                code = child.returncode if child is not None else "unknown"
                raise StackError(
                    f"{self.name} (pid {pid}) exited with code {code} while starting. "
                    f"Last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            return ready()

        if not _wait_until(check, timeout):
            raise StackError(
                f"timed out after {timeout:g} s waiting for {self.name} (pid {pid}) "
                f"to become ready. See {self.log_file}"
            )

    def stop(self, timeout: float = 30.0) -> bool:
        """Send SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Returns False when the service was not running.
        """
        pid = self.pid()
        if pid is None:
            return False
        log.info("Stopping %s (pid %d)", self.name, pid)
        # Each service was started in its own session, so its pid is also its process
        # group id: signalling the group also reaches what it started (a TaskManager's
        # Python workers, for one).
        self._signal(pid, signal.SIGTERM)
        if not _wait_until(lambda: not pid_alive(pid), timeout, interval=0.1):
            log.warning(
                "%s (pid %d) did not exit within %.0f s of SIGTERM; sending SIGKILL",
                self.name, pid, timeout,
            )
            self._signal(pid, signal.SIGKILL)
            if not _wait_until(lambda: not pid_alive(pid), 10.0, interval=0.1):
                raise StackError(f"{self.name} (pid {pid}) is still running after SIGKILL")
        # Children that outlive the service itself.
        self._signal(pid, signal.SIGKILL)
        _children.pop(pid, None)
        self.pid_file.unlink(missing_ok=True)
        log.info("Stopped %s (pid %d)", self.name, pid)
        return True

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        """Signal the process group that ``pid`` leads, or ``pid`` alone if it leads none."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass

    def status(self, address: str) -> dict[str, Any]:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid, "address": address}


def _var_dir(config: Config) -> Path:
    return Path(config.var_dir).absolute()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError("java not found: install a Java 17 runtime or set JAVA_HOME")
    return java


# --------------------------------------------------------------------------------------
# Kafka


def _new_cluster_id() -> str:
    """Return a random Kafka cluster id: 16 bytes in URL-safe base64 without padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka's own generator also skips ids starting with '-', which a command line
        # would read as an option.
        if not cluster_id.startswith("-"):
            return cluster_id


def _read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _librdkafka_logger() -> logging.Logger:
    return logging.getLogger(__name__ + ".librdkafka")


class KafkaBroker:
    """A single-node Kafka broker in KRaft combined mode (broker and controller)."""

    name = "kafka"

    def __init__(self, config: Config, *, heap: str = "512m", start_timeout: float = 90.0):
        self.config = config
        self.heap = heap
        self.start_timeout = start_timeout
        self.host, self.port = _split_host_port(config.kafka_bootstrap, "kafka_bootstrap")
        self.dir = _var_dir(config) / "kafka"
        self.properties_file = self.dir / "server.properties"
        self.log4j_file = self.dir / "log4j2.properties"
        self.data_dir = self.dir / "data"
        self.process = ManagedProcess(self.name, _var_dir(config), (str(self.properties_file),))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        _require_local(self.host, "kafka_bootstrap")
        if self.process.pid() is None:
            for port in (self.port, self.config.kafka_controller_port):
                if _port_accepts(LOOPBACK, port):
                    raise StackError(
                        f"cannot start Kafka: 127.0.0.1:{port} is already in use by another "
                        f"process. Stop it or set kafka_bootstrap / kafka_controller_port"
                    )
            ensure_kafka_classpath()
            self._write_config()
            self._format_storage()
        return self.process.start(
            self._command(("kafka.Kafka", str(self.properties_file))),
            self._ready,
            timeout=self.start_timeout,
            address=self.address,
        )

    def stop(self, timeout: float = 30.0) -> bool:
        return self.process.stop(timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        return {self.name: self.process.status(self.address)}

    def cluster_id(self) -> str | None:
        """Return the cluster id stored in the formatted log directory, if any."""
        meta = self.data_dir / "meta.properties"
        if not meta.is_file():
            return None
        return _read_properties(meta).get("cluster.id")

    def _command(self, main: Sequence[str]) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            str(KAFKA_LIB / "*"),
            *main,
        ]

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        controller = f"{LOOPBACK}:{self.config.kafka_controller_port}"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.config.topic_partitions),
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # A single broker can hold one replica of each internal topic.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # The defaults of 50 partitions make the first group join and the first
            # transaction slow on a one-node broker.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            # The Flink Kafka sink with exactly-once delivery defaults to a transaction
            # timeout of 1 hour, above the broker's default maximum of 15 minutes.
            "transaction.max.timeout.ms": "3600000",
        }
        self.properties_file.write_text(
            "".join(f"{key}={value}\n" for key, value in properties.items())
        )
        self.log4j_file.write_text(
            "status = warn\n"
            "appender.stdout.type = Console\n"
            "appender.stdout.name = STDOUT\n"
            "appender.stdout.layout.type = PatternLayout\n"
            "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
        )

    def _format_storage(self) -> None:
        """Format the log directory on first start only, keeping the cluster id after."""
        if self.cluster_id() is not None:
            return
        cluster_id = _new_cluster_id()
        log.info("Formatting Kafka storage in %s with cluster id %s", self.data_dir, cluster_id)
        self.process.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.process.log_file, "ab") as log_handle:
            result = subprocess.run(
                self._command((
                    "kafka.tools.StorageTool", "format",
                    "--cluster-id", cluster_id,
                    "--config", str(self.properties_file),
                )),
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage failed with exit code {result.returncode}. "
                f"Last lines of {self.process.log_file}:\n{_tail(self.process.log_file)}"
            )

    def _ready(self) -> bool:
        if not _port_accepts(LOOPBACK, self.port):
            return False
        # Imported here so that Redis- and Flink-only commands do not load librdkafka.
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({
            "bootstrap.servers": self.address,
            "socket.timeout.ms": 2000,
            "logger": _librdkafka_logger(),
        })
        try:
            admin.list_topics(timeout=2)
        except KafkaException as error:
            log.debug("Kafka on %s is not ready yet: %s", self.address, error)
            return False
        return True


def ensure_kafka_classpath() -> Path:
    """Resolve the broker's jars into deploy/kafka/target/lib with Maven when missing."""
    if any(KAFKA_LIB.glob("kafka_*.jar")):
        return KAFKA_LIB
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            f"the Kafka classpath {KAFKA_LIB} is missing and mvn was not found. "
            f"Install Maven and run: mvn -q -B -f {KAFKA_POM} package"
        )
    log.info("Resolving the Kafka broker classpath with Maven into %s", KAFKA_LIB)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(KAFKA_POM), "package"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not any(KAFKA_LIB.glob("kafka_*.jar")):
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise StackError(
            f"mvn -f {KAFKA_POM} package failed with exit code {result.returncode}:\n{output}"
        )
    return KAFKA_LIB


def create_topics(config: Config, timeout: float = 30.0) -> list[str]:
    """Create the four onml topics with ``config.topic_partitions`` partitions each.

    Topics that already exist are left as they are. Returns the names created by this
    call. Waits until every topic has a leader for each partition.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    names = [
        config.training_topic, config.request_topic,
        config.result_topic, config.dead_letter_topic,
    ]
    admin = AdminClient({
        "bootstrap.servers": config.kafka_bootstrap,
        "logger": _librdkafka_logger(),
    })
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=config.topic_partitions, replication_factor=1)
         for name in names],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"creating Kafka topic {name!r} failed: {error}") from error
        else:
            created.append(name)
            log.info("Created topic %s with %d partitions", name, config.topic_partitions)

    def all_have_leaders() -> bool:
        topics = admin.list_topics(timeout=5).topics
        for name in names:
            metadata = topics.get(name)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                return False
            if any(partition.leader < 0 for partition in metadata.partitions.values()):
                return False
        return True

    if not _wait_until(all_have_leaders, timeout, interval=0.2):
        raise StackError(
            f"topics {names} have no leader after {timeout:g} s on {config.kafka_bootstrap}"
        )

    topics = admin.list_topics(timeout=5).topics
    for name in names:
        count = len(topics[name].partitions)
        if count != config.topic_partitions:
            log.warning(
                "Topic %s has %d partitions, but topic_partitions is %d; "
                "it was created earlier with another setting",
                name, count, config.topic_partitions,
            )
    return created


# --------------------------------------------------------------------------------------
# Redis


def _redis_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def ensure_redis_password(config: Config) -> str:
    """Return the Redis password, creating ``redis_password_file`` when there is none.

    A new file gets a random token and mode 0600. A password set in the config wins.
    """
    if config.redis_password:
        return config.redis_password
    path = Path(config.redis_password_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # Another process created it first, so keep its token.
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(token + "\n")
            log.info("Created Redis password file %s", path)
    return config.redis_secret()


class RedisServer:
    """A Redis server with a password and an append-only file."""

    name = "redis"

    def __init__(self, config: Config, *, start_timeout: float = 20.0):
        self.config = config
        self.start_timeout = start_timeout
        self.dir = _var_dir(config) / "redis"
        self.conf_file = self.dir / "redis.conf"
        self.process = ManagedProcess(self.name, _var_dir(config), (str(self.conf_file),))

    @property
    def address(self) -> str:
        return f"{self.config.redis_host}:{self.config.redis_port}"

    def start(self) -> int:
        _require_local(self.config.redis_host, "redis_host")
        password = ensure_redis_password(self.config)
        if self.process.pid() is None:
            if _port_accepts(LOOPBACK, self.config.redis_port):
                raise StackError(
                    f"cannot start Redis: 127.0.0.1:{self.config.redis_port} is already in "
                    f"use by another process. Stop it or set redis_port"
                )
            self._write_config(password)
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise StackError("redis-server not found: install Redis 7 (Debian: apt-get install redis-server)")
        return self.process.start(
            [redis_server, str(self.conf_file)],
            lambda: self._ready(password),
            timeout=self.start_timeout,
            address=self.address,
        )

    def stop(self, timeout: float = 30.0) -> bool:
        return self.process.stop(timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        return {self.name: self.process.status(self.address)}

    def _write_config(self, password: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {LOOPBACK}",
            "protected-mode yes",
            f"port {self.config.redis_port}",
            "daemonize no",
            # Redis rewrites its process title. Keeping the config path in the title lets
            # ManagedProcess recognise this server by its command line.
            'proc-title-template "{title} {listen-addr} {config-file}"',
            'logfile ""',
            f"dir {_redis_quote(str(self.dir))}",
            "appendonly yes",
            "appendfsync everysec",
            f"requirepass {_redis_quote(password)}",
        ]
        # The file contains the password, so only the owner may read it.
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(self.conf_file, 0o600)

    def _ready(self, password: str) -> bool:
        import redis

        client = redis.Redis(
            host=LOOPBACK, port=self.config.redis_port, password=password,
            socket_timeout=1, socket_connect_timeout=1,
        )
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        except redis.exceptions.BusyLoadingError:
            return False
        finally:
            client.close()


# --------------------------------------------------------------------------------------
# Flink


def pyflink_home() -> Path:
    """Return the directory of the installed PyFlink wheel, which contains bin/ and lib/."""
    import pyflink

    return Path(os.path.dirname(pyflink.__file__))


_JOB_ID = re.compile(r"JobID\s+([0-9a-f]{32})")


class FlinkCluster:
    """A standalone Flink session cluster with one JobManager and one TaskManager.

    The processes run ``jobmanager.sh`` and ``taskmanager.sh`` from the PyFlink wheel in
    foreground mode, so the pid this module records is the JVM's own.
    """

    name = "flink"

    def __init__(
        self,
        config: Config,
        *,
        task_slots: int = 2,
        jobmanager_memory: str = "1024m",
        taskmanager_memory: str = "2048m",
        start_timeout: float = 120.0,
    ):
        self.config = config
        self.task_slots = task_slots
        self.jobmanager_memory = jobmanager_memory
        self.taskmanager_memory = taskmanager_memory
        self.start_timeout = start_timeout
        self.home = pyflink_home()
        var_dir = _var_dir(config)
        self.dir = var_dir / "flink"
        self.conf_dir = self.dir / "conf"
        self.jobmanager = ManagedProcess(
            "flink-jobmanager", var_dir,
            (str(self.conf_dir), "StandaloneSessionClusterEntrypoint"),
        )
        self.taskmanager = ManagedProcess(
            "flink-taskmanager", var_dir, (str(self.conf_dir), "TaskManagerRunner"),
        )

    @property
    def rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config.flink_rest_port}"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.config.flink_rest_port}"

    def env(self) -> dict[str, str]:
        """Return the environment for Flink's scripts and its CLI."""
        var_dir = _var_dir(self.config)
        env = dict(os.environ)
        # The cluster must find the jobs' code only in what each job ships, never through
        # the caller's path (make sets PYTHONPATH to the checkout).
        env.pop("PYTHONPATH", None)
        env.update({
            "FLINK_CONF_DIR": str(self.conf_dir),
            "FLINK_LOG_DIR": str(var_dir / "log" / "flink"),
            "FLINK_PID_DIR": str(var_dir / "run" / "flink"),
            # The scripts name their pid and log files after this instead of $USER,
            # which is unset in some containers.
            "FLINK_IDENT_STRING": "onml",
            # find_flink_home.py and the Python driver run "python" from PATH.
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        })
        return env

    def start(self) -> tuple[int, int]:
        """Start the JobManager, then the TaskManager. Returns both pids."""
        if self.jobmanager.pid() is None:
            for port in (self.config.flink_rest_port, self.config.flink_jobmanager_rpc_port):
                if _port_accepts(LOOPBACK, port):
                    raise StackError(
                        f"cannot start Flink: 127.0.0.1:{port} is already in use by another "
                        f"process. Stop it or set flink_rest_port / flink_jobmanager_rpc_port"
                    )
            self._write_config()
        env = self.env()
        jobmanager_pid = self.jobmanager.start(
            [str(self.home / "bin" / "jobmanager.sh"), "start-foreground"],
            lambda: self._overview() is not None,
            timeout=self.start_timeout,
            address=self.address,
            env=env,
            cwd=self.dir,
        )
        try:
            taskmanager_pid = self.taskmanager.start(
                [str(self.home / "bin" / "taskmanager.sh"), "start-foreground"],
                # A TaskManager is listed a moment before its slots are, and a job
                # submitted in between waits for resources: ready means slots too.
                lambda: (self._overview() or {}).get("slots-total", 0) >= self.task_slots,
                timeout=self.start_timeout,
                address=self.address,
                env=env,
                cwd=self.dir,
            )
        except BaseException:
            self.jobmanager.stop()
            raise
        return jobmanager_pid, taskmanager_pid

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the TaskManager, then the JobManager. Returns whether either was running."""
        stopped_taskmanager = self.taskmanager.stop(timeout)
        stopped_jobmanager = self.jobmanager.stop(timeout)
        self._remove_script_pid_files()
        return stopped_taskmanager or stopped_jobmanager

    def _remove_script_pid_files(self) -> None:
        """Remove the pid files that flink-console.sh wrote once their processes are gone.

        The script appends a line per start and never removes the file, and it checks
        old lines with ``kill -0``, which also succeeds for a zombie that init has not
        yet reaped.
        """
        pid_dir = Path(self.env()["FLINK_PID_DIR"])
        for path in pid_dir.glob("flink-*.pid"):
            pids = [int(line) for line in path.read_text().split() if line.isdigit()]
            if not any(pid_alive(pid) for pid in pids):
                path.unlink(missing_ok=True)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            self.jobmanager.name: self.jobmanager.status(self.address),
            self.taskmanager.name: self.taskmanager.status(LOOPBACK),
        }

    def overview(self) -> dict[str, Any]:
        """Return the cluster overview from the REST API (task managers, slots, jobs)."""
        return self._rest("GET", "/overview")

    def job_states(self) -> dict[str, str]:
        """Return the state of every job the cluster lists, keyed by job id."""
        jobs = self._rest("GET", "/jobs")["jobs"]
        return {job["id"]: job["status"] for job in jobs}

    def cancel(self, job_id: str) -> None:
        """Request cancellation of a job. The job reaches CANCELED shortly after."""
        self._rest("PATCH", f"/jobs/{job_id}?mode=cancel")

    def flink_run(
        self,
        script_path: str | os.PathLike[str],
        python_files: Iterable[str | os.PathLike[str]] = (),
        args: Iterable[str] = (),
        jars: Iterable[str | os.PathLike[str]] = (),
        *,
        timeout: float = 300.0,
    ) -> str:
        """Submit a PyFlink script in detached mode and return its job id.

        Flink 2.2's ``flink run`` has no ``--jarfile`` option, so each jar is added with
        ``--classpath file://...``. Those URLs must be readable by the client and the
        TaskManager, which is the case on this single-host cluster.
        """
        command = [
            str(self.home / "bin" / "flink"), "run", "--detached",
            "--jobmanager", self.address,
            "--python", str(Path(script_path).absolute()),
        ]
        python_files = [str(Path(path).absolute()) for path in python_files]
        if python_files:
            command += ["--pyFiles", ",".join(python_files)]
        for jar in jars:
            command += ["--classpath", Path(jar).absolute().as_uri()]
        command += ["--", *args]

        # The job's client reads its settings from ONML_* variables like any onml process.
        env = self.env()
        env.update(self.config.to_environ())
        log.info("Submitting %s to Flink on %s", script_path, self.address)
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise StackError(f"flink run {script_path} timed out after {timeout:g} s") from error
        output = result.stdout + result.stderr
        match = _JOB_ID.search(output)
        if result.returncode != 0 or match is None:
            raise StackError(
                f"flink run {script_path} failed with exit code {result.returncode}:\n"
                f"{output.strip()[-4000:]}"
            )
        job_id = match.group(1)
        log.info("Submitted %s as Flink job %s", script_path, job_id)
        return job_id

    def _write_config(self) -> None:
        import yaml

        var_dir = _var_dir(self.config)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        wheel_conf = self.home / "conf"
        # The log4j and logback files must match the wheel's jars, so copy them as is.
        for pattern in ("log4j*.properties", "logback*.xml"):
            for source in wheel_conf.glob(pattern):
                shutil.copy2(source, self.conf_dir / source.name)

        # Keep the wheel's JVM flags, because Flink on Java 17 needs its --add-opens options.
        defaults = yaml.safe_load((wheel_conf / "config.yaml").read_text())
        java_opts = defaults.get("env", {}).get("java", {}).get("opts", {}).get("all", "")

        settings: dict[str, Any] = {
            "env.java.opts.all": java_opts,
            "jobmanager.rpc.address": LOOPBACK,
            "jobmanager.rpc.port": self.config.flink_jobmanager_rpc_port,
            "jobmanager.bind-host": LOOPBACK,
            "jobmanager.memory.process.size": self.jobmanager_memory,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": LOOPBACK,
            "taskmanager.host": LOOPBACK,
            "taskmanager.numberOfTaskSlots": self.task_slots,
            "taskmanager.memory.process.size": self.taskmanager_memory,
            "rest.address": LOOPBACK,
            "rest.bind-address": LOOPBACK,
            "rest.port": self.config.flink_rest_port,
            "parallelism.default": 1,
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            "execution.checkpointing.dir": (self.dir / "checkpoints").absolute().as_uri(),
            "io.tmp.dirs": str(self.dir / "tmp"),
            "web.tmpdir": str(self.dir / "web"),
        }
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        (var_dir / "log" / "flink").mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    def _overview(self) -> dict[str, Any] | None:
        try:
            return self.overview()
        except (OSError, StackError):
            return None

    def _rest(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.rest_url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise StackError(
                f"Flink REST {method} {path} failed with HTTP {error.code}: {detail}"
            ) from error
        return json.loads(body) if body else {}


# --------------------------------------------------------------------------------------
# The whole stack


def _services(config: Config) -> list[Any]:
    """Return the services in start order."""
    return [KafkaBroker(config), RedisServer(config), FlinkCluster(config)]


def up(config: Config, with_flink: bool = False) -> dict[str, dict[str, Any]]:
    """Start Kafka, create the topics, start Redis and, if asked, Flink.

    Services that are already running are left running. When a start fails, the services
    started before it keep running until :func:`down`. Returns :func:`status`.
    """
    KafkaBroker(config).start()
    create_topics(config)
    RedisServer(config).start()
    if with_flink:
        FlinkCluster(config).start()
    return status(config)


def down(config: Config) -> None:
    """Stop every service that has a live pid file, in reverse start order."""
    errors = []
    for service in reversed(_services(config)):
        try:
            service.stop()
        except StackError as error:
            log.error("Stopping %s failed: %s", service.name, error)
            errors.append(str(error))
    if errors:
        raise StackError("; ".join(errors))


def status(config: Config) -> dict[str, dict[str, Any]]:
    """Return ``{service: {"running", "pid", "address"}}`` for every service."""
    result: dict[str, dict[str, Any]] = {}
    for service in _services(config):
        result.update(service.status())
    return result
