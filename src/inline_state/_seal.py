"""Sealing stored values: the key ring and the sealed form. A leaf (``cryptography`` is
the ``encryption`` extra).

A value is sealed with AES-256-GCM under a key derived for its record: HMAC-SHA256 of
the master key over the record's encoded key. The property name is the associated data,
so a value copied into another record (another derived key) or another property (other
associated data) fails to open. Nonces are 96 random bits, which bounds a key to about
2**32 seals; with a key per record, that bound is per record, which no record comes near
(at one write per second, 136 years).

Sealed form: ``SEALED_MARK`` (the byte 0, which no JSON text starts with), the 4-byte id
of the master key, the 12-byte nonce, the ciphertext and its 16-byte tag: 33 bytes more
than the plaintext (``_codec.SEAL_OVERHEAD``), which a store subtracts to keep the size
limit on the plaintext JSON. A key's id is the start of an HMAC of a fixed text under
it: it names the key without revealing it, and two keys cannot share one by mistake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import SEAL_OVERHEAD, SEALED_MARK, SEALED_TEXT

__all__ = ["KeyRing", "KeyRingError"]

KEY_BYTES = 32
ID_BYTES = 4
NONCE_BYTES = 12
KEYS_VARIABLE = "INLINE_STATE_KEYS"
KEY_FILE_VARIABLE = "INLINE_STATE_KEY_FILE"
_TEXT_AAD = b"\xfe"  # a string record's associated data: never a UTF-8 name's
_DERIVED_KEPT = 4096  # derived keys of recently used records
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

    def __init__(self, keys: Iterable[bytes], *, source: str = "the key ring") -> None:
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
        self._derived: dict[tuple[bytes, str], AESGCM] = {}
        self._prefix = SEALED_MARK + self._current

    @classmethod
    def from_text(cls, text: str, *, source: str) -> KeyRing:
        """Keys as base64, separated by commas or white space; ``#`` starts a comment
        (to the end of its line)."""
        entries = [
            entry
            for line in text.splitlines()
            for entry in _SEPARATORS.split(line.split("#", 1)[0])
            if entry
        ]
        return cls(
            (_decode_key(entry, f"key {i} of {source}") for i, entry in enumerate(entries, 1)),
            source=source,
        )

    @classmethod
    def from_env(cls, variable: str = KEYS_VARIABLE) -> KeyRing:
        """Keys from an environment variable (see ``from_text``)."""
        text = os.environ.get(variable)
        if not text:
            raise KeyRingError(f"the environment variable {variable} is not set")
        return cls.from_text(text, source=f"${variable}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Keys from a file, one per line (see ``from_text``)."""
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyRingError(f"cannot read the key file {os.fspath(path)!r}: {exc}") from None
        return cls.from_text(text, source=f"the key file {os.fspath(path)!r}")

    @classmethod
    def load(cls) -> KeyRing:
        """Keys from ``$INLINE_STATE_KEYS``, else from the file ``$INLINE_STATE_KEY_FILE``
        names."""
        if os.environ.get(KEYS_VARIABLE):
            return cls.from_env()
        path = os.environ.get(KEY_FILE_VARIABLE)
        if path:
            return cls.from_file(path)
        raise KeyRingError(f"encryption needs keys: set {KEYS_VARIABLE} or {KEY_FILE_VARIABLE}")

    @property
    def current_id(self) -> str:
        """The id of the key that seals."""
        return self._current.hex()

    @property
    def ids(self) -> list[str]:
        """The ids of every key, the sealing one first."""
        return [ident.hex() for ident in self._keys]

    def _aead(self, ident: bytes, record: str) -> AESGCM:
        derived = self._derived.get((ident, record))
        if derived is None:
            master = self._keys.get(ident)
            if master is None:
                raise SealError(
                    f"sealed under key {ident.hex()}, which is not configured"
                    f" (configured: {', '.join(self.ids)})"
                )
            raw = record.encode("utf-8", "surrogatepass")
            derived = AESGCM(hmac.digest(master, raw, hashlib.sha256))
            if len(self._derived) >= _DERIVED_KEPT:
                self._derived.clear()
            self._derived[ident, record] = derived
        return derived

    def record_aead(self, record: str) -> AESGCM:
        """The AEAD of the sealing key for the record of encoded key ``record``."""
        return self._aead(self._current, record)

    def seal(self, record: str, name: str, value: bytes) -> bytes:
        """The sealed form of a property's value in the record of encoded key ``record``."""
        return self.seal_values(self.record_aead(record), {name: value})[name]

    def seal_values(self, aead: AESGCM, values: Mapping[str, bytes]) -> dict[str, bytes]:
        """Several values of one record sealed (``aead`` is its ``record_aead``)."""
        prefix, urandom, encrypt = self._prefix, os.urandom, aead.encrypt
        sealed: dict[str, bytes] = {}
        for name, value in values.items():
            # A nonce from the OS per seal: nothing shared that a thread or a forked
            # worker could hand out twice.
            nonce = urandom(NONCE_BYTES)
            sealed[name] = (
                prefix + nonce + encrypt(nonce, value, name.encode("utf-8", "surrogatepass"))
            )
        return sealed

    def open(self, record: str, name: str, value: bytes) -> bytes:
        """The plaintext of a sealed value; SealError when it does not open."""
        return self._open(record, value, name.encode("utf-8", "surrogatepass"))

    def _open(self, record: str, value: bytes, aad: bytes) -> bytes:
        if len(value) < SEAL_OVERHEAD or value[:1] != SEALED_MARK:
            raise SealError("not a sealed value")
        ident = value[1 : 1 + ID_BYTES]
        nonce = value[1 + ID_BYTES : 1 + ID_BYTES + NONCE_BYTES]
        try:
            return self._aead(ident, record).decrypt(
                nonce, value[1 + ID_BYTES + NONCE_BYTES :], aad
            )
        except InvalidTag:
            raise SealError(
                f"a value sealed under key {ident.hex()} does not open: it was changed,"
                " or moved from another record or property"
            ) from None

    def sealed_by(self, value: bytes) -> str | None:
        """The id of the key a stored value was sealed under; None for a plain value."""
        return value[1 : 1 + ID_BYTES].hex() if value[:1] == SEALED_MARK else None

    def seal_text(self, record: str, text: str) -> str:
        """The sealed form of a string record's text (itself text)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.record_aead(record).encrypt(
            nonce, text.encode("utf-8", "surrogatepass"), _TEXT_AAD
        )
        return SEALED_TEXT + base64.b64encode(self._prefix + nonce + sealed).decode()

    def open_text(self, record: str, text: str) -> str:
        """The plaintext of a sealed string record; SealError when it does not open."""
        try:
            value = base64.b64decode(text[len(SEALED_TEXT) :], validate=True)
        except (binascii.Error, ValueError):
            raise SealError("a sealed string record is not base64") from None
        return self._open(record, value, _TEXT_AAD).decode("utf-8", "surrogatepass")

    def text_sealed_by(self, text: str) -> str | None:
        """The id of the key a string record was sealed under; None for plain text."""
        if not text.startswith(SEALED_TEXT):
            return None
        try:
            value = base64.b64decode(text[len(SEALED_TEXT) :][:12], validate=True)
        except (binascii.Error, ValueError):
            return "????????"
        return value[1 : 1 + ID_BYTES].hex()
