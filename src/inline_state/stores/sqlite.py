"""``sqlite:///path/state.db``: durable records in one SQLite file (WAL).

One writer thread owns the writing connection and commits in groups: it takes every
queued operation, runs each in a savepoint inside one ``BEGIN IMMEDIATE`` transaction,
commits once, and only then resolves the callers. A reply is therefore acknowledged
only after its write committed. Reads run on their own thread and connection, so they
never wait behind a commit (WAL readers see the last committed state).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from .._change import Change
from .._clock import MAX_NODES, HybridClock
from .._errors import StoreError, StoreUnavailable
from .._keys import RecordKey, UserRef, decode_key, namespace_prefix
from .._message import Kind
from . import _blob
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    NODE_LEASE_SECONDS,
    ApplyResult,
    ExportPage,
    Store,
    StoredRecord,
)
from ._record import Record, view_blob

__all__ = ["SqliteStore"]

T = TypeVar("T")
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    blob BLOB NOT NULL,
    expires INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expires ON records(expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS deletions (user TEXT PRIMARY KEY, stamp INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', 1), ('node', 0);
CREATE TABLE IF NOT EXISTS nodes (
    node INTEGER PRIMARY KEY, holder TEXT NOT NULL, expires INTEGER NOT NULL
);
"""
_STOP = object()


def _private_range(user: UserRef) -> tuple[str, str]:
    # Escaped ids never contain "/", so a user's per-conversation keys are exactly
    # those starting with ".../p/<user>/", and "0" is the character after "/".
    prefix = RecordKey("private", user.bot, user.channel, "", user.user).encode()
    return prefix, prefix[:-1] + "0"


class _SqlTable(_blob.RecordTable):
    """The store's tables inside one transaction of one connection."""

    def __init__(self, conn: sqlite3.Connection, ttl_ms: Mapping[Kind, int], now_ms: int) -> None:
        self.conn = conn
        self.ttl_ms = ttl_ms
        self.now_ms = now_ms

    def get(self, key: RecordKey) -> Record | None:
        row = self.conn.execute(
            "SELECT blob, expires FROM records WHERE key = ?", (key.encode(),)
        ).fetchone()
        if row is None or (row[1] is not None and row[1] < self.now_ms):
            return None
        return Record.unpack(row[0])

    def put(self, key: RecordKey, rec: Record) -> None:
        ttl = self.ttl_ms.get(key.kind)
        expires = self.now_ms + ttl if ttl is not None else None
        self.conn.execute(
            "INSERT OR REPLACE INTO records(key, blob, expires) VALUES (?, ?, ?)",
            (key.encode(), rec.pack(), expires),
        )

    def drop(self, key: RecordKey) -> None:
        self.conn.execute("DELETE FROM records WHERE key = ?", (key.encode(),))

    def deletion_stamp(self, key: RecordKey) -> int:
        if key.kind == "conversation":
            return 0
        row = self.conn.execute(
            "SELECT stamp FROM deletions WHERE user = ?",
            (UserRef(key.bot, key.channel, key.user).encode(),),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def user_records(self, user: UserRef) -> list[RecordKey]:
        low, high = _private_range(user)
        rows = self.conn.execute(
            "SELECT key FROM records WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ).fetchall()
        own = RecordKey("user", user.bot, user.channel, "", user.user)
        return [own, *(decode_key(row[0]) for row in rows)]

    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO deletions(user, stamp) VALUES (?, ?)", (user.encode(), stamp)
        )


class _Worker(threading.Thread):
    """A thread that owns one connection and runs submitted functions on it.

    With ``group_commit`` it drains the queue and runs the batch in one transaction,
    each function in a savepoint, committing once before resolving any caller.
    """

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection], group_commit: bool):
        super().__init__(name=name, daemon=True)
        self._connect = connect
        self._group_commit = group_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, fn))
        return future

    def stop(self) -> None:
        self._queue.put(_STOP)

    def run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                batch = [self._queue.get()]
                if self._group_commit:
                    while len(batch) < 512:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                stop = any(item is _STOP for item in batch)
                work = [item for item in batch if item is not _STOP]
                if work:
                    self._run(conn, work)
                if stop:
                    return
        finally:
            conn.close()

    def _run(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        try:
            if self._group_commit:
                conn.execute("BEGIN IMMEDIATE")
            for loop, future, fn in batch:
                if self._group_commit:
                    conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # refused by the rules (or a bug): undo it, go on
                    if self._group_commit:
                        conn.execute("ROLLBACK TO op")
                    outcomes.append((loop, future, None, exc))
                    continue
                if self._group_commit:
                    conn.execute("RELEASE op")
                outcomes.append((loop, future, result, None))
            if self._group_commit:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"SQLite: {exc}")
            outcomes = [(loop, future, None, failure) for loop, future, _ in batch]
        for loop, future, result, error in outcomes:
            loop.call_soon_threadsafe(_resolve, future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteStore(Store):
    """Records in one SQLite file, durable across restarts and ``kill -9``.

    ``synchronous="NORMAL"`` (the default) survives any crash of the process; a power
    loss may roll back the last commits. ``"FULL"`` makes every commit durable across
    power loss, at the cost of an fsync per group commit. ``timeout`` bounds every
    operation (seconds); past it the caller gets StoreUnavailable.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 1.0,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        super().__init__(clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.timeout = timeout
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._next_sweep_ms = 0
        self._holder = uuid.uuid4().hex  # whose node id leases these are

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if writer:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.executescript(_SCHEMA)
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema {version}, expected {SCHEMA_VERSION}")
        return conn

    async def open(self) -> None:
        """Create the file and schema if needed and start the writer and reader threads."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._start("writer", writer=True)
        self._reader = await self._start("reader", writer=False)
        await self._start_clock()

    async def _start(self, role: str, *, writer: bool) -> _Worker:
        worker = _Worker(
            f"inline_state-sqlite-{role}", lambda: self._connect(writer=writer), group_commit=writer
        )
        worker.start()
        await asyncio.to_thread(worker.ready.wait)
        if worker.startup_error is not None:
            raise StoreUnavailable(f"cannot open {self.path}: {worker.startup_error}")
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

    async def _call(self, worker: _Worker | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        if worker is None or not worker.is_alive():
            raise StoreUnavailable(f"the SQLite store {self.path} is not open")
        try:
            return await asyncio.wait_for(worker.submit(fn), self.timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"SQLite {self.path} did not answer within {self.timeout} s"
            ) from None

    def _table(self, conn: sqlite3.Connection) -> _SqlTable:
        return _SqlTable(conn, self.ttl_ms, self.clock.wall_ms())

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
        """Read several records on the reader connection.

        Records of kinds with a TTL get their expiry pushed back by the writer (in its
        next group commit) before the load returns.
        """
        records = await self._call(
            self._reader, lambda conn: _blob.load_records(self._table(conn), keys)
        )
        touched = [
            k.encode()
            for k, r in zip(keys, records, strict=True)
            if k.kind in self.ttl_ms and r.exists
        ]
        if touched:
            await self._call(self._writer, self._touch(touched))
        return records

    def _touch(self, encoded: list[str]) -> Callable[[sqlite3.Connection], None]:
        def touch(conn: sqlite3.Connection) -> None:
            now_ms = self.clock.wall_ms()
            for key in encoded:
                kind = decode_key(key).kind
                conn.execute(
                    "UPDATE records SET expires = ? WHERE key = ? AND expires >= ?",
                    (now_ms + self.ttl_ms[kind], key, now_ms),
                )

        return touch

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply stamped changes in the writer's next group commit."""

        def apply(conn: sqlite3.Connection) -> list[ApplyResult]:
            table = self._table(conn)
            self._sweep(conn, table.now_ms)
            return _blob.apply_changes(table, changes, table.now_ms, self.tombstone_ttl_ms)

        return await self._call(self._writer, apply)

    def _sweep(self, conn: sqlite3.Connection, now_ms: int) -> None:
        if self.ttl_ms and now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + min(self.ttl_ms.values()) // 4
            conn.execute("DELETE FROM records WHERE expires < ?", (now_ms,))

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
            table = self._table(conn)
            return _blob.compare_and_set(
                table, stamp, key, data, etag, max_bytes, table.now_ms, self.tombstone_ttl_ms
            )

        new_etag, used = await self._call(self._writer, cas)
        self.clock.observe(used)
        return new_etag

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        return await self._call(
            self._writer, lambda conn: _blob.delete_user(self._table(conn), user, stamp)
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
            now_ms = self.clock.wall_ms()
            rows = conn.execute(
                "SELECT key, blob, expires FROM records WHERE key > ? AND key < ?"
                " ORDER BY key LIMIT ?",
                (low, high, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            out: list[tuple[RecordKey, StoredRecord]] = []
            for encoded, blob, expires in rows:
                if expires is not None and expires < now_ms:
                    continue
                view = view_blob(blob)
                if view.exists:
                    out.append((decode_key(encoded), view))
            return ExportPage(out, rows[-1][0] if more else None)

        return await self._call(self._reader, page)
