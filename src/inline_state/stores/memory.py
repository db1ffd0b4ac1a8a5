"""``memory://``: records packed into bytes in a dict, for tests and single processes."""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, HybridClock
from .._errors import StoreUnavailable
from .._keys import RecordKey, UserRef, decode_key, namespace_prefix
from .._message import Kind
from . import _blob
from ._base import DEFAULT_TOMBSTONE_TTL, ApplyResult, ExportPage, Store, StoredRecord
from ._record import view_blob

__all__ = ["MemoryStore"]


@functools.lru_cache(maxsize=1024)
def _split(encoded: str) -> tuple[str, bytes]:
    """An encoded key as (namespace, the rest as bytes).

    Records are kept per namespace (``v3/<bot>/<channel>``) under the rest of their key,
    as bytes: a 1,000,000-user store then does not hold a million copies of the namespace,
    and a short bytes key is 16-32 bytes smaller than the full str key.
    """
    cut = encoded.index("/", 3)  # the end of the bot id, after "v1/" or "v3/"
    if encoded.startswith("v3/"):
        cut = encoded.index("/", cut + 1)  # the end of the channel id
    return encoded[:cut], encoded[cut + 1 :].encode("utf-8", "surrogatepass")


class _DictTable(_blob.BlobTable):
    """The memory store's tables, seen at one instant ``now_ms``."""

    def __init__(self, store: MemoryStore, now_ms: int) -> None:
        self.store = store
        self.now_ms = now_ms

    def get(self, key: RecordKey, encoded: str) -> bytes | None:
        store = self.store
        namespace, local = _split(encoded)
        records = store._records.get(namespace)
        blob = records.get(local) if records is not None else None
        ttl = store.ttl_ms.get(key.kind)
        if blob is None or ttl is None:
            return blob
        if store._expires.get(encoded, self.now_ms) < self.now_ms:
            self.drop(encoded)
            return None
        store._expires[encoded] = self.now_ms + ttl
        return blob

    def get_raw(self, encoded: str) -> bytes | None:
        namespace, local = _split(encoded)
        records = self.store._records.get(namespace)
        return records.get(local) if records is not None else None

    def put(self, key: RecordKey, encoded: str, blob: bytes) -> None:
        store = self.store
        namespace, local = _split(encoded)
        records = store._records.get(namespace)
        if records is None:
            records = store._records[namespace] = {}
        records[local] = blob
        ttl = store.ttl_ms.get(key.kind)
        if ttl is not None:
            store._expires[encoded] = self.now_ms + ttl
        if key.kind == "private":
            owner = UserRef(key.bot, key.channel, key.user).encode()
            store._private_index.setdefault(owner, set()).add(encoded)

    def drop(self, encoded: str) -> None:
        namespace, local = _split(encoded)
        records = self.store._records.get(namespace)
        if records is not None:
            records.pop(local, None)
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
        # namespace -> {the rest of the encoded key: packed record} (see _split)
        self._records: dict[str, dict[bytes, bytes]] = {}
        self._expires: dict[str, int] = {}
        # user -> encoded keys of their per-conversation records
        self._private_index: dict[str, set[str]] = {}
        self._deleted: dict[str, int] = {}
        # Node ids for clocks other than the store's own (which holds 0).
        self._free_nodes = list(range(MAX_NODES - 1, 0, -1))
        self._next_sweep_ms = 0

    def _table(self) -> _DictTable:
        return _DictTable(self, self.clock.wall_ms())

    async def allocate_node_id(self) -> int:
        """An unused node id (1..255; the store's own clock holds 0), held until
        ``release_node_id``. Raises StoreUnavailable when all are held."""
        if not self._free_nodes:
            raise StoreUnavailable(f"all {MAX_NODES - 1} clock node ids are held")
        return self._free_nodes.pop()

    async def release_node_id(self, node_id: int) -> None:
        """Give a node id back."""
        if 0 < node_id < MAX_NODES and node_id not in self._free_nodes:
            self._free_nodes.append(node_id)

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
        etag, stamp = _blob.compare_and_set(
            table,
            self.clock.stamp(),
            key,
            data,
            etag,
            max_bytes,
            table.now_ms,
            self.tombstone_ttl_ms,
        )
        self.clock.observe(stamp)
        return etag

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
        candidates = (
            full
            for namespace, records in self._records.items()
            if (namespace + "/").startswith(prefix)
            for local in records
            if (full := f"{namespace}/{local.decode('utf-8', 'surrogatepass')}") > after
        )
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
