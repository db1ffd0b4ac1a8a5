"""What an engine counts: plain numbers bumped on the turn's path (no lock, no label
lookup, no library), read when metrics are scraped (``_prometheus``).

A turn adds one to ``turns``, times its store calls into fixed-bucket histograms, counts
each change by what became of it, and puts the bytes each change sets in a histogram.
"""

from __future__ import annotations

import bisect

__all__: list[str] = []

#: The store operations an engine times.
OPERATIONS = ("load", "apply", "delete_user")
#: What became of a change (``ApplyResult`` values).
RESULTS = ("applied", "stale", "dropped", "too_large")
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BYTES_BUCKETS = (64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0)


class Histogram:
    """Counts per bucket (``<= bound``, then one above every bound) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, values at or below it) per bucket, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Metrics:
    """An engine's counters since it was made."""

    __slots__ = (
        "apply_seconds",
        "change_bytes",
        "changes",
        "load_seconds",
        "store_seconds",
        "turns",
        "unavailable",
    )

    def __init__(self) -> None:
        self.turns = 0
        self.store_seconds = {operation: Histogram(SECONDS_BUCKETS) for operation in OPERATIONS}
        # The two every turn times, without a dictionary lookup.
        self.load_seconds = self.store_seconds["load"]
        self.apply_seconds = self.store_seconds["apply"]
        self.unavailable = dict.fromkeys(OPERATIONS, 0)  # calls that failed: the 503s
        self.changes = dict.fromkeys(RESULTS, 0)
        self.change_bytes = Histogram(BYTES_BUCKETS)
