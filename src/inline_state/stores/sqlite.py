"""``sqlite:///path/state.db``: durable records in one SQLite file (WAL).

The store's connection is used on the event loop's thread only. With WAL and no
checkpoint on it, a statement on records in the page cache takes microseconds and a
commit with ``synchronous=NORMAL`` writes to the WAL without an fsync (except the WAL
header's, about once per checkpoint), so running them in place costs less than handing
each to a thread: with the GIL, every statement another thread runs is a handover of
the interpreter, which under load costs more than the statement. Checkpoints (the fsync
of the database file) run on a thread of their own. With ``synchronous=FULL`` the loop
waits for the fsync of each group commit; a record not in the OS page cache is read on
the loop too.

Writes are committed in groups: every write queued while the loop runs one round of
callbacks goes into one ``BEGIN IMMEDIATE`` transaction, each in a savepoint, and is
answered only after the COMMIT succeeded. A reply is therefore sent only after its
write committed. When another process holds the write lock the group waits (without
blocking the loop) and retries, for at most ``timeout``.

Each record is a head row and a row per property (``_sqlite_rows``), so a write costs
what it changes. Records are kept decoded between turns (at most ``cache_bytes``):
before trusting them a load or a write asks ``PRAGMA data_version``, which changes
exactly when another connection (another process, another store on the same file, the
``sqlite3`` shell) committed, and then forgets them all. Decoded records change in place
only inside a transaction; a savepoint or transaction that rolls back forgets the
records it touched, so nothing rolled back is ever served.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from .._change import Change
from .._clock import MAX_NODES, HybridClock, stamp_ms
from .._errors import StoreError, StoreUnavailable
from .._keys import (
    RecordKey,
    UserRef,
    channel_of,
    decode_key,
    namespace_prefix,
    prefix_end,
    sorted_channels,
)
from .._message import Kind
from . import _blob
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    MISSING,
    NODE_LEASE_SECONDS,
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
from ._record import Record
from ._sqlite_rows import (
    delete_record,
    live_keys,
    prepare,
    read_record,
    write_change,
    write_record,
)

__all__ = ["SqliteStore"]

APPLIED, STALE = ApplyResult.APPLIED, ApplyResult.STALE
_NOT_READ = 1 << 63  # a deletion stamp not read yet: above every base, so looked up

T = TypeVar("T")
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_DELETIONS_KEPT = 65536  # deletion stamps remembered (a user's is read from the file once)
_CHECKPOINT_EVERY = 200  # commits (a few pages each) between checkpoints; 1 s at most
# WAL frames (pages) past which a checkpoint also restarts the WAL: under steady writes a
# passive checkpoint never catches up with the frames appended while it runs, and only a
# fully copied WAL is written again from its start, so it would grow without bound.
_WAL_RESTART_FRAMES = 2000
_RETRY_FIRST, _RETRY_MOST = 0.001, 0.05  # seconds between tries while the file is locked

logger = logging.getLogger("inline_state")
_Queued = tuple[asyncio.Future[Any], Callable[["_SqlTable"], Any], float, bool]


def _private_range(user: UserRef) -> tuple[str, str]:
    # Escaped ids never contain "/", so a user's per-conversation keys are exactly
    # those starting with ".../p/<user>/", and "0" is the character after "/".
    prefix = RecordKey("private", user.bot, user.channel, "", user.user).encode()
    return prefix, prefix[:-1] + "0"


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class _Records:
    """Decoded records, least recently used first, bounded by their counted cost."""

    __slots__ = ("costs", "entries", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.entries: dict[RecordKey, Record] = {}
        self.costs: dict[RecordKey, int] = {}
        self.total = 0
        self.limit = limit

    def get(self, key: RecordKey) -> Record | None:
        rec = self.entries.pop(key, None)
        if rec is not None:
            self.entries[key] = rec  # most recently used last
        return rec

    def put(self, key: RecordKey, rec: Record) -> None:
        cost = rec.cost()
        old = self.costs.get(key)
        if old is not None:
            del self.entries[key]
            self.total -= old
        self.entries[key] = rec
        self.costs[key] = cost
        self.total += cost
        if self.total > self.limit:
            entries, costs = self.entries, self.costs
            while self.total > self.limit and entries:
                oldest = next(iter(entries))
                del entries[oldest]
                self.total -= costs.pop(oldest)

    def pop(self, key: RecordKey) -> None:
        if self.entries.pop(key, None) is not None:
            self.total -= self.costs.pop(key)

    def clear(self) -> None:
        self.entries.clear()
        self.costs.clear()
        self.total = 0


class _SqlTable(_blob.RecordTable):
    """The store's tables in the running transaction (or read), through its decoded
    records; remembers which records it handed out, for a rollback to forget."""

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection, now_ms: int) -> None:
        self.store = store
        self.conn = conn
        self.now_ms = now_ms
        self.taken: list[RecordKey] = []

    def _expires(self, key: RecordKey) -> int | None:
        ttl = self.store.ttl_ms.get(key.kind)
        return self.now_ms + ttl if ttl is not None else None

    def get(self, key: RecordKey) -> Record | None:
        store = self.store
        rec = store._records.get(key)
        if rec is None:
            rec = read_record(self.conn, key.encode(), self.now_ms, store.sealer)
            if key.kind in store.ttl_ms:  # expiring records are always read
                return rec
            if rec is None:
                rec = Record()  # known missing: behaves as no record in every rule
            store._records.put(key, rec)
        self.taken.append(key)
        return rec

    def _remember(self, key: RecordKey, rec: Record) -> None:
        self.taken.append(key)
        if key.kind not in self.store.ttl_ms:
            self.store._records.put(key, rec)

    def put(self, key: RecordKey, rec: Record) -> None:
        write_record(self.conn, key.encode(), rec, self._expires(key), self.store.sealer)
        self._remember(key, rec)

    def put_change(self, key: RecordKey, rec: Record, change: Change) -> None:
        sealer = self.store.sealer
        write_change(self.conn, key.encode(), rec, change, self._expires(key), sealer)
        self._remember(key, rec)

    def drop(self, key: RecordKey) -> None:
        delete_record(self.conn, key.encode())
        self.store._records.pop(key)

    def deletion_stamp(self, key: RecordKey) -> int:
        if key.kind == "conversation":
            return 0
        store = self.store
        if store._any_deleted is None:
            row = self.conn.execute("SELECT EXISTS (SELECT 1 FROM deletions)").fetchone()
            store._any_deleted = bool(row[0])
        if not store._any_deleted:
            return 0
        user = UserRef(key.bot, key.channel, key.user)
        deletions = store._deletions
        known = deletions.get(user)
        if known is not None:
            return known
        row = self.conn.execute(
            "SELECT stamp FROM deletions WHERE user = ?", (user.encode(),)
        ).fetchone()
        stamp = 0 if row is None else int(row[0])
        if len(deletions) >= _DELETIONS_KEPT:
            deletions.clear()
        deletions[user] = stamp
        return stamp

    def user_records(self, user: UserRef) -> list[RecordKey]:
        low, high = _private_range(user)
        rows = self.conn.execute(
            "SELECT key FROM heads WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ).fetchall()
        own = RecordKey("user", user.bot, user.channel, "", user.user)
        return [own, *(decode_key(row[0]) for row in rows)]

    def put_restored(self, key: RecordKey, rec: Record, expires_ms: int) -> None:
        encoded = key.encode()
        if not expires_ms:
            row = self.conn.execute(
                "SELECT expires FROM heads WHERE key = ?", (encoded,)
            ).fetchone()
            expires = self._expires(key) if row is None else row[0]
        sealer = self.store.sealer
        if sealer is not None:  # it may hold values as dumped: sealed (first: the text)
            sealer.restored(encoded, rec)
        write_record(self.conn, encoded, rec, expires_ms or expires, sealer)
        self._remember(key, rec)

    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO deletions(user, stamp) VALUES (?, ?)", (user.encode(), stamp)
        )
        self.store._any_deleted = True
        self.store._deletions[user] = stamp


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database file (``PRAGMA wal_checkpoint(PASSIVE)``, which
    never blocks readers or writers) on its own connection, when nudged or once a
    second, so a checkpoint's fsync never stalls the event loop. When the WAL has grown
    past ``_WAL_RESTART_FRAMES`` it restarts it (``RESTART``): writers wait for that
    checkpoint (a store retries a locked file without blocking its loop), and the next
    write goes to the start of the WAL, which stays bounded."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(name="inline_state-sqlite-checkpoint", daemon=True)
        self._connect = connect
        self._wake = threading.Event()
        self._stopping = False

    def nudge(self) -> None:
        """Checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        """Checkpoint once more and end the thread."""
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            logger.warning("inline_state: SQLite checkpoints cannot run: %s", exc)
            return
        try:
            while True:
                self._wake.wait(1.0)
                self._wake.clear()
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames > _WAL_RESTART_FRAMES:
                        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except sqlite3.Error as exc:  # the next one catches up
                    logger.warning("inline_state: SQLite checkpoint failed: %s", exc)
                if self._stopping:
                    return
        finally:
            conn.close()


class SqliteStore(Store):
    """Records in one SQLite file, durable across restarts and ``kill -9``.

    ``synchronous="NORMAL"`` (the default) survives any crash of the process; a power
    loss may roll back the last commits. ``"FULL"`` makes every commit durable across
    power loss, at the cost of an fsync per group commit. ``timeout`` bounds how long a
    write waits for another process's lock (seconds); past it the caller gets
    StoreUnavailable. ``cache_bytes`` bounds the decoded records kept between turns
    (counted like ``memory://``'s). Any number of stores and processes may share one
    file; see the module for how reads stay current. A store serves one event loop.
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
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._records = _Records(cache_bytes)
        self.sealer: RecordSealer | None = None  # see seal_at_rest
        self._deletions: dict[UserRef, int] = {}
        # Whether the file holds any deletion stamp (None: not known); while it holds
        # none, no user's stamp is looked up.
        self._any_deleted: bool | None = None
        self._data_version = -1  # PRAGMA data_version when the records were last trusted
        # Writes waiting for the next group commit: (future, operation, deadline, refusable).
        self._queue: list[_Queued] = []
        self._flush_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_FIRST
        self._commits = 0
        self._next_sweep_ms = 0
        self._holder = uuid.uuid4().hex  # whose node id leases these are
        # Loads answered from decoded records alone, and loads that read the file.
        self.hits = 0
        self.reads = 0

    def seal_at_rest(self, sealer: RecordSealer | None) -> None:
        """Seal values where they are written to the file, and open them where they are
        read from it: decoded records (the cache) hold plaintext. (A ``SealedStore``
        calls this: a turn seals each value it writes, and opens nothing it wrote.)"""
        self.sealer = sealer

    @property
    def cache_stats(self) -> dict[str, int]:
        """Loads answered from decoded records alone (``hits``) and loads that read
        the file (``decodes``, named as ``memory://``'s), and the records held."""
        return {
            "hits": self.hits,
            "decodes": self.reads,
            "hot_records": len(self._records.entries),
            "hot_bytes": self._records.total,
        }

    def _connect(self, *, checkpoints: bool = False) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < (3, 24):  # upserts
            raise StoreError(
                f"sqlite:// needs SQLite 3.24 or newer; Python uses {sqlite3.sqlite_version}"
            )
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if checkpoints:
                return conn
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journaling (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
            try:
                prepare(conn)
            except StoreError as exc:
                raise StoreError(f"{self.path}: {exc}") from None
            # On the loop a locked file is never waited for in place: see _flush.
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Create (or upgrade) the file and its schema, start the checkpoint thread and
        lease a clock node id."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = await asyncio.to_thread(self._connect)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        self._checkpointer = _Checkpointer(lambda: self._connect(checkpoints=True))
        self._checkpointer.start()
        await self._start_clock()

    async def close(self) -> None:
        """Finish queued writes, give the clock's node id back, then close the file."""
        if self._conn is None:
            return
        await self._stop_clock()
        while self._queue:
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            self._flush()
            if self._queue:
                await asyncio.sleep(self._retry_delay)
        conn, self._conn = self._conn, None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        await asyncio.to_thread(conn.close)
        self._forget()

    def _open_conn(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"the SQLite store {self.path} is not open")
        return conn

    def _forget(self) -> None:
        self._records.clear()
        self._forget_deletions()

    def _forget_deletions(self) -> None:
        self._deletions.clear()
        self._any_deleted = None

    def _check_others(self, conn: sqlite3.Connection) -> None:
        """Forget every decoded record if another connection committed since the last
        look (this connection's own commits leave ``data_version`` alone)."""
        version = conn.execute("PRAGMA data_version").fetchall()[0][0]
        if version != self._data_version:
            self._forget()
            self._data_version = version

    # -- writes: group commits on the loop ------------------------------------------------

    async def _write(self, operation: Callable[[_SqlTable], T], *, refusable: bool = True) -> T:
        """Run ``operation`` in the next group commit. One that is not ``refusable``
        (raises only on a SQLite error) runs without a savepoint of its own."""
        self._open_conn()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((future, operation, time.monotonic() + self.timeout, refusable))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            future.get_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        """Run every queued write in one transaction and answer them after the COMMIT."""
        self._flush_scheduled = False
        self._retry = None
        batch, self._queue = self._queue, []
        if batch:
            self._commit(batch, every_in_savepoint=False)

    def _commit(self, batch: list[_Queued], *, every_in_savepoint: bool) -> None:
        conn = self._conn
        if conn is None:
            _fail(batch, StoreUnavailable(f"the SQLite store {self.path} is not open"))
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._wait_and_retry(batch, exc)
            return
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        table = _SqlTable(self, conn, self.clock.wall_ms())
        try:
            self._check_others(conn)
            self._sweep(conn, table.now_ms)
            for future, operation, _, refusable in batch:
                if not (refusable or every_in_savepoint):
                    outcomes.append((future, operation(table), None))
                    continue
                conn.execute("SAVEPOINT op")
                table.taken.clear()
                try:
                    result = operation(table)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # refused by the rules (or a bug): undo it, go on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    for key in table.taken:  # possibly changed in place: read again
                        self._records.pop(key)
                    self._forget_deletions()
                    outcomes.append((future, None, exc))
                    continue
                conn.execute("RELEASE op")
                outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:  # closing the connection rolls back, at the latest
                logger.warning("inline_state: SQLite ROLLBACK failed", exc_info=True)
            self._forget()  # records changed in place by the rolled-back transaction
            if not isinstance(exc, Exception):
                _fail(batch, StoreUnavailable(f"SQLite: interrupted ({exc!r})"))
                raise
            if not isinstance(exc, sqlite3.Error) and not every_in_savepoint:
                # An operation without a savepoint failed (a bug): again, each in one.
                self._commit(batch, every_in_savepoint=True)
                return
            _fail(batch, StoreUnavailable(f"SQLite: {exc}"))
            return
        self._retry_delay = _RETRY_FIRST
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self._checkpointer is not None:
            self._checkpointer.nudge()
        for future, result, error in outcomes:
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _wait_and_retry(self, batch: list[_Queued], exc: sqlite3.Error) -> None:
        now = time.monotonic()
        busy = _busy(exc)
        waiting: list[_Queued] = []
        expired: list[_Queued] = []
        for item in batch:
            (waiting if busy and item[2] > now else expired).append(item)
        if expired:
            self._retry_delay = _RETRY_FIRST
            reason = (
                f"SQLite {self.path} stayed locked by another writer for {self.timeout} s"
                if _busy(exc)
                else f"SQLite: {exc}"
            )
            _fail(expired, StoreUnavailable(reason))
        if waiting:
            self._queue[:0] = waiting
            self._flush_scheduled = True
            loop = waiting[0][0].get_loop()
            self._retry = loop.call_later(self._retry_delay, self._flush)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MOST)

    def _sweep(self, conn: sqlite3.Connection, now_ms: int) -> None:
        if self.ttl_ms and now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
            conn.execute(
                "DELETE FROM properties WHERE key IN (SELECT key FROM heads WHERE expires < ?)",
                (now_ms,),
            )
            swept = conn.execute("DELETE FROM heads WHERE expires < ?", (now_ms,)).rowcount
            if swept:  # a record of a kind without a TTL now may be among them
                self._forget()

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes in the next group commit."""
        return await self._write(lambda table: self._merge(table, changes), refusable=False)

    def _merge(self, table: _SqlTable, changes: Sequence[Change]) -> list[ApplyResult]:
        # The common case inline: a change that does not replace the bag, to a decoded
        # record without text or tombstones, whose owner has no deletion stamp above the
        # change's base, and that the change cannot take past its limit (the rules are
        # Record.apply's). Anything else takes the general path.
        records, deletions, ttl_ms = self._records, self._deletions, self.ttl_ms
        entries = records.entries
        horizon_ms = table.now_ms - self.tombstone_ttl_ms
        results: list[ApplyResult] = []
        for change in changes:
            key = change.key
            rec = entries.get(key)
            if (
                rec is None
                or change.replace  # the record's rows are all rewritten
                or rec.tombs
                or rec.text is not None
                or key.kind in ttl_ms
                or (
                    key.kind != "conversation"
                    and self._any_deleted is not False
                    and change.base
                    < deletions.get(UserRef(key.bot, key.channel, key.user), _NOT_READ)
                )
                or rec.may_exceed(change)
                or (change.removes and stamp_ms(change.stamp) < horizon_ms)  # pruned at once
            ):
                results += _blob.apply_changes(
                    table, (change,), table.now_ms, self.tombstone_ttl_ms
                )
            elif rec.apply(change):
                table.taken.append(key)
                write_change(table.conn, key.encode(), rec, change, None, self.sealer)
                records.put(key, rec)
                results.append(APPLIED)
            else:
                results.append(STALE)
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
        stamp = self.clock.stamp()
        tombstone_ttl_ms = self.tombstone_ttl_ms
        new_etag, used = await self._write(
            lambda table: _blob.compare_and_set(
                table, stamp, key, data, etag, max_bytes, table.now_ms, tombstone_ttl_ms
            )
        )
        self.clock.observe(used)
        return new_etag

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        return await self._write(lambda table: _blob.delete_user(table, user, stamp))

    async def allocate_node_id(self) -> int:
        """The lowest node id no live lease in the file holds, leased to this instance.

        Leases live in the ``nodes`` table for ``NODE_LEASE_SECONDS`` (wall time, so
        every process on the file agrees); one a killed process left lapses by itself.
        """
        holder, path = self._holder, self.path

        def allocate(table: _SqlTable) -> int:
            now_ms = int(time.time() * 1000)
            held = {
                row[0]
                for row in table.conn.execute(
                    "SELECT node FROM nodes WHERE expires >= ?", (now_ms,)
                )
            }
            free = next((n for n in range(1, MAX_NODES) if n not in held), None)
            if free is None:
                raise StoreUnavailable(f"all {MAX_NODES - 1} clock node ids of {path} are held")
            table.conn.execute(
                "INSERT OR REPLACE INTO nodes(node, holder, expires) VALUES (?, ?, ?)",
                (free, holder, now_ms + int(NODE_LEASE_SECONDS * 1000)),
            )
            return free

        return await self._write(allocate)

    async def renew_node_id(self, node_id: int) -> bool:
        """Extend this instance's lease; False if another writer took the node id."""
        holder = self._holder

        def renew(table: _SqlTable) -> bool:
            expires = int(time.time() * 1000) + int(NODE_LEASE_SECONDS * 1000)
            cursor = table.conn.execute(
                "UPDATE nodes SET expires = ? WHERE node = ? AND holder = ?",
                (expires, node_id, holder),
            )
            return cursor.rowcount == 1

        return await self._write(renew)

    async def release_node_id(self, node_id: int) -> None:
        """End this instance's lease on a node id."""
        holder = self._holder
        await self._write(
            lambda table: table.conn.execute(
                "DELETE FROM nodes WHERE node = ? AND holder = ?", (node_id, holder)
            )
        )

    # -- reads ----------------------------------------------------------------------------

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read several records as of one snapshot: decoded ones when nobody else
        committed since they were read, the rest from the file.

        Records of kinds with a TTL are always read from the file, and get their
        expiry pushed back in the next group commit before the load returns.
        """
        conn = self._open_conn()
        entries = self._records.entries
        deadline = 0.0  # set when the file is first found locked
        delay = _RETRY_FIRST
        while True:
            try:
                if all(key in entries for key in keys):
                    self._check_others(conn)
                    decoded = self._decoded(keys)
                    if decoded is not None:
                        return decoded
                self.reads += 1
                conn.execute("BEGIN")  # one snapshot for the check and every record
                try:
                    self._check_others(conn)
                    table = _SqlTable(self, conn, self.clock.wall_ms())
                    found = _blob.load_records(table, keys)
                finally:
                    conn.execute("COMMIT")
                break
            except sqlite3.Error as exc:
                if not deadline:
                    deadline = time.monotonic() + self.timeout
                if not _busy(exc) or time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"SQLite: {exc}") from None
            await asyncio.sleep(delay)  # the file is locked (a recovery, a VACUUM...)
            delay = min(delay * 2, _RETRY_MOST)
            conn = self._open_conn()
        if self.ttl_ms:
            touched = [
                key.encode()
                for key, record in zip(keys, found, strict=True)
                if key.kind in self.ttl_ms and record.exists
            ]
            if touched:
                await self._write(self._touch(touched), refusable=False)
        return found

    def _decoded(self, keys: Sequence[RecordKey]) -> list[StoredRecord] | None:
        """The views of ``keys`` when every record is decoded and every owner's deletion
        stamp known (or the file holds none)."""
        entries, deletions = self._records.entries, self._deletions
        none_deleted = self._any_deleted is False
        out: list[StoredRecord] = []
        for key in keys:
            rec = entries.pop(key, None)
            if rec is None:
                return None
            entries[key] = rec  # most recently used last
            if none_deleted or key.kind == "conversation":
                out.append(rec.view())
                continue
            deleted = deletions.get(UserRef(key.bot, key.channel, key.user))
            if deleted is None:
                return None
            out.append(rec.view(deleted))
        self.hits += 1
        return out

    def _touch(self, encoded: list[str]) -> Callable[[_SqlTable], None]:
        def touch(table: _SqlTable) -> None:
            for key in encoded:
                table.conn.execute(
                    "UPDATE heads SET expires = ? WHERE key = ? AND expires >= ?",
                    (table.now_ms + self.ttl_ms[decode_key(key).kind], key, table.now_ms),
                )

        return touch

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records in key order after ``cursor``."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        conn = self._open_conn()
        prefix = namespace_prefix(bot, channel)
        low = max(prefix, cursor or "")
        high = prefix[:-1] + "0"
        try:
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
                    rec = read_record(conn, encoded, now_ms, self.sealer)
                    if rec is not None and rec.live:
                        try:
                            out.append((decode_key(encoded), rec.view()))
                        except UnreadableRecord as exc:  # one must not stop the export
                            logger.warning("inline_state: export skipped a record: %s", exc)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from None
        return ExportPage(out, keys[-1] if more else None)

    # -- inspecting: read transactions on the loop, as export's ----------------------------

    def _reading(self, read: Callable[[sqlite3.Connection, int], T]) -> T:
        conn = self._open_conn()
        try:
            conn.execute("BEGIN")
            try:
                return read(conn, self.clock.wall_ms())
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from None

    async def channels(self, bot: str) -> list[str | None]:
        """The channels on which ``bot`` has records (None first): one probe of the
        heads' key order per channel."""

        def read(conn: sqlite3.Connection, now_ms: int) -> list[str | None]:
            found: list[str | None] = []
            v1 = namespace_prefix(bot, None)
            if live_keys(conn, v1, True, prefix_end(v1), now_ms, 1):
                found.append(None)
            bot_prefix = namespace_prefix(bot, "")[:-1]  # "v3/<bot>/"
            low = bot_prefix
            high = prefix_end(bot_prefix)
            while first := live_keys(conn, low, True, high, now_ms, 1):
                channel = channel_of(first[0])
                found.append(channel)
                end = prefix_end(namespace_prefix(bot, channel))
                assert end is not None  # a namespace prefix ends with "/"
                low = end
            return sorted_channels(found)

        return self._reading(read)

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
        """A page of keys in key order: one range of the heads' primary key."""
        start, after = listing_range(bot, channel, kind, prefix, cursor, limit)

        def read(conn: sqlite3.Connection, now_ms: int) -> list[str]:
            return live_keys(
                conn, after or start, after is None, prefix_end(start), now_ms, limit + 1
            )

        found = [encoded for encoded in self._reading(read) if encoded.startswith(start)]
        more = len(found) > limit
        found = found[:limit]
        return KeyPage(
            [decode_key(e) for e in found], listing_cursor(start, found[-1]) if more else None
        )

    async def inspect(self, key: RecordKey) -> InspectedRecord:
        """One record and each live property's stamp, read in a transaction of its own
        (the expiry is left alone)."""

        def read(conn: sqlite3.Connection, now_ms: int) -> Record | None:
            return read_record(conn, key.encode(), now_ms, self.sealer)

        rec = self._reading(read)
        if rec is None or not rec.live:
            return InspectedRecord(MISSING, {})
        return InspectedRecord(rec.view(), dict(rec.stamps))

    # -- dumps --------------------------------------------------------------------------------

    async def dump(self, *, cursor: str | None = None, limit: int = 100) -> DumpPage:
        """Deletion stamps, then records, each in key order: ranges of the primary keys,
        read in a transaction of their own."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        phase, last = dump_position(cursor)

        def read(conn: sqlite3.Connection, now_ms: int) -> DumpPage:
            if phase == "d":
                rows = conn.execute(
                    "SELECT user, stamp FROM deletions WHERE user > ? ORDER BY user LIMIT ?",
                    (last, limit + 1),
                ).fetchall()
                deletions = [(_user_of(user), int(stamp)) for user, stamp in rows[:limit]]
                after = dump_cursor("d", rows[limit - 1][0]) if len(rows) > limit else None
                return DumpPage([], deletions, after or dump_cursor("r", ""))
            heads = conn.execute(
                "SELECT key, expires FROM heads WHERE key > ? ORDER BY key LIMIT ?",
                (last, limit + 1),
            ).fetchall()
            records: list[DumpedRecord] = []
            for encoded, expires in heads[:limit]:
                rec = read_record(conn, encoded, now_ms)
                if rec is not None:
                    records.append(rec.dumped(decode_key(encoded), expires or 0))
            more = len(heads) > limit
            return DumpPage(records, [], dump_cursor("r", heads[limit - 1][0]) if more else None)

        return self._reading(read)

    async def restore(
        self,
        records: Sequence[DumpedRecord],
        deletions: Sequence[tuple[UserRef, int]] = (),
        *,
        reseal: bool = False,
    ) -> int:
        """Merge dumped records in, in one transaction (see ``Store.restore``)."""
        return await self._write(
            lambda table: _blob.restore_records(table, records, deletions, reseal)
        )


def _user_of(encoded: str) -> UserRef:
    owner = decode_key(encoded).owner
    assert owner is not None  # a deletion is keyed by a user record's key
    return owner


def _fail(batch: list[_Queued], error: StoreUnavailable) -> None:
    for future, *_ in batch:
        if not future.cancelled():
            future.set_exception(error)
