"""Shared fixtures that start real Kafka, Redis and Flink processes on free local ports.

Tests that use ``stack``, ``flink_cluster`` or ``stack_config_factory`` get the
``integration`` marker automatically, so ``pytest -m "not integration"`` skips them.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from shared.config import Config, load_config

_INTEGRATION_FIXTURES = {"stack", "flink_cluster", "stack_config_factory"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets stay bound until every port is chosen, so no port is returned twice.
    Another process may still take one before the service binds it.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def make_stack_config(base_dir: Path, **overrides: Any) -> Config:
    """Build a Config with its own var_dir, free ports and a fresh Redis password.

    The environment and any onml.toml are ignored, so a developer's settings cannot
    point a test at their own services.
    """
    kafka, controller, redis_port, rest, rpc = free_ports(5)
    var_dir = base_dir / "var"
    values: dict[str, Any] = {
        "var_dir": str(var_dir),
        "redis_password_file": str(var_dir / "redis.password"),
        "redis_password": secrets.token_hex(16),
        "kafka_bootstrap": f"127.0.0.1:{kafka}",
        "kafka_controller_port": controller,
        "redis_host": "127.0.0.1",
        "redis_port": redis_port,
        "flink_rest_port": rest,
        "flink_jobmanager_rpc_port": rpc,
    }
    values.update(overrides)
    return load_config(overrides=values, read_env=False, read_file=False)


def _require_binaries(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.skip(f"integration test needs {', '.join(missing)} on PATH")


@pytest.fixture(scope="session")
def stack_config_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Config]:
    """Return ``make(name, **overrides)``, which builds a Config under a new temp dir.

    It serves tests that start and stop their own services, so it starts nothing.
    """
    _require_binaries("java", "redis-server")

    def make(name: str = "stack", **overrides: Any) -> Config:
        return make_stack_config(tmp_path_factory.mktemp(name), **overrides)

    return make


@pytest.fixture(scope="session")
def stack(stack_config_factory: Callable[..., Config]) -> Iterator[Config]:
    """Start Kafka with the onml topics and Redis for the whole session.

    Yields the Config that points at them. The services are stopped by pid at the end,
    also when a start fails halfway.
    """
    from deploy.stack import down, up

    config = stack_config_factory("stack")
    try:
        up(config)
        yield config
    finally:
        down(config)


@pytest.fixture(scope="session")
def flink_cluster(stack: Config) -> Iterator[Any]:
    """Start a Flink session cluster on the ports of ``stack``. Yields the FlinkCluster."""
    from deploy.stack import FlinkCluster

    cluster = FlinkCluster(stack)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
