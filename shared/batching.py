"""Micro-batching by size and by maximum wait, with an injectable clock.

The inference job feeds every request into a :class:`Batcher`. A batch is released
when it reaches ``max_size`` (checked on every add) or when its oldest item has
waited ``max_wait_ms`` (checked by the caller from a processing-time timer, because
nothing else runs when traffic stops). The clock is injected so tests can move time
without sleeping.
"""

from __future__ import annotations

import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collect items into batches of at most ``max_size`` that wait at most ``max_wait_ms``."""

    def __init__(self, max_size: int, max_wait_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool):
            raise TypeError(f"max_size must be an int, got {type(max_size).__name__}")
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.max_size = max_size
        self.max_wait_ms = max_wait_ms
        self._clock = clock
        self._items: list[T] = []
        self._first_added_s: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Add ``item``; return the full batch when this add fills it, else None."""
        if not self._items:
            self._first_added_s = self._clock()
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self.drain()
        return None

    def remaining_ms(self) -> float | None:
        """Milliseconds until the oldest item's wait runs out (0 when overdue); None when empty."""
        if self._first_added_s is None:
            return None
        waited_ms = (self._clock() - self._first_added_s) * 1000.0
        return max(0.0, self.max_wait_ms - waited_ms)

    def is_due(self) -> bool:
        """True when the batch is non-empty and its oldest item has waited ``max_wait_ms``."""
        remaining = self.remaining_ms()
        return remaining is not None and remaining <= 0.0

    def drain(self) -> list[T]:
        """Return every item held, oldest first, and start a new batch."""
        items, self._items = self._items, []
        self._first_added_s = None
        return items
