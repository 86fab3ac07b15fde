"""Fixtures for the unit tests: a real redis-server on a free local port.

The server runs once per session with a random password, no persistence and its data
directory under the session's temp folder. It is stopped by pid at the end.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

from shared.config import Config, load_config
from shared.store import ModelStore

REDIS_START_TIMEOUT_S = 10.0
REDIS_START_ATTEMPTS = 3


def _free_port() -> int:
    """Return a port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop the server by its pid: SIGTERM first, SIGKILL if it has not exited after 5 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _start_redis(data_dir: Path, port: int, password: str) -> subprocess.Popen | None:
    """Start redis-server and wait until PING succeeds. Return None if the server exited early."""
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--requirepass", password,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data_dir),
            "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        with redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2) as client:
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                pass
        time.sleep(0.05)
    _stop(process)
    raise RuntimeError(f"redis-server on port {port} did not respond to PING within {REDIS_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def redis_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """Start a private redis-server for the session and yield a Config that points at it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")

    data_dir = tmp_path_factory.mktemp("redis")
    password = secrets.token_hex(16)
    process = None
    port = 0
    # Another process may take the chosen port before the server binds it, so retry.
    for _ in range(REDIS_START_ATTEMPTS):
        port = _free_port()
        process = _start_redis(data_dir, port, password)
        if process is not None:
            break
    if process is None:
        raise RuntimeError(f"redis-server failed to start after {REDIS_START_ATTEMPTS} attempts")

    config = load_config(
        overrides={
            "var_dir": str(data_dir / "var"),
            "redis_host": "127.0.0.1",
            "redis_port": port,
            "redis_password": password,
        },
        read_env=False,
        read_file=False,
    )
    try:
        yield config
    finally:
        _stop(process)


@pytest.fixture()
def redis_client(redis_config: Config) -> Iterator[redis.Redis]:
    """A client of the session's redis-server."""
    client = redis.Redis(
        host=redis_config.redis_host,
        port=redis_config.redis_port,
        password=redis_config.redis_secret(),
        socket_timeout=10,
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture()
def make_store(redis_client: redis.Redis) -> Callable[..., ModelStore]:
    """Return ``make(keep_last=20)``, which builds a ModelStore under a key prefix of its own."""

    def make(keep_last: int = 20) -> ModelStore:
        return ModelStore(redis_client, f"test:{uuid.uuid4().hex}", keep_last=keep_last)

    return make
