"""One record packed into one msgpack bytes object, and the stamped merge rules.

Backends that store a record as a blob (memory, SQLite) share this; Redis keeps the
same fields in a hash and the same rules in Lua.

Packed layout (format 2):
    [2, created, writes, clear, [name, value, stamp - created, ...], [name, stamp - created, ...]]
    with ``text, text_stamp`` appended when the record holds a string.
Stamps are kept relative to the creation stamp: a record's stamps are close together, so
they take 1-5 bytes instead of 9, which keeps a small record in a 64-byte allocation.
Format 1, ``[1, created, writes, clear, text, text_stamp, [name, value, stamp, ...],
[name, stamp, ...]]``, is still read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from .._change import Change
from .._clock import stamp_ms
from .._codec import bag_size
from .._errors import PreconditionFailed
from ._base import StoredRecord

FORMAT = 2

__all__: list[str] = []


class FormatError(ValueError):
    """A stored record has an unknown format version."""


class Record:
    """A mutable, unpacked record. Entries are (value, stamp); tombstones are stamps."""

    __slots__ = ("clear", "created", "props", "text", "text_stamp", "tombs", "writes")

    def __init__(self) -> None:
        self.created = 0
        self.writes = 0
        self.clear = 0
        self.text: str | None = None
        self.text_stamp = 0
        self.props: dict[str, tuple[bytes, int]] = {}
        self.tombs: dict[str, int] = {}

    @classmethod
    def unpack(cls, blob: bytes) -> Record:
        """Decode a packed record."""
        rec = cls()
        rec.created, rec.writes, rec.clear, rec.text, rec.text_stamp, flat, tombs = _unpack(blob)
        rec.props = {flat[i]: (flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)}
        rec.tombs = {tombs[i]: tombs[i + 1] for i in range(0, len(tombs), 2)}
        return rec

    def pack(self) -> bytes:
        """Encode into one bytes object."""
        created = self.created
        flat: list[Any] = []
        for name, (value, stamp) in self.props.items():
            flat += (name, value, stamp - created)
        tombs: list[Any] = []
        for name, stamp in self.tombs.items():
            tombs += (name, stamp - created)
        fields: list[Any] = [FORMAT, created, self.writes, self.clear, flat, tombs]
        if self.text is not None:
            fields += (self.text, self.text_stamp)
        packed: bytes = msgpack.packb(fields)
        return packed

    @property
    def live(self) -> bool:
        """True when the record holds data (it is missing otherwise)."""
        return bool(self.props) or self.text is not None

    @property
    def etag(self) -> str:
        """Creation stamp and write count: a recreated record never reuses an eTag."""
        return f"{self.created:x}.{self.writes:x}" if self.live else ""

    @property
    def observed(self) -> int:
        """The highest stamp anywhere in the record."""
        top = max(self.clear, self.text_stamp)
        for _, stamp in self.props.values():
            if stamp > top:
                top = stamp
        for stamp in self.tombs.values():
            if stamp > top:
                top = stamp
        return top

    def modified_stamp(self) -> int:
        """The stamp of the newest live entry."""
        top = self.text_stamp if self.text is not None else 0
        for _, stamp in self.props.values():
            if stamp > top:
                top = stamp
        return top

    def size(self) -> int:
        """UTF-8 length of the record's data as JSON."""
        if self.text is not None:
            return len(self.text.encode("utf-8", "surrogatepass")) + 2
        return bag_size({name: value for name, (value, _) in self.props.items()})

    def _clear_below(self, stamp: int) -> None:
        self.clear = stamp
        self.props = {n: e for n, e in self.props.items() if e[1] >= stamp}
        self.tombs = {n: s for n, s in self.tombs.items() if s >= stamp}
        if self.text is not None and self.text_stamp < stamp:
            self.text = None

    def _accept(self, name: str, stamp: int) -> bool:
        if stamp < self.clear:
            return False
        entry = self.props.get(name)
        current = entry[1] if entry is not None else self.tombs.get(name, 0)
        return stamp > current

    def _bump(self, stamp: int, was_live: bool) -> None:
        # A text record gives way to any newer property, whichever arrived first.
        if self.text is not None and self.modified_stamp() != self.text_stamp:
            self.text = None
        if self.live and not was_live:
            self.created = stamp
            self.writes = 0
        self.writes += 1

    def apply(self, change: Change) -> bool:
        """Merge a stamped change; True when any entry was accepted."""
        stamp = change.stamp
        was_live = self.live
        accepted = False
        if change.replace and stamp > self.clear:
            self._clear_below(stamp)
            accepted = True
        for name, value in change.sets.items():
            if self._accept(name, stamp):
                self.props[name] = (value, stamp)
                self.tombs.pop(name, None)
                accepted = True
        for name in change.removes:
            if self._accept(name, stamp):
                self.props.pop(name, None)
                self.tombs[name] = stamp
                accepted = True
        if accepted:
            self._bump(stamp, was_live)
        return accepted

    def replace(self, data: Mapping[str, bytes] | str | None, stamp: int) -> None:
        """A whole-record write at a stamp above everything stored."""
        was_live = self.live
        self._clear_below(stamp)
        self.tombs = {}
        if isinstance(data, str):
            self.text, self.text_stamp = data, stamp
        elif data is not None:
            self.props = {name: (value, stamp) for name, value in data.items()}
        if self.live:
            self._bump(stamp, was_live)

    def prune(self, now_ms: int, tombstone_ttl_ms: int) -> None:
        """Forget tombstones older than the retention."""
        if self.tombs:
            horizon = now_ms - tombstone_ttl_ms
            self.tombs = {n: s for n, s in self.tombs.items() if stamp_ms(s) >= horizon}

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
    raise FormatError(f"stored record has format {version}, expected {FORMAT} or 1")


def view_blob(blob: bytes, deleted: int = 0) -> StoredRecord:
    """The read-only form a load returns, decoded straight from the packed record."""
    created, writes, clear, text, text_stamp, flat, tombs = _unpack(blob)
    stamps = flat[2::3]
    observed = (
        max(clear, text_stamp, *stamps, *tombs[1::2]) if stamps or tombs else max(clear, text_stamp)
    )
    if not flat and text is None:
        return StoredRecord(observed=observed, deleted=deleted)
    newest = max(stamps) if stamps else text_stamp
    return StoredRecord(
        dict(zip(flat[::3], flat[1::3], strict=True)),
        text,
        f"{created:x}.{writes:x}",
        observed,
        deleted,
        stamp_ms(max(newest, text_stamp) if text is not None else newest),
    )


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
