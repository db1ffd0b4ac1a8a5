"""``memory://``: records packed into bytes in a dict, for tests and single processes."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, HybridClock
from .._keys import RecordKey, UserRef, decode_key, namespace_prefix
from .._message import Kind
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    MISSING,
    ApplyResult,
    ExportPage,
    RecordTooLarge,
    Store,
    StoredRecord,
)
from ._record import Record, check_etag

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """An in-process store. Each record is one msgpack ``bytes`` object.

    Shared by every app given the same instance; lost when the process ends.
    """

    def __init__(
        self,
        *,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        super().__init__(clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl)
        self._records: dict[str, bytes] = {}
        self._expires: dict[str, int] = {}
        # user -> encoded keys of their per-conversation records
        self._private_index: dict[str, set[str]] = {}
        self._deleted: dict[str, int] = {}
        self._node_ids = itertools.count(1)
        self._next_sweep_ms = 0

    async def allocate_node_id(self) -> int:
        """The next unused node id; the store's own clock holds 0."""
        node = next(self._node_ids)
        if node >= MAX_NODES:
            raise RuntimeError(f"more than {MAX_NODES - 1} clocks on one MemoryStore")
        return node

    def _live_blob(self, encoded: str, kind: Kind, now_ms: int) -> bytes | None:
        blob = self._records.get(encoded)
        if blob is None or kind not in self.ttl_ms:
            return blob
        if self._expires.get(encoded, now_ms) < now_ms:
            self._drop(encoded)
            return None
        self._expires[encoded] = now_ms + self.ttl_ms[kind]
        return blob

    def _drop(self, encoded: str) -> None:
        self._records.pop(encoded, None)
        self._expires.pop(encoded, None)

    def _sweep(self, now_ms: int) -> None:
        # Expired records nobody reads again would otherwise stay forever.
        if not self._expires or now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
        for encoded in [k for k, at in self._expires.items() if at < now_ms]:
            self._drop(encoded)

    def _deletion_stamp(self, key: RecordKey) -> int:
        if not self._deleted or key.kind == "conversation":
            return 0
        return self._deleted.get(UserRef(key.bot, key.channel, key.user).encode(), 0)

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records; missing ones come back empty."""
        now_ms = self.clock.wall_ms()
        out: list[StoredRecord] = []
        for key in keys:
            deleted = self._deletion_stamp(key)
            blob = self._live_blob(key.encode(), key.kind, now_ms)
            if blob is None:
                out.append(StoredRecord(deleted=deleted) if deleted else MISSING)
            else:
                out.append(Record.unpack(blob).view(deleted))
        return out

    def _store(self, key: RecordKey, encoded: str, rec: Record, now_ms: int) -> None:
        if rec.forgettable(now_ms, self.tombstone_ttl_ms):
            self._drop(encoded)
            return
        self._records[encoded] = rec.pack()
        if key.kind in self.ttl_ms:
            self._expires[encoded] = now_ms + self.ttl_ms[key.kind]
        if key.kind == "private":
            self._private_index.setdefault(
                UserRef(key.bot, key.channel, key.user).encode(), set()
            ).add(encoded)

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes, each atomically to its record."""
        now_ms = self.clock.wall_ms()
        self._sweep(now_ms)
        results: list[ApplyResult] = []
        for change in changes:
            key = change.key
            if change.base < self._deletion_stamp(key):
                results.append(ApplyResult.DROPPED)
                continue
            encoded = key.encode()
            blob = self._live_blob(encoded, key.kind, now_ms)
            rec = Record.unpack(blob) if blob is not None else Record()
            if not rec.apply(change):
                results.append(ApplyResult.STALE)
                continue
            if rec.size() > change.max_bytes:
                results.append(ApplyResult.TOO_LARGE)
                continue
            rec.prune(now_ms, self.tombstone_ttl_ms)
            self._store(key, encoded, rec, now_ms)
            results.append(ApplyResult.APPLIED)
        return results

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag."""
        now_ms = self.clock.wall_ms()
        encoded = key.encode()
        blob = self._live_blob(encoded, key.kind, now_ms)
        rec = Record.unpack(blob) if blob is not None else Record()
        check_etag(rec.etag, etag)
        stamp = max(self.clock.stamp(), rec.observed + 1, self._deletion_stamp(key) + 1)
        self.clock.observe(stamp)
        rec.replace(data, stamp)
        if data is not None and rec.size() > max_bytes:
            raise RecordTooLarge(key, rec.size(), max_bytes)
        self._store(key, encoded, rec, now_ms)
        return rec.etag

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        encoded_user = user.encode()
        keys = [RecordKey("user", user.bot, user.channel, "", user.user).encode()]
        keys += sorted(self._private_index.pop(encoded_user, set()))
        highest = self._deleted.get(encoded_user, 0)
        for encoded in keys:
            blob = self._records.get(encoded)
            if blob is not None:
                highest = max(highest, Record.unpack(blob).observed)
                self._drop(encoded)
        deleted = max(stamp, highest + 1)
        self._deleted[encoded_user] = deleted
        return deleted

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records in encoded-key order after ``cursor``."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        now_ms = self.clock.wall_ms()
        prefix = namespace_prefix(bot, channel)
        after = cursor or ""
        candidates = (k for k in self._records if k.startswith(prefix) and k > after)
        chosen = heapq.nsmallest(limit + 1, candidates)
        more = len(chosen) > limit
        chosen = chosen[:limit]
        page: list[tuple[RecordKey, StoredRecord]] = []
        for encoded in chosen:
            key = decode_key(encoded)
            blob = self._live_blob(encoded, key.kind, now_ms)
            if blob is not None:
                view = Record.unpack(blob).view()
                if view.exists:
                    page.append((key, view))
        return ExportPage(page, chosen[-1] if more else None)
