"""``memory://``: records in the process, hot ones decoded, the rest packed.

Recently used records stay decoded (``Record`` objects, merged in place) in a cache of
at most ``cache_bytes`` (64 MiB by default, counted from the records' JSON sizes plus a
fixed overhead per record and property); the least recently used are packed into
msgpack bytes when the cache is full, and decoded again when read. So a turn on a hot
record neither unpacks nor packs, and a million idle users cost a few hundred bytes
each.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, HybridClock, stamp_ms
from .._errors import InvalidCursor, StoreUnavailable
from .._keys import (
    RecordKey,
    UserRef,
    channel_of,
    decode_key,
    namespace_prefix,
    sorted_channels,
)
from .._message import Kind
from . import _blob
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    MISSING,
    ApplyResult,
    DumpedRecord,
    DumpPage,
    ExportPage,
    InspectedRecord,
    KeyPage,
    RecordSealer,
    Store,
    StoredRecord,
    UnreadableRecord,
    dump_cursor,
    dump_position,
    listing_cursor,
    listing_range,
)
from ._record import PROPERTY_OVERHEAD, RECORD_OVERHEAD, Record

__all__ = ["MemoryStore"]

APPLIED, STALE = ApplyResult.APPLIED, ApplyResult.STALE

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024

logger = logging.getLogger("inline_state")


@functools.lru_cache(maxsize=1024)
def _split(encoded: str) -> tuple[str, bytes]:
    """An encoded key as (namespace, the rest as bytes).

    Packed records are kept per namespace (``v3/<bot>/<channel>``) under the rest of
    their key, as bytes: a 1,000,000-user store then does not hold a million copies of
    the namespace, and a short bytes key is 16-32 bytes smaller than the full str key.
    """
    cut = encoded.index("/", 3)  # the end of the bot id, after "v1/" or "v3/"
    if encoded.startswith("v3/"):
        cut = encoded.index("/", cut + 1)  # the end of the channel id
    return encoded[:cut], encoded[cut + 1 :].encode("utf-8", "surrogatepass")


class _KeyIndex:
    """The keys of one namespace's records (the rest of each key after the namespace, as
    bytes, see ``_split``), sorted, so that a listing reads only its page's range: sorted
    chunks of at most ``2 * _CHUNK`` keys and the last key of each (the shape of
    ``sortedcontainers.SortedList``), so adding or removing a key costs a bisect and a
    short list move however many keys there are, and no page sorts. A packed record's
    key is the very bytes object the index holds (``stored``), so the index costs a
    pointer per packed record."""

    __slots__ = ("chunks", "lasts")

    def __init__(self) -> None:
        self.chunks: list[list[bytes]] = []
        self.lasts: list[bytes] = []

    def add(self, key: bytes) -> None:
        chunks, lasts = self.chunks, self.lasts
        if not chunks:
            chunks.append([key])
            lasts.append(key)
            return
        at = min(bisect.bisect_left(lasts, key), len(lasts) - 1)
        chunk = chunks[at]
        pos = bisect.bisect_left(chunk, key)
        if pos < len(chunk) and chunk[pos] == key:
            return
        chunk.insert(pos, key)
        lasts[at] = chunk[-1]
        if len(chunk) > 2 * _CHUNK:
            chunks[at : at + 1] = [chunk[:_CHUNK], chunk[_CHUNK:]]
            lasts[at : at + 1] = [chunk[_CHUNK - 1], chunk[-1]]

    def stored(self, key: bytes) -> bytes:
        """The index's own object equal to ``key`` (``key`` itself if it holds none)."""
        at = bisect.bisect_left(self.lasts, key)
        if at < len(self.lasts):
            chunk = self.chunks[at]
            pos = bisect.bisect_left(chunk, key)
            if pos < len(chunk) and chunk[pos] == key:
                return chunk[pos]
        return key

    def remove(self, key: bytes) -> None:
        chunks, lasts = self.chunks, self.lasts
        at = bisect.bisect_left(lasts, key)
        if at == len(lasts):
            return
        chunk = chunks[at]
        pos = bisect.bisect_left(chunk, key)
        if pos == len(chunk) or chunk[pos] != key:
            return
        del chunk[pos]
        if chunk:
            lasts[at] = chunk[-1]
        else:
            del chunks[at], lasts[at]

    def after(self, low: bytes, inclusive: bool) -> Iterator[bytes]:
        """The keys from ``low`` on (or after it), in order."""
        find = bisect.bisect_left if inclusive else bisect.bisect_right
        at = bisect.bisect_left(self.lasts, low)
        for i in range(at, len(self.chunks)):
            chunk = self.chunks[i]
            yield from itertools.islice(chunk, find(chunk, low) if i == at else 0, None)

    def __len__(self) -> int:
        return sum(map(len, self.chunks))


_CHUNK = 1000


class _Tables(_blob.RecordTable):
    """The memory store's records seen at one instant ``now_ms``."""

    __slots__ = ("now_ms", "store")

    def __init__(self, store: MemoryStore, now_ms: int) -> None:
        self.store = store
        self.now_ms = now_ms

    def get(self, key: RecordKey) -> Record | None:
        store = self.store
        hot = store._hot
        rec = hot.pop(key, None)
        if rec is not None:
            hot[key] = rec  # most recently used last
        elif not store._packed_count:
            return None
        else:
            encoded = key.encode()
            namespace, local = _split(encoded)
            records = store._packed.get(namespace)
            blob = records.pop(local, None) if records is not None else None
            if blob is None:
                return None
            rec = store._unpacked(encoded, blob)
            store._packed_count -= 1
            store.decodes += 1
            store._admit(key, rec)
        if store.ttl_ms:
            ttl = store.ttl_ms.get(key.kind)
            if ttl is not None:
                if store._expires.get(key, self.now_ms) < self.now_ms:
                    self.drop(key)
                    return None
                store._expires[key] = self.now_ms + ttl
        return rec

    def put(self, key: RecordKey, rec: Record) -> None:
        store = self.store
        old = store._hot.pop(key, None)
        if old is None:
            namespace, local = _split(key.encode())
            index = store._index.get(namespace)
            if index is None:
                index = store._index[namespace] = _KeyIndex()
            index.add(local)
            if key.kind == "private":
                owner = UserRef(key.bot, key.channel, key.user)
                store._private_index.setdefault(owner, set()).add(key)
        if old is not None:
            store._hot_bytes -= store._costs.pop(key)
        store._admit(key, rec)
        if store.ttl_ms:
            ttl = store.ttl_ms.get(key.kind)
            if ttl is not None:
                store._expires[key] = self.now_ms + ttl

    def drop(self, key: RecordKey) -> None:
        store = self.store
        if store._hot.pop(key, None) is not None:
            store._hot_bytes -= store._costs.pop(key)
        elif store._packed_count:
            namespace, local = _split(key.encode())
            records = store._packed.get(namespace)
            if records is not None and records.pop(local, None) is not None:
                store._packed_count -= 1
        store._expires.pop(key, None)
        if key.kind == "private":
            owner = UserRef(key.bot, key.channel, key.user)
            private = store._private_index.get(owner)
            if private is not None:
                private.discard(key)
                if not private:
                    del store._private_index[owner]
        namespace, local = _split(key.encode())
        index = store._index.get(namespace)
        if index is not None:
            index.remove(local)
            if not index.chunks:
                del store._index[namespace]

    def deletion_stamp(self, key: RecordKey) -> int:
        deleted = self.store._deleted
        if not deleted or key.kind == "conversation":
            return 0
        return deleted.get(UserRef(key.bot, key.channel, key.user), 0)

    def user_records(self, user: UserRef) -> list[RecordKey]:
        own = RecordKey("user", user.bot, user.channel, "", user.user)
        private = self.store._private_index.get(user, ())
        return [own, *sorted(private)]

    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        self.store._deleted[user] = stamp

    def put_restored(self, key: RecordKey, rec: Record, expires_ms: int) -> None:
        expires = self.store._expires.get(key)
        if self.store.sealer is not None:  # it may hold values as dumped: sealed
            self.store.sealer.restored(key.encode(), rec)
        self.put(key, rec)
        if expires_ms or expires is not None:
            self.store._expires[key] = expires_ms or expires  # type: ignore[assignment]


class MemoryStore(Store):
    """An in-process store: hot records decoded, the rest packed (see the module).

    Shared by every app given the same instance; lost when the process ends.
    ``cache_bytes`` bounds the decoded records (roughly: counted as described above).
    """

    def __init__(
        self,
        *,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl)
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must not be negative, got {cache_bytes}")
        self.cache_bytes = cache_bytes
        # Decoded records, least recently used first, and what each costs.
        self._hot: dict[RecordKey, Record] = {}
        self._costs: dict[RecordKey, int] = {}
        self._hot_bytes = 0
        # namespace -> {the rest of the encoded key: packed record} (see _split)
        self._packed: dict[str, dict[bytes, bytes]] = {}
        self._packed_count = 0
        self._expires: dict[RecordKey, int] = {}
        self._private_index: dict[UserRef, set[RecordKey]] = {}
        self._deleted: dict[UserRef, int] = {}
        # namespace -> the sorted keys of its records (see _KeyIndex), for listings
        self._index: dict[str, _KeyIndex] = {}
        # Node ids for clocks other than the store's own (which holds 0).
        self._free_nodes = list(range(MAX_NODES - 1, 0, -1))
        self.sealer: RecordSealer | None = None  # see seal_at_rest
        self._next_sweep_ms = 0
        # Loads served from the cache, and records decoded from their packed form.
        self.hits = 0
        self.decodes = 0

    def seal_at_rest(self, sealer: RecordSealer | None) -> None:
        """Seal values where records are packed (and dumped), and open them where they
        are decoded again: decoded records hold plaintext, as a sealing store's cache of
        them would. (A ``SealedStore`` calls this: a turn on a decoded record then
        seals and opens nothing.)"""
        self.sealer = sealer

    def _unpacked(self, encoded: str, blob: bytes) -> Record:
        """A packed record decoded, marked for the sealer to open (if one seals)."""
        rec = Record.unpack(blob)
        if self.sealer is not None:
            self.sealer.read(encoded, rec)
        return rec

    def _admit(self, key: RecordKey, rec: Record) -> None:
        """Put a decoded record in the cache, packing the least recently used out."""
        cost = rec.cost()
        self._hot[key] = rec
        self._costs[key] = cost
        self._hot_bytes += cost
        if self._hot_bytes > self.cache_bytes:
            self._evict()

    def _evict(self) -> None:
        hot = self._hot
        while self._hot_bytes > self.cache_bytes and len(hot) > 1:
            key = next(iter(hot))
            rec = hot.pop(key)
            self._hot_bytes -= self._costs.pop(key)
            namespace, local = _split(key.encode())
            packed = self._packed.get(namespace)
            if packed is None:
                packed = self._packed[namespace] = {}
            index = self._index.get(namespace)
            blob = rec.pack(self.sealer, key.encode())
            packed[index.stored(local) if index is not None else local] = blob
            self._packed_count += 1

    @property
    def cache_stats(self) -> dict[str, int]:
        """Cache hits and decodes, decoded records, their counted bytes, and packed
        records (for the bench)."""
        return {
            "hits": self.hits,
            "decodes": self.decodes,
            "hot_records": len(self._hot),
            "hot_bytes": self._hot_bytes,
            "packed_records": self._packed_count,
        }

    def _tables(self) -> _Tables:
        return _Tables(self, self.clock.wall_ms())

    async def ensure_clock(self) -> bool:
        """Nothing to lease: no other process shares a memory store (its clock holds 0)."""
        return False

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

    def _sweep(self, tables: _Tables) -> None:
        # Expired records nobody reads again would otherwise stay forever.
        now_ms = tables.now_ms
        if not self._expires or now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
        for key in [k for k, at in self._expires.items() if at < now_ms]:
            tables.drop(key)

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records; missing ones come back empty."""
        if self.ttl_ms or self._deleted:
            return _blob.load_records(self._tables(), keys)
        # The common case, inline: no expiry, no deletions to look up.
        hot = self._hot
        out: list[StoredRecord] = []
        for key in keys:
            rec = hot.pop(key, None)
            if rec is not None:
                hot[key] = rec  # most recently used last
                out.append(rec.view())
            elif self._packed_count:
                rec = self._tables().get(key)
                out.append(rec.view() if rec is not None else MISSING)
                continue
            else:
                out.append(MISSING)
                continue
            self.hits += 1
        return out

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes, each atomically to its record."""
        if self.ttl_ms:
            tables = self._tables()
            self._sweep(tables)
            return _blob.apply_changes(tables, changes, tables.now_ms, self.tombstone_ttl_ms)
        # The common case: a hot record merged in place (the rules are Record.apply's).
        hot = self._hot
        costs = self._costs
        slow: _Tables | None = None  # made for the first change the general path takes
        results: list[ApplyResult] = []
        for change in changes:
            key = change.key
            rec = hot.get(key)
            if (
                rec is None
                or rec.tombs
                or rec.text is not None
                or (self._deleted and key.kind != "conversation")
                or rec.may_exceed(change)
                or (change.removes and self._past_retention(change.stamp))  # pruned at once
            ):
                if slow is None:
                    slow = self._tables()
                results += _blob.apply_changes(slow, (change,), slow.now_ms, self.tombstone_ttl_ms)
            elif rec.apply(change):
                del hot[key]
                hot[key] = rec  # most recently used last
                values = rec.values
                # rec.cost() for a record without text, inline: this runs on every write.
                size = 1 + rec._members + len(values) if values else 2
                cost = RECORD_OVERHEAD + 2 * size + PROPERTY_OVERHEAD * len(values)
                self._hot_bytes += cost - costs[key]
                costs[key] = cost
                if self._hot_bytes > self.cache_bytes:
                    self._evict()
                results.append(APPLIED)
            else:
                results.append(STALE)
        return results

    def _past_retention(self, stamp: int) -> bool:
        return stamp_ms(stamp) < self.clock.wall_ms() - self.tombstone_ttl_ms

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag."""
        tables = self._tables()
        etag, stamp = _blob.compare_and_set(
            tables,
            self.clock.stamp(),
            key,
            data,
            etag,
            max_bytes,
            tables.now_ms,
            self.tombstone_ttl_ms,
        )
        self.clock.observe(stamp)
        return etag

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        return _blob.delete_user(self._tables(), user, stamp)

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records in encoded-key order after ``cursor``."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        tables = self._tables()
        prefix = namespace_prefix(bot, channel)
        after = cursor or ""
        packed = (
            full
            for namespace, records in self._packed.items()
            if (namespace + "/").startswith(prefix)
            for local in records
            if (full := f"{namespace}/{local.decode('utf-8', 'surrogatepass')}") > after
        )
        hot = (
            encoded
            for key in self._hot
            if key.bot == bot and key.channel == channel and (encoded := key.encode()) > after
        )
        chosen = heapq.nsmallest(limit + 1, [*packed, *hot])
        more = len(chosen) > limit
        chosen = chosen[:limit]
        page: list[tuple[RecordKey, StoredRecord]] = []
        for encoded in chosen:
            key = decode_key(encoded)
            rec = tables.get(key)
            if rec is not None and rec.live:
                try:
                    page.append((key, rec.view()))
                except UnreadableRecord as exc:  # one such record must not stop the export
                    logger.warning("inline_state: export skipped a record: %s", exc)
        return ExportPage(page, chosen[-1] if more else None)

    # -- inspecting -------------------------------------------------------------------------

    def _peek(self, key: RecordKey) -> Record | None:
        """The record under ``key`` if it holds data, leaving the cache order and the
        expiry alone."""
        rec = self._hot.get(key)
        if rec is None:
            if not self._packed_count:
                return None
            namespace, local = _split(key.encode())
            blob = self._packed.get(namespace, {}).get(local)
            if blob is None:
                return None
            rec = self._unpacked(key.encode(), blob)
        if key.kind in self.ttl_ms:
            expires = self._expires.get(key)
            if expires is not None and expires < self.clock.wall_ms():
                return None
        return rec if rec.live else None

    def _live_keys(
        self, namespace: str, index: _KeyIndex, low: bytes, inclusive: bool
    ) -> Iterator[tuple[str, RecordKey]]:
        """The encoded keys and keys of the namespace's records holding data, in key
        order from ``low`` on (or after it)."""
        for local in index.after(low, inclusive):
            encoded = f"{namespace}/{local.decode('utf-8', 'surrogatepass')}"
            key = decode_key(encoded)
            if self._peek(key) is not None:
                yield encoded, key

    async def channels(self, bot: str) -> list[str | None]:
        """The channels on which ``bot`` has records (None first): a look at the first
        records of each of the bot's namespaces."""
        found: list[str | None] = []
        for namespace, index in self._index.items():
            if (namespace + "/").startswith(namespace_prefix(bot, None)):
                channel = None
            elif namespace.startswith(namespace_prefix(bot, "")[:-1]):
                channel = channel_of(namespace + "/")
            else:
                continue
            if next(self._live_keys(namespace, index, b"", True), None) is not None:
                found.append(channel)
        return sorted_channels(found)

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
        """A page of keys in key order, read from the key index's range."""
        start, after = listing_range(bot, channel, kind, prefix, cursor, limit)
        namespace, low = _split(after or start)
        index = self._index.get(namespace)
        if index is None:
            return KeyPage([], None)
        keys: list[RecordKey] = []
        last = ""
        for encoded, key in self._live_keys(namespace, index, low, cursor is None):
            if not encoded.startswith(start):
                break
            if len(keys) == limit:
                return KeyPage(keys, listing_cursor(start, last))
            keys.append(key)
            last = encoded
        return KeyPage(keys, None)

    async def inspect(self, key: RecordKey) -> InspectedRecord:
        """One record and each live property's stamp; the cache order and the expiry
        stay as they were."""
        rec = self._peek(key)
        if rec is None:
            return InspectedRecord(MISSING, {})
        deleted = self._deleted.get(key.owner, 0) if key.owner is not None else 0
        return InspectedRecord(rec.view(deleted), dict(rec.stamps))

    # -- dumps ------------------------------------------------------------------------------

    async def dump(self, *, cursor: str | None = None, limit: int = 100) -> DumpPage:
        """Deletion stamps in key order (sorted per page: there are few), then records
        in the key index's order."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        phase, last = dump_position(cursor)
        if phase == "d":
            users = sorted(
                (encoded, user) for user in self._deleted if (encoded := user.encode()) > last
            )[: limit + 1]
            deletions = [(user, self._deleted[user]) for _, user in users[:limit]]
            if len(users) > limit:
                return DumpPage([], deletions, dump_cursor("d", users[limit - 1][0]))
            return DumpPage([], deletions, dump_cursor("r", ""))
        # In the order of (namespace, the rest of the key): the key index's own order.
        keys: list[str] = []
        try:
            after_namespace, after_local = _split(last) if last else ("", b"")
        except ValueError:
            raise InvalidCursor("not a dump cursor this store gave") from None
        for namespace in sorted(n for n in self._index if n >= after_namespace):
            index = self._index[namespace]
            if namespace == after_namespace:
                locals_ = index.after(after_local, False)
            else:
                locals_ = index.after(b"", True)
            for local in itertools.islice(locals_, limit + 1 - len(keys)):
                keys.append(f"{namespace}/{local.decode('utf-8', 'surrogatepass')}")
            if len(keys) > limit:
                break
        records: list[DumpedRecord] = []
        now_ms = self.clock.wall_ms()
        for encoded in keys[:limit]:
            key = decode_key(encoded)
            rec = self._hot.get(key)
            sealer = self.sealer  # a decoded record holds plaintext; a packed one, sealed
            if rec is None:
                namespace, local = _split(encoded)
                blob = self._packed.get(namespace, {}).get(local)
                if blob is None:
                    continue
                rec, sealer = Record.unpack(blob), None
            expires = self._expires.get(key, 0)
            if expires and expires < now_ms:
                continue
            records.append(rec.dumped(key, expires, sealer))
        more = len(keys) > limit
        return DumpPage(records, [], dump_cursor("r", keys[limit - 1]) if more else None)

    async def restore(
        self,
        records: Sequence[DumpedRecord],
        deletions: Sequence[tuple[UserRef, int]] = (),
        *,
        reseal: bool = False,
    ) -> int:
        """Merge dumped records in (see ``Store.restore``)."""
        return _blob.restore_records(self._tables(), records, deletions, reseal)
