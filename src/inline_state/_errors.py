"""The errors of inline state: a leaf, so the clock, the stores, the engine and the
adapters share them.

Store errors say the store could not do something; turn errors say a turn's own data
cannot be stored, and carry the HTTP status and JSON body an adapter answers with.
"""

from __future__ import annotations

from typing import Any

from ._keys import RecordKey

__all__ = [
    "BagError",
    "IdTooLong",
    "InvalidCursor",
    "PreconditionFailed",
    "RecordTooLarge",
    "StoreError",
    "StoreUnavailable",
    "TurnError",
]


class StoreError(Exception):
    """Base class of the errors a store raises."""


class StoreUnavailable(StoreError):
    """The backing store cannot be reached or did not answer in time (HTTP 503)."""


class InvalidCursor(StoreError, ValueError):
    """An export cursor the store did not issue (HTTP 400 on the REST API)."""


class PreconditionFailed(StoreError):
    """A compare-and-set found another eTag than the caller sent (HTTP 412)."""


class RecordTooLarge(StoreError):
    """A write would make a record larger than its limit."""

    def __init__(self, key: RecordKey, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(f"the {key.kind} record would be {size} bytes, over the limit of {limit}")


class TurnError(Exception):
    """A turn's bags cannot be stored; ``status`` and ``to_json()`` are the answer."""

    status = 500
    code = "InvalidBotData"

    def to_json(self) -> dict[str, Any]:
        """The JSON error body sent instead of the bot's reply."""
        return {"error": {"code": self.code, "message": str(self)}}


class BagError(TurnError):
    """A reply carried a bag that cannot be stored; the turn fails with HTTP 500."""

    def __init__(
        self, field: str, reason: str, detail: str, *, size: int | None = None, limit: int
    ) -> None:
        self.field = field
        self.reason = reason
        self.size = size
        self.limit = limit
        super().__init__(f"{field}: {detail}")

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: what, why, and the size against the limit."""
        return {
            "error": {
                "code": self.code,
                "message": str(self),
                "field": self.field,
                "reason": self.reason,
                "size": self.size,
                "limit": self.limit,
            }
        }


class IdTooLong(TurnError):
    """A record would be written under an id longer than the limit (HTTP 400)."""

    status = 400
    code = "IdTooLong"
