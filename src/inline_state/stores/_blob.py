"""Store operations over a table of whole records, shared by memory and SQLite.

A backend supplies a synchronous ``RecordTable`` (a dict with a decoded cache, or one
SQLite transaction); the functions here hold the flow around the merge rules: deletion
stamps, stamped merges, size limits, eTag checks.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from .._change import Change
from .._clock import MAX_NODES, stamp_above
from .._errors import RecordTooLarge
from .._keys import RecordKey, UserRef
from ._base import MISSING, ApplyResult, DumpedRecord, StoredRecord
from ._record import Record, check_etag

__all__: list[str] = []


class RecordTable(abc.ABC):
    """Synchronous access to records, user deletion stamps and the user index."""

    @abc.abstractmethod
    def get(self, key: RecordKey) -> Record | None:
        """The record, or None when missing or expired (reading refreshes a TTL). The
        caller may change it in place and must then ``put`` it."""

    @abc.abstractmethod
    def put(self, key: RecordKey, rec: Record) -> None:
        """Store a record (and refresh its expiry)."""

    def put_change(self, key: RecordKey, rec: Record, change: Change) -> None:
        """Store a record that ``change`` (no ``replace``) was just merged into, which
        changed nothing else of it: a table of rows writes only the entries the change
        names. Default: ``put``."""
        self.put(key, rec)

    @abc.abstractmethod
    def drop(self, key: RecordKey) -> None:
        """Forget a record."""

    @abc.abstractmethod
    def deletion_stamp(self, key: RecordKey) -> int:
        """The owner's deletion stamp, 0 for none or for conversation records."""

    @abc.abstractmethod
    def user_records(self, user: UserRef) -> list[RecordKey]:
        """Keys of a user's record and their per-conversation records."""

    @abc.abstractmethod
    def set_deletion_stamp(self, user: UserRef, stamp: int) -> None:
        """Remember a user's deletion stamp."""

    def put_restored(self, key: RecordKey, rec: Record, expires_ms: int) -> None:
        """Store a record a restore merged into; ``expires_ms`` (wall ms, 0 for the
        store's own rule) is when it expires. Default: ``put``."""
        self.put(key, rec)


def load_records(table: RecordTable, keys: Sequence[RecordKey]) -> list[StoredRecord]:
    """Read several records."""
    out: list[StoredRecord] = []
    for key in keys:
        deleted = table.deletion_stamp(key)
        rec = table.get(key)
        if rec is not None:
            out.append(rec.view(deleted))
        else:
            out.append(StoredRecord(deleted=deleted) if deleted else MISSING)
    return out


def _save(table: RecordTable, key: RecordKey, rec: Record, now_ms: int, ttl_ms: int) -> None:
    if rec.forgettable(now_ms, ttl_ms):
        table.drop(key)
    else:
        table.put(key, rec)


def apply_changes(
    table: RecordTable, changes: Sequence[Change], now_ms: int, tombstone_ttl_ms: int
) -> list[ApplyResult]:
    """Apply stamped changes, each to its record; see ``Store.apply``."""
    results: list[ApplyResult] = []
    for change in changes:
        key = change.key
        if change.base < table.deletion_stamp(key):
            results.append(ApplyResult.DROPPED)
            continue
        stored = table.get(key)
        # In place, unless the change could overrun the limit: then on a copy, so a
        # refused change leaves the record as it was.
        rec = Record() if stored is None else stored.copy() if stored.may_exceed(change) else stored
        if not rec.apply(change):
            results.append(ApplyResult.STALE)
        elif rec.size() > change.max_bytes:
            results.append(ApplyResult.TOO_LARGE)
        else:
            pruned = rec.prune(now_ms, tombstone_ttl_ms)
            if change.replace or pruned or rec.forgettable(now_ms, tombstone_ttl_ms):
                _save(table, key, rec, now_ms, tombstone_ttl_ms)
            else:
                table.put_change(key, rec, change)
            results.append(ApplyResult.APPLIED)
    return results


def compare_and_set(
    table: RecordTable,
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
    stored = table.get(key)
    rec = stored.copy() if stored is not None else Record()
    check_etag(rec.etag, etag)
    floor = max(rec.observed, table.deletion_stamp(key))
    stamp = max(stamp, stamp_above(floor, stamp % MAX_NODES))
    rec.replace(data, stamp)
    if data is not None and rec.size() > max_bytes:
        raise RecordTooLarge(key, rec.size(), max_bytes)
    _save(table, key, rec, now_ms, tombstone_ttl_ms)
    return rec.etag, stamp


def delete_user(table: RecordTable, user: UserRef, stamp: int) -> int:
    """Delete a user's records; return the deletion stamp."""
    highest = table.deletion_stamp(RecordKey("user", user.bot, user.channel, "", user.user))
    for key in table.user_records(user):
        rec = table.get(key)
        if rec is not None:
            highest = max(highest, rec.observed)
        table.drop(key)
    deleted = max(stamp, stamp_above(highest, stamp % MAX_NODES))
    table.set_deletion_stamp(user, deleted)
    return deleted


def restore_records(
    table: RecordTable,
    records: Sequence[DumpedRecord],
    deletions: Sequence[tuple[UserRef, int]],
    reseal: bool,
) -> int:
    """Merge dumped records and deletion stamps; see ``Store.restore``."""
    changed = 0
    if not reseal:
        for user, stamp in deletions:
            own = RecordKey("user", user.bot, user.channel, "", user.user)
            if stamp > table.deletion_stamp(own):
                # The user's data below the stamp goes, as delete_user would take it;
                # what was written here after it stays.
                cleared = DumpedRecord(own, 0, 0, stamp, {}, {})
                for key in table.user_records(user):
                    rec = table.get(key)
                    if rec is not None and rec.merge(cleared._replace(key=key), 0):
                        if rec.live or rec.tombs:
                            table.put_restored(key, rec, 0)
                        else:
                            table.drop(key)
                        changed += 1
                table.set_deletion_stamp(user, stamp)
    for dumped in records:
        key = dumped.key
        rec = table.get(key)
        if rec is None:
            if reseal:
                continue
            rec = Record()
        new = rec.top == 0  # nothing here yet: the record takes the dumped expiry
        if rec.merge(dumped, table.deletion_stamp(key), reseal=reseal):
            table.put_restored(key, rec, dumped.expires_ms if new and not reseal else 0)
            changed += 1
    return changed
