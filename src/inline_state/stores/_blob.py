"""Store operations over a table of packed records, shared by memory and SQLite.

A backend supplies a synchronous ``BlobTable`` (a dict, or one SQLite transaction);
the functions here hold the rules: deletion stamps, stamped merges, eTag checks, sizes.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, stamp_above
from .._errors import RecordTooLarge
from .._keys import RecordKey, UserRef
from ._base import MISSING, ApplyResult, StoredRecord
from ._record import Record, check_etag, view_blob

__all__: list[str] = []


class BlobTable(abc.ABC):
    """Synchronous access to packed records, user deletion stamps and the user index."""

    @abc.abstractmethod
    def get(self, key: RecordKey, encoded: str) -> bytes | None:
        """The packed record, or None when missing or expired."""

    @abc.abstractmethod
    def get_raw(self, encoded: str) -> bytes | None:
        """The packed record under an encoded key, expired or not, without refreshing it."""

    @abc.abstractmethod
    def put(self, key: RecordKey, encoded: str, blob: bytes) -> None:
        """Store a packed record (and refresh its expiry)."""

    @abc.abstractmethod
    def drop(self, encoded: str) -> None:
        """Forget a record."""

    @abc.abstractmethod
    def deletion_stamp(self, key: RecordKey) -> int:
        """The owner's deletion stamp, 0 for none or for conversation records."""

    @abc.abstractmethod
    def user_records(self, user: UserRef) -> list[str]:
        """Encoded keys of a user's record and their per-conversation records."""

    @abc.abstractmethod
    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        """Remember a user's deletion stamp."""


def load_records(table: BlobTable, keys: Sequence[RecordKey]) -> list[StoredRecord]:
    """Read several records."""
    out: list[StoredRecord] = []
    for key in keys:
        deleted = table.deletion_stamp(key)
        blob = table.get(key, key.encode())
        if blob is not None:
            out.append(view_blob(blob, deleted))
        else:
            out.append(StoredRecord(deleted=deleted) if deleted else MISSING)
    return out


def _save(
    table: BlobTable, key: RecordKey, encoded: str, rec: Record, now_ms: int, ttl_ms: int
) -> None:
    if rec.forgettable(now_ms, ttl_ms):
        table.drop(encoded)
    else:
        table.put(key, encoded, rec.pack())


def apply_changes(
    table: BlobTable, changes: Sequence[Change], now_ms: int, tombstone_ttl_ms: int
) -> list[ApplyResult]:
    """Apply stamped changes, each to its record; see ``Store.apply``."""
    results: list[ApplyResult] = []
    for change in changes:
        key = change.key
        if change.base < table.deletion_stamp(key):
            results.append(ApplyResult.DROPPED)
            continue
        encoded = key.encode()
        blob = table.get(key, encoded)
        rec = Record.unpack(blob) if blob is not None else Record()
        if not rec.apply(change):
            results.append(ApplyResult.STALE)
        elif rec.size() > change.max_bytes:
            results.append(ApplyResult.TOO_LARGE)
        else:
            rec.prune(now_ms, tombstone_ttl_ms)
            _save(table, key, encoded, rec, now_ms, tombstone_ttl_ms)
            results.append(ApplyResult.APPLIED)
    return results


def compare_and_set(
    table: BlobTable,
    stamp: int,
    key: RecordKey,
    data: Mapping[str, bytes] | str | None,
    etag: str | None,
    max_bytes: int,
    now_ms: int,
    tombstone_ttl_ms: int,
) -> tuple[str, int]:
    """Replace a whole record if ``etag`` allows it; see ``Store.compare_and_set``.

    ``stamp`` is a fresh stamp of the caller's clock; the write is stamped above
    everything stored on the same node. Returns the new eTag and the stamp used (for
    the caller's clock to observe).
    """
    encoded = key.encode()
    blob = table.get(key, encoded)
    rec = Record.unpack(blob) if blob is not None else Record()
    check_etag(rec.etag, etag)
    floor = max(rec.observed, table.deletion_stamp(key))
    stamp = max(stamp, stamp_above(floor, stamp % MAX_NODES))
    rec.replace(data, stamp)
    if data is not None and rec.size() > max_bytes:
        raise RecordTooLarge(key, rec.size(), max_bytes)
    _save(table, key, encoded, rec, now_ms, tombstone_ttl_ms)
    return rec.etag, stamp


def delete_user(table: BlobTable, user: UserRef, stamp: int) -> int:
    """Delete a user's records; return the deletion stamp."""
    highest = table.deletion_stamp(RecordKey("user", user.bot, user.channel, "", user.user))
    for encoded in table.user_records(user):
        blob = table.get_raw(encoded)
        if blob is not None:
            highest = max(highest, Record.unpack(blob).observed)
        table.drop(encoded)
    deleted = max(stamp, stamp_above(highest, stamp % MAX_NODES))
    table.set_deletion_stamp(user, deleted)
    return deleted
