"""The errors a store raises: a leaf, so the clock, the stores and the adapters share them."""

from __future__ import annotations

from ._keys import RecordKey

__all__ = ["PreconditionFailed", "RecordTooLarge", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """Base class of the errors a store raises."""


class StoreUnavailable(StoreError):
    """The backing store cannot be reached or did not answer in time (HTTP 503)."""


class PreconditionFailed(StoreError):
    """A compare-and-set found another eTag than the caller sent (HTTP 412)."""


class RecordTooLarge(StoreError):
    """A write would make a record larger than its limit."""

    def __init__(self, key: RecordKey, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(f"the {key.kind} record would be {size} bytes, over the limit of {limit}")
