"""Tests of Batcher with a fake clock, so time moves only when a test moves it."""

from __future__ import annotations

import pytest

from shared.batching import Batcher


class FakeClock:
    """A monotonic clock in seconds that advances only through :meth:`advance_ms`.

    Tests that check the exact deadline use steps such as 125 ms and 250 ms, which are
    exact binary fractions of a second, so float rounding cannot move the deadline.
    """

    def __init__(self, start_s: float = 1024.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance_ms(self, milliseconds: float) -> None:
        self.now_s += milliseconds / 1000.0


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


# Size


def test_flush_at_exactly_max_size(clock):
    batcher = Batcher(4, 50, clock=clock)

    results = [batcher.add(item) for item in range(4)]

    assert results[:3] == [None, None, None]
    assert results[3] == [0, 1, 2, 3]


def test_size_flush_empties_batcher(clock):
    batcher = Batcher(2, 50, clock=clock)
    batcher.add("a")
    batcher.add("b")

    assert len(batcher) == 0
    assert batcher.remaining_ms() is None
    assert not batcher.is_due()


def test_len_counts_held_items(clock):
    batcher = Batcher(10, 50, clock=clock)
    for item in range(3):
        batcher.add(item)

    assert len(batcher) == 3


def test_max_size_one_flushes_every_item(clock):
    batcher = Batcher(1, 50, clock=clock)

    for item in ["a", "b", "c"]:
        assert batcher.add(item) == [item]
        assert len(batcher) == 0


def test_consecutive_size_flushes_keep_order(clock):
    batcher = Batcher(3, 50, clock=clock)

    flushed = [batch for batch in (batcher.add(item) for item in range(9)) if batch is not None]

    assert flushed == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


# Maximum wait


def test_not_due_before_max_wait(clock):
    batcher = Batcher(10, 250, clock=clock)
    batcher.add("a")

    clock.advance_ms(249)

    assert not batcher.is_due()


def test_due_at_max_wait(clock):
    batcher = Batcher(10, 250, clock=clock)
    batcher.add("a")

    clock.advance_ms(250)

    assert batcher.is_due()
    assert batcher.remaining_ms() == 0.0


def test_due_after_max_wait(clock):
    batcher = Batcher(10, 20, clock=clock)
    batcher.add("a")

    clock.advance_ms(500)

    assert batcher.is_due()
    assert batcher.remaining_ms() == 0.0


def test_empty_batcher_is_never_due(clock):
    batcher = Batcher(10, 20, clock=clock)

    clock.advance_ms(1000)

    assert not batcher.is_due()
    assert batcher.remaining_ms() is None


def test_remaining_counts_down(clock):
    batcher = Batcher(10, 20, clock=clock)
    batcher.add("a")

    assert batcher.remaining_ms() == pytest.approx(20.0)
    clock.advance_ms(5)
    assert batcher.remaining_ms() == pytest.approx(15.0)
    clock.advance_ms(10)
    assert batcher.remaining_ms() == pytest.approx(5.0)


def test_deadline_set_by_oldest_item(clock):
    batcher = Batcher(10, 250, clock=clock)
    batcher.add("a")
    clock.advance_ms(125)

    batcher.add("b")

    assert batcher.remaining_ms() == 125.0
    clock.advance_ms(125)
    assert batcher.is_due()


def test_zero_wait_is_due_at_once(clock):
    batcher = Batcher(10, 0, clock=clock)

    batcher.add("a")

    assert batcher.is_due()


def test_adding_past_deadline_does_not_flush(clock):
    batcher = Batcher(10, 20, clock=clock)
    batcher.add("a")
    clock.advance_ms(50)

    assert batcher.add("b") is None
    assert batcher.drain() == ["a", "b"]


# Drain and new batches


def test_drain_returns_items_oldest_first(clock):
    batcher = Batcher(10, 20, clock=clock)
    for item in ["x", "y", "z"]:
        batcher.add(item)

    assert batcher.drain() == ["x", "y", "z"]
    assert len(batcher) == 0


def test_drain_of_empty_batcher(clock):
    batcher = Batcher(10, 20, clock=clock)

    assert batcher.drain() == []


def test_drain_resets_timer(clock):
    batcher = Batcher(10, 20, clock=clock)
    batcher.add("a")
    clock.advance_ms(30)
    batcher.drain()

    assert batcher.remaining_ms() is None
    clock.advance_ms(30)
    batcher.add("b")

    assert not batcher.is_due()
    assert batcher.remaining_ms() == pytest.approx(20.0)


def test_next_batch_gets_fresh_deadline(clock):
    batcher = Batcher(2, 20, clock=clock)
    batcher.add("a")
    clock.advance_ms(15)
    assert batcher.add("b") == ["a", "b"]

    clock.advance_ms(10)
    batcher.add("c")

    assert not batcher.is_due()
    assert batcher.remaining_ms() == pytest.approx(20.0)


def test_default_clock_is_monotonic():
    batcher = Batcher(10, 60_000)
    batcher.add("a")

    remaining = batcher.remaining_ms()

    assert 0.0 < remaining <= 60_000


# Constructor checks


@pytest.mark.parametrize("max_size", [0, -1, -100])
def test_max_size_below_one_is_rejected(max_size):
    with pytest.raises(ValueError):
        Batcher(max_size, 20)


@pytest.mark.parametrize("max_size", [True, False, 1.0, 2.5, "4", None])
def test_non_int_max_size_is_rejected(max_size):
    with pytest.raises(TypeError):
        Batcher(max_size, 20)


@pytest.mark.parametrize("max_wait_ms", [-1, -0.001])
def test_negative_wait_is_rejected(max_wait_ms):
    with pytest.raises(ValueError):
        Batcher(4, max_wait_ms)


@pytest.mark.parametrize("max_wait_ms", [0, 0.5, 20, 10_000])
def test_valid_wait_is_accepted(max_wait_ms):
    batcher = Batcher(4, max_wait_ms)

    assert batcher.max_wait_ms == max_wait_ms
