"""Versioned model snapshots in Redis.

Every publish creates a new version; older versions stay readable until retention drops
them, so models of different training times can be compared side by side.

Layout under the key prefix ``P`` (``model_key_prefix`` in the config)::

    P:seq               INCR counter that hands out version numbers
    P:latest            the newest complete version
    P:versions          sorted set of stored versions (score = version)
    P:pinned            set of versions that retention never drops
    P:v:<n>:weights     safetensors bytes of the state_dict
    P:v:<n>:onnx        the same model as an ONNX graph, for serving (optional)
    P:v:<n>:meta        JSON metadata, including the sha256 of the weights and of the ONNX model

A snapshot's weights, ONNX model, metadata, index entry and the ``latest`` pointer are
written in one MULTI/EXEC transaction, so a reader never sees a half-written snapshot.
Weights are safetensors, which hold tensors only: loading them cannot run code. They are
the source of truth. The ONNX model is derived from them when the snapshot is published,
so the inference job can serve it with ONNX Runtime without importing torch. ONNX
Runtime parses the graph without running Python code. Snapshots published before the
ONNX model existed have none and are served from their weights. A reader checks the
sha256 of every part against the metadata and rejects a snapshot where any part does
not match.

Reading the raw bytes (:meth:`ModelStore.load_bytes`) needs neither torch nor
safetensors' torch API, so this module imports torch only where a method needs it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import orjson
import redis

from shared.config import Config

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class SnapshotNotFoundError(LookupError):
    """No snapshot exists, or the requested version was dropped by retention."""


class SnapshotCorruptError(ValueError):
    """A snapshot's weights or ONNX model do not match the sha256 recorded in its metadata."""


@dataclass(frozen=True)
class SnapshotBytes:
    """A snapshot as stored, after its checksums passed: safetensors weights and the ONNX model, if any."""

    version: int
    metadata: dict[str, Any]
    weights: bytes
    onnx_model: bytes | None


@dataclass(frozen=True)
class Snapshot:
    version: int
    metadata: dict[str, Any]
    state_dict: dict[str, "torch.Tensor"]
    onnx_model: bytes | None = None


def connect_redis(config: Config) -> redis.Redis:
    """Open a Redis client for ``config`` and check the connection at once."""
    client = redis.Redis(
        host=config.redis_host,
        port=config.redis_port,
        db=config.redis_db,
        password=config.redis_secret(),
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    client.ping()
    return client


class ModelStore:
    """Publish, list, pin and load model snapshots kept in Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str, keep_last: int = 20) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self._redis = client
        self._prefix = key_prefix
        self._keep_last = keep_last

    @classmethod
    def from_config(cls, config: Config) -> "ModelStore":
        return cls(connect_redis(config), config.model_key_prefix, config.snapshots_kept)

    # Keys

    def _key(self, *parts: object) -> str:
        return ":".join([self._prefix, *map(str, parts)])

    def _weights_key(self, version: int) -> str:
        return self._key("v", version, "weights")

    def _meta_key(self, version: int) -> str:
        return self._key("v", version, "meta")

    def _onnx_key(self, version: int) -> str:
        return self._key("v", version, "onnx")

    # Writing

    def publish(
        self,
        state_dict: Mapping[str, "torch.Tensor"],
        metadata: Mapping[str, Any],
        onnx_model: bytes | None = None,
        *,
        with_onnx: bool = True,
    ) -> int:
        """Store a new snapshot and make it the latest; return its version.

        ``metadata`` should carry at least ``architecture``, ``samples_seen`` and
        ``accuracy``. This method fills in ``version``, ``created_at``, ``sha256``,
        ``size_bytes`` and ``framework``, and also ``onnx_sha256`` and ``onnx_size_bytes``
        when the snapshot has an ONNX model.

        The ONNX model is ``onnx_model`` when given. Otherwise, with ``with_onnx``, it is
        exported here from ``state_dict`` (:func:`shared.model.export_onnx`) when the
        metadata's architecture is a registered one, so every publisher's snapshots can be
        served without torch. When that export fails (weights that do not fit the
        architecture, for instance) the failure is logged and the snapshot is stored
        without an ONNX model, as it is with ``with_onnx=False``.
        """
        import torch
        from safetensors.torch import save as save_safetensors

        from shared.model import ARCHITECTURES, export_onnx

        architecture = metadata.get("architecture")
        if onnx_model is None and with_onnx and architecture in ARCHITECTURES:
            try:
                onnx_model = export_onnx(architecture, state_dict)
            except Exception:
                logger.warning("exporting architecture %s to ONNX failed; publishing the snapshot without an "
                               "ONNX model", architecture, exc_info=True)
        tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}
        weights = save_safetensors(tensors)
        # NOTE: the version is taken before the transaction, so two concurrent publishers
        # could leave `latest` on the lower version. One training job publishes, so this
        # does not arise in the pipeline.
        version = int(self._redis.incr(self._key("seq")))
        record = dict(metadata)
        record.update(
            version=version,
            created_at=time.time(),
            sha256=hashlib.sha256(weights).hexdigest(),
            size_bytes=len(weights),
            framework=f"torch {torch.__version__}",
        )
        # Metadata passed in must not claim an ONNX model that this call does not store.
        record.pop("onnx_sha256", None)
        record.pop("onnx_size_bytes", None)
        if onnx_model is not None:
            onnx_model = bytes(onnx_model)
            record.update(onnx_sha256=hashlib.sha256(onnx_model).hexdigest(), onnx_size_bytes=len(onnx_model))

        # One transaction: a reader sees all of the snapshot or none of it.
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._weights_key(version), weights)
        if onnx_model is not None:
            pipe.set(self._onnx_key(version), onnx_model)
        pipe.set(self._meta_key(version), orjson.dumps(record))
        pipe.zadd(self._key("versions"), {str(version): version})
        pipe.set(self._key("latest"), version)
        pipe.execute()
        logger.info(
            "published snapshot version=%d samples_seen=%s accuracy=%s bytes=%d onnx_bytes=%s",
            version, record.get("samples_seen"), record.get("accuracy"), len(weights),
            record.get("onnx_size_bytes"),
        )

        self._apply_retention(version)
        return version

    def _apply_retention(self, latest: int) -> None:
        """Drop versions older than the newest ``keep_last``, sparing pinned ones."""
        versions = self.versions()
        pinned = self.pinned()
        doomed = [v for v in versions[:-self._keep_last] if v not in pinned and v != latest]
        if not doomed:
            return
        pipe = self._redis.pipeline(transaction=True)
        for version in doomed:
            pipe.delete(self._weights_key(version), self._onnx_key(version), self._meta_key(version))
            pipe.zrem(self._key("versions"), str(version))
        pipe.execute()
        logger.debug("retention dropped versions %s", doomed)

    def pin(self, version: int) -> None:
        if not self._redis.exists(self._meta_key(version)):
            raise SnapshotNotFoundError(f"snapshot version {version} not found")
        self._redis.sadd(self._key("pinned"), version)

    def unpin(self, version: int) -> None:
        self._redis.srem(self._key("pinned"), version)

    # Reading

    def latest_version(self) -> int | None:
        value = self._redis.get(self._key("latest"))
        return None if value is None else int(value)

    def versions(self) -> list[int]:
        return [int(v) for v in self._redis.zrange(self._key("versions"), 0, -1)]

    def pinned(self) -> set[int]:
        return {int(v) for v in self._redis.smembers(self._key("pinned"))}

    def metadata(self, version: int) -> dict[str, Any]:
        raw = self._redis.get(self._meta_key(version))
        if raw is None:
            raise SnapshotNotFoundError(f"snapshot version {version} not found")
        return orjson.loads(raw)

    def list_snapshots(self) -> list[dict[str, Any]]:
        """Return the metadata of every stored snapshot, oldest first, with a ``pinned`` flag."""
        versions = self.versions()
        if not versions:
            return []
        pinned = self.pinned()
        raws = self._redis.mget([self._meta_key(v) for v in versions])
        snapshots = []
        for version, raw in zip(versions, raws):
            if raw is None:  # dropped between the two reads
                continue
            record = orjson.loads(raw)
            record["pinned"] = version in pinned
            snapshots.append(record)
        return snapshots

    def load(self, version: int | None = None) -> Snapshot:
        """Load a snapshot (the latest when ``version`` is None) after checking its sha256 checksums."""
        from safetensors.torch import load as load_safetensors

        raw = self.load_bytes(version)
        return Snapshot(raw.version, raw.metadata, load_safetensors(raw.weights), raw.onnx_model)

    def load_bytes(self, version: int | None = None) -> SnapshotBytes:
        """Fetch a snapshot's stored bytes (the latest when ``version`` is None) and check them.

        Raises :class:`SnapshotNotFoundError` when the version does not exist and
        :class:`SnapshotCorruptError` when the weights or the ONNX model do not match the
        sha256 in the metadata, or when the metadata names an ONNX model that is missing.
        """
        if version is None:
            version = self.latest_version()
            if version is None:
                raise SnapshotNotFoundError("no snapshot has been published yet")

        # Read every part in one transaction so all belong to the same write.
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._meta_key(version))
        pipe.get(self._weights_key(version))
        pipe.get(self._onnx_key(version))
        raw_meta, weights, onnx_model = pipe.execute()
        if raw_meta is None or weights is None:
            raise SnapshotNotFoundError(f"snapshot version {version} not found")
        metadata = orjson.loads(raw_meta)

        self._check(version, "weights", weights, metadata.get("sha256"))
        expected_onnx = metadata.get("onnx_sha256")
        if expected_onnx is None:
            if onnx_model is not None:
                logger.warning("snapshot version=%d has ONNX bytes but no onnx_sha256; ignoring them", version)
            onnx_model = None
        elif onnx_model is None:
            logger.error("rejected snapshot version=%d: its metadata names an ONNX model that is missing", version)
            raise SnapshotCorruptError(f"snapshot version {version} lacks the ONNX model its metadata names")
        else:
            self._check(version, "ONNX model", onnx_model, expected_onnx)
        return SnapshotBytes(version, metadata, weights, onnx_model)

    @staticmethod
    def _check(version: int, part: str, data: bytes, expected: str | None) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            logger.error(
                "rejected snapshot version=%d: %s sha256 %s does not match metadata %s",
                version, part, digest, expected,
            )
            raise SnapshotCorruptError(
                f"snapshot version {version} failed its checksum: {part} sha256 {digest}, expected {expected}"
            )
