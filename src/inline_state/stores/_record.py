"""One record: the stamped merge rules, and its packed form (one msgpack bytes object).

Backends that keep records whole (memory, SQLite) share this; Redis keeps the same
fields in a hash and the same rules in Lua.

Packed layout (format 2):
    [2, created, writes, clear, [name, value, stamp - created, ...], [name, stamp - created, ...]]
    with ``text, text_stamp`` appended when the record holds a string.
Stamps are kept relative to the creation stamp: a record's stamps are close together, so
they take 1-5 bytes instead of 9, which keeps a small record in a 64-byte allocation.
Format 1, ``[1, created, writes, clear, text, text_stamp, [name, value, stamp, ...],
[name, stamp, ...]]``, is still read. Values are stored as canonical JSON bytes; those
written before orjson are brought to today's canonical form when read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from .._change import Change
from .._clock import EPOCH_MS, MS_SHIFT, stamp_ms
from .._codec import canonical, encode_name, member_size, value_size
from .._errors import PreconditionFailed
from .._keys import RecordKey
from ._base import MISSING, DumpedRecord, RecordSealer, StoredRecord

FORMAT = 2
# What a decoded record costs beyond its JSON, measured on CPython 3.11: the Record and
# its three dicts, and per property two dict slots, a name and a bytes object.
RECORD_OVERHEAD = 700
PROPERTY_OVERHEAD = 150
_new_stored = tuple.__new__  # builds a NamedTuple without its Python-level __new__

__all__: list[str] = []


class FormatError(ValueError):
    """A stored record has an unknown format version."""


class Record:
    """A mutable, unpacked record.

    ``values`` and ``stamps`` hold the live properties (canonical JSON bytes, and the
    stamp that wrote each); ``tombs`` the stamps of removed ones. The JSON size of the
    data and the highest stamp are kept as entries change, so neither a size check nor
    a load walks the properties.
    """

    __slots__ = (
        "_etag",
        "_members",
        "_newest",
        "clear",
        "created",
        "sealed",
        "stamps",
        "text",
        "text_stamp",
        "tombs",
        "top",
        "values",
        "writes",
    )

    def __init__(self) -> None:
        self.created = 0
        self.writes = 0
        self.clear = 0
        self.text: str | None = None
        self.text_stamp = 0
        self.values: dict[str, bytes] = {}
        self.stamps: dict[str, int] = {}
        self.tombs: dict[str, int] = {}
        self.top = 0  # the highest stamp anywhere in the record
        self._members = 0  # the sum of the properties' JSON member sizes
        self._etag: str | None = None
        self._newest = -1  # the newest live entry's stamp; -1: to be counted again
        # Read from a store that seals at rest, not opened yet: its sealer and encoded key,
        # and why it cannot open when it cannot (``RecordSealer``; opened by ``view``).
        self.sealed: tuple[RecordSealer, str] | None = None

    # -- packed form ------------------------------------------------------------------

    @classmethod
    def unpack(cls, blob: bytes) -> Record:
        """Decode a packed record."""
        rec = cls()
        rec.created, rec.writes, rec.clear, rec.text, rec.text_stamp, flat, tombs = _unpack(blob)
        values = rec.values
        stamps = rec.stamps
        members = 0
        top = max(rec.clear, rec.text_stamp)
        for i in range(0, len(flat), 3):
            name, value, stamp = flat[i], canonical(flat[i + 1]), flat[i + 2]
            values[name] = value
            stamps[name] = stamp
            members += member_size(name, value)
            if stamp > top:
                top = stamp
        rec.tombs = {tombs[i]: tombs[i + 1] for i in range(0, len(tombs), 2)}
        if rec.tombs:
            top = max(top, *rec.tombs.values())
        rec.top = top
        rec._members = members
        return rec

    @classmethod
    def from_rows(
        cls,
        created: int,
        writes: int,
        clear: int,
        text: str | None,
        text_stamp: int,
        rows: list[tuple[str, bytes | None, int]],
    ) -> Record:
        """A record from its stored fields and its ``(name, value, stamp)`` rows, where
        a value of None is a tombstone (the row layout of ``sqlite://``)."""
        rec = cls()
        rec.created, rec.writes, rec.clear = created, writes, clear
        rec.text, rec.text_stamp = text, text_stamp
        values, stamps, tombs = rec.values, rec.stamps, rec.tombs
        members = 0
        top = max(clear, text_stamp)
        for name, value, stamp in rows:
            if value is None:
                tombs[name] = stamp
            else:
                values[name] = value
                stamps[name] = stamp
                members += member_size(name, value)
            if stamp > top:
                top = stamp
        rec.top = top
        rec._members = members
        return rec

    def pack(self, sealer: RecordSealer | None = None, record: str = "") -> bytes:
        """Encode into one bytes object (values sealed by ``sealer``, for the record of
        encoded key ``record``)."""
        created = self.created
        stamps = self.stamps
        flat: list[Any] = []
        if sealer is None:
            for name, value in self.values.items():
                flat += (name, value, stamps[name] - created)
        else:
            for name, value in self.values.items():
                flat += (name, sealer.seal(record, name, value), stamps[name] - created)
        tombs: list[Any] = []
        for name, stamp in self.tombs.items():
            tombs += (name, stamp - created)
        fields: list[Any] = [FORMAT, created, self.writes, self.clear, flat, tombs]
        if self.text is not None:
            text = self.text
            if sealer is not None:
                text = sealer.seal_text(record, text, self.sealed is not None)
            fields += (text, self.text_stamp)
        packed: bytes = msgpack.packb(fields)
        return packed

    def copy(self) -> Record:
        """An independent copy (values are immutable bytes, so they are shared)."""
        rec = Record()
        rec.created, rec.writes, rec.clear = self.created, self.writes, self.clear
        rec.text, rec.text_stamp = self.text, self.text_stamp
        rec.values, rec.stamps, rec.tombs = dict(self.values), dict(self.stamps), dict(self.tombs)
        rec.top, rec._members, rec._etag = self.top, self._members, self._etag
        rec.sealed = self.sealed
        rec._newest = self._newest
        return rec

    # -- reading ------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True when the record holds data (it is missing otherwise)."""
        return bool(self.values) or self.text is not None

    @property
    def etag(self) -> str:
        """Creation stamp and write count: a recreated record never reuses an eTag."""
        etag = self._etag
        if etag is None:
            etag = self._etag = f"{self.created:x}.{self.writes:x}" if self.live else ""
        return etag

    @property
    def observed(self) -> int:
        """The highest stamp anywhere in the record."""
        return self.top

    def modified_stamp(self) -> int:
        """The stamp of the newest live entry."""
        newest = self._newest
        if newest < 0:
            newest = self._newest = max(self.stamps.values(), default=0)
        return max(newest, self.text_stamp) if self.text is not None else newest

    def size(self) -> int:
        """UTF-8 length of the record's data as JSON."""
        if self.text is not None:
            return len(self.text.encode("utf-8", "surrogatepass")) + 2
        values = self.values
        return 1 + self._members + len(values) if values else 2

    def view(self, deleted: int = 0) -> StoredRecord:
        """The read-only form a load returns: a snapshot, not a view of this record.
        UnreadableRecord when it was read sealed and does not open."""
        if self.sealed is not None:
            sealer, record = self.sealed
            sealer.open(record, self)
        values = self.values
        if self.text is None:
            if not values:
                return (
                    StoredRecord(observed=self.top, deleted=deleted)
                    if self.top or deleted
                    else MISSING
                )
            newest = self._newest
            if newest < 0:
                newest = self._newest = max(self.stamps.values())
        else:
            newest = self.modified_stamp()
        return _new_stored(
            StoredRecord,
            (
                values.copy(),
                self.text,
                self._etag or self.etag,
                self.top,
                deleted,
                (newest >> MS_SHIFT) + EPOCH_MS,
            ),
        )

    # -- the merge rules ------------------------------------------------------------------

    def _set(self, name: str, value: bytes, stamp: int) -> None:
        old = self.values.get(name)
        if old is not None:
            self._members -= member_size(name, old)
        self.values[name] = value
        self.stamps[name] = stamp
        self._members += member_size(name, value)
        if self.tombs:
            self.tombs.pop(name, None)
        if self._newest >= 0 and stamp > self._newest:
            self._newest = stamp

    def _remove(self, name: str, stamp: int) -> None:
        old = self.values.pop(name, None)
        if old is not None:
            self._members -= member_size(name, old)
            del self.stamps[name]
            self._newest = -1
        self.tombs[name] = stamp

    def _clear_below(self, stamp: int) -> None:
        self.clear = stamp
        self._etag = None
        self._newest = -1
        for name in [n for n, s in self.stamps.items() if s < stamp]:
            self._members -= member_size(name, self.values.pop(name))
            del self.stamps[name]
        self.tombs = {n: s for n, s in self.tombs.items() if s >= stamp}
        if self.text is not None and self.text_stamp < stamp:
            self.text = None

    def _accept(self, name: str, stamp: int) -> bool:
        if stamp < self.clear:
            return False
        current = self.stamps.get(name)
        if current is None:
            current = self.tombs.get(name, 0)
        return stamp > current

    def _bump(self, stamp: int, was_live: bool) -> None:
        # A text record gives way to any newer property, whichever arrived first.
        if self.text is not None and self.values and self.modified_stamp() != self.text_stamp:
            self.text = None
        if self.live and not was_live:
            self.created = stamp
            self.writes = 0
        self.writes += 1
        self._etag = None
        if stamp > self.top:
            self.top = stamp

    def apply(self, change: Change) -> bool:
        """Merge a stamped change in place; True when any entry was accepted.

        An entry at ``stamp`` is accepted when ``stamp`` is above the entry's stored stamp
        (value or tombstone) and not below the record's clear stamp (one loop per kind
        of entry: this runs on every write).
        """
        stamp = change.stamp
        values = self.values
        was_live = bool(values) or self.text is not None
        accepted = False
        if change.replace and stamp > self.clear:
            self._clear_below(stamp)
            accepted = True
        if stamp < self.clear:
            return accepted
        stamps, tombs = self.stamps, self.tombs
        members = self._members
        set_any = False
        for name, value in change.sets.items():
            current = stamps.get(name)
            if current is None:
                if stamp <= (tombs.get(name, 0) if tombs else 0):
                    continue
                if tombs:
                    tombs.pop(name, None)
                members += len(encode_name(name)) + 1 + value_size(value)
            elif stamp <= current:
                continue
            else:
                members += value_size(value) - value_size(values[name])
            values[name] = value
            stamps[name] = stamp
            set_any = True
        if change.removes:
            for name in change.removes:
                current = stamps.get(name)
                if current is None:
                    if stamp <= tombs.get(name, 0):
                        continue
                elif stamp <= current:
                    continue
                else:
                    members -= len(encode_name(name)) + 1 + value_size(values.pop(name))
                    del stamps[name]
                    self._newest = -1
                tombs[name] = stamp
                accepted = True
        self._members = members
        if set_any:
            accepted = True
            if self._newest >= 0 and stamp > self._newest:
                self._newest = stamp
        elif not accepted:
            return False
        if self.text is not None:
            self._bump(stamp, was_live)
            return True
        # _bump, inline for the common case (no text record): this runs every write.
        if not was_live and values:
            self.created = stamp
            self.writes = 0
        self.writes += 1
        self._etag = None
        if stamp > self.top:
            self.top = stamp
        return True

    def may_exceed(self, change: Change) -> bool:
        """Whether applying ``change`` could take the record past its ``max_bytes``:
        only then must it be applied to a copy first."""
        if self.text is not None:
            return True
        grows = 1 + self._members + len(self.values)  # the size now, or one more than 2
        for name, value in change.sets.items():
            grows += len(name) * 6 + 4 + len(value)  # a name's JSON is at most 6x its length
        return grows > change.max_bytes

    def replace(self, data: Mapping[str, bytes] | str | None, stamp: int) -> None:
        """A whole-record write at a stamp above everything stored."""
        was_live = self.live
        self._clear_below(stamp)
        self.tombs = {}
        self.sealed = None  # nothing read sealed is left
        if isinstance(data, str):
            self.text, self.text_stamp = data, stamp
        elif data is not None:
            for name, value in data.items():
                self._set(name, value, stamp)
        if stamp > self.top:
            self.top = stamp
        if self.live:
            self._bump(stamp, was_live)

    def prune(self, now_ms: int, tombstone_ttl_ms: int) -> bool:
        """Forget tombstones older than the retention; True when any was forgotten."""
        if self.tombs:
            horizon = now_ms - tombstone_ttl_ms
            kept = {n: s for n, s in self.tombs.items() if stamp_ms(s) >= horizon}
            if len(kept) != len(self.tombs):
                self.tombs = kept
                self.top = max(self.clear, self.text_stamp, *self.stamps.values(), *kept.values())
                return True
        return False

    def cost(self) -> int:
        """Roughly what the decoded record occupies in memory (see ``RECORD_OVERHEAD``)."""
        return RECORD_OVERHEAD + 2 * self.size() + PROPERTY_OVERHEAD * len(self.values)

    # -- dumps: moving records between stores, re-sealing in place -------------------------

    def dumped(
        self, key: RecordKey, expires_ms: int, sealer: RecordSealer | None = None
    ) -> DumpedRecord:
        """Everything of this record, for ``Store.dump`` (values sealed by ``sealer``)."""
        stamps = self.stamps
        values = {name: (stamps[name], value) for name, value in self.values.items()}
        text = self.text
        if sealer is not None:
            record = key.encode()
            values = {n: (at, sealer.seal(record, n, v)) for n, (at, v) in values.items()}
            if text is not None:
                text = sealer.seal_text(record, text, self.sealed is not None)
        return DumpedRecord(
            key,
            self.created,
            self.writes,
            self.clear,
            values,
            dict(self.tombs),
            text,
            self.text_stamp,
            expires_ms,
        )

    @classmethod
    def from_dumped(cls, dumped: DumpedRecord) -> Record:
        """A record holding exactly what was dumped."""
        rows: list[tuple[str, bytes | None, int]] = [
            (name, value, stamp) for name, (stamp, value) in dumped.values.items()
        ]
        rows += [(name, None, stamp) for name, stamp in dumped.tombs.items()]
        return cls.from_rows(
            dumped.created, dumped.writes, dumped.clear, dumped.text, dumped.text_stamp, rows
        )

    def merge(self, dumped: DumpedRecord, deleted: int, *, reseal: bool = False) -> bool:
        """Merge a dumped record in place (see ``Store.restore``); True when anything
        changed. ``deleted`` is the owner's deletion stamp here: entries below it are
        gone."""
        changed = False
        stamps = self.stamps
        text = dumped.text
        if reseal:
            # The very write, sealed anew: only its bytes change. (A copy keeps the bytes
            # here: they may be sealed under a newer key than an old backup's.)
            for name, (stamp, value) in dumped.values.items():
                if stamps.get(name) == stamp and self.values[name] != value:
                    self._members += value_size(value) - value_size(self.values[name])
                    self.values[name] = value
                    changed = True
            if (
                text is not None
                and self.text not in (None, text)
                and dumped.text_stamp == self.text_stamp
            ):
                self.text, changed = text, True
            return changed
        was_live, floor = self.live, max(dumped.clear, deleted)
        grew = False
        if dumped.clear > self.clear and dumped.clear >= deleted:
            self._clear_below(dumped.clear)
            grew = True
        for name, (stamp, value) in dumped.values.items():
            if stamp >= floor and self._accept(name, stamp):
                self._set(name, value, stamp)
                grew = True
        for name, stamp in dumped.tombs.items():
            if stamp >= floor and self._accept(name, stamp):
                self._remove(name, stamp)
                grew = True
        newer_text = dumped.text_stamp > (self.text_stamp if self.text is not None else 0)
        if text is not None and dumped.text_stamp >= max(floor, self.clear) and newer_text:
            self.text, self.text_stamp, grew = text, dumped.text_stamp, True
        if not grew:
            return changed
        self.top = max(
            self.top, self.clear, self.text_stamp, *stamps.values(), *self.tombs.values()
        )
        if self.text is not None and self.values and self.modified_stamp() != self.text_stamp:
            self.text = None
        self._etag, self._newest = None, -1
        if (not was_live and self.created == 0) or (
            dumped.created == self.created and dumped.writes > self.writes and self._is(dumped)
        ):
            # What the source holds, under the source's eTag: the target never gave that
            # eTag to anything else (its write counts only grow).
            self.created, self.writes = dumped.created, dumped.writes
        elif self.live:
            if not was_live:
                self.created = dumped.created
            self.writes = max(self.writes, dumped.writes) + 1
        return True

    def _is(self, dumped: DumpedRecord) -> bool:
        """Whether this record holds exactly the entries of ``dumped``."""
        text_stamp = self.text_stamp if self.text is not None else 0
        return (
            self.clear == dumped.clear
            and self.tombs == dumped.tombs
            and text_stamp == (dumped.text_stamp if dumped.text is not None else 0)
            and self.stamps == {name: stamp for name, (stamp, _) in dumped.values.items()}
        )

    def forgettable(self, now_ms: int, tombstone_ttl_ms: int) -> bool:
        """True when nothing in the record is worth keeping any more."""
        return not self.live and not self.tombs and stamp_ms(self.clear) < now_ms - tombstone_ttl_ms


def _unpack(blob: bytes) -> tuple[int, int, int, str | None, int, list[Any], list[Any]]:
    """created, writes, clear, text, text_stamp, flat props and flat tombstones, with
    absolute stamps, from either format."""
    fields: list[Any] = msgpack.unpackb(blob)
    version = fields[0]
    if version == FORMAT:
        _, created, writes, clear, flat, tombs, *text_fields = fields
        if created:
            for i in range(2, len(flat), 3):
                flat[i] += created
            for i in range(1, len(tombs), 2):
                tombs[i] += created
        text, text_stamp = text_fields if text_fields else (None, 0)
        return created, writes, clear, text, text_stamp, flat, tombs
    if version == 1:
        _, created, writes, clear, text, text_stamp, flat, tombs = fields
        return created, writes, clear, text, text_stamp, flat, tombs
    raise FormatError(
        f"a stored record has format {version}, this version reads {FORMAT} and 1:"
        " it was written by a newer inline_state"
    )


def view_blob(blob: bytes, deleted: int = 0) -> StoredRecord:
    """The read-only form a load returns, from a packed record."""
    return Record.unpack(blob).view(deleted)


def check_etag(current: str, sent: str | None) -> None:
    """Raise PreconditionFailed unless ``sent`` permits replacing a record at ``current``.

    ``"*"`` always permits; ``""``/None permits only creating; anything else must match.
    """
    if sent == "*":
        return
    if not sent:
        if current:
            raise PreconditionFailed("the record exists: send its eTag, or '*' to overwrite")
        return
    if sent != current:
        raise PreconditionFailed(
            f"eTag {sent!r} does not match the record's current eTag"
            if current
            else f"eTag {sent!r} names a record that does not exist"
        )
