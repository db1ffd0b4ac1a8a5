"""Sealing stored values: the key ring and the sealed form. A leaf (``cryptography`` is
the ``encryption`` extra).

A value is sealed with AES-256-GCM under one of 1,024 bucket keys of its master key
(HMAC-SHA256 of the master key over the bucket's number), the bucket picked by the
CRC-32 of the record's encoded key. The associated data is the record's encoded key
(length first) and the property name, so a value copied into another record or
another property fails to open. Nonces are 96 random bits, which bounds a key to about
2**32 seals; spread over 1,024 buckets, a master key is good for about 2**42 (at 10,000
writes a second, 14 years), and one record's seals stay under one bucket's bound (at
one write a second, 136 years). Every bucket key is kept made once it has sealed
(about 2.7 KiB each, with OpenSSL's contexts), so a seal derives nothing.

Sealed form: ``SEALED_MARK`` (the byte 0, which no JSON text starts with), the 4-byte id
of the master key, the 12-byte nonce, the ciphertext and its 16-byte tag: 33 bytes more
than the plaintext (``_codec.SEAL_OVERHEAD``), which a store subtracts to keep the size
limit on the plaintext JSON. A key's id is the start of an HMAC of a fixed text under
it: it names the key without revealing it, and two keys cannot share one by mistake.

Hashed ids and names (an option, with a hash key of its own): user and conversation
ids in every stored key, and property names, are replaced by ``~`` and 22 base64url
digits of an HMAC-SHA256 under the hash key (one domain each for users, conversations
and names). A value is then sealed with its name inside (``SEALED_NAMED_MARK``; the
plaintext is the name's JSON length in 4 bytes, the name's JSON, the value's) under the
field its name hashes to, which is its associated data; and each record holds its
clear encoded key sealed beside its values (``SEALED_IDS_MARK``), for export and the
inspector. A string record's text holds its clear key before the text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import (
    SEAL_OVERHEAD,
    SEALED_IDS_MARK,
    SEALED_MARK,
    SEALED_MARKS,
    SEALED_NAMED_MARK,
    SEALED_TEXT,
    encode_name,
)

__all__ = ["KeyRing", "KeyRingError"]

KEY_BYTES = 32
ID_BYTES = 4
NONCE_BYTES = 12
KEYS_VARIABLE = "INLINE_STATE_KEYS"
KEY_FILE_VARIABLE = "INLINE_STATE_KEY_FILE"
HASH_KEY_VARIABLE = "INLINE_STATE_HASH_KEY"
HASH_KEY_FILE_VARIABLE = "INLINE_STATE_HASH_KEY_FILE"
HASH_BYTES = 16  # of HMAC-SHA256: 128 bits, as base64url in 22 digits
_IDS_NAME = "\x00is:ids"  # the hashed field a record's clear ids are sealed under
_HASHES_KEPT = 100_000
_TEXT_AAD = b"\xfe"  # a string record's associated data: never a UTF-8 name's
_TEXT_IDS_AAD = b"\xfd"  # a string record's, with its clear ids inside
BUCKETS = 1024  # bucket keys per master key: a power of two (picked by a mask)
_SEPARATORS = re.compile(r"[\s,]+")

assert 1 + ID_BYTES + NONCE_BYTES + 16 == SEAL_OVERHEAD


class KeyRingError(ValueError):
    """The configured keys cannot be used; the message names the key and why."""


class SealError(Exception):
    """A sealed value does not open: tampered with, moved from another record or
    property, or sealed under a key that is not configured (named by its id)."""


def key_id(key: bytes) -> str:
    """The id of a master key, as its 8 hex digits."""
    return hmac.digest(key, b"inline_state key id", "sha256")[:ID_BYTES].hex()


def new_key() -> str:
    """A fresh random master key in the form the key ring reads (base64)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where} is not base64") from None
    if len(key) != KEY_BYTES:
        raise KeyRingError(f"{where} holds {len(key)} bytes; a key is {KEY_BYTES} (AES-256)")
    return key


class KeyRing:
    """The master keys that seal and open stored values.

    The first key seals; every key opens what it sealed, so a new key goes first and
    the old one stays until ``python -m inline_state rekey`` has re-sealed the store.
    Keys come from the environment or a file, never from code: see ``from_env`` and
    ``from_file``; ``python -m inline_state keygen`` makes one.
    """

    def __init__(
        self,
        keys: Iterable[bytes],
        *,
        source: str = "the key ring",
        hash_key: bytes | None = None,
    ) -> None:
        self._keys: dict[bytes, bytes] = {}
        for position, key in enumerate(keys, 1):
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {position} of {source} is not {KEY_BYTES} bytes")
            ident = bytes.fromhex(key_id(key))
            self._keys.setdefault(ident, key)
        if not self._keys:
            raise KeyRingError(f"{source} holds no key")
        self.source = source
        self._current = next(iter(self._keys))
        self._buckets: dict[bytes, list[AESGCM | None]] = {
            ident: [None] * BUCKETS for ident in self._keys
        }
        self._prefix = SEALED_MARK + self._current
        if hash_key is not None:
            if len(hash_key) != KEY_BYTES:
                raise KeyRingError(f"the hash key is not {KEY_BYTES} bytes")
            if hash_key in self._keys.values():
                raise KeyRingError("the hash key must be a key of its own, not a sealing key")
        self._hash_key = hash_key
        self._hashed: tuple[dict[str, str], ...] = ({}, {}, {})  # users, conversations, names
        self.ids_field = self.hash_name(_IDS_NAME) if hash_key is not None else ""

    @classmethod
    def from_text(cls, text: str, *, source: str, hash_key: bytes | None = None) -> KeyRing:
        """Keys as base64, separated by commas or white space; ``#`` starts a comment
        (to the end of its line). ``hash_key``: hash ids and names in storage with it
        (see ``hash_key_from_text``)."""
        entries = [
            entry
            for line in text.splitlines()
            for entry in _SEPARATORS.split(line.split("#", 1)[0])
            if entry
        ]
        return cls(
            (_decode_key(entry, f"key {i} of {source}") for i, entry in enumerate(entries, 1)),
            source=source,
            hash_key=hash_key,
        )

    @classmethod
    def from_env(cls, variable: str = KEYS_VARIABLE, *, hash_key: bytes | None = None) -> KeyRing:
        """Keys from an environment variable (see ``from_text``)."""
        text = os.environ.get(variable)
        if not text:
            raise KeyRingError(f"the environment variable {variable} is not set")
        return cls.from_text(text, source=f"${variable}", hash_key=hash_key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, hash_key: bytes | None = None) -> KeyRing:
        """Keys from a file, one per line (see ``from_text``)."""
        return cls.from_text(
            _read_key_file(path), source=f"the key file {os.fspath(path)!r}", hash_key=hash_key
        )

    @classmethod
    def load(cls) -> KeyRing:
        """Keys from ``$INLINE_STATE_KEYS``, else from the file ``$INLINE_STATE_KEY_FILE``
        names; with ``$INLINE_STATE_HASH_KEY`` (or the file
        ``$INLINE_STATE_HASH_KEY_FILE`` names) set, ids and names are hashed too."""
        hash_key = load_hash_key()
        if os.environ.get(KEYS_VARIABLE):
            return cls.from_env(hash_key=hash_key)
        path = os.environ.get(KEY_FILE_VARIABLE)
        if path:
            return cls.from_file(path, hash_key=hash_key)
        raise KeyRingError(f"encryption needs keys: set {KEYS_VARIABLE} or {KEY_FILE_VARIABLE}")

    @property
    def current_id(self) -> str:
        """The id of the key that seals."""
        return self._current.hex()

    @property
    def ids(self) -> list[str]:
        """The ids of every key, the sealing one first."""
        return [ident.hex() for ident in self._keys]

    @property
    def hash_key_id(self) -> str | None:
        """The id of the hash key (None when ids and names are stored in the clear)."""
        return key_id(self._hash_key) if self._hash_key is not None else None

    def _hash(self, domain: int, text: str) -> str:
        kept = self._hashed[domain]
        hashed = kept.get(text)
        if hashed is None:
            if self._hash_key is None:
                raise KeyRingError("this key ring has no hash key")
            digest = hmac.digest(
                self._hash_key, b"ucn"[domain : domain + 1] + _utf8(text), hashlib.sha256
            )
            hashed = "~" + base64.urlsafe_b64encode(digest[:HASH_BYTES]).decode()[:22]
            if len(kept) >= _HASHES_KEPT:
                kept.clear()
            kept[text] = hashed
        return hashed

    def hash_user(self, user: str) -> str:
        """A user id as stored when ids are hashed."""
        return self._hash(0, user)

    def hash_conversation(self, conversation: str) -> str:
        """A conversation id as stored when ids are hashed."""
        return self._hash(1, conversation)

    def hash_name(self, name: str) -> str:
        """A property name as stored when names are hashed."""
        return self._hash(2, name)

    def _bucket(self, ident: bytes, record: bytes) -> AESGCM:
        buckets = self._buckets.get(ident)
        if buckets is None:
            raise SealError(
                f"sealed under key {ident.hex()}, which is not configured"
                f" (configured: {', '.join(self.ids)})"
            )
        number = zlib.crc32(record) & (BUCKETS - 1)
        aead = buckets[number]
        if aead is None:
            key = hmac.digest(self._keys[ident], _BUCKET + number.to_bytes(2, "big"), "sha256")
            aead = buckets[number] = AESGCM(key)
        return aead

    def record_aead(self, record: str) -> RecordAead:
        """The sealing key's AEAD for the record of encoded key ``record``."""
        encoded = _utf8(record)
        return RecordAead(self._bucket(self._current, encoded), _binding(encoded))

    def seal(self, record: str, name: str, value: bytes) -> bytes:
        """The sealed form of a property's value in the record of encoded key ``record``."""
        encoded = _utf8(record)
        nonce = os.urandom(NONCE_BYTES)  # from the OS per seal, as in seal_values
        return (
            self._prefix
            + nonce
            + self._bucket(self._current, encoded).encrypt(
                nonce, value, _binding(encoded) + _utf8(name)
            )
        )

    def seal_values(self, aead: RecordAead, values: Mapping[str, bytes]) -> dict[str, bytes]:
        """Several values of one record sealed (``aead`` is its ``record_aead``)."""
        prefix, urandom, encrypt, binding = self._prefix, os.urandom, aead.encrypt, aead.binding
        sealed: dict[str, bytes] = {}
        for name, value in values.items():
            # A nonce from the OS per seal: nothing shared that a thread or a forked
            # worker could hand out twice.
            nonce = urandom(NONCE_BYTES)
            sealed[name] = (
                prefix
                + nonce
                + encrypt(nonce, value, binding + name.encode("utf-8", "surrogatepass"))
            )
        return sealed

    def seal_named(self, aead: RecordAead, values: Mapping[str, bytes]) -> dict[str, bytes]:
        """Several values of one record sealed each with its name inside, under the
        field its name hashes to (``aead`` is the record's ``record_aead``)."""
        prefix = SEALED_NAMED_MARK + self._current
        urandom, encrypt, hash_name = os.urandom, aead.encrypt, self.hash_name
        bound = aead.binding + SEALED_NAMED_MARK
        sealed: dict[str, bytes] = {}
        for name, value in values.items():
            field, named = hash_name(name), encode_name(name)
            nonce = urandom(NONCE_BYTES)
            plain = len(named).to_bytes(4, "big") + named + value
            sealed[field] = prefix + nonce + encrypt(nonce, plain, bound + field.encode())
        return sealed

    def seal_ids(self, aead: RecordAead, clear_key: str) -> bytes:
        """A record's clear encoded key, sealed to be stored beside its values under
        ``ids_field``."""
        nonce = os.urandom(NONCE_BYTES)
        aad = aead.binding + SEALED_IDS_MARK + self.ids_field.encode()
        sealed = aead.encrypt(nonce, _utf8(clear_key), aad)
        return SEALED_IDS_MARK + self._current + nonce + sealed

    def open_named(self, record: str, field: str, value: bytes) -> tuple[str, bytes]:
        """The name and value a value sealed with its name holds; SealError when it does
        not open."""
        if value[:1] != SEALED_NAMED_MARK:
            raise SealError("a value not sealed with its name, where names are hashed")
        plain = self._open(record, value, field.encode("utf-8", "surrogatepass"))
        length = int.from_bytes(plain[:4], "big")
        name = orjson.loads(plain[4 : 4 + length])
        return name, plain[4 + length :]

    def open_ids(self, record: str, value: bytes) -> str:
        """The clear encoded key a record's sealed ids hold; SealError when they do not
        open."""
        if value[:1] != SEALED_IDS_MARK:
            raise SealError("the record's ids are not sealed")
        return self._open(record, value, self.ids_field.encode()).decode("utf-8", "surrogatepass")

    def reseal(self, record: str, field: str, value: bytes) -> bytes:
        """A stored value sealed again under the sealing key, in the same form (a plain
        value sealed); SealError when it does not open."""
        mark = value[:1]
        if mark not in SEALED_MARKS:
            return self.seal(record, field, value)
        plain = self._open(record, value, _utf8(field))
        nonce = os.urandom(NONCE_BYTES)
        aead = self.record_aead(record)
        aad = aead.binding + _aad(mark, _utf8(field))
        return mark + self._current + nonce + aead.encrypt(nonce, plain, aad)

    def open(self, record: str, name: str, value: bytes) -> bytes:
        """The plaintext of a sealed value; SealError when it does not open."""
        return self._open(record, value, name.encode("utf-8", "surrogatepass"))

    def _open(self, record: str, value: bytes, field: bytes) -> bytes:
        mark = value[:1]
        if len(value) < SEAL_OVERHEAD or mark not in SEALED_MARKS:
            raise SealError("not a sealed value")
        ident = value[1 : 1 + ID_BYTES]
        nonce = value[1 + ID_BYTES : 1 + ID_BYTES + NONCE_BYTES]
        encoded = _utf8(record)
        aead = self._bucket(ident, encoded)
        try:
            return aead.decrypt(
                nonce, value[1 + ID_BYTES + NONCE_BYTES :], _binding(encoded) + _aad(mark, field)
            )
        except InvalidTag:
            raise SealError(
                f"a value sealed under key {ident.hex()} does not open: it was changed,"
                " or moved from another record or property"
            ) from None

    def sealed_by(self, value: bytes) -> str | None:
        """The id of the key a stored value was sealed under; None for a plain value."""
        return value[1 : 1 + ID_BYTES].hex() if value[:1] in SEALED_MARKS else None

    def seal_text(self, record: str, text: str, clear_key: str | None = None) -> str:
        """The sealed form of a string record's text (itself text); where ids are hashed,
        with the record's clear encoded key ``clear_key`` inside."""
        if self._hash_key is None:
            return self._seal_text_plain(record, _utf8(text), _TEXT_AAD)
        if clear_key is None:
            raise KeyRingError("where ids are hashed, a string record holds its clear key")
        ids = _utf8(clear_key)
        return self._seal_text_plain(
            record, len(ids).to_bytes(4, "big") + ids + _utf8(text), _TEXT_IDS_AAD
        )

    def _seal_text_plain(self, record: str, plain: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        aead = self.record_aead(record)
        sealed = aead.encrypt(nonce, plain, aead.binding + aad)
        return SEALED_TEXT + base64.b64encode(self._prefix + nonce + sealed).decode()

    def _open_text_plain(self, record: str, text: str) -> tuple[bytes, bytes]:
        try:
            value = base64.b64decode(text[len(SEALED_TEXT) :], validate=True)
        except (binascii.Error, ValueError):
            raise SealError("a sealed string record is not base64") from None
        aad = _TEXT_AAD if self._hash_key is None else _TEXT_IDS_AAD
        return self._open(record, value, aad), aad

    def open_text(self, record: str, text: str) -> str:
        """The plaintext of a sealed string record; SealError when it does not open."""
        return self.open_text_with_ids(record, text)[0]

    def open_text_with_ids(self, record: str, text: str) -> tuple[str, str | None]:
        """The plaintext of a sealed string record, and the clear encoded key it holds
        where ids are hashed (else None); SealError when it does not open."""
        plain, _ = self._open_text_plain(record, text)
        if self._hash_key is None:
            return plain.decode("utf-8", "surrogatepass"), None
        length = int.from_bytes(plain[:4], "big")
        ids = plain[4 : 4 + length].decode("utf-8", "surrogatepass")
        return plain[4 + length :].decode("utf-8", "surrogatepass"), ids

    def reseal_text(self, record: str, text: str) -> str:
        """A string record sealed again under the sealing key (plain text sealed, where
        ids are in the clear); SealError when it does not open."""
        if not text.startswith(SEALED_TEXT):
            return self.seal_text(record, text)
        plain, aad = self._open_text_plain(record, text)
        return self._seal_text_plain(record, plain, aad)

    def text_sealed_by(self, text: str) -> str | None:
        """The id of the key a string record was sealed under; None for plain text."""
        if not text.startswith(SEALED_TEXT):
            return None
        try:
            value = base64.b64decode(text[len(SEALED_TEXT) :][:12], validate=True)
        except (binascii.Error, ValueError):
            return "????????"
        return value[1 : 1 + ID_BYTES].hex()


class RecordAead:
    """The sealing key's AEAD for one record, and the record's part of the associated
    data (kept per record by a sealed store: made once, used for every seal)."""

    __slots__ = ("binding", "encrypt")

    def __init__(self, aead: AESGCM, binding: bytes) -> None:
        self.encrypt = aead.encrypt
        self.binding = binding


_BUCKET = b"inline_state bucket "


def _binding(record: bytes) -> bytes:
    """A record's part of its values' associated data: its encoded key, length first
    (so that no key and name can pass for another key and name)."""
    return len(record).to_bytes(4, "big") + record


def _aad(mark: bytes, field: bytes) -> bytes:
    """A sealed value's associated data after its record's: its field's name, after its
    mark for the forms hashing adds (so that changing a mark, which sizes are counted
    by, fails to open)."""
    return field if mark == SEALED_MARK else mark + field


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _read_key_file(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"cannot read the key file {os.fspath(path)!r}: {exc}") from None


def hash_key_from_text(text: str, *, source: str) -> bytes:
    """A hash key as base64 (``#`` starts a comment): one key, of its own."""
    entries = [
        entry
        for line in text.splitlines()
        for entry in _SEPARATORS.split(line.split("#", 1)[0])
        if entry
    ]
    if len(entries) != 1:
        raise KeyRingError(
            f"{source} must hold one key (it holds {len(entries)}): a hash key is never rotated"
        )
    return _decode_key(entries[0], source)


def load_hash_key() -> bytes | None:
    """The hash key from ``$INLINE_STATE_HASH_KEY``, else from the file
    ``$INLINE_STATE_HASH_KEY_FILE`` names; None when neither is set."""
    text = os.environ.get(HASH_KEY_VARIABLE)
    if text:
        return hash_key_from_text(text, source=f"${HASH_KEY_VARIABLE}")
    path = os.environ.get(HASH_KEY_FILE_VARIABLE)
    if path:
        return hash_key_from_text(
            _read_key_file(path), source=f"the hash key file {os.fspath(path)!r}"
        )
    return None
