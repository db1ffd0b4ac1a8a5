"""The store interface every backend implements, and the values it traffics in."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import NamedTuple, Self

from .._change import Change
from .._clock import HybridClock
from .._keys import RecordKey, UserRef
from .._message import Kind

__all__ = [
    "ApplyResult",
    "ExportPage",
    "PreconditionFailed",
    "RecordTooLarge",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
]

DEFAULT_TOMBSTONE_TTL = 600.0


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


class ApplyResult(enum.Enum):
    """What became of one change."""

    APPLIED = "applied"
    """At least one entry was accepted; the record has a new eTag."""
    STALE = "stale"
    """Every entry lost to a newer stamp or clear; nothing changed."""
    DROPPED = "dropped"
    """The change predates the deletion of its user's data."""
    TOO_LARGE = "too_large"
    """The merged record would exceed the change's ``max_bytes``; nothing changed."""


_NO_PROPS: Mapping[str, bytes] = MappingProxyType({})


class StoredRecord(NamedTuple):
    """One record as loaded.

    ``props`` holds the live properties as canonical JSON bytes; ``text`` is set
    instead when the data was written as a string through the REST API. A record with
    neither is missing and has the eTag ``""``. ``observed`` is the highest stamp the
    record holds (values, tombstones, clear); ``deleted`` is the owner's deletion stamp.
    """

    props: Mapping[str, bytes] = _NO_PROPS
    text: str | None = None
    etag: str = ""
    observed: int = 0
    deleted: int = 0
    modified_ms: int = 0

    @property
    def exists(self) -> bool:
        """True when the record holds data."""
        return bool(self.props) or self.text is not None


MISSING = StoredRecord()


@dataclass(frozen=True, slots=True)
class ExportPage:
    """One page of an export: live records in key order, and the cursor of the next."""

    records: list[tuple[RecordKey, StoredRecord]]
    cursor: str | None


class Store(abc.ABC):
    """The async interface of a state store.

    Every operation is atomic per record. Stamps come from a ``HybridClock``; the store
    uses its own clock (the same one the middleware uses, when injected) for its wall
    time (TTL, tombstone expiry) and for the stamps of whole-record writes.

    ``ttl`` maps a record kind to seconds of inactivity after which a record expires;
    reading a record refreshes it. ``tombstone_ttl`` is how long removed properties keep
    their stamp, which is how long a late change to them is still recognised as stale.
    """

    def __init__(
        self,
        *,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        for kind, seconds in (ttl or {}).items():
            if kind not in ("user", "conversation", "private"):
                raise ValueError(f"ttl: unknown record kind {kind!r}")
            if seconds <= 0:
                raise ValueError(f"ttl[{kind!r}] must be positive, got {seconds}")
        self.clock = clock if clock is not None else HybridClock(0)
        self.ttl_ms: dict[Kind, int] = {k: int(s * 1000) for k, s in (ttl or {}).items()}
        self.tombstone_ttl_ms = int(tombstone_ttl * 1000)

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect or start workers; called once before use. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and workers. Default: nothing."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def allocate_node_id(self) -> int:
        """A clock node id no other user of this store holds (0..255)."""

    @abc.abstractmethod
    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records in one call; missing ones come back as empty records.

        Refreshes the expiry of records whose kind has a TTL.
        """

    @abc.abstractmethod
    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped property changes, each atomically to its record.

        An entry at stamp ``s`` is accepted only if ``s`` beats the entry's stored stamp
        and is not below the record's clear stamp, so any order gives the same record.
        """

    @abc.abstractmethod
    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag.

        ``etag``: ``"*"`` writes unconditionally, ``""`` or None creates only, anything
        else must equal the current eTag; otherwise PreconditionFailed. ``data`` None
        deletes the record (the result is ``""``). The write is stamped inside the
        operation above everything stored, so no stale property survives it.
        """

    @abc.abstractmethod
    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and all their per-conversation records.

        Returns the deletion stamp ``D`` = max(stamp, highest stored stamp + 1); later
        changes to the user's records whose base is below ``D`` are dropped.
        """

    @abc.abstractmethod
    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of the live records of one bot on one channel, in a stable order.

        Pass the returned cursor to get the next page; None means the export is done.
        """

    async def delete(self, key: RecordKey) -> None:
        """Delete one record."""
        await self.compare_and_set(key, None, "*", max_bytes=0)
