"""One frozen configuration object for every onml process.

Values are resolved in this order, later sources winning:

1. the defaults declared on :class:`Config`;
2. a TOML file: ``--config PATH``, else ``$ONML_CONFIG``, else ``onml.toml`` in the
   working directory when it exists;
3. environment variables named ``ONML_<FIELD>`` in upper case (``ONML_KAFKA_BOOTSTRAP``);
4. explicit overrides, such as CLI flags.

No host, port or secret is written anywhere else in the code base. The Redis password
is never a default: it comes from ``ONML_REDIS_PASSWORD`` or from ``redis_password_file``,
which ``onml stack up`` fills with a random token on first start.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "ONML_"
DEFAULT_CONFIG_FILE = "onml.toml"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Config:
    """Settings shared by the jobs, the clients and the local stack.

    Ports default to numbers that stay clear of Kafka's, Redis's and Flink's usual
    ports (19092, 16379, 18081 instead of 9092, 6379, 8081), so a demo can run beside
    other local services. Tests start their own
    services on free ports and pass them in as overrides.
    """

    # Where runtime state (logs, pids, Kafka and Redis data, checkpoints) lives.
    var_dir: str = "var"
    # Where the prepared IDX data set lives.
    data_dir: str = "data"
    # Which IDX data set the clients stream: "mnist" or "fashion-mnist".
    dataset: str = "mnist"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    training_topic: str = "onml.training"
    request_topic: str = "onml.requests"
    result_topic: str = "onml.results"
    dead_letter_topic: str = "onml.dead-letter"
    topic_partitions: int = 2
    consumer_group_prefix: str = "onml"

    # Redis model store
    redis_host: str = "127.0.0.1"
    redis_port: int = 16379
    redis_db: int = 0
    redis_password: str = field(default="", repr=False)
    redis_password_file: str = "var/redis.password"
    model_key_prefix: str = "onml:model"
    snapshots_kept: int = 20

    # Flink
    flink_rest_port: int = 18081
    flink_jobmanager_rpc_port: int = 16123
    connector_jar: str = "deploy/flink/target/lib/flink-sql-connector-kafka-5.0.0-2.2.jar"
    checkpoint_interval_ms: int = 5000
    # PyFlink's Python execution mode: "process" runs Python functions in a worker process,
    # "thread" inside the TaskManager JVM (pemja), which saves a copy of every record
    # between the JVM and Python. "auto" runs the inference job in thread mode and the
    # training job in process mode: in thread mode `import torch` hung (PyFlink 2.2.1,
    # torch 2.15), and the inference job serves ONNX models without torch.
    python_execution_mode: str = "auto"
    parallelism: int = 1
    # Records go to the Python worker in bundles of at most this many, or this many ms.
    bundle_size: int = 1000
    bundle_time_ms: int = 5
    # How long Flink may hold a network buffer before sending it downstream.
    network_buffer_timeout_ms: int = 5

    # Training job
    train_batch_size: int = 32
    learning_rate: float = 1e-3
    snapshot_every_samples: int = 2000
    snapshot_interval_s: float = 10.0
    # Prequential accuracy is measured over the last this-many samples.
    accuracy_window: int = 1000
    architecture: str = "cnn-tiny-bn-v1"
    seed: int = 0

    # Inference job
    max_batch_size: int = 256
    max_batch_wait_ms: int = 20
    model_poll_interval_s: float = 0.5
    # Threads each inference subtask gives ONNX Runtime (or torch, for a snapshot without an ONNX model).
    inference_threads: int = 1

    # Gradio app ("onml app")
    # Language of the app's text until a user switches it: "en" (English) or "zh" (Chinese).
    app_language: str = "en"
    # Only loopback by default: "onml app --host 0.0.0.0" exposes the app on every interface.
    app_host: str = "127.0.0.1"
    app_port: int = 17860

    def redis_secret(self) -> str:
        """Return the Redis password from the config, else from ``redis_password_file``."""
        if self.redis_password:
            return self.redis_password
        path = Path(self.redis_password_file)
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
        raise ConfigError(
            f"no Redis password: set ONML_REDIS_PASSWORD, or run 'onml stack up' to create "
            f"{self.redis_password_file}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_environ(self) -> dict[str, str]:
        """Return every setting as ``ONML_*`` variables, to hand this config to a child process."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.to_dict().items()}

    def redacted(self) -> dict[str, Any]:
        """Return the settings for logging, with the password hidden."""
        values = self.to_dict()
        if values["redis_password"]:
            values["redis_password"] = "***"
        return values

    def replace(self, **changes: Any) -> "Config":
        return load_config(file_values=self.to_dict(), overrides=changes, read_env=False, read_file=False)


_FIELD_TYPES = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` to the field's type: strings (environment, CLI) are parsed, other
    values (TOML) must already have the right type, so ``2.5`` for an int is an error."""
    expected = _FIELD_TYPES[name]
    invalid = ConfigError(f"invalid value {value!r} for {name}: expected {expected.__name__}")
    if isinstance(value, str):
        try:
            return expected(value)
        except ValueError:
            raise invalid from None
    if isinstance(value, bool):
        raise invalid
    if expected is float and isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, expected):
        raise invalid
    return value


def _validate(config: Config) -> None:
    positive = (
        "topic_partitions", "train_batch_size", "snapshot_every_samples", "accuracy_window",
        "max_batch_size", "parallelism", "checkpoint_interval_ms",
        "snapshots_kept", "bundle_size", "bundle_time_ms", "inference_threads",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.network_buffer_timeout_ms < 0:
        raise ConfigError(f"network_buffer_timeout_ms must be 0 or more, got {config.network_buffer_timeout_ms}")
    if config.max_batch_wait_ms < 0:
        raise ConfigError(f"max_batch_wait_ms must be 0 or more, got {config.max_batch_wait_ms}")
    if config.snapshot_interval_s <= 0:
        raise ConfigError(f"snapshot_interval_s must be above 0, got {config.snapshot_interval_s}")
    if config.python_execution_mode not in ("auto", "thread", "process"):
        raise ConfigError(
            f"python_execution_mode must be 'auto', 'thread' or 'process', got {config.python_execution_mode!r}"
        )
    if config.dataset not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"dataset must be 'mnist' or 'fashion-mnist', got {config.dataset!r}")
    if config.app_language not in ("en", "zh"):
        raise ConfigError(f"app_language must be 'en' or 'zh', got {config.app_language!r}")
    if not 1 <= config.app_port <= 65535:
        raise ConfigError(f"app_port must be from 1 to 65535, got {config.app_port}")
    if not config.app_host:
        raise ConfigError("app_host must not be empty")


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    file_values: Mapping[str, Any] | None = None,
    read_env: bool = True,
    read_file: bool = True,
) -> Config:
    """Build a :class:`Config` from defaults, a TOML file, the environment and overrides.

    Unknown keys in the file or the overrides raise :class:`ConfigError`, so a typo does
    not silently fall back to a default. Overrides whose value is ``None`` are ignored,
    which lets CLI flags that were not given pass straight through.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(file_values or {})

    # 1. The TOML file.
    if read_file:
        path = path or environ.get(ENV_PREFIX + "CONFIG")
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        if path is not None:
            try:
                with open(path, "rb") as handle:
                    loaded = tomllib.load(handle)
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {path}") from None
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"invalid TOML in {path}: {error}") from None
            for key, value in loaded.items():
                if key not in _FIELD_TYPES:
                    raise ConfigError(f"unknown setting {key!r} in {path}")
                values[key] = value

    # 2. The environment.
    if read_env:
        for name in _FIELD_TYPES:
            env_value = environ.get(ENV_PREFIX + name.upper())
            if env_value is not None:
                values[name] = env_value

    # 3. Explicit overrides.
    for key, value in (overrides or {}).items():
        if key not in _FIELD_TYPES:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value

    config = Config(**{key: _coerce(key, value) for key, value in values.items()})
    _validate(config)
    return config
