"""``memory://``: records packed into bytes in a dict, for tests and single processes."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, HybridClock
from .._keys import RecordKey, UserRef, decode_key, namespace_prefix
from .._message import Kind
from . import _blob
from ._base import DEFAULT_TOMBSTONE_TTL, ApplyResult, ExportPage, Store, StoredRecord
from ._record import view_blob

__all__ = ["MemoryStore"]


class _DictTable(_blob.BlobTable):
    """The memory store's tables, seen at one instant ``now_ms``."""

    def __init__(self, store: MemoryStore, now_ms: int) -> None:
        self.store = store
        self.now_ms = now_ms

    def get(self, key: RecordKey, encoded: str) -> bytes | None:
        store = self.store
        blob = store._records.get(encoded)
        ttl = store.ttl_ms.get(key.kind)
        if blob is None or ttl is None:
            return blob
        if store._expires.get(encoded, self.now_ms) < self.now_ms:
            self.drop(encoded)
            return None
        store._expires[encoded] = self.now_ms + ttl
        return blob

    def get_raw(self, encoded: str) -> bytes | None:
        return self.store._records.get(encoded)

    def put(self, key: RecordKey, encoded: str, blob: bytes) -> None:
        store = self.store
        store._records[encoded] = blob
        ttl = store.ttl_ms.get(key.kind)
        if ttl is not None:
            store._expires[encoded] = self.now_ms + ttl
        if key.kind == "private":
            owner = UserRef(key.bot, key.channel, key.user).encode()
            store._private_index.setdefault(owner, set()).add(encoded)

    def drop(self, encoded: str) -> None:
        self.store._records.pop(encoded, None)
        self.store._expires.pop(encoded, None)

    def deletion_stamp(self, key: RecordKey) -> int:
        deleted = self.store._deleted
        if not deleted or key.kind == "conversation":
            return 0
        return deleted.get(UserRef(key.bot, key.channel, key.user).encode(), 0)

    def user_records(self, user: UserRef) -> list[str]:
        own = RecordKey("user", user.bot, user.channel, "", user.user).encode()
        return [own, *sorted(self.store._private_index.pop(user.encode(), ()))]

    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        self.store._deleted[user.encode()] = stamp


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

    def _table(self) -> _DictTable:
        return _DictTable(self, self.clock.wall_ms())

    async def allocate_node_id(self) -> int:
        """The next unused node id; the store's own clock holds 0."""
        node = next(self._node_ids)
        if node >= MAX_NODES:
            raise RuntimeError(f"more than {MAX_NODES - 1} clocks on one MemoryStore")
        return node

    def _sweep(self, table: _DictTable) -> None:
        # Expired records nobody reads again would otherwise stay forever.
        now_ms = table.now_ms
        if not self._expires or now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
        for encoded in [k for k, at in self._expires.items() if at < now_ms]:
            table.drop(encoded)

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records; missing ones come back empty."""
        return _blob.load_records(self._table(), keys)

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes, each atomically to its record."""
        table = self._table()
        self._sweep(table)
        return _blob.apply_changes(table, changes, table.now_ms, self.tombstone_ttl_ms)

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag."""
        table = self._table()
        return _blob.compare_and_set(
            table, self.clock, key, data, etag, max_bytes, table.now_ms, self.tombstone_ttl_ms
        )

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        return _blob.delete_user(self._table(), user, stamp)

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records in encoded-key order after ``cursor``."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        table = self._table()
        prefix = namespace_prefix(bot, channel)
        after = cursor or ""
        candidates = (k for k in self._records if k.startswith(prefix) and k > after)
        chosen = heapq.nsmallest(limit + 1, candidates)
        more = len(chosen) > limit
        chosen = chosen[:limit]
        page: list[tuple[RecordKey, StoredRecord]] = []
        for encoded in chosen:
            key = decode_key(encoded)
            blob = table.get(key, encoded)
            if blob is not None:
                view = view_blob(blob)
                if view.exists:
                    page.append((key, view))
        return ExportPage(page, chosen[-1] if more else None)
