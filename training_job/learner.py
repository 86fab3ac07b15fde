"""Online learning of one model from a stream of labelled mini-batches.

Each mini-batch is first used to test the model and then to train it (prequential
evaluation), so the reported accuracy is always measured on samples the model has not
yet learned from.
"""

from __future__ import annotations

import io
from collections import deque
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.model import build_model
from shared.preprocess import to_model_input


class ArchitectureMismatchError(ValueError):
    """Saved learner state belongs to a different model architecture than the learner's."""


class OnlineLearner:
    """A model, its optimizer and prequential accuracy, with state that round-trips through bytes."""

    def __init__(self, architecture: str, learning_rate: float, accuracy_window: int, seed: int = 0) -> None:
        self.architecture = architecture
        self.learning_rate = learning_rate
        self.model = build_model(architecture, seed=seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.loss_fn = nn.CrossEntropyLoss()
        self.samples_seen = 0
        self.batches_seen = 0
        self.last_loss = float("nan")
        self._recent_hits: deque[int] = deque(maxlen=accuracy_window)

    @property
    def prequential_accuracy(self) -> float | None:
        """Share of the last ``accuracy_window`` samples predicted right before training on them."""
        if not self._recent_hits:
            return None
        return sum(self._recent_hits) / len(self._recent_hits)

    def learn_batch(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Test on the batch, then take one optimizer step on it; return the batch's hits and loss."""
        inputs = to_model_input(images)
        targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)

        # 1. Test: predictions from the model as it was before seeing these labels.
        self.model.eval()
        with torch.no_grad():
            predicted = self.model(inputs).argmax(dim=1)
        hits = (predicted == targets).to(torch.int64).tolist()
        self._recent_hits.extend(hits)

        # 2. Train: one step of the optimizer on the same batch.
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()

        self.samples_seen += len(targets)
        self.batches_seen += 1
        self.last_loss = float(loss.item())
        return {"hits": float(sum(hits)), "size": float(len(hits)), "loss": self.last_loss}

    def snapshot_metadata(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "samples_seen": self.samples_seen,
            "batches_seen": self.batches_seen,
            "accuracy": self.prequential_accuracy,
            "accuracy_window": len(self._recent_hits),
            "loss": self.last_loss,
            "learning_rate": self.learning_rate,
        }

    # Checkpointed state

    def state_bytes(self) -> bytes:
        """Serialise model, optimizer and counters; :meth:`load_state_bytes` reads them back."""
        buffer = io.BytesIO()
        torch.save(
            {
                "architecture": self.architecture,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "samples_seen": self.samples_seen,
                "batches_seen": self.batches_seen,
                "recent_hits": list(self._recent_hits),
            },
            buffer,
        )
        return buffer.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        """Restore state written by :meth:`state_bytes`.

        Raises :class:`ArchitectureMismatchError` when the state belongs to another
        architecture, and leaves this learner unchanged then.
        """
        # weights_only=True restricts unpickling to tensors and plain containers.
        state = torch.load(io.BytesIO(data), weights_only=True)
        saved_architecture = state.get("architecture")
        if saved_architecture is not None and saved_architecture != self.architecture:
            raise ArchitectureMismatchError(
                f"the saved state is a {saved_architecture} model, the learner a {self.architecture}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            # State saved before the architecture was recorded: the shapes tell.
            raise ArchitectureMismatchError(f"the saved weights do not fit {self.architecture}: {error}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.samples_seen = int(state["samples_seen"])
        self.batches_seen = int(state["batches_seen"])
        self._recent_hits.clear()
        self._recent_hits.extend(int(hit) for hit in state["recent_hits"])
