"""``SealedStore``: any store, its values sealed at rest (see ``_seal``).

It wraps another store: values are sealed before that store sees them and opened after
it reads them, so stamps, sizes (counted on the plaintext) and the merge rules, Redis's
Lua included, work as they did. Property names, ids (in every key), stamps and sizes
stay in the clear.

Beside the data, the store keeps a record of the keys that sealed it (``KEYS_RECORD``):
opening checks it, so a missing key fails at start-up, naming it, rather than turn by
turn. Values written before encryption was turned on still read, until a rekey has
sealed every one; from then on, a plain value is refused as tampering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .._change import Change
from .._codec import SEALED_MARK, SEALED_MARKS, SEALED_TEXT
from .._errors import RecordTooLarge
from .._keys import RecordKey, UserRef, decode_key
from .._message import KINDS, Kind
from .._seal import HASH_KEY_VARIABLE, KeyRing, KeyRingError, SealError
from ._base import (
    KEYS_RECORD,
    ApplyResult,
    DumpedRecord,
    DumpPage,
    ExportPage,
    InspectedRecord,
    KeyPage,
    Store,
    StoredRecord,
    UnreadableRecord,
)

__all__ = [
    "KEYS_RECORD",
    "Rekeyed",
    "SealedStore",
    "UnreadableRecord",
    "hash_keys_of",
    "holds_records",
    "rekey",
]

logger = logging.getLogger("inline_state")

_KEY_PREFIX = "key:"
_HASH_PREFIX = "hash:"
_CLEAR_IDS = "clear-ids"  # a store whose ids and names are not hashed
_ALL_SEALED = "all-sealed"
_CHECK = b'"inline_state"'
_new = tuple.__new__  # a NamedTuple without its Python-level __new__ (every turn)
#: Plaintext bytes of recently sealed or opened values kept in the process, so that a
#: value read again as it was stored is not opened again (a value changed in the store
#: is not the one remembered, and is opened).
OPENED_CACHE_BYTES = 16 * 1024 * 1024


_RECORDS_KNOWN = 100_000
_ENTRY_BYTES = 200  # what an entry of _Known.values costs beyond its two values, roughly


class _Known:
    """What a sealed store keeps of one record between turns: its AEAD, the record's
    sealed values as last stored or read, and their plaintexts (two dicts of bytes: no
    object per value for the garbage collector to follow). A load that finds the record
    as remembered compares one dict in C and opens nothing. The dicts are replaced, never
    changed, so a turn holding ``plain`` never sees it move."""

    __slots__ = ("aead", "ids", "plain", "sealed", "stored")

    def __init__(self, aead: Any, stored: RecordKey) -> None:
        self.aead = aead
        self.stored = stored  # the key the inner store keeps the record under
        self.ids = b""  # where ids are hashed: the record's clear key, sealed (made once)
        self.sealed: dict[str, bytes] = {}
        self.plain: dict[str, bytes] = {}


class _AtRest:
    """What a sealed store hands a store that seals values itself where they leave the
    process (``seal_at_rest``: memory://'s packed records, SQLite's rows): the same
    sealed form, so dumps, copies and rekeys cannot tell the two ways apart. Sealed
    stores over one such store share it (they must hold the same keys)."""

    __slots__ = ("keys", "plain_ok")

    def __init__(self, keys: KeyRing, plain_ok: bool) -> None:
        self.keys = keys
        self.plain_ok = plain_ok  # until a rekey has sealed every value

    def seal(self, record: str, name: str, value: bytes) -> bytes:
        if value[:1] == SEALED_MARK:  # as read from rest, or dumped: no JSON starts so
            return value
        return self.keys.seal(record, name, value)

    def seal_text(self, record: str, text: str, from_rest: bool) -> str:
        # A record read from rest (or restored) and not opened since holds its text as
        # read; a bot's text may start like a sealed one, and is sealed.
        if from_rest and text.startswith(SEALED_TEXT) and self._opens(record, text):
            return text
        return self.keys.seal_text(record, text)

    def read(self, record: str, rec: Any) -> None:
        if record == _KEYS_ENCODED:  # sealed by the sealed store itself, read as stored
            return
        plain = sealed = False
        for value in rec.values.values():
            if value[:1] == SEALED_MARK:
                sealed = True
            else:
                plain = True
        text = rec.text
        if text is not None:
            if text.startswith(SEALED_TEXT):
                sealed = True
            else:
                plain = True
        if plain and not self.plain_ok:
            rec.sealed = (_REFUSED, record)
        elif sealed:
            rec.sealed = (self, record)

    def restored(self, record: str, rec: Any) -> None:
        # Values as dumped are sealed (no JSON starts with their mark); the rest was
        # written here (SealedStore.restore refused plain values where every value is
        # sealed). A text is the dump's when it opens (a restore checked that a sealed
        # one does): a bot's text may start like a sealed one.
        if record == _KEYS_ENCODED or rec.sealed is not None:
            return
        text = rec.text
        if any(v[:1] == SEALED_MARK for v in rec.values.values()) or (
            text is not None and text.startswith(SEALED_TEXT) and self._opens(record, text)
        ):
            rec.sealed = (self, record)

    def _opens(self, record: str, text: str) -> bool:
        try:
            self.keys.open_text(record, text)
        except SealError:
            return False
        return True

    def open(self, record: str, rec: Any) -> None:
        keys = self.keys
        try:
            opened = {
                name: keys.open(record, name, value)
                for name, value in rec.values.items()
                if value[:1] == SEALED_MARK
            }
            text = rec.text
            if text is not None and text.startswith(SEALED_TEXT):
                text = keys.open_text(record, text)
        except SealError as exc:
            raise _unreadable(record, str(exc)) from None
        rec.values.update(opened)  # sizes stay: a sealed value counts as its plaintext
        rec.text, rec.sealed = text, None


class _Refused:
    """The mark of a record read holding a plain value where every value is sealed."""

    def open(self, record: str, rec: Any) -> None:
        raise _unreadable(record, "a plain value where every value is sealed")


_REFUSED: Any = _Refused()
_KEYS_ENCODED = KEYS_RECORD.encode()


def _unreadable(record: str, why: str) -> UnreadableRecord:
    return UnreadableRecord(f"a value of the {decode_key(record).kind} record does not open: {why}")


class SealedStore(Store):
    """Another store, every value sealed with a ``KeyRing`` before it is stored.

    ``owns_inner``: open and close the inner store with this one (else only lease its
    clock, as an engine does for a store it was given).
    """

    def __init__(self, inner: Store, keys: KeyRing, *, owns_inner: bool = True) -> None:
        super().__init__(clock=inner.clock)
        self.ttl_ms = inner.ttl_ms
        self.tombstone_ttl_ms = inner.tombstone_ttl_ms
        self.inner = inner
        self.keys = keys
        self._owns_inner = owns_inner
        self._leased = False
        self._plain_ok = True  # until a rekey has sealed every value
        # Per record: its AEAD under the sealing key, and for each property the sealed
        # value as last stored or read, with its plaintext.
        self._records: dict[RecordKey, _Known] = {}
        self._known_bytes = 0
        self._hashing = keys.hash_key_id is not None
        self._at_rest = False  # the inner store seals at rest itself (see open)
        self._sealer: _AtRest | None = None

    @property
    def cache_stats(self) -> Any:
        """The inner store's cache counters (for the metrics)."""
        return getattr(self.inner, "cache_stats", None)

    async def open(self) -> None:
        """Open (or lease the clock of) the inner store, then check its keys record:
        every key that sealed values must be in the key ring (KeyRingError names a
        missing one), and the sealing key is recorded."""
        if self._owns_inner:
            await self.inner.open()
        else:
            self._leased = await self.inner.ensure_clock()
        try:
            sealer = getattr(self.inner, "sealer", None)
            if isinstance(sealer, _AtRest) and not set(sealer.keys.ids) <= set(self.keys.ids):
                raise KeyRingError(
                    "another SealedStore over this store seals it with keys this key ring"
                    f" lacks ({', '.join(sealer.keys.ids)}): give this one every key of that"
                    " one (a new key first, to rotate)"
                )
            await self._check_keys()
        except BaseException:
            await self.close()
            raise
        seal_at_rest = getattr(self.inner, "seal_at_rest", None)
        if seal_at_rest is not None and not self._hashing:
            # The store seals where values leave the process and opens where they come
            # back: a turn on a record it holds decoded seals only what it writes. It
            # goes on doing so after this closes (what it holds stays sealed at rest).
            if not isinstance(sealer, _AtRest):
                sealer = _AtRest(self.keys, self._plain_ok)
                seal_at_rest(sealer)
            else:  # shared: this ring (it holds every key of the other), and the refusal
                sealer.keys = self.keys
                sealer.plain_ok = sealer.plain_ok and self._plain_ok
            self._sealer = sealer
            self._at_rest = True

    async def close(self) -> None:
        """Close the inner store (or end its clock's lease)."""
        if self._owns_inner:
            await self.inner.close()
        elif self._leased:
            self._leased = False
            await self.inner.release_clock()

    async def _check_keys(self) -> None:
        (record,) = await self.inner.load([KEYS_RECORD])
        encoded = KEYS_RECORD.encode()
        for name, value in record.props.items():
            if not name.startswith(_KEY_PREFIX):
                continue
            ident = name[len(_KEY_PREFIX) :]
            if ident not in self.keys.ids:
                raise KeyRingError(
                    f"the store holds values sealed under key {ident!r}, which"
                    f" {self.keys.source} does not hold: add it after the sealing key, and"
                    " keep it until `python -m inline_state rekey` has re-sealed the store"
                )
            try:
                self.keys.open(encoded, name, value)
            except SealError as exc:
                raise KeyRingError(
                    f"key {ident!r} does not open the store's check: {exc}"
                ) from None
        self._plain_ok = _ALL_SEALED not in record.props
        sets: dict[str, bytes] = {}
        wanted = self.keys.hash_key_id
        hashed = self._check_hashing(record.props)
        if wanted is not None and not hashed:
            if record.props or await holds_records(self.inner):
                raise KeyRingError(
                    "ids and names can only be hashed in a new store: this one already holds"
                    " records with them in the clear (unset the hash key, or start a new store)"
                )
            self._plain_ok = False
            sets[_HASH_PREFIX + wanted] = self.keys.seal(encoded, _HASH_PREFIX + wanted, _CHECK)
            sets[_ALL_SEALED] = self.keys.seal(encoded, _ALL_SEALED, b"true")
        if wanted is None and _CLEAR_IDS not in record.props:
            sets[_CLEAR_IDS] = self.keys.seal(encoded, _CLEAR_IDS, b"true")
        current = _KEY_PREFIX + self.keys.current_id
        if current not in record.props:
            sets[current] = self.keys.seal(encoded, current, _CHECK)
        if sets:
            await self.inner.apply([Change(KEYS_RECORD, sets, stamp=self.clock.stamp())])
            # Read it again: another process starting on the new store at the same time
            # with another choice shows here, before either writes a record.
            (record,) = await self.inner.load([KEYS_RECORD])
            self._check_hashing(record.props)

    def _check_hashing(self, entries: Mapping[str, bytes]) -> set[str]:
        """The hash key ids the keys record names; KeyRingError unless they agree with
        this key ring's and with each other."""
        hashed = _hash_key_ids(entries)
        wanted = self.keys.hash_key_id
        if len(hashed) > 1 or (hashed and _CLEAR_IDS in entries):
            raise KeyRingError(
                "the store was started both with ids hashed (under hash keys"
                f" {', '.join(map(repr, sorted(hashed)))}) and"
                + (" with them in the clear" if _CLEAR_IDS in entries else " otherwise")
                + ": two first starts raced, or a copy joined two stores; start from one"
            )
        if hashed and wanted not in hashed:
            raise KeyRingError(
                f"the store's ids and names are hashed under hash key {sorted(hashed)[0]!r},"
                + (
                    f" not under {wanted!r}"
                    if wanted
                    else f" and none is configured: set {HASH_KEY_VARIABLE} to it"
                )
            )
        if wanted is not None and _CLEAR_IDS in entries:
            raise KeyRingError(
                "ids and names can only be hashed in a new store: this one keeps them in the"
                " clear (unset the hash key, or start a new store)"
            )
        return hashed

    async def finish_rekey(self) -> list[str]:
        """After a rekey left nothing under an old key and no plain value: forget every
        key id but the sealing one, and refuse plain values from then on. Returns the
        ids forgotten."""
        (record,) = await self.inner.load([KEYS_RECORD])
        current = _KEY_PREFIX + self.keys.current_id
        removes = frozenset(n for n in record.props if n.startswith(_KEY_PREFIX) and n != current)
        sets: dict[str, bytes] = {}
        if _ALL_SEALED not in record.props:
            sets[_ALL_SEALED] = self.keys.seal(KEYS_RECORD.encode(), _ALL_SEALED, b"true")
        if removes or sets:
            await self.inner.apply([Change(KEYS_RECORD, sets, removes, stamp=self.clock.stamp())])
        self._plain_ok = False
        if self._sealer is not None:
            self._sealer.plain_ok = False
        self._records.clear()  # it may remember plain values as read
        self._known_bytes = 0
        return sorted(name[len(_KEY_PREFIX) :] for name in removes)

    # -- sealing and opening -----------------------------------------------------------------

    def _known(self, key: RecordKey) -> _Known:
        known = self._records.get(key)
        if known is None:
            if self._known_bytes > OPENED_CACHE_BYTES or len(self._records) > _RECORDS_KNOWN:
                self._records.clear()
                self._known_bytes = 0
            stored = self._stored_key(key)
            aead = self.keys.record_aead(stored.encode())
            known = self._records[key] = _Known(aead, stored)
        return known

    def _stored_key(self, key: RecordKey) -> RecordKey:
        """The key the inner store keeps a record under: its ids hashed, if they are."""
        if not self._hashing:
            return key
        keys = self.keys
        return _new(
            RecordKey,
            (
                key.kind,
                key.bot,
                key.channel,
                keys.hash_conversation(key.conversation) if key.conversation else "",
                keys.hash_user(key.user) if key.user else "",
            ),
        )

    def _open_props(
        self, known: _Known | None, stored: str, props: Mapping[str, bytes]
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        """The plaintexts of a record's stored values, by name, and the name each stored
        field holds. SealError when one does not open."""
        opened: dict[str, bytes] = {}
        names: dict[str, str] = {}
        keys = self.keys
        if self._hashing:
            ids_field = keys.ids_field
            for field, value in props.items():
                if field != ids_field:
                    name, opened[name] = keys.open_named(stored, field, value)
                    names[field] = name
            return opened, names
        was_sealed = known.sealed if known is not None else {}
        was_plain = known.plain if known is not None else {}
        for name, value in props.items():
            names[name] = name
            if was_sealed.get(name) == value:
                opened[name] = was_plain[name]
            elif value[:1] == SEALED_MARK:
                opened[name] = plain = keys.open(stored, name, value)
                self._known_bytes += len(value) + len(plain) + _ENTRY_BYTES
            elif self._plain_ok:
                opened[name] = value
            else:
                raise SealError("a plain value where every value is sealed")
        return opened, names

    def _opened(
        self, key: RecordKey, record: StoredRecord, *, stored: RecordKey | None = None
    ) -> StoredRecord:
        """A record read from the inner store, opened (``key`` the clear key, ``stored``
        the inner store's when it is not remembered)."""
        props, text = record.props, record.text
        if not props and text is None:
            return record
        known = self._known(key) if stored is None else None
        encoded = (known.stored if known is not None else stored or key).encode()
        try:
            if props:
                opened, _ = self._open_props(known, encoded, props)
                if known is not None:
                    known.sealed, known.plain = dict(props), opened
                props = opened
            elif known is not None:  # a string record now: nothing of what was remembered
                known.sealed, known.plain = {}, {}
            if text is not None:
                if text.startswith(SEALED_TEXT):
                    text = self.keys.open_text(encoded, text)
                elif not self._plain_ok:
                    raise SealError("a plain string where every value is sealed")
        except SealError as exc:
            raise UnreadableRecord(
                f"a value of the {key.kind} record does not open: {exc}"
            ) from None
        if not props and text is None:  # only its sealed ids: no data
            return _new(StoredRecord, (props, None, "", *record[3:]))
        return _new(StoredRecord, (props, text, *record[2:]))

    def _clear_key(self, stored: RecordKey, record: StoredRecord) -> RecordKey:
        """Where ids are hashed: the clear key a record read by its stored key holds
        beside its values. SealError when there is none, or it does not open, or it does
        not hash to the stored key."""
        encoded = stored.encode()
        if record.text is not None:
            clear = self.keys.open_text_with_ids(encoded, record.text)[1]
        else:
            value = record.props.get(self.keys.ids_field)
            if value is None:
                raise SealError("the record holds no sealed ids")
            clear = self.keys.open_ids(encoded, value)
        try:
            key = decode_key(clear or "")
        except (ValueError, KeyError, IndexError):
            raise SealError("the record's sealed ids are not a key") from None
        if self._stored_key(key) != stored:
            raise SealError("the record's sealed ids are another record's")
        return key

    # -- the store interface -------------------------------------------------------------------

    async def allocate_node_id(self) -> int:
        """The inner store's."""
        return await self.inner.allocate_node_id()

    async def renew_node_id(self, node_id: int) -> bool:
        """The inner store's."""
        return await self.inner.renew_node_id(node_id)

    async def release_node_id(self, node_id: int) -> None:
        """The inner store's."""
        await self.inner.release_node_id(node_id)

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """The inner store's records, opened (UnreadableRecord when one does not)."""
        if self._at_rest:
            return await self.inner.load(keys)
        known = self._records
        if self._hashing:
            records = await self.inner.load([(known.get(k) or self._known(k)).stored for k in keys])
        else:
            records = await self.inner.load(keys)
        out: list[StoredRecord] = []
        for key, record in zip(keys, records, strict=True):
            props = record.props
            state = known.get(key)
            if not props and record.text is None:
                if state is not None and state.sealed:  # gone (deleted, expired)
                    state.sealed, state.plain = {}, {}
                out.append(record)
                continue
            # The common case (every turn): the record as last sealed or read here.
            if state is not None and state.sealed == props and record.text is None:
                plain = state.plain
                # (Fields by index: a starred slice builds a list first.)
                etag = record[2] if plain else ""  # (a record holding only its sealed ids)
                out.append(_new(StoredRecord, (plain, None, etag, record[3], record[4], record[5])))
            else:
                out.append(self._opened(key, record))
        return out

    async def apply(self, changes: Sequence[Change]) -> list[Any]:
        """The changes, sealed, applied by the inner store."""
        if self._at_rest:
            return await self.inner.apply(changes)
        if self._hashing:
            pairs = [self._hashed_change(change) for change in changes]
            results = await self.inner.apply([hashed for hashed, _ in pairs])
            # Then the ids of each record a change was applied to and that lacked them:
            # on their own, so that a change refused or stale writes nothing.
            applied = ApplyResult.APPLIED
            ids = [i for (_, i), r in zip(pairs, results, strict=True) if i and r is applied]
            if ids:
                await self.inner.apply(ids)
            return results
        seal, records = self.keys.seal_values, self._records
        sealed_changes: list[Change] = []
        for change in changes:
            key, sets, removes = change.key, change.sets, change.removes
            known = records.get(key) or self._known(key)
            # What the record holds once this applies, if nothing else wrote to it: the
            # next load then finds it as remembered.
            if sets:
                sealed = seal(known.aead, sets)
                self._known_bytes += 2 * sum(map(len, sets.values())) + _ENTRY_BYTES * len(sets)
                change = _new(
                    Change, (key, sealed, removes, change[3], change[4], change[5], change[6])
                )
                if change.replace:
                    known.sealed, known.plain = sealed, dict(sets)
                else:
                    known.sealed = {**known.sealed, **sealed}
                    known.plain = {**known.plain, **sets}
            elif change.replace:
                known.sealed, known.plain = {}, {}
            if removes:
                known.sealed = {n: v for n, v in known.sealed.items() if n not in removes}
                known.plain = {n: v for n, v in known.plain.items() if n not in removes}
            sealed_changes.append(change)
        return await self.inner.apply(sealed_changes)

    def _hashed_change(self, change: Change) -> tuple[Change, Change | None]:
        """A change as the inner store takes it where ids and names are hashed (under the
        stored key, names hashed, values sealed with their names), and the change that
        writes the record's sealed ids at the same stamp once it applied, unless it was
        read (or written) holding them. A change of their own, so that a change whose
        values are all stale or too large writes nothing, as on any store. A turn reads its records before it
        writes, so only a clear by another process between the two leaves values
        without ids (until the next write after a read); ids are never removed (a
        record holding only them reads as missing), and written only with a value."""
        keys = self.keys
        known = self._records.get(change.key) or self._known(change.key)
        sets, removes = change.sets, change.removes
        sealed: dict[str, bytes] = {}
        ids_change: Change | None = None
        if sets:
            sealed = keys.seal_named(known.aead, sets)
            if change.replace or keys.ids_field not in known.sealed:
                ids = known.ids = known.ids or keys.seal_ids(known.aead, change.key.encode())
                ids_change = Change(
                    known.stored,
                    {keys.ids_field: ids},
                    stamp=change.stamp,
                    base=change.base,
                    max_bytes=change.max_bytes,
                )
            self._known_bytes += 2 * sum(map(len, sealed.values())) + _ENTRY_BYTES * len(sealed)
        removed = frozenset(map(keys.hash_name, removes)) if removes else removes
        written = sealed if ids_change is None else {**ids_change.sets, **sealed}
        if change.replace:
            known.sealed, known.plain = written, dict(sets)
        else:
            known.sealed = {**known.sealed, **written}
            known.plain = {**known.plain, **sets}
        if removes:
            known.plain = {n: v for n, v in known.plain.items() if n not in removes}
            known.sealed = {n: v for n, v in known.sealed.items() if n not in removed}
        return _new(Change, (known.stored, sealed, removed, *change[3:])), ids_change

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """The whole-record write, sealed; a string's size is checked on its plaintext."""
        if self._at_rest:
            return await self.inner.compare_and_set(key, data, etag, max_bytes=max_bytes)
        stored = self._stored_key(key)
        encoded = stored.encode()
        keys = self.keys
        if isinstance(data, str):
            size = len(data.encode("utf-8", "surrogatepass")) + 2
            if size > max_bytes:
                raise RecordTooLarge(key, size, max_bytes)
            clear = key.encode() if self._hashing else None
            sealed: Mapping[str, bytes] | str | None = keys.seal_text(encoded, data, clear)
            # The sealed text's own limit (its plaintext's was checked above).
            max_bytes = max(max_bytes, 2 * (size + len(clear or "") * 4) + 128)
        elif data is not None and self._hashing:
            aead = keys.record_aead(encoded)
            sealed = keys.seal_named(aead, data)
            if sealed:
                sealed[keys.ids_field] = keys.seal_ids(aead, key.encode())
        elif data is not None:
            sealed = {name: keys.seal(encoded, name, value) for name, value in data.items()}
        else:
            sealed = None
        if not etag and self._hashing:
            # A record holding only its sealed ids reads as missing here, and may not in the
            # inner store: expect what it holds then (its write still compares the eTag).
            (held,) = await self.inner.load([stored])
            if held.text is None and set(held.props) == {keys.ids_field}:
                etag = held.etag or etag
        self._records.pop(key, None)  # what it remembers of the record may not hold now
        return await self.inner.compare_and_set(stored, sealed, etag, max_bytes=max_bytes)

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """The inner store's: it needs no key, so a user whose records do not open can
        still be deleted."""
        if self._hashing:
            user = UserRef(user.bot, user.channel, self.keys.hash_user(user.user))
        return await self.inner.delete_user(user, stamp)

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """The inner store's page, opened; a record that does not open is left out (and
        logged)."""
        page = await self.inner.export(bot, channel, cursor=cursor, limit=limit)
        if self._at_rest:
            return page
        records: list[tuple[RecordKey, StoredRecord]] = []
        for stored, rec in page.records:
            try:
                key = self._clear_key(stored, rec) if self._hashing else stored
                opened = self._opened(key, rec, stored=stored)
            except SealError as exc:
                logger.warning("inline_state: export skipped a record: %s", exc)
                continue
            except UnreadableRecord as exc:  # one such record must not stop the export
                logger.warning("inline_state: export skipped a record: %s", exc)
                continue
            if opened.props or opened.text is not None:
                records.append((key, opened))
        return ExportPage(records, page.cursor)

    async def channels(self, bot: str) -> list[str | None]:
        """The inner store's. Where ids are hashed, a channel whose records all hold only
        their sealed ids (every value removed) is left out, which takes a listing of it."""
        found = await self.inner.channels(bot)
        if not self._hashing:
            return found
        return [channel for channel in found if await self._holds_data(bot, channel)]

    async def _holds_data(self, bot: str, channel: str | None) -> bool:
        for kind in KINDS:
            cursor: str | None = None
            while True:
                page = await self.list_keys(bot, channel, kind, cursor=cursor, limit=200)
                if page.keys:
                    return True
                cursor = page.cursor
                if cursor is None:
                    break
        return False

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
        """The inner store's. Where ids are hashed, a prefix finds the records whose
        first id (the user's, or the conversation's for conversation records) is exactly
        it, and each listed record is read for its clear ids."""
        if not self._hashing:
            return await self.inner.list_keys(
                bot, channel, kind, prefix=prefix, cursor=cursor, limit=limit
            )
        if prefix:
            hashing = self.keys.hash_conversation if kind == "conversation" else self.keys.hash_user
            prefix = hashing(prefix)
        page = await self.inner.list_keys(
            bot, channel, kind, prefix=prefix, cursor=cursor, limit=limit
        )
        found: list[RecordKey] = []
        for stored in page.keys:
            record = (await self.inner.inspect(stored)).record  # (a load renews expiry)
            if record.text is None and len(record.props) <= 1:
                continue  # gone since, or holding only its sealed ids
            try:
                found.append(self._clear_key(stored, record))
            except SealError as exc:
                logger.warning("inline_state: a listing skipped a record: %s", exc)
        return KeyPage(found, page.cursor)

    async def inspect(self, key: RecordKey) -> InspectedRecord:
        """The inner store's, opened."""
        if self._at_rest:
            return await self.inner.inspect(key)
        stored = self._stored_key(key)
        inspected = await self.inner.inspect(stored)
        record = inspected.record
        if not self._hashing or not record.props:
            return InspectedRecord(self._opened(key, record, stored=stored), inspected.stamps)
        try:
            opened, names = self._open_props(None, stored.encode(), record.props)
        except SealError as exc:
            raise UnreadableRecord(
                f"a value of the {key.kind} record does not open: {exc}"
            ) from None
        stamps = {names[f]: stamp for f, stamp in inspected.stamps.items() if f in names}
        etag = record.etag if opened else ""
        return InspectedRecord(_new(StoredRecord, (opened, None, etag, *record[3:])), stamps)

    async def dump(self, *, cursor: str | None = None, limit: int = 100) -> DumpPage:
        """The inner store's, values as stored (sealed): a copy needs no key."""
        return await self.inner.dump(cursor=cursor, limit=limit)

    async def restore(
        self,
        records: Sequence[DumpedRecord],
        deletions: Sequence[tuple[UserRef, int]] = (),
        *,
        reseal: bool = False,
    ) -> int:
        """The inner store's: values as dumped. Where every value is sealed, a plain
        one is refused (SealError), as a rekey refuses it."""
        plain_ok = self._plain_values_ok()
        for dumped in records:
            text = dumped.text
            if not plain_ok and (
                any(v[:1] not in SEALED_MARKS for _, v in dumped.values.values())
                or (text is not None and not text.startswith(SEALED_TEXT))
            ):
                raise SealError(
                    f"the {dumped.key.kind} record to restore holds a plain value, where"
                    " every value is sealed"
                )
            if text is not None and text.startswith(SEALED_TEXT) and self._sealer is not None:
                self.keys.open_text(dumped.key.encode(), text)  # SealError: it does not open
        return await self.inner.restore(records, deletions, reseal=reseal)

    # -- rekey ---------------------------------------------------------------------------------

    def _plain_values_ok(self) -> bool:
        """Whether a plain value may still be read (no rekey has sealed every one): the
        shared sealer's answer, where the store seals at rest for several sealed stores."""
        return self._sealer.plain_ok if self._sealer is not None else self._plain_ok

    def resealed(self, dumped: DumpedRecord, counts: dict[str, int]) -> DumpedRecord | None:
        """The record with every value not sealed under the sealing key sealed under
        it (None when there is none); counts what it found, per key id (``"plain"``
        for unsealed values). SealError for a value that does not open."""
        keys, current = self.keys, self.keys.current_id
        encoded = dumped.key.encode()
        values: dict[str, tuple[int, bytes]] = {}
        changed = False
        for name, (stamp, value) in dumped.values.items():
            by = keys.sealed_by(value) or "plain"
            counts[by] = counts.get(by, 0) + 1
            if by != current:
                if by == "plain" and not self._plain_values_ok():
                    raise SealError("a plain value where every value is sealed")
                value, changed = keys.reseal(encoded, name, value), True
            values[name] = (stamp, value)
        text = dumped.text
        if text is not None:
            by = keys.text_sealed_by(text) or "plain"
            counts[by] = counts.get(by, 0) + 1
            if by != current:
                if by == "plain" and not self._plain_values_ok():
                    raise SealError("a plain string where every value is sealed")
                text, changed = keys.reseal_text(encoded, text), True
        return dumped._replace(values=values, text=text) if changed else None


async def holds_records(store: Store) -> bool:
    """Whether a store holds any record but its keys record, or a deletion stamp."""
    cursor: str | None = None
    while True:  # a page may hold only the keys record, or nothing yet a cursor
        page = await store.dump(cursor=cursor, limit=10)
        if any(dumped.key != KEYS_RECORD for dumped in page.records) or page.deletions:
            return True
        cursor = page.cursor
        if cursor is None:
            return False


async def hash_keys_of(store: Store) -> frozenset[str]:
    """The ids of the hash keys a store's ids and names are hashed under (read as
    stored: no key needed); empty for one keeping them in the clear."""
    (record,) = await store.load([KEYS_RECORD])
    return frozenset(_hash_key_ids(record.props))


def _hash_key_ids(entries: Mapping[str, bytes]) -> set[str]:
    """The hash key ids a keys record's entries name."""
    return {n[len(_HASH_PREFIX) :] for n in entries if n.startswith(_HASH_PREFIX)}


class Rekeyed(NamedTuple):
    """What a rekey found: values per key id on its first pass (``"plain"`` for
    unsealed ones), values still not under the sealing key after its last, the records
    that did not open (encoded keys, the first 100) and how many, and whether it is
    done: nothing left under an old key, which the store then forgets."""

    found: dict[str, int]
    left: dict[str, int]
    unreadable: list[str]
    unreadable_count: int
    done: bool


async def rekey(
    store: SealedStore,
    *,
    limit: int = 200,
    progress: Callable[[int, int], None] | None = None,
    passes: int = 3,
) -> Rekeyed:
    """Re-seal every value of the store under the key ring's sealing key, in place,
    keeping stamps, eTags and expiries; then forget the keys nothing is sealed under any
    more. ``progress(records seen, records re-sealed)`` is called after each page.

    A pass walks the whole store; passes go on until one finds nothing to re-seal (at
    most ``passes``), which shows no value is left under an old key (unless a process
    still sealing with one writes meanwhile). A record that does not open is skipped and
    reported; it keeps the rekey from being done."""
    first: dict[str, int] | None = None
    counts: dict[str, int] = {}
    unreadable: list[str] = []
    seen = resealed_total = 0
    for _ in range(passes):
        counts = {}
        unreadable_now: list[str] = []
        resealed_now = 0
        cursor: str | None = None
        while True:
            page = await store.inner.dump(cursor=cursor, limit=limit)
            batch = []
            for dumped in page.records:
                if dumped.key == KEYS_RECORD:
                    continue
                try:
                    resealed = store.resealed(dumped, counts)
                except SealError:
                    unreadable_now.append(dumped.key.encode())
                    continue
                if resealed is not None:
                    batch.append(resealed)
            seen += len(page.records)
            if batch:
                resealed_now += len(batch)
                resealed_total += await store.inner.restore(batch, reseal=True)
            if progress is not None:
                progress(seen, resealed_total)
            cursor = page.cursor
            if cursor is None:
                break
        unreadable = unreadable_now
        if first is None:
            first = dict(counts)
        if not resealed_now:
            break
    left = {i: n for i, n in counts.items() if i != store.keys.current_id and n}
    done = not left and not unreadable
    if done:
        await store.finish_rekey()
    return Rekeyed(first or {}, left, unreadable[:100], len(unreadable), done)
