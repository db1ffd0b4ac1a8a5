from __future__ import annotations

import pytest

from inline_state import HybridClock
from inline_state._clock import EPOCH_MS, NODE_BITS, STAMP_LIMIT, stamp_ms


def test_stamps_increase_even_when_the_wall_clock_stands_still() -> None:
    clock = HybridClock(3, wall_ms=lambda: EPOCH_MS + 1000)
    stamps = [clock.stamp() for _ in range(100)]
    assert stamps == sorted(set(stamps))
    assert all(s & ((1 << NODE_BITS) - 1) == 3 for s in stamps)


def test_stamp_is_above_everything_observed() -> None:
    clock = HybridClock(1, wall_ms=lambda: EPOCH_MS + 1000)
    far = HybridClock(2, wall_ms=lambda: EPOCH_MS + 10_000_000).stamp()
    clock.observe(far)
    assert clock.stamp() > far


def test_stamps_follow_the_wall_clock_and_stay_below_2_53() -> None:
    now = [EPOCH_MS + 5]
    clock = HybridClock(0, wall_ms=lambda: now[0])
    first = clock.stamp()
    now[0] += 1000
    second = clock.stamp()
    assert stamp_ms(second) == now[0] and stamp_ms(first) == EPOCH_MS + 5
    assert second < STAMP_LIMIT
    real = HybridClock(0).stamp()
    assert real < STAMP_LIMIT


def test_node_id_is_range_checked() -> None:
    with pytest.raises(ValueError, match="node_id"):
        HybridClock(256)
