"""Batched prediction with the newest snapshot, swapped in without stopping.

A snapshot that carries an ONNX model (every snapshot published since the ONNX model
exists) is served by ONNX Runtime, which needs neither torch nor the model's Python code.
A snapshot published without one is either rebuilt in torch in this process
(:func:`load_model`'s default, used by the app) or exported to ONNX by a child Python
process (what the inference job does), so that the job never imports torch.

A :class:`SnapshotWatcher` thread polls the model store and loads each new version in
the background (fetch, checksum, build). The serving thread calls :meth:`current` before
every batch and so switches models only between batches; a batch never mixes versions.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shared.store import ModelStore, SnapshotBytes, SnapshotCorruptError, SnapshotNotFoundError

logger = logging.getLogger(__name__)

IMAGE_SIDE = 28
# The input name of the graph that shared.model.export_onnx writes; that module imports torch.
ONNX_INPUT = "images"


def _as_images(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {array.dtype}")
    return array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


@dataclass(frozen=True)
class OnnxModel:
    """A snapshot served by an ONNX Runtime session; the graph scales the pixels and applies softmax."""

    version: int
    metadata: dict[str, Any]
    session: Any
    runtime: str

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return class probabilities, float32 ``(n, 10)``, for uint8 images ``(n, 28, 28)`` or ``(n, 784)``."""
        # NOTE: in PyFlink's thread mode this runs on the operator's thread, where a call
        # into PyGILState_Ensure would hang (see SnapshotWatcher.start). It never hung in
        # the measured runs, but ONNX Runtime does not document that its binding avoids it.
        return self.session.run(None, {ONNX_INPUT: _as_images(images)})[0]


@dataclass(frozen=True)
class TorchModel:
    """A snapshot without an ONNX model, rebuilt from its weights in torch."""

    version: int
    metadata: dict[str, Any]
    module: Any

    @property
    def runtime(self) -> str:
        """The runtime and its version, such as "torch 2.15.0"."""
        import torch

        return f"torch {torch.__version__}"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return class probabilities, float32 ``(n, 10)``, for uint8 images ``(n, 28, 28)`` or ``(n, 784)``."""
        import torch

        from shared.preprocess import to_model_input

        with torch.inference_mode():
            logits = self.module(to_model_input(_as_images(images)))
            return torch.softmax(logits, dim=1).numpy()


# The result of load_model. Both classes have version, metadata, runtime and predict().
ServedModel = OnnxModel | TorchModel
# The torch-backed model's name from before snapshots carried an ONNX model; other modules
# still construct it as LoadedModel(version, metadata, module).
LoadedModel = TorchModel


def load_model(
    store: ModelStore,
    version: int | None = None,
    *,
    intra_op_threads: int = 1,
    export_python: str | None = None,
    runtime: str = "auto",
) -> ServedModel:
    """Fetch a snapshot (the latest by default) and make it ready for inference.

    ONNX Runtime runs the snapshot's ONNX model on ``intra_op_threads`` threads. A
    snapshot without one is rebuilt in torch in this process, unless ``export_python``
    names a Python interpreter: then a child process of it exports the weights to ONNX
    (:func:`export_onnx_in_child`) and this process does not import torch. With
    ``runtime="torch"`` the weights are served by eager torch even when the snapshot
    has an ONNX model. Checksum failures raise :class:`~shared.store.SnapshotCorruptError`.
    """
    if runtime not in ("auto", "torch"):
        raise ValueError(f"runtime must be 'auto' or 'torch', got {runtime!r}")
    snapshot = store.load_bytes(version)
    if runtime == "torch":
        return _load_torch(snapshot)
    if snapshot.onnx_model is None and export_python is not None:
        logger.info("snapshot version %d has no ONNX model: exporting it in a child process", snapshot.version)
        snapshot = replace(snapshot, onnx_model=export_onnx_in_child(snapshot, export_python))
    if snapshot.onnx_model is not None:
        return _load_onnx(snapshot, intra_op_threads)
    return _load_torch(snapshot)


def export_onnx_in_child(snapshot: SnapshotBytes, python: str, timeout_s: float = 300.0) -> bytes:
    """Export a snapshot's weights to ONNX with ``python -m shared.model`` and return the ONNX bytes.

    The child finds this project's packages through this process's ``sys.path``. It raises
    ``RuntimeError`` when the child fails and ``subprocess.TimeoutExpired`` after
    ``timeout_s`` seconds.
    """
    architecture = snapshot.metadata.get("architecture")
    if not isinstance(architecture, str):
        raise RuntimeError(f"snapshot version {snapshot.version} names no architecture")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
    completed = subprocess.run(
        [python, "-m", "shared.model", architecture],
        input=snapshot.weights, capture_output=True, env=environment, timeout=timeout_s, check=False,
    )
    if completed.returncode != 0:
        error = completed.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"exporting snapshot version {snapshot.version} to ONNX failed with exit status "
            f"{completed.returncode}: {error[-1] if error else 'no error output'}"
        )
    return completed.stdout


def _load_onnx(snapshot: SnapshotBytes, intra_op_threads: int) -> OnnxModel:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(snapshot.onnx_model, options, providers=["CPUExecutionProvider"])
    return OnnxModel(snapshot.version, snapshot.metadata, session, f"onnxruntime {onnxruntime.__version__}")


def _load_torch(snapshot: SnapshotBytes) -> TorchModel:
    from safetensors.torch import load as load_safetensors

    from shared.model import build_model

    module = build_model(snapshot.metadata["architecture"])
    module.load_state_dict(load_safetensors(snapshot.weights))
    module.eval()
    logger.info("serving snapshot version %d with eager torch", snapshot.version)
    return TorchModel(snapshot.version, snapshot.metadata, module)


class SnapshotWatcher:
    """Keep the newest loadable snapshot at hand, loading new versions on a background thread."""

    def __init__(
        self,
        store: ModelStore,
        poll_interval_s: float,
        *,
        threads: int = 1,
        export_python: str | None = None,
    ) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._threads = threads
        self._export_python = export_python
        self._current: ServedModel | None = None
        self._refused: set[int] = set()
        self._stop = threading.Event()
        self._first_poll_done = threading.Event()
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> "SnapshotWatcher":
        """Start the watcher thread and return once its first poll has finished.

        The first poll runs on the watcher thread too. In PyFlink's thread mode the caller
        is a TaskManager thread to which pemja has given a Python thread state of its own.
        Importing a pybind11 module there (onnxruntime 1.32, torch 2.15) waits forever in
        PyGILState_Ensure for the GIL that its own thread holds (seen in gdb with PyFlink
        2.2.1). A thread that Python started imports them fine.
        """
        self._thread.start()
        self._first_poll_done.wait()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def current(self) -> ServedModel | None:
        # Reading one attribute is atomic, so the serving thread needs no lock.
        return self._current

    def wait_for_model(self, timeout_s: float) -> ServedModel | None:
        """Return the current model, waiting up to ``timeout_s`` seconds for the first one to load."""
        self._loaded.wait(timeout_s)
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
            loaded = load_model(self._store, latest, intra_op_threads=self._threads, export_python=self._export_python)
        except SnapshotCorruptError:
            # The store has logged the checksum failure; keep serving the current model.
            self._refused.add(latest)
            return False
        except SnapshotNotFoundError:
            return False
        except Exception:
            # Weights that pass the checksum but do not fit the architecture, an unknown
            # architecture, or an ONNX model that ONNX Runtime cannot load: reject this
            # version and keep serving.
            logger.exception("rejected snapshot version %d: it could not be loaded", latest)
            self._refused.add(latest)
            return False
        previous = self._version()
        self._current = loaded
        self._loaded.set()
        logger.info("serving snapshot version %d with %s (was %s)", loaded.version, loaded.runtime, previous)
        return True

    def _version(self) -> int | None:
        return None if self._current is None else self._current.version

    def _run(self) -> None:
        try:
            self.poll_once()
        finally:
            self._first_poll_done.set()
        while not self._stop.wait(self._poll_interval_s):
            self.poll_once()
