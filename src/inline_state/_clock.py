"""Stamps from a hybrid logical clock.

A stamp is one integer below 2**53 (so Lua and JSON carry it exactly) that orders as
(milliseconds, counter, node id):

    bits 52..12  milliseconds since 2025-01-01 UTC (69 years of range)
    bits 11..8   counter within a millisecond; overflow carries into the milliseconds
    bits  7..0   node id (0..255), so two nodes never issue the same stamp
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._errors import StoreUnavailable

__all__ = ["HybridClock"]

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
NODE_BITS = 8
COUNTER_BITS = 4
MS_SHIFT = NODE_BITS + COUNTER_BITS
MAX_NODES = 1 << NODE_BITS
STAMP_LIMIT = 1 << 53


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def stamp_ms(stamp: int) -> int:
    """The wall-clock milliseconds (Unix epoch) encoded in a stamp."""
    return (stamp >> MS_SHIFT) + EPOCH_MS


def _boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


#: Seconds that keep counting while the machine sleeps (CLOCK_BOOTTIME where there is one,
#: unlike time.monotonic on Linux), as the store's lease expiry does: a suspended host
#: must not believe its lease is still valid.
lease_time: Callable[[], float] = _boot_time if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic


def stamp_above(floor: int, node_id: int) -> int:
    """The smallest stamp of node ``node_id`` above ``floor``.

    ``floor + 1`` would belong to another node, which may issue that very stamp.
    """
    stamp = (floor & ~(MAX_NODES - 1)) | node_id
    return stamp if stamp > floor else stamp + MAX_NODES


class HybridClock:
    """Issues strictly increasing stamps that never fall behind any stamp observed.

    ``node_id`` tells writers sharing a store apart: a store leases one for its own
    clock when it opens (two live writers never hold the same one), and sets
    ``lease_deadline`` (in ``lease_time()`` seconds) past which the clock refuses to stamp
    until the lease is renewed. An injected clock's node id is the caller's to keep
    unique. ``wall_ms`` returns Unix milliseconds and is injectable for tests.
    """

    __slots__ = ("_last", "lease_deadline", "node_id", "wall_ms")

    def __init__(self, node_id: int = 0, *, wall_ms: Callable[[], int] = _wall_ms) -> None:
        if not 0 <= node_id < MAX_NODES:
            raise ValueError(f"node_id must be in 0..{MAX_NODES - 1}, got {node_id}")
        self.node_id = node_id
        self.wall_ms = wall_ms
        self.lease_deadline: float | None = None
        self._last = 0

    def observe(self, stamp: int) -> None:
        """Remember a stamp read from a store, so the next stamp is above it."""
        if stamp > self._last:
            self._last = stamp

    def stamp(self) -> int:
        """A new stamp: max(now, last issued or observed + 1), on this node.

        Raises StoreUnavailable while the node id's lease has lapsed.
        """
        if self.lease_deadline is not None and lease_time() > self.lease_deadline:
            raise StoreUnavailable(
                f"the clock's lease on node id {self.node_id} lapsed; it is being renewed"
            )
        now = ((self.wall_ms() - EPOCH_MS) << MS_SHIFT) | self.node_id
        following = (((self._last >> NODE_BITS) + 1) << NODE_BITS) | self.node_id
        stamp = now if now > following else following
        if stamp >= STAMP_LIMIT:
            raise OverflowError("stamp beyond 2**53: the wall clock is far in the future")
        self._last = stamp
        return stamp
