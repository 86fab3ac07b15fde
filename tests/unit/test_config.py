"""Tests of configuration loading: sources and their order, type and range checks, secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.config import Config, ConfigError, load_config

# Ports that Kafka, Redis and Flink use out of the box.
USUAL_SERVICE_PORTS = {9092, 9093, 6379, 8081, 6123}


@pytest.fixture(autouse=True)
def empty_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty folder, so no onml.toml from the checkout is read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# Defaults


def test_defaults_without_sources():
    config = load_config(environ={})

    assert config == Config()


def test_default_ports_avoid_usual_ports():
    config = Config()
    ports = [
        config.kafka_controller_port,
        int(config.kafka_bootstrap.rsplit(":", 1)[1]),
        config.redis_port,
        config.flink_rest_port,
        config.flink_jobmanager_rpc_port,
    ]

    assert len(set(ports)) == len(ports)
    assert not USUAL_SERVICE_PORTS & set(ports)


def test_default_has_no_password():
    assert Config().redis_password == ""


def test_default_config_is_valid():
    # replace() runs the same checks as load_config.
    assert Config().replace() == Config()


# Sources and their order


def test_toml_file_values(tmp_path):
    path = write_toml(
        tmp_path / "custom.toml",
        'max_batch_size = 64\nkafka_bootstrap = "127.0.0.1:1234"\nlearning_rate = 0.01\n',
    )

    config = load_config(path, environ={})

    assert config.max_batch_size == 64
    assert config.kafka_bootstrap == "127.0.0.1:1234"
    assert config.learning_rate == 0.01
    assert config.train_batch_size == Config().train_batch_size


def test_config_path_from_env(tmp_path):
    path = write_toml(tmp_path / "from-env.toml", "max_batch_size = 48\n")

    config = load_config(environ={"ONML_CONFIG": str(path)})

    assert config.max_batch_size == 48


def test_onml_toml_in_working_dir(empty_working_dir):
    write_toml(empty_working_dir / "onml.toml", "max_batch_size = 40\n")

    config = load_config(environ={})

    assert config.max_batch_size == 40


def test_explicit_path_wins_over_env(tmp_path):
    explicit = write_toml(tmp_path / "explicit.toml", "max_batch_size = 8\n")
    from_env = write_toml(tmp_path / "from-env.toml", "max_batch_size = 16\n")

    config = load_config(explicit, environ={"ONML_CONFIG": str(from_env)})

    assert config.max_batch_size == 8


def test_read_file_false_skips_file(empty_working_dir):
    write_toml(empty_working_dir / "onml.toml", "max_batch_size = 40\n")

    config = load_config(environ={}, read_file=False)

    assert config.max_batch_size == Config().max_batch_size


def test_env_wins_over_file(tmp_path):
    path = write_toml(tmp_path / "c.toml", "max_batch_size = 64\nredis_host = \"10.0.0.1\"\n")

    config = load_config(path, environ={"ONML_MAX_BATCH_SIZE": "128"})

    assert config.max_batch_size == 128
    assert config.redis_host == "10.0.0.1"


@pytest.mark.parametrize(
    ("variable", "text", "field", "expected"),
    [
        ("ONML_REDIS_PORT", "7000", "redis_port", 7000),
        ("ONML_LEARNING_RATE", "0.25", "learning_rate", 0.25),
        ("ONML_SNAPSHOT_INTERVAL_S", "2.5", "snapshot_interval_s", 2.5),
        ("ONML_TRAINING_TOPIC", "my.topic", "training_topic", "my.topic"),
    ],
)
def test_env_text_becomes_field_type(variable, text, field, expected):
    config = load_config(environ={variable: text}, read_file=False)

    assert getattr(config, field) == expected
    assert type(getattr(config, field)) is type(expected)


def test_read_env_false_skips_env():
    config = load_config(environ={"ONML_MAX_BATCH_SIZE": "128"}, read_env=False, read_file=False)

    assert config.max_batch_size == Config().max_batch_size


def test_process_env_used_by_default(monkeypatch):
    monkeypatch.setenv("ONML_MAX_BATCH_SIZE", "77")

    config = load_config(read_file=False)

    assert config.max_batch_size == 77


def test_override_wins_over_env(tmp_path):
    path = write_toml(tmp_path / "c.toml", "max_batch_size = 64\n")

    config = load_config(path, {"max_batch_size": 512}, environ={"ONML_MAX_BATCH_SIZE": "128"})

    assert config.max_batch_size == 512


def test_none_override_is_ignored(tmp_path):
    path = write_toml(tmp_path / "c.toml", "max_batch_size = 64\n")

    from_file = load_config(path, {"max_batch_size": None}, environ={})
    from_env = load_config(path, {"max_batch_size": None}, environ={"ONML_MAX_BATCH_SIZE": "128"})

    assert from_file.max_batch_size == 64
    assert from_env.max_batch_size == 128


def test_unknown_env_variable_is_ignored():
    config = load_config(environ={"ONML_NOT_A_SETTING": "1"}, read_file=False)

    assert config == Config()


# Errors in the sources


def test_unknown_file_key_is_rejected(tmp_path):
    path = write_toml(tmp_path / "c.toml", "max_batch_sise = 64\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert "max_batch_sise" in str(caught.value)
    assert str(path) in str(caught.value)


def test_toml_table_is_rejected(tmp_path):
    path = write_toml(tmp_path / "c.toml", "[kafka]\nbootstrap = \"127.0.0.1:1\"\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert "kafka" in str(caught.value)


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"max_batch_sise": 64}, environ={}, read_file=False)

    assert "max_batch_sise" in str(caught.value)


def test_unknown_none_override_is_rejected():
    with pytest.raises(ConfigError):
        load_config(overrides={"no_such_setting": None}, environ={}, read_file=False)


def test_missing_file_is_rejected(tmp_path):
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert "not found" in str(caught.value)
    assert str(path) in str(caught.value)


def test_invalid_toml_is_rejected(tmp_path):
    path = write_toml(tmp_path / "c.toml", "max_batch_size = = 3\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert "TOML" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "field", "value"),
    [
        ("env", "max_batch_size", "many"),
        ("env", "learning_rate", "fast"),
        ("env", "redis_port", "6379.5"),
        ("file", "max_batch_size", '"many"'),
        ("file", "max_batch_size", "true"),
        ("file", "redis_port", "[1, 2]"),
        ("override", "max_batch_size", "many"),
        ("override", "max_batch_size", True),
        ("override", "learning_rate", [0.1]),
    ],
)
def test_invalid_type_names_field(tmp_path, source, field, value):
    path = None
    environ: dict[str, str] = {}
    overrides = {}
    if source == "env":
        environ[f"ONML_{field.upper()}"] = value
    elif source == "file":
        path = write_toml(tmp_path / "c.toml", f"{field} = {value}\n")
    else:
        overrides[field] = value

    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, environ=environ)

    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("field", "toml_value"),
    [("max_batch_wait_ms", "2.5"), ("learning_rate", "true"), ("kafka_bootstrap", '["a:1", "b:2"]')],
)
def test_wrong_toml_type_is_rejected(tmp_path, field, toml_value):
    path = write_toml(tmp_path / "c.toml", f"{field} = {toml_value}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert field in str(caught.value)


# Range checks


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", -1),
        ("train_batch_size", 0),
        ("snapshots_kept", 0),
        ("topic_partitions", 0),
        ("accuracy_window", 0),
        ("parallelism", 0),
        ("checkpoint_interval_ms", 0),
        ("bundle_size", 0),
        ("bundle_time_ms", 0),
        ("snapshot_every_samples", 0),
        ("max_batch_wait_ms", -1),
        ("network_buffer_timeout_ms", -1),
        ("snapshot_interval_s", 0.0),
        ("snapshot_interval_s", -1.0),
        ("python_execution_mode", "fork"),
        ("dataset", "cifar10"),
    ],
)
def test_out_of_range_value_is_rejected(field, value):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={field: value}, environ={}, read_file=False)

    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 1),
        ("max_batch_wait_ms", 0),
        ("network_buffer_timeout_ms", 0),
        ("snapshot_interval_s", 0.01),
        ("python_execution_mode", "thread"),
        ("python_execution_mode", "process"),
        ("python_execution_mode", "auto"),
        ("dataset", "fashion-mnist"),
    ],
)
def test_boundary_value_is_accepted(field, value):
    config = load_config(overrides={field: value}, environ={}, read_file=False)

    assert getattr(config, field) == value


def test_range_checked_for_env_values():
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"ONML_MAX_BATCH_SIZE": "0"}, read_file=False)

    assert "max_batch_size" in str(caught.value)


# Redis password


def test_secret_from_field():
    config = load_config(overrides={"redis_password": "s3cret"}, environ={}, read_file=False)

    assert config.redis_secret() == "s3cret"


def test_secret_from_env():
    config = load_config(environ={"ONML_REDIS_PASSWORD": "from-env"}, read_file=False)

    assert config.redis_secret() == "from-env"


def test_secret_from_file(tmp_path):
    secret_file = tmp_path / "redis.password"
    secret_file.write_text("from-file\n", encoding="utf-8")

    config = load_config(overrides={"redis_password_file": str(secret_file)}, environ={}, read_file=False)

    assert config.redis_secret() == "from-file"


def test_secret_field_wins_over_file(tmp_path):
    secret_file = tmp_path / "redis.password"
    secret_file.write_text("from-file\n", encoding="utf-8")

    config = load_config(
        overrides={"redis_password_file": str(secret_file)},
        environ={"ONML_REDIS_PASSWORD": "from-env"},
        read_file=False,
    )

    assert config.redis_secret() == "from-env"


def test_missing_secret_is_rejected(tmp_path):
    absent = tmp_path / "var" / "redis.password"
    config = load_config(overrides={"redis_password_file": str(absent)}, environ={}, read_file=False)

    with pytest.raises(ConfigError) as caught:
        config.redis_secret()

    assert "onml stack up" in str(caught.value)
    assert "ONML_REDIS_PASSWORD" in str(caught.value)
    assert str(absent) in str(caught.value)


def test_redacted_hides_password():
    config = load_config(overrides={"redis_password": "s3cret"}, environ={}, read_file=False)

    redacted = config.redacted()

    assert redacted["redis_password"] == "***"
    assert "s3cret" not in str(redacted)
    assert redacted["redis_port"] == config.redis_port


def test_redacted_keeps_empty_password():
    assert Config().redacted()["redis_password"] == ""


def test_redacted_leaves_config_unchanged():
    config = load_config(overrides={"redis_password": "s3cret"}, environ={}, read_file=False)

    config.redacted()

    assert config.redis_secret() == "s3cret"


def test_repr_hides_password():
    config = load_config(overrides={"redis_password": "s3cret"}, environ={}, read_file=False)

    assert "s3cret" not in repr(config)


# replace and immutability


def test_replace_keeps_other_values():
    original = load_config(
        overrides={"redis_password": "s3cret", "max_batch_size": 99, "kafka_bootstrap": "127.0.0.1:1"},
        environ={},
        read_file=False,
    )

    changed = original.replace(max_batch_size=7)

    assert changed.max_batch_size == 7
    assert changed.redis_password == "s3cret"
    assert changed.kafka_bootstrap == "127.0.0.1:1"
    assert dataclasses.replace(changed, max_batch_size=99) == original


def test_replace_leaves_original():
    original = Config()

    original.replace(max_batch_size=7)

    assert original.max_batch_size == Config().max_batch_size


def test_replace_ignores_env(monkeypatch):
    monkeypatch.setenv("ONML_KAFKA_BOOTSTRAP", "127.0.0.1:5")
    original = load_config(overrides={"kafka_bootstrap": "127.0.0.1:1"}, environ={}, read_file=False)

    changed = original.replace(max_batch_size=7)

    assert changed.kafka_bootstrap == "127.0.0.1:1"


def test_replace_checks_values():
    with pytest.raises(ConfigError):
        Config().replace(max_batch_size=0)


def test_replace_rejects_unknown_key():
    with pytest.raises(ConfigError):
        Config().replace(max_batch_sise=7)


def test_config_is_frozen():
    config = Config()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch_size = 1  # type: ignore[misc]
