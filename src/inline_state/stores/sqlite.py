"""``sqlite:///path/state.db``: durable records in one SQLite file (WAL).

Writes run on one writer thread that commits in groups (``_sqlite_thread``); a reply is
acknowledged only after its write committed. Each record is a head row and a row per
property (``_sqlite_rows``), so a write costs what it changes.

Reads are served from decoded records in the process when that is provably current:
every inline_state transaction on the file adds one to its ``commits`` counter, and
a load first reads the counter (one indexed row, a few microseconds, on the event
loop). When it equals the count after this store's own last commit, nobody else wrote
since, and the cached records are exactly what the file holds. Otherwise (another
process or another store on the file wrote, or this store's commit is still on its way
to the loop) the load reads the file on the reader thread. The writer, in turn, checks
the counter and ``PRAGMA data_version`` when each transaction begins and forgets its
records if anyone else wrote. The caches change only after a COMMIT succeeded, never
for a rolled-back savepoint or transaction. A program that writes the file without
inline_state should add one to ``commits`` in the same transaction (``UPDATE meta SET
value = value + 1 WHERE name = 'commits'``); otherwise it is noticed at this store's
next write, not its next read.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar

from .._change import Change
from .._clock import MAX_NODES, HybridClock
from .._errors import StoreError, StoreUnavailable
from .._keys import RecordKey, UserRef, decode_key, namespace_prefix
from .._message import Kind
from . import _blob
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    MISSING,
    NODE_LEASE_SECONDS,
    ApplyResult,
    ExportPage,
    Store,
    StoredRecord,
)
from ._record import Record
from ._sqlite_rows import (
    READ_COMMITS,
    delete_record,
    prepare,
    read_commits,
    read_record,
    write_change,
    write_commits,
    write_record,
)
from ._sqlite_thread import Transactions, Worker

__all__ = ["SqliteStore"]

T = TypeVar("T")
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_DELETIONS_KEPT = 65536  # deletion stamps the writer remembers (a user's is read once)
_UNKNOWN = -1
Published = tuple[RecordKey, StoredRecord | None, int]  # a view (None: forget it), its cost


def _private_range(user: UserRef) -> tuple[str, str]:
    # Escaped ids never contain "/", so a user's per-conversation keys are exactly
    # those starting with ".../p/<user>/", and "0" is the character after "/".
    prefix = RecordKey("private", user.bot, user.channel, "", user.user).encode()
    return prefix, prefix[:-1] + "0"


def _shared(view: StoredRecord) -> StoredRecord:
    """A view safe to hand to many turns: its properties cannot be changed."""
    if not view.props:
        return view
    return view._replace(props=MappingProxyType(dict(view.props)))


class _LruCost:
    """Entries in least-recently-used order, with what each costs, bounded in total."""

    __slots__ = ("costs", "entries", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.entries: dict[RecordKey, object] = {}
        self.costs: dict[RecordKey, int] = {}
        self.total = 0
        self.limit = limit

    def put(self, key: RecordKey, entry: object, cost: int) -> None:
        self.pop(key)
        if cost > self.limit:
            return
        self.entries[key] = entry
        self.costs[key] = cost
        self.total += cost
        entries = self.entries
        while self.total > self.limit:
            oldest = next(iter(entries))
            del entries[oldest]
            self.total -= self.costs.pop(oldest)

    def pop(self, key: RecordKey) -> None:
        if self.entries.pop(key, None) is not None:
            self.total -= self.costs.pop(key)

    def clear(self) -> None:
        self.entries.clear()
        self.costs.clear()
        self.total = 0


class _Writer(Transactions):
    """What the writer thread knows of the file, and what its transactions change.

    ``records`` are decoded as committed (or as the running transaction changed them);
    a key an operation took out may have been changed in place, so a failed operation
    or transaction forgets it.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.records = _LruCost(store.cache_bytes)
        self.deletions: dict[UserRef, int] = {}
        self.commits = _UNKNOWN  # the counter after this store's last commit
        self.data_version = _UNKNOWN
        self.foreign = False  # someone else wrote since our last commit
        self.written: dict[RecordKey, bool] = {}  # this transaction's keys: dropped?
        self.taken: list[RecordKey] = []  # the current operation's keys

    def record(self, key: RecordKey) -> Record | None:
        rec = self.records.entries.pop(key, None)
        if rec is None:
            return None
        self.records.entries[key] = rec  # most recently used last
        self.taken.append(key)
        assert isinstance(rec, Record)
        return rec

    def remember(self, key: RecordKey, rec: Record | None) -> None:
        self.written[key] = rec is None
        self.taken.append(key)
        if rec is None:
            self.records.pop(key)
        elif key.kind not in self.store.ttl_ms:  # expiring kinds are always read
            self.records.put(key, rec, rec.cost())

    def begin(self, conn: sqlite3.Connection) -> None:
        commits = read_commits(conn)
        data_version = conn.execute("PRAGMA data_version").fetchall()[0][0]
        if commits != self.commits or data_version != self.data_version:
            self.foreign = True
            self.records.clear()
            self.deletions.clear()
        self.commits, self.data_version = commits, data_version
        self.taken.clear()

    def operation_failed(self) -> None:
        for key in self.taken:
            self.records.pop(key)
            if key in self.written:
                self.written[key] = False  # as an earlier operation left it: read again
        self.taken.clear()
        self.deletions.clear()

    def before_commit(self, conn: sqlite3.Connection) -> None:
        write_commits(conn, self.commits + 1)

    def committed(self) -> Callable[[], None]:
        self.commits += 1
        entries, deletions, ttl_ms = self.records.entries, self.deletions, self.store.ttl_ms
        views: list[Published] = []
        for key, dropped in self.written.items():
            owner = key.owner
            deleted = 0 if owner is None else deletions.get(owner)
            rec = entries.get(key)
            if deleted is None or key.kind in ttl_ms:
                views.append((key, None, 0))  # not known here: the loop forgets it
            elif dropped:
                views.append((key, StoredRecord(deleted=deleted) if deleted else MISSING, 64))
            elif isinstance(rec, Record):
                views.append((key, _shared(rec.view(deleted)), rec.cost()))
            else:
                views.append((key, None, 0))
        foreign, self.foreign = self.foreign, False
        self.written = {}
        self.taken.clear()
        commits, store = self.commits, self.store
        return lambda: store._install(commits, foreign, views)

    def rolled_back(self) -> None:
        self.commits = _UNKNOWN  # the next transaction starts afresh
        self.records.clear()
        self.deletions.clear()
        self.written = {}
        self.taken.clear()


class _SqlTable(_blob.RecordTable):
    """The store's tables inside one transaction (or read) of one connection, through
    the writer's decoded records when ``writer`` is given."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        ttl_ms: Mapping[Kind, int],
        now_ms: int,
        writer: _Writer | None = None,
    ) -> None:
        self.conn = conn
        self.ttl_ms = ttl_ms
        self.now_ms = now_ms
        self.writer = writer

    def _expires(self, key: RecordKey) -> int | None:
        ttl = self.ttl_ms.get(key.kind)
        return self.now_ms + ttl if ttl is not None else None

    def get(self, key: RecordKey) -> Record | None:
        writer = self.writer
        if writer is None:
            return read_record(self.conn, key.encode(), self.now_ms)
        rec = writer.record(key)
        if rec is None:
            rec = read_record(self.conn, key.encode(), self.now_ms)
            if rec is not None and key.kind not in self.ttl_ms:
                writer.records.put(key, rec, rec.cost())
                writer.taken.append(key)
        return rec

    def put(self, key: RecordKey, rec: Record) -> None:
        write_record(self.conn, key.encode(), rec, self._expires(key))
        if self.writer is not None:
            self.writer.remember(key, rec)

    def put_change(self, key: RecordKey, rec: Record, change: Change) -> None:
        write_change(self.conn, key.encode(), rec, change, self._expires(key))
        if self.writer is not None:
            self.writer.remember(key, rec)

    def drop(self, key: RecordKey) -> None:
        delete_record(self.conn, key.encode())
        if self.writer is not None:
            self.writer.remember(key, None)

    def deletion_stamp(self, key: RecordKey) -> int:
        if key.kind == "conversation":
            return 0
        user = UserRef(key.bot, key.channel, key.user)
        writer = self.writer
        if writer is not None:
            known = writer.deletions.get(user)
            if known is not None:
                return known
        row = self.conn.execute(
            "SELECT stamp FROM deletions WHERE user = ?", (user.encode(),)
        ).fetchone()
        stamp = 0 if row is None else int(row[0])
        if writer is not None:
            if len(writer.deletions) >= _DELETIONS_KEPT:
                writer.deletions.clear()
            writer.deletions[user] = stamp
        return stamp

    def user_records(self, user: UserRef) -> list[RecordKey]:
        low, high = _private_range(user)
        rows = self.conn.execute(
            "SELECT key FROM heads WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ).fetchall()
        own = RecordKey("user", user.bot, user.channel, "", user.user)
        return [own, *(decode_key(row[0]) for row in rows)]

    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO deletions(user, stamp) VALUES (?, ?)", (user.encode(), stamp)
        )
        if self.writer is not None:
            self.writer.deletions[user] = stamp


class SqliteStore(Store):
    """Records in one SQLite file, durable across restarts and ``kill -9``.

    ``synchronous="NORMAL"`` (the default) survives any crash of the process; a power
    loss may roll back the last commits. ``"FULL"`` makes every commit durable across
    power loss, at the cost of an fsync per group commit. ``timeout`` bounds every
    operation (seconds); past it the caller gets StoreUnavailable. ``cache_bytes``
    bounds the decoded records kept for reads, and separately those the writer keeps
    (counted like ``memory://``'s; the values themselves are shared). Any number of
    stores and processes may use one file; see the module for how reads stay current.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 1.0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        super().__init__(clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must not be negative, got {cache_bytes}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.timeout = timeout
        self.cache_bytes = cache_bytes
        self._state = _Writer(self)
        self._writer: Worker | None = None
        self._reader: Worker | None = None
        self._probe: sqlite3.Connection | None = None
        self._next_sweep_ms = 0
        self._holder = uuid.uuid4().hex  # whose node id leases these are
        # Views of records as of the file's commit count ``_commits`` (on the loop).
        self._views = _LruCost(cache_bytes)
        self._commits = _UNKNOWN
        # Loads answered from the views, and loads that read the file.
        self.hits = 0
        self.reads = 0

    def _connect(self, role: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # The loop's probe never waits: a busy file means "read it on the reader".
        timeout_ms = 0 if role == "probe" else int(self.timeout * 1000)
        conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        if role == "writer":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            try:
                prepare(conn)
            except StoreError as exc:
                raise StoreError(f"{self.path}: {exc}") from None
        return conn

    async def open(self) -> None:
        """Create (or upgrade) the file and its schema, start the writer and reader
        threads and learn the file's commit count."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._state = _Writer(self)
        self._writer = await self._start("writer", self._state)
        self._reader = await self._start("reader", None)
        try:
            self._probe = self._connect("probe")
        except sqlite3.Error as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        await self._call(self._writer, lambda conn: None)  # an empty commit: the count
        await self._start_clock()

    async def _start(self, role: str, transactions: Transactions | None) -> Worker:
        worker = Worker(f"inline_state-sqlite-{role}", lambda: self._connect(role), transactions)
        worker.start()
        await asyncio.to_thread(worker.ready.wait)
        if worker.startup_error is not None:
            error = worker.startup_error
            if isinstance(error, StoreError):
                raise error
            raise StoreUnavailable(f"cannot open {self.path}: {error}")
        return worker

    async def close(self) -> None:
        """Finish queued writes, give the clock's node id back, then stop the threads."""
        if self._writer is not None and self._writer.is_alive():
            await self._stop_clock()
        for worker in (self._writer, self._reader):
            if worker is not None and worker.is_alive():
                worker.stop()
                await asyncio.to_thread(worker.join)
        self._writer = self._reader = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self._views.clear()
        self._commits = _UNKNOWN

    async def _call(self, worker: Worker | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        if worker is None or not worker.is_alive():
            raise StoreUnavailable(f"the SQLite store {self.path} is not open")
        try:
            return await asyncio.wait_for(worker.submit(fn), self.timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"SQLite {self.path} did not answer within {self.timeout} s"
            ) from None

    def _install(self, commits: int, foreign: bool, views: list[Published]) -> None:
        """What a commit of the writer changed, on the loop, before its callers hear."""
        cache = self._views
        if foreign:
            cache.clear()
        if commits <= self._commits:  # cannot happen; if it did, trust nothing
            cache.clear()
            return
        for key, view, cost in views:
            if view is None:
                cache.pop(key)
            else:
                cache.put(key, view, cost)
        self._commits = commits

    def _current(self) -> bool:
        """True when nobody committed to the file since this store's last commit the
        loop knows of (then the views are what the file holds)."""
        probe = self._probe
        if probe is None:
            return False
        try:
            return bool(probe.execute(READ_COMMITS).fetchall()[0][0] == self._commits)
        except sqlite3.Error:
            return False

    def _table(self, conn: sqlite3.Connection, writer: _Writer | None = None) -> _SqlTable:
        return _SqlTable(conn, self.ttl_ms, self.clock.wall_ms(), writer)

    async def allocate_node_id(self) -> int:
        """The lowest node id no live lease in the file holds, leased to this instance.

        Leases live in the ``nodes`` table for ``NODE_LEASE_SECONDS`` (wall time, so
        every process on the file agrees); one a killed process left lapses by itself.
        """
        holder = self._holder

        def allocate(conn: sqlite3.Connection) -> int:
            now_ms = int(time.time() * 1000)
            held = {
                row[0]
                for row in conn.execute("SELECT node FROM nodes WHERE expires >= ?", (now_ms,))
            }
            free = next((n for n in range(1, MAX_NODES) if n not in held), None)
            if free is None:
                raise StoreUnavailable(
                    f"all {MAX_NODES - 1} clock node ids of {self.path} are held"
                )
            conn.execute(
                "INSERT OR REPLACE INTO nodes(node, holder, expires) VALUES (?, ?, ?)",
                (free, holder, now_ms + int(NODE_LEASE_SECONDS * 1000)),
            )
            return free

        return await self._call(self._writer, allocate)

    async def renew_node_id(self, node_id: int) -> bool:
        """Extend this instance's lease; False if another writer took the node id."""
        holder = self._holder

        def renew(conn: sqlite3.Connection) -> bool:
            expires = int(time.time() * 1000) + int(NODE_LEASE_SECONDS * 1000)
            cursor = conn.execute(
                "UPDATE nodes SET expires = ? WHERE node = ? AND holder = ?",
                (expires, node_id, holder),
            )
            return cursor.rowcount == 1

        return await self._call(self._writer, renew)

    async def release_node_id(self, node_id: int) -> None:
        """End this instance's lease on a node id."""
        holder = self._holder
        await self._call(
            self._writer,
            lambda conn: conn.execute(
                "DELETE FROM nodes WHERE node = ? AND holder = ?", (node_id, holder)
            ),
        )

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records: from the views when the file is unchanged since this
        store's last commit, else on the reader connection.

        Records of kinds with a TTL are always read, and get their expiry pushed back by
        the writer (in its next group commit) before the load returns.
        """
        entries = self._views.entries
        out: list[StoredRecord] = []
        for key in keys:
            view = entries.get(key)
            if view is None:
                break
            out.append(view)  # type: ignore[arg-type]
        else:
            if self._current():
                for key in keys:
                    entries[key] = entries.pop(key)  # most recently used last
                self.hits += 1
                return out
        return await self._read(keys)

    async def _read(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        self.reads += 1
        ttl_ms = self.ttl_ms

        def read(conn: sqlite3.Connection) -> tuple[int, list[tuple[StoredRecord, int]]]:
            conn.execute("BEGIN")  # one snapshot for the count and every record
            try:
                commits = read_commits(conn)
                table = self._table(conn)
                found: list[tuple[StoredRecord, int]] = []
                for key in keys:
                    deleted = table.deletion_stamp(key)
                    rec = table.get(key)
                    if rec is not None:
                        found.append((_shared(rec.view(deleted)), rec.cost()))
                    else:
                        found.append((StoredRecord(deleted=deleted) if deleted else MISSING, 64))
                return commits, found
            finally:
                conn.execute("COMMIT")

        commits, found = await self._call(self._reader, read)
        if commits == self._commits:  # read as of what the views hold: keep them
            cache = self._views
            for key, (view, cost) in zip(keys, found, strict=True):
                if key.kind not in ttl_ms:
                    cache.put(key, view, cost)
        touched = [
            k.encode()
            for k, (r, _) in zip(keys, found, strict=True)
            if k.kind in ttl_ms and r.exists
        ]
        if touched:
            await self._call(self._writer, self._touch(touched))
        return [view for view, _ in found]

    def _touch(self, encoded: list[str]) -> Callable[[sqlite3.Connection], None]:
        def touch(conn: sqlite3.Connection) -> None:
            now_ms = self.clock.wall_ms()
            for key in encoded:
                kind = decode_key(key).kind
                conn.execute(
                    "UPDATE heads SET expires = ? WHERE key = ? AND expires >= ?",
                    (now_ms + self.ttl_ms[kind], key, now_ms),
                )

        return touch

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes in the writer's next group commit."""

        def apply(conn: sqlite3.Connection) -> list[ApplyResult]:
            table = self._table(conn, self._state)
            self._sweep(conn, table.now_ms)
            return _blob.apply_changes(table, changes, table.now_ms, self.tombstone_ttl_ms)

        return await self._call(self._writer, apply)

    def _sweep(self, conn: sqlite3.Connection, now_ms: int) -> None:
        if self.ttl_ms and now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
            conn.execute(
                "DELETE FROM properties WHERE key IN (SELECT key FROM heads WHERE expires < ?)",
                (now_ms,),
            )
            conn.execute("DELETE FROM heads WHERE expires < ?", (now_ms,))

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag."""

        stamp = self.clock.stamp()  # on the loop: the clock is not shared with threads

        def cas(conn: sqlite3.Connection) -> tuple[str, int]:
            table = self._table(conn, self._state)
            return _blob.compare_and_set(
                table, stamp, key, data, etag, max_bytes, table.now_ms, self.tombstone_ttl_ms
            )

        new_etag, used = await self._call(self._writer, cas)
        self.clock.observe(used)
        return new_etag

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        return await self._call(
            self._writer,
            lambda conn: _blob.delete_user(self._table(conn, self._state), user, stamp),
        )

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records in key order after ``cursor``."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        prefix = namespace_prefix(bot, channel)
        low = max(prefix, cursor or "")
        high = prefix[:-1] + "0"

        def page(conn: sqlite3.Connection) -> ExportPage:
            conn.execute("BEGIN")
            try:
                now_ms = self.clock.wall_ms()
                keys = [
                    row[0]
                    for row in conn.execute(
                        "SELECT key FROM heads WHERE key > ? AND key < ? ORDER BY key LIMIT ?",
                        (low, high, limit + 1),
                    )
                ]
                more = len(keys) > limit
                keys = keys[:limit]
                out: list[tuple[RecordKey, StoredRecord]] = []
                for encoded in keys:
                    rec = read_record(conn, encoded, now_ms)
                    if rec is not None and rec.live:
                        out.append((decode_key(encoded), rec.view()))
                return ExportPage(out, keys[-1] if more else None)
            finally:
                conn.execute("COMMIT")

        return await self._call(self._reader, page)
