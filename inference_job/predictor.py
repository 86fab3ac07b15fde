"""Batched prediction with the newest snapshot, swapped in without stopping.

A :class:`SnapshotWatcher` thread polls the model store and loads each new version in
the background (fetch, checksum, build). The serving thread calls :meth:`current` before
every batch and so switches models only between batches; a batch never mixes versions.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from shared.model import build_model
from shared.preprocess import to_model_input
from shared.store import ModelStore, SnapshotCorruptError, SnapshotNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: int
    metadata: dict
    module: torch.nn.Module

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return class probabilities, shape ``(n, 10)``, for uint8 images ``(n, 28, 28)``."""
        with torch.inference_mode():
            logits = self.module(to_model_input(images))
            return torch.softmax(logits, dim=1).numpy()


def load_model(store: ModelStore, version: int | None = None) -> LoadedModel:
    """Fetch a snapshot (the latest by default) and build its module, ready for inference."""
    snapshot = store.load(version)
    module = build_model(snapshot.metadata["architecture"])
    module.load_state_dict(snapshot.state_dict)
    module.eval()
    return LoadedModel(snapshot.version, snapshot.metadata, module)


class SnapshotWatcher:
    """Keep the newest loadable snapshot at hand, loading new versions on a background thread."""

    def __init__(self, store: ModelStore, poll_interval_s: float) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._current: LoadedModel | None = None
        self._refused: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> "SnapshotWatcher":
        self.poll_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def current(self) -> LoadedModel | None:
        # Reading one attribute is atomic, so the serving thread needs no lock.
        return self._current

    def poll_once(self) -> bool:
        """Load the latest version if it is newer than the current one; return True on a swap."""
        try:
            latest = self._store.latest_version()
        except Exception:
            logger.exception("polling the model store failed; serving continues with version %s", self._version())
            return False
        if latest is None or latest == self._version() or latest in self._refused:
            return False
        try:
            loaded = load_model(self._store, latest)
        except SnapshotCorruptError:
            # The store has logged the checksum failure; keep serving the current model.
            self._refused.add(latest)
            return False
        except SnapshotNotFoundError:
            return False
        except Exception:
            # Weights that pass the checksum but do not fit the architecture, or an
            # unknown architecture: refuse this version and keep serving.
            logger.exception("rejected snapshot version %d: it could not be loaded", latest)
            self._refused.add(latest)
            return False
        previous = self._version()
        self._current = loaded
        logger.info("serving snapshot version %d (was %s)", loaded.version, previous)
        return True

    def _version(self) -> int | None:
        return None if self._current is None else self._current.version

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            self.poll_once()
