"""The store interface every backend implements, and the values it traffics in."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple, Protocol, Self

from .._change import Change
from .._clock import HybridClock, lease_time
from .._errors import InvalidCursor, StoreError, StoreUnavailable
from .._keys import RecordKey, UserRef, decode_key, listing_prefix
from .._message import Kind

__all__ = [
    "ApplyResult",
    "DumpPage",
    "DumpedRecord",
    "ExportPage",
    "InspectedRecord",
    "KeyPage",
    "Store",
    "StoredRecord",
]

DEFAULT_TOMBSTONE_TTL = 600.0
#: How long a clock node id stays held without renewal (renewed every third of it).
NODE_LEASE_SECONDS = 30.0

logger = logging.getLogger("inline_state")


class UnreadableRecord(StoreUnavailable):
    """A stored value does not open (tampered with, moved, or its key is missing): the
    turn gets 503, never wrong data. Deleting the user's data and a REST overwrite still
    work."""


class RecordSealer(Protocol):
    """What a store that seals values itself, where they leave the process (a
    ``SealedStore`` hands it one), calls: ``record`` is the encoded record key."""

    def seal(self, record: str, name: str, value: bytes) -> bytes:
        """A value as it is kept at rest (one sealed already, as it is)."""

    def seal_text(self, record: str, text: str, from_rest: bool) -> str:
        """A string record's text as it is kept at rest (``from_rest``: the record was
        read from rest and not opened since: its text may be sealed already)."""

    def read(self, record: str, rec: Any) -> None:
        """A ``Record`` just read from rest: marks it to be opened at its first view."""

    def restored(self, record: str, rec: Any) -> None:
        """A ``Record`` a restore merged dumped values into: marks it likewise."""

    def open(self, record: str, rec: Any) -> None:
        """Open a marked ``Record``'s values in place; UnreadableRecord when one does
        not open."""


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


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of a listing: keys of records holding data, and the cursor of the next
    page (None when the listing is done)."""

    keys: list[RecordKey]
    cursor: str | None


def listing_range(
    bot: str, channel: str | None, kind: Kind, prefix: str, cursor: str | None, limit: int
) -> tuple[str, str | None]:
    """For a listing in key order (memory, SQLite): the prefix its keys share, and the
    key a cursor continues after (None on the first page)."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    start = listing_prefix(bot, channel, kind, prefix)
    return start, listing_after(start, cursor) if cursor is not None else None


def listing_cursor(start: str, last: str) -> str:
    """The cursor after ``last`` in the listing of keys starting with ``start`` (memory
    and SQLite, whose listings go in key order): both, so that a cursor only continues
    the listing that gave it."""
    return json.dumps([start, last])


def listing_after(start: str, cursor: str) -> str:
    """The encoded key a cursor of ``listing_cursor`` continues after; InvalidCursor for
    one another listing gave, or one this store would not have given."""
    try:
        given, last = json.loads(cursor)
        valid = type(given) is str and type(last) is str and decode_key(last).encode() == last
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        valid = False
    if not valid or given != start or not last.startswith(start):
        raise InvalidCursor("the cursor is not one this listing gave")
    return str(last)


class InspectedRecord(NamedTuple):
    """One record as an inspector shows it: its data, and the stamp that wrote each live
    property (``_clock.stamp_ms`` turns one into a time)."""

    record: StoredRecord
    stamps: Mapping[str, int]


#: The record a SealedStore keeps of the keys that sealed it (bot "" names no bot a
#: message can): a store holding it is sealed.
KEYS_RECORD = RecordKey("conversation", "", None, "inline_state.keys", "")


class DumpedRecord(NamedTuple):
    """One record with everything a store keeps of it, as ``dump`` gives it and
    ``restore`` takes it: the eTag's parts (``created``, ``writes``), the clear stamp,
    each live property's stamp and stored value (sealed values as they are), each
    tombstone's stamp, a string record's text and stamp, and when it expires (wall
    milliseconds; 0 for never)."""

    key: RecordKey
    created: int
    writes: int
    clear: int
    values: Mapping[str, tuple[int, bytes]]
    tombs: Mapping[str, int]
    text: str | None = None
    text_stamp: int = 0
    expires_ms: int = 0


class DumpPage(NamedTuple):
    """One page of a dump: records, users' deletion stamps, and the cursor of the next
    page (None when the dump is done)."""

    records: list[DumpedRecord]
    deletions: list[tuple[UserRef, int]]
    cursor: str | None


def dump_cursor(phase: str, last: str) -> str:
    """A dump cursor of memory and SQLite: deletion stamps (``"d"``) then records
    (``"r"``), each in key order after ``last``."""
    return json.dumps([phase, last])


def dump_position(cursor: str | None) -> tuple[str, str]:
    """The phase and last key of a ``dump_cursor``; InvalidCursor for anything else."""
    if cursor is None:
        return "d", ""
    try:
        phase, last = json.loads(cursor)
        valid = phase in ("d", "r") and type(last) is str
    except (ValueError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidCursor("not a dump cursor this store gave")
    return str(phase), str(last)


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
        self._owns_clock = clock is None
        self.clock = clock if clock is not None else HybridClock(0)
        self.ttl_ms: dict[Kind, int] = {k: int(s * 1000) for k, s in (ttl or {}).items()}
        self.tombstone_ttl_ms = int(tombstone_ttl * 1000)
        self._lease_task: asyncio.Task[None] | None = None

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect or start workers; called once before use. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and workers. Default: nothing."""

    # -- the store's own clock: a node id leased from the store ---------------------------

    async def ensure_clock(self) -> bool:
        """Lease a node id for the store's own clock if it holds none yet; True when
        this call started the lease (then ``release_clock`` ends it). Backends lease in
        ``open()``; an engine calls this for a store its caller did not open."""
        if not self._owns_clock or self._lease_task is not None:
            return False
        await self._start_clock()
        return self._lease_task is not None

    async def release_clock(self) -> None:
        """End the lease ``ensure_clock`` started (``close()`` does it too)."""
        await self._stop_clock()

    async def _start_clock(self) -> None:
        """Lease a node id for the store's own clock and keep it renewed (backends call
        this at the end of ``open``). An injected clock is left alone."""
        if not self._owns_clock or self._lease_task is not None:
            return
        started = lease_time()
        self.clock.node_id = await self.allocate_node_id()
        self.clock.lease_deadline = started + NODE_LEASE_SECONDS
        self._lease_task = asyncio.create_task(self._keep_lease(), name="inline_state-node-lease")

    async def _stop_clock(self) -> None:
        """Stop renewing and give the node id back (backends call this first in ``close``)."""
        task, self._lease_task = self._lease_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.release_node_id(self.clock.node_id)
        except StoreError as exc:  # it lapses by itself
            logger.warning("inline_state: could not release clock node id: %s", exc)

    async def _keep_lease(self) -> None:
        clock = self.clock
        while True:
            await asyncio.sleep(NODE_LEASE_SECONDS / 3)
            started = lease_time()
            try:
                if not await self.renew_node_id(clock.node_id):
                    old = clock.node_id
                    clock.node_id = await self.allocate_node_id()
                    logger.warning(
                        "inline_state: clock node id %d was taken over after its lease"
                        " lapsed; now %d",
                        old,
                        clock.node_id,
                    )
            except StoreError as exc:
                logger.warning("inline_state: could not renew the clock's node id: %s", exc)
                continue
            clock.lease_deadline = started + NODE_LEASE_SECONDS

    async def renew_node_id(self, node_id: int) -> bool:
        """Extend this instance's lease on a node id; False if another writer holds it
        now. Default (a store no other process shares): True."""
        return True

    async def release_node_id(self, node_id: int) -> None:  # noqa: B027 - optional hook
        """Give a node id back. Default: nothing."""

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
        """A clock node id (1..255) no other live writer of this store holds.

        Shared backends lease it for ``NODE_LEASE_SECONDS``: ``renew_node_id`` extends
        the lease, ``release_node_id`` ends it, and one that lapsed (its process was
        killed) can be allocated again. Raises StoreUnavailable when all are held.
        """

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

        Pass the returned cursor to get the next page; None means the export is done. A
        store that checks cursors raises InvalidCursor for one it did not issue.
        """

    async def delete(self, key: RecordKey) -> None:
        """Delete one record."""
        await self.compare_and_set(key, None, "*", max_bytes=0)

    # -- for inspecting: off the turn's path, and never refreshing an expiry --------------

    @abc.abstractmethod
    async def channels(self, bot: str) -> list[str | None]:
        """The channels on which ``bot`` has records, sorted (None, v1's namespace,
        first). Memory and SQLite skip from one channel to the next through their key
        order; Redis walks the bot's keys with SCAN (see ``RedisStore.channels``)."""

    @abc.abstractmethod
    async def list_keys(
        self,
        bot: str,
        channel: str | None,
        kind: Kind,
        *,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 50,
    ) -> KeyPage:
        """A page of the keys of one kind's records holding data on one channel, whose
        first id (the user's for user and private records, the conversation's for
        conversation records) starts with ``prefix``.

        Memory and SQLite answer in key order and read only the page's range of their
        key order; Redis walks the matching keys with SCAN, a bounded amount per page,
        so its pages come in no particular order and may be short before the end. A
        store that checks cursors raises InvalidCursor for one it did not issue.
        """

    @abc.abstractmethod
    async def inspect(self, key: RecordKey) -> InspectedRecord:
        """One record and the stamp of each live property, without refreshing the
        record's expiry (a missing record has no stamps)."""

    # -- moving and re-sealing state: every record, whatever its bot -----------------------

    @abc.abstractmethod
    async def dump(self, *, cursor: str | None = None, limit: int = 100) -> DumpPage:
        """A page of everything the store holds: records (holding data or only
        tombstones) and users' deletion stamps, without refreshing an expiry; values
        come as stored (sealed ones sealed). Pass the returned cursor for the next page.

        A record that exists for the whole dump is in it; one written meanwhile may or
        may not be. ``limit`` bounds a page roughly (Redis gives what its SCAN steps
        found)."""

    @abc.abstractmethod
    async def restore(
        self,
        records: Sequence[DumpedRecord],
        deletions: Sequence[tuple[UserRef, int]] = (),
        *,
        reseal: bool = False,
    ) -> int:
        """Merge dumped records in, each atomically; return how many records changed.

        Deletion stamps are merged first (the higher stays; one that rises here deletes
        the user's entries below it, as ``delete_user`` would). Each entry is merged by
        the usual rules (a higher stamp wins; the higher clear stays; entries below the
        owner's deletion stamp are dropped); a value at the very stamp stored keeps its
        bytes here. A record missing here takes the dumped eTag and expiry; one whose
        entries did not change keeps its eTag. So a copy can be run again, under live
        traffic, safely (within the tombstone window: a removal older than it is
        forgotten, and a copy then brings the removed entry back).

        ``reseal``: only replace the bytes of values at the very stamp stored (a write
        is one value, so only its sealing differs), and change nothing else (no eTag,
        no expiry, no record created): re-sealing in place."""
