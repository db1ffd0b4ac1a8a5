"""The file layout of ``sqlite://``: its schema, the upgrade of older files, records as rows.

Schema 2 keeps a record as one ``heads`` row (creation stamp, write count, clear stamp,
text, expiry) and one ``properties`` row per property or tombstone (a NULL value), so
a turn that changes one counter in a 60 KiB bag writes two small rows, not 60 KiB.
``properties`` has rowids: in a WITHOUT ROWID table a long value lives in the key's
b-tree, and writing a small row beside one cost ten times as much (measured: 80 us
against 8 us per row next to a 60 KiB value).
Schema 1 (one msgpack blob per record in ``records``) is upgraded in place, in one
transaction, when a store first opens the file; a process still running an older
inline_state on it then fails its next operation ("no such table") instead of writing
where nobody reads.

A record's first write (a new record, or one written again after it expired or was
emptied) rewrites all its rows, so rows an expired record left behind never come back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from .._change import Change
from .._errors import StoreError
from ._base import RecordSealer
from ._record import FormatError, Record

__all__: list[str] = []

SCHEMA_VERSION = 2
_TABLES = """
CREATE TABLE IF NOT EXISTS heads (
    key TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    writes INTEGER NOT NULL,
    clear INTEGER NOT NULL,
    text TEXT,
    text_stamp INTEGER NOT NULL,
    expires INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS heads_expires ON heads(expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS properties (
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB,
    stamp INTEGER NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS deletions (user TEXT PRIMARY KEY, stamp INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    node INTEGER PRIMARY KEY, holder TEXT NOT NULL, expires INTEGER NOT NULL
);
"""

_READ_HEAD = "SELECT created, writes, clear, text, text_stamp, expires FROM heads WHERE key = ?"
_READ_ROWS = "SELECT name, value, stamp FROM properties WHERE key = ?"
# Upserts: an existing row is updated in place, about half the cost of INSERT OR
# REPLACE's delete and insert.
_WRITE_HEAD = (
    "INSERT INTO heads(key, created, writes, clear, text, text_stamp, expires)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET created = excluded.created,"
    " writes = excluded.writes, clear = excluded.clear, text = excluded.text,"
    " text_stamp = excluded.text_stamp, expires = excluded.expires"
)
_WRITE_ROW = (
    "INSERT INTO properties(key, name, value, stamp) VALUES (?, ?, ?, ?)"
    " ON CONFLICT(key, name) DO UPDATE SET value = excluded.value, stamp = excluded.stamp"
)


def prepare(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file, or upgrade an older one; raise StoreError for a
    file written by a newer inline_state. A file already at this schema is only read."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
    except sqlite3.OperationalError:  # no meta table: a new file
        row = None
    if row is not None and int(row[0]) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        version = SCHEMA_VERSION if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the file has schema {version}; this inline_state reads {SCHEMA_VERSION}"
                " and older: it was written by a newer inline_state"
            )
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version == 1:
            _upgrade_from_blobs(conn)
        conn.execute(
            "INSERT OR REPLACE INTO meta(name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
        )
        conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('node', 0)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _upgrade_from_blobs(conn: sqlite3.Connection) -> None:
    for key, blob, expires in conn.execute("SELECT key, blob, expires FROM records"):
        try:
            rec = Record.unpack(blob)
        except FormatError as exc:
            raise StoreError(f"record {key!r}: {exc}") from None
        write_record(conn, key, rec, expires)
    conn.execute("DROP TABLE records")


def read_record(
    conn: sqlite3.Connection, key: str, now_ms: int, sealer: RecordSealer | None = None
) -> Record | None:
    """The record stored under an encoded key, None when missing or expired (marked for
    ``sealer`` to open at its first view)."""
    head = conn.execute(_READ_HEAD, (key,)).fetchone()
    if head is None:
        return None
    created, writes, clear, text, text_stamp, expires = head
    if expires is not None and expires < now_ms:
        return None
    rows = conn.execute(_READ_ROWS, (key,)).fetchall()
    if any(type(row[1]) is str for row in rows):  # TEXT from another program: as bytes
        rows = [(n, v.encode() if type(v) is str else v, s) for n, v, s in rows]
    rec = Record.from_rows(created, writes, clear, text, text_stamp, rows)
    if sealer is not None:
        sealer.read(key, rec)
    return rec


_LIVE = (
    "(expires IS NULL OR expires >= ?) AND (text IS NOT NULL OR EXISTS"
    " (SELECT 1 FROM properties WHERE properties.key = heads.key AND value IS NOT NULL))"
)


def live_keys(
    conn: sqlite3.Connection, low: str, inclusive: bool, high: str | None, now_ms: int, limit: int
) -> list[str]:
    """Up to ``limit`` encoded keys of records holding data, in key order, from ``low``
    on (or after it) and below ``high``: one range of the heads' primary key."""
    above = ">=" if inclusive else ">"
    if high is None:
        sql = f"SELECT key FROM heads WHERE key {above} ? AND {_LIVE} ORDER BY key LIMIT ?"
        args: tuple[Any, ...] = (low, now_ms, limit)
    else:
        sql = (
            f"SELECT key FROM heads WHERE key {above} ? AND key < ? AND {_LIVE}"
            " ORDER BY key LIMIT ?"
        )
        args = (low, high, now_ms, limit)
    return [row[0] for row in conn.execute(sql, args)]


def _write_head(
    conn: sqlite3.Connection,
    key: str,
    rec: Record,
    expires: int | None,
    sealer: RecordSealer | None,
) -> None:
    text = rec.text
    if text is not None and sealer is not None:
        text = sealer.seal_text(key, text, rec.sealed is not None)
    conn.execute(
        _WRITE_HEAD, (key, rec.created, rec.writes, rec.clear, text, rec.text_stamp, expires)
    )


def write_record(
    conn: sqlite3.Connection,
    key: str,
    rec: Record,
    expires: int | None,
    sealer: RecordSealer | None = None,
) -> None:
    """Store a whole record under an encoded key, replacing every row it had (values
    sealed by ``sealer``)."""
    conn.execute("DELETE FROM properties WHERE key = ?", (key,))
    _write_head(conn, key, rec, expires, sealer)
    stamps = rec.stamps
    values = rec.values.items()
    if sealer is not None:
        values = {name: sealer.seal(key, name, value) for name, value in values}.items()
    rows: Iterable[tuple[str, str, bytes | None, int]] = [
        *((key, name, value, stamps[name]) for name, value in values),
        *((key, name, None, stamp) for name, stamp in rec.tombs.items()),
    ]
    conn.executemany(_WRITE_ROW, rows)


def write_change(
    conn: sqlite3.Connection,
    key: str,
    rec: Record,
    change: Change,
    expires: int | None,
    sealer: RecordSealer | None = None,
) -> None:
    """Store what merging ``change`` (no ``replace``) changed in ``rec``: its head and
    the rows of the entries the change won (every row, on the record's first write),
    values sealed by ``sealer``."""
    if rec.writes == 1:
        write_record(conn, key, rec, expires, sealer)
        return
    _write_head(conn, key, rec, expires, sealer)
    stamp = change.stamp
    stamps, values = rec.stamps, rec.values
    if sealer is None:
        rows: list[tuple[str, str, bytes | None, int]] = [
            (key, name, values[name], stamp) for name in change.sets if stamps.get(name) == stamp
        ]
    else:
        seal = sealer.seal
        rows = [
            (key, name, seal(key, name, values[name]), stamp)
            for name in change.sets
            if stamps.get(name) == stamp
        ]
    if change.removes:
        tombs = rec.tombs
        rows += [(key, name, None, stamp) for name in change.removes if tombs.get(name) == stamp]
    if len(rows) == 1:
        conn.execute(_WRITE_ROW, rows[0])
    elif rows:
        conn.executemany(_WRITE_ROW, rows)


def delete_record(conn: sqlite3.Connection, key: str) -> None:
    """Forget a record and its rows."""
    conn.execute("DELETE FROM heads WHERE key = ?", (key,))
    conn.execute("DELETE FROM properties WHERE key = ?", (key,))
