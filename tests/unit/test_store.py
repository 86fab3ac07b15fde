"""Tests of ModelStore against a real redis-server started by the unit conftest."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
import torch
from safetensors import SafetensorError

from shared.model import build_model
from shared.store import ModelStore, SnapshotCorruptError, SnapshotNotFoundError, connect_redis

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Not a registered architecture, so publish() stores these tensors without exporting an ONNX model.
ARCHITECTURE = "test-tensors"
MODEL_ARCHITECTURE = "cnn-small-v1"


def tagged_state(tag: int) -> dict[str, torch.Tensor]:
    """Return a small state_dict whose every value is ``tag``, to tell snapshots apart."""
    return {"layer.weight": torch.full((3, 4), float(tag)), "layer.bias": torch.full((3,), float(tag))}


def metadata(tag: int = 0, architecture: str = ARCHITECTURE) -> dict:
    return {"architecture": architecture, "samples_seen": 32 * tag, "accuracy": 0.5, "tag": tag}


def tagged_onnx(tag: int) -> bytes:
    """Return stand-in ONNX bytes for snapshot ``tag``; the store checks checksums, not the graph."""
    return f"onnx-{tag}".encode()


# Publishing and loading


def test_publish_returns_increasing_versions(make_store):
    store = make_store()

    versions = [store.publish(tagged_state(tag), metadata(tag)) for tag in range(5)]

    assert versions == sorted(versions)
    assert len(set(versions)) == 5
    assert versions[0] >= 1


def test_load_none_returns_latest(make_store):
    store = make_store()
    for tag in range(3):
        last = store.publish(tagged_state(tag), metadata(tag))

    snapshot = store.load(None)

    assert snapshot.version == last
    assert snapshot.metadata["tag"] == 2
    assert store.latest_version() == last


def test_load_older_version(make_store):
    store = make_store()
    first = store.publish(tagged_state(10), metadata(10))
    store.publish(tagged_state(11), metadata(11))

    snapshot = store.load(first)

    assert snapshot.version == first
    assert snapshot.metadata["tag"] == 10
    assert torch.equal(snapshot.state_dict["layer.bias"], tagged_state(10)["layer.bias"])


def test_empty_store_has_no_latest(make_store):
    store = make_store()

    assert store.latest_version() is None
    assert store.versions() == []
    assert store.list_snapshots() == []


def test_load_from_empty_store(make_store):
    with pytest.raises(SnapshotNotFoundError):
        make_store().load()


def test_load_unknown_version(make_store):
    store = make_store()
    version = store.publish(tagged_state(1), metadata(1))

    with pytest.raises(SnapshotNotFoundError):
        store.load(version + 100)


def test_metadata_fields(make_store):
    store = make_store()
    state = tagged_state(4)
    before = time.time()

    version = store.publish(state, metadata(4))
    record = store.metadata(version)
    weights = store._redis.get(store._weights_key(version))

    assert record["version"] == version
    assert before <= record["created_at"] <= time.time()
    assert record["sha256"] == hashlib.sha256(weights).hexdigest()
    assert record["size_bytes"] == len(weights)
    assert record["framework"] == f"torch {torch.__version__}"
    assert record["architecture"] == ARCHITECTURE
    assert record["samples_seen"] == 128
    assert record["accuracy"] == 0.5


def test_metadata_cannot_override_computed_fields(make_store):
    store = make_store()
    forged = dict(metadata(1), version=999, sha256="0" * 64, size_bytes=1)

    version = store.publish(tagged_state(1), forged)
    record = store.metadata(version)

    assert record["version"] == version
    assert record["sha256"] != "0" * 64
    assert record["size_bytes"] > 1
    assert store.load(version).version == version


def test_metadata_of_unknown_version(make_store):
    with pytest.raises(SnapshotNotFoundError):
        make_store().metadata(1)


def test_state_dict_round_trips_exactly(make_store):
    store = make_store()
    model = build_model(MODEL_ARCHITECTURE, seed=7)
    state = model.state_dict()

    version = store.publish(state, metadata())
    loaded = store.load(version).state_dict

    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
        assert loaded[name].dtype == tensor.dtype, name


def test_publish_copies_tensors(make_store):
    store = make_store()
    state = tagged_state(1)

    version = store.publish(state, metadata(1))
    state["layer.bias"].fill_(99.0)

    assert torch.equal(store.load(version).state_dict["layer.bias"], torch.full((3,), 1.0))


def test_publish_accepts_non_contiguous_tensor(make_store):
    store = make_store()
    weight = torch.arange(12.0).reshape(3, 4).t()
    assert not weight.is_contiguous()

    version = store.publish({"w": weight}, metadata())

    assert torch.equal(store.load(version).state_dict["w"], weight)


# ONNX model


def test_publish_exports_onnx_for_registered_architecture(make_store, redis_client):
    store = make_store()
    model = build_model(MODEL_ARCHITECTURE, seed=7)

    version = store.publish(model.state_dict(), metadata(architecture=MODEL_ARCHITECTURE))
    record = store.metadata(version)
    stored = redis_client.get(store._onnx_key(version))

    assert stored is not None
    assert record["onnx_sha256"] == hashlib.sha256(stored).hexdigest()
    assert record["onnx_size_bytes"] == len(stored)
    assert store.load(version).onnx_model == stored
    assert store.load_bytes(version).onnx_model == stored


def test_publish_stores_given_onnx(make_store):
    store = make_store()

    version = store.publish(tagged_state(2), metadata(2), onnx_model=tagged_onnx(2))

    assert store.load_bytes(version).onnx_model == tagged_onnx(2)
    assert store.load(version).onnx_model == tagged_onnx(2)


def test_publish_without_onnx(make_store, redis_client):
    store = make_store()
    model = build_model(MODEL_ARCHITECTURE, seed=7)

    version = store.publish(model.state_dict(), metadata(architecture=MODEL_ARCHITECTURE), with_onnx=False)
    record = store.metadata(version)

    assert "onnx_sha256" not in record
    assert "onnx_size_bytes" not in record
    assert redis_client.exists(store._onnx_key(version)) == 0
    assert store.load_bytes(version).onnx_model is None
    assert store.load(version).onnx_model is None


def test_failed_export_publishes_without_onnx(make_store, caplog):
    store = make_store()

    with caplog.at_level(logging.WARNING, logger="shared.store"):
        version = store.publish(tagged_state(1), metadata(1, architecture=MODEL_ARCHITECTURE))

    assert "onnx_sha256" not in store.metadata(version)
    assert store.load(version).onnx_model is None
    assert any("ONNX" in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)


def test_unregistered_architecture_has_no_onnx(make_store):
    store = make_store()

    version = store.publish(tagged_state(1), metadata(1))

    assert "onnx_sha256" not in store.metadata(version)
    assert store.load(version).onnx_model is None


def test_metadata_cannot_claim_onnx(make_store):
    store = make_store()
    forged = dict(metadata(1), onnx_sha256="0" * 64, onnx_size_bytes=10)

    version = store.publish(tagged_state(1), forged)
    record = store.metadata(version)

    assert "onnx_sha256" not in record
    assert "onnx_size_bytes" not in record
    assert store.load(version).onnx_model is None


def test_load_bytes_returns_stored_bytes(make_store, redis_client):
    store = make_store()
    version = store.publish(tagged_state(4), metadata(4), onnx_model=tagged_onnx(4))

    raw = store.load_bytes()

    assert raw.version == version
    assert raw.metadata["tag"] == 4
    assert raw.weights == redis_client.get(store._weights_key(version))
    assert raw.onnx_model == tagged_onnx(4)


def test_load_bytes_of_unknown_version(make_store):
    store = make_store()
    version = store.publish(tagged_state(1), metadata(1))

    with pytest.raises(SnapshotNotFoundError):
        store.load_bytes(version + 1)


def test_store_import_leaves_torch_out():
    # The inference job imports the store in thread mode, where importing torch hung.
    code = (
        "import sys\n"
        "import shared.store\n"
        "assert 'torch' not in sys.modules, 'shared.store imported torch'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=60)

    assert completed.returncode == 0, completed.stderr


def test_store_from_config(redis_config):
    config = redis_config.replace(model_key_prefix="test:from-config", snapshots_kept=3)
    store = ModelStore.from_config(config)

    version = store.publish(tagged_state(5), metadata(5))

    assert store.load().version == version


def test_connect_with_wrong_password(redis_config):
    config = redis_config.replace(redis_password="wrong-password")

    with pytest.raises(redis.AuthenticationError):
        connect_redis(config)


def test_keep_last_below_one_is_rejected(redis_client):
    with pytest.raises(ValueError):
        ModelStore(redis_client, "test:bad", keep_last=0)


# Retention and pinning


def test_retention_keeps_last_n(make_store):
    keep = 3
    store = make_store(keep_last=keep)

    published = [store.publish(tagged_state(tag), metadata(tag)) for tag in range(keep + 5)]

    assert store.versions() == published[-keep:]


def test_retention_spares_pinned(make_store):
    keep = 3
    store = make_store(keep_last=keep)
    published = [store.publish(tagged_state(tag), metadata(tag)) for tag in range(2)]
    store.pin(published[0])

    published += [store.publish(tagged_state(tag), metadata(tag)) for tag in range(2, keep + 5)]

    assert store.versions() == [published[0]] + published[-keep:]
    assert store.load(published[0]).metadata["tag"] == 0


def test_unpin_lets_retention_drop(make_store):
    store = make_store(keep_last=2)
    first = store.publish(tagged_state(0), metadata(0))
    store.pin(first)
    for tag in range(1, 4):
        store.publish(tagged_state(tag), metadata(tag))

    store.unpin(first)
    store.publish(tagged_state(4), metadata(4))

    assert first not in store.versions()
    assert store.pinned() == set()


def test_dropped_version_is_not_found(make_store):
    store = make_store(keep_last=2)
    first = store.publish(tagged_state(0), metadata(0))
    for tag in range(1, 4):
        store.publish(tagged_state(tag), metadata(tag))

    with pytest.raises(SnapshotNotFoundError):
        store.load(first)
    with pytest.raises(SnapshotNotFoundError):
        store.metadata(first)


def test_retention_deletes_keys(make_store, redis_client):
    store = make_store(keep_last=1)
    first = store.publish(tagged_state(0), metadata(0), onnx_model=tagged_onnx(0))

    store.publish(tagged_state(1), metadata(1))

    assert redis_client.exists(store._weights_key(first), store._meta_key(first), store._onnx_key(first)) == 0


def test_pin_unknown_version(make_store):
    store = make_store()
    version = store.publish(tagged_state(0), metadata(0))

    with pytest.raises(SnapshotNotFoundError):
        store.pin(version + 1)
    assert store.pinned() == set()


def test_pin_dropped_version(make_store):
    store = make_store(keep_last=1)
    first = store.publish(tagged_state(0), metadata(0))
    store.publish(tagged_state(1), metadata(1))

    with pytest.raises(SnapshotNotFoundError):
        store.pin(first)


def test_list_snapshots_oldest_first(make_store):
    store = make_store()
    published = [store.publish(tagged_state(tag), metadata(tag)) for tag in range(4)]
    store.pin(published[1])

    snapshots = store.list_snapshots()

    assert [record["version"] for record in snapshots] == published
    assert [record["tag"] for record in snapshots] == [0, 1, 2, 3]
    assert [record["pinned"] for record in snapshots] == [False, True, False, False]


def test_stores_with_other_prefixes_are_separate(make_store):
    first, second = make_store(), make_store()

    first.publish(tagged_state(1), metadata(1))

    assert second.latest_version() is None


# Atomicity


def test_reader_never_sees_partial_snapshot(make_store):
    """One thread publishes 200 snapshots while another loads the latest one in a loop.

    Each snapshot's weights, ONNX model and metadata carry the same tag, so a reader that
    got one part of one write and another part of another would see two different tags.
    """
    keep = 3
    publishes = 200
    store = make_store(keep_last=keep)
    store.publish(tagged_state(-1), metadata(-1))
    done = threading.Event()
    failures: list[str] = []
    loads = 0

    def publish_all() -> None:
        try:
            for tag in range(publishes):
                store.publish(tagged_state(tag), metadata(tag), onnx_model=tagged_onnx(tag))
        finally:
            done.set()

    publisher = threading.Thread(target=publish_all, name="test-publisher", daemon=True)
    publisher.start()
    deadline = time.monotonic() + 30.0
    while not done.is_set() and time.monotonic() < deadline:
        version = store.latest_version()
        try:
            snapshot = store.load(version)
        except SnapshotNotFoundError:
            # Allowed only when retention has dropped it: keep_last newer versions exist.
            if store.latest_version() - version < keep:
                failures.append(f"version {version} not found while still within retention")
            continue
        except SnapshotCorruptError as error:
            failures.append(f"checksum failure: {error}")
            continue
        loads += 1
        tag = snapshot.metadata["tag"]
        if snapshot.version != version or snapshot.metadata["version"] != version:
            failures.append(f"asked for version {version}, got {snapshot.version} / {snapshot.metadata['version']}")
        for name, tensor in snapshot.state_dict.items():
            if not torch.all(tensor == float(tag)):
                failures.append(f"version {version}: {name} does not match metadata tag {tag}")
        if tag >= 0 and snapshot.onnx_model != tagged_onnx(tag):
            failures.append(f"version {version}: ONNX model {snapshot.onnx_model!r} does not match metadata tag {tag}")
    publisher.join(timeout=30)

    assert not publisher.is_alive()
    assert done.is_set()
    assert failures == []
    assert loads > 0
    assert store.load().metadata["tag"] == publishes - 1


# Integrity


def test_corrupt_weights_are_refused(make_store, redis_client, caplog):
    store = make_store()
    version = store.publish(tagged_state(3), metadata(3))
    weights = bytearray(redis_client.get(store._weights_key(version)))
    weights[-1] ^= 0xFF
    redis_client.set(store._weights_key(version), bytes(weights))

    with caplog.at_level(logging.ERROR, logger="shared.store"):
        with pytest.raises(SnapshotCorruptError) as caught:
            store.load(version)

    assert str(version) in str(caught.value)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR and record.name == "shared.store"]
    assert len(errors) == 1
    assert str(version) in errors[0].getMessage()


def test_missing_checksum_is_refused(make_store, redis_client):
    store = make_store()
    version = store.publish(tagged_state(3), metadata(3))
    record = orjson.loads(redis_client.get(store._meta_key(version)))
    del record["sha256"]
    redis_client.set(store._meta_key(version), orjson.dumps(record))

    with pytest.raises(SnapshotCorruptError):
        store.load(version)


def test_corrupt_onnx_is_refused(make_store, redis_client, caplog):
    store = make_store()
    version = store.publish(tagged_state(3), metadata(3), onnx_model=tagged_onnx(3))
    onnx_model = bytearray(redis_client.get(store._onnx_key(version)))
    onnx_model[-1] ^= 0xFF
    redis_client.set(store._onnx_key(version), bytes(onnx_model))

    with caplog.at_level(logging.ERROR, logger="shared.store"):
        with pytest.raises(SnapshotCorruptError) as caught:
            store.load_bytes(version)
        with pytest.raises(SnapshotCorruptError):
            store.load(version)

    assert str(version) in str(caught.value)
    assert "ONNX" in str(caught.value)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR and record.name == "shared.store"]
    assert errors
    assert all(str(version) in record.getMessage() for record in errors)


def test_missing_onnx_is_refused(make_store, redis_client):
    store = make_store()
    version = store.publish(tagged_state(3), metadata(3), onnx_model=tagged_onnx(3))
    redis_client.delete(store._onnx_key(version))

    with pytest.raises(SnapshotCorruptError) as caught:
        store.load_bytes(version)

    assert "ONNX" in str(caught.value)


def test_unlisted_onnx_bytes_are_ignored(make_store, redis_client):
    # Bytes without a checksum in the metadata cannot be trusted, so they are not served.
    store = make_store()
    version = store.publish(tagged_state(3), metadata(3))
    redis_client.set(store._onnx_key(version), tagged_onnx(3))

    assert store.load_bytes(version).onnx_model is None


class _OpensFile:
    """A pickle payload that creates ``path`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def pickle_payload(path: Path) -> bytes:
    return pickle.dumps(_OpensFile(path))


def test_pickle_payload_works_when_unpickled(tmp_path):
    # Shows the payload used below has a side effect when a pickle loader runs it.
    marker = tmp_path / "control-marker"

    pickle.loads(pickle_payload(marker)).close()

    assert marker.exists()


def test_pickle_weights_fail_checksum(make_store, redis_client, tmp_path):
    store = make_store()
    version = store.publish(tagged_state(1), metadata(1))
    marker = tmp_path / "marker"
    redis_client.set(store._weights_key(version), pickle_payload(marker))

    with pytest.raises(SnapshotCorruptError):
        store.load(version)

    assert not marker.exists()


def test_pickle_weights_are_not_executed(make_store, redis_client, tmp_path):
    store = make_store()
    version = store.publish(tagged_state(1), metadata(1))
    marker = tmp_path / "marker"
    payload = pickle_payload(marker)
    record = orjson.loads(redis_client.get(store._meta_key(version)))
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    redis_client.set(store._weights_key(version), payload)
    redis_client.set(store._meta_key(version), orjson.dumps(record))

    with pytest.raises(SafetensorError):
        store.load(version)

    assert not marker.exists()


def test_torch_save_weights_are_refused(make_store, redis_client):
    store = make_store()
    version = store.publish(tagged_state(1), metadata(1))
    buffer = io.BytesIO()
    torch.save(tagged_state(1), buffer)
    payload = buffer.getvalue()
    record = orjson.loads(redis_client.get(store._meta_key(version)))
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    redis_client.set(store._weights_key(version), payload)
    redis_client.set(store._meta_key(version), orjson.dumps(record))

    with pytest.raises(SafetensorError):
        store.load(version)
