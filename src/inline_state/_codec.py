"""JSON for the turn: orjson where it gives the same answer as ``json``, ``json`` where
it would not.

A property value is kept as canonical JSON bytes (orjson's compact form), so playing a
bag back is a byte join and comparing a reply's value with the played one is a bytes
comparison: ``1``, ``1.0`` and ``true`` differ at every depth. Where orjson and ``json``
differ, the behaviour stays ``json``'s:

- parsing: orjson reads integers beyond 64 bits as floats and refuses lone surrogates,
  ``NaN``, a BOM and nesting past 1024; such a text is parsed by ``json``;
- encoding a bag value: orjson writes NaN as ``null`` and serializes datetimes,
  dataclasses and subclasses; those go to ``json``, which refuses what it always
  refused, and accepts (then canonicalized) what it always accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

__all__: list[str] = []

#: JSON nesting allowed in a body or a bag: deep enough for any real activity (Adaptive
#: Cards nest about 20 levels), shallow enough that nothing recurses into trouble.
DEFAULT_MAX_DEPTH = 256

_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=True
)
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
# Digits to "0": nineteen zeros in a row then mark a number that may not fit 64 bits.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_TRUE, _FALSE, _NULL = b"true", b"false", b"null"


#: A string's JSON bytes; TypeError for a lone surrogate (the diff's fast path).
string_json = orjson.dumps


class UnstorableValue(ValueError):
    """A value that JSON or msgpack cannot carry faithfully."""


# -- parsing ------------------------------------------------------------------------------


def depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0, ``[]`` is 1); no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
        stack.extend((child, level) for child in children)
    return deepest


def may_hold_big_int(data: bytes) -> bool:
    """True when a JSON text has a run of 19 digits (an integer orjson would turn into a
    float); two C scans."""
    return _LONG_RUN in data.translate(_DIGITS_TO_ZERO)


def loads(data: bytes | str) -> tuple[Any, bool]:
    """Parse JSON as ``json.loads`` would; returns the value and whether orjson read it
    (False: ``json`` did, so write it back with ``json`` too, which keeps ``NaN``).

    Raises ValueError (invalid JSON) or RecursionError (nesting ``json`` cannot follow).
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if not may_hold_big_int(raw):
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(data), False


def dumps(value: Any) -> bytes:
    """JSON bytes (UTF-8) the way ``web.json_response`` would write them, with orjson
    where it agrees (non-string keys, subclasses and lone surrogates go to ``json``;
    NaN and Infinity are written as ``null``, which is JSON). Raises TypeError or
    ValueError for what ``json.dumps`` refuses."""
    try:
        return orjson.dumps(value, option=_STRICT)
    except TypeError:
        pass
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")
    except RecursionError:
        raise ValueError("the value nests too deeply to be written as JSON") from None


# -- stored values ------------------------------------------------------------------------


def encode_value(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The canonical compact JSON bytes of a value.

    Raises UnstorableValue for NaN/Infinity, lone surrogates, integers beyond 64 bits,
    nesting deeper than ``max_depth``, and values JSON cannot represent.
    """
    kind = type(value)
    # Scalars are most of what bots store; skip the machinery for them.
    if kind is str:
        try:
            return orjson.dumps(value)
        except TypeError:
            raise UnstorableValue("a string holds a lone surrogate") from None
    if kind is int:
        if _INT64_MIN <= value <= _UINT64_MAX:
            return str(value).encode()
        raise UnstorableValue("an integer does not fit in 64 bits")
    if kind is bool:
        return _TRUE if value else _FALSE
    if value is None:
        return _NULL
    if kind is float:
        if not math.isfinite(value):
            raise UnstorableValue("NaN or Infinity is not JSON")
        return orjson.dumps(value)
    if not _plain(value):  # enums, UUIDs, subclasses...: json decides, as it always did
        data = _encode_as_json(value, max_depth)
    else:
        try:
            data = orjson.dumps(value, option=_STRICT)
        except TypeError:
            data = _encode_as_json(value, max_depth)
        else:
            if _NULL in data and _has_non_finite(value):
                raise UnstorableValue("NaN or Infinity is not JSON")
    if data.count(b"[") + data.count(b"{") >= max_depth and depth(value) >= max_depth:
        # The bag around the value is one level more.
        raise UnstorableValue(f"it nests deeper than {max_depth} levels")
    return data


def _encode_as_json(value: Any, max_depth: int) -> bytes:
    """What orjson refused (non-string keys, subclasses, big integers, deep nesting,
    surrogates, types JSON lacks), as ``json`` sees it; canonical when it is JSON."""
    try:
        text = _ENCODER.encode(value)
    except RecursionError:
        raise UnstorableValue(f"it nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        reason = str(exc)
        if "Out of range float" in reason:
            reason = "NaN or Infinity is not JSON"
        raise UnstorableValue(reason) from None
    except TypeError as exc:
        raise UnstorableValue(str(exc)) from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableValue("a string holds a lone surrogate") from None
    if may_hold_big_int(data):
        _check_ints(value)
    try:
        return orjson.dumps(orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError):  # deeper than orjson goes: json's form
        return data


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list})


def _plain(value: Any) -> bool:
    """True when a value holds only the types orjson and json write alike (orjson also
    writes enums and UUIDs, which json refuses)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in _PLAIN_TYPES:
            return False
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return True


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def _check_ints(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not _INT64_MIN <= item <= _UINT64_MAX:
                raise UnstorableValue("an integer does not fit in 64 bits")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def canonical(data: bytes) -> bytes:
    """Stored value bytes in today's canonical form.

    Values written before orjson encoded them hold floats as ``json`` writes them;
    the two differ only for negative exponents (``1e-05`` against ``0.00001``), so only
    those are rewritten, and an unchanged value still compares equal.
    """
    if b"e-" not in data:
        return data
    try:
        return orjson.dumps(orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError):  # deeper than orjson goes: keep it
        return data


def json_key(key: object) -> str:
    """A dict key as ``json.dumps`` (and so ``web.json_response``) writes it.

    Strings stay; ``True``/``False``/``None`` become ``"true"``/``"false"``/``"null"``,
    integers and floats their JSON text. Raises UnstorableValue for any other type and
    for NaN or Infinity.
    """
    if isinstance(key, str):
        return str(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        if not math.isfinite(key):
            raise UnstorableValue("a property name is NaN or Infinity, which JSON cannot write")
        return float.__repr__(key)
    raise UnstorableValue(f"a property name must be a string, got {type(key).__name__}")


_NAMES: dict[str, bytes] = {}


def encode_name(name: str) -> bytes:
    """A property name as a JSON string literal (cached: bots reuse a few names)."""
    encoded = _NAMES.get(name)
    if encoded is not None:
        return encoded
    try:
        encoded = orjson.dumps(name)
    except TypeError:
        raise UnstorableValue("a property name holds a lone surrogate") from None
    if len(_NAMES) < 4096:
        _NAMES[name] = encoded
    return encoded


def join_bag(props: Mapping[str, bytes]) -> bytes:
    """The JSON object of a bag whose values are already encoded (one copy of each
    value: a long one is not copied again for each concatenation)."""
    if not props:
        return b"{}"
    parts: list[bytes] = []
    for name, value in props.items():
        parts += (b",", encode_name(name), b":", value)
    parts[0] = b"{"
    parts.append(b"}")
    return b"".join(parts)


#: The first byte of a sealed value (no JSON text starts with it), and what sealing adds
#: to a value: that byte, a 4-byte key id, a 12-byte nonce and a 16-byte tag.
SEALED_MARK = b"\x00"
SEAL_OVERHEAD = 33
#: With ids and names hashed (``_seal``), a value is sealed with its name inside, under
#: a field named by the name's hash: the plaintext is a 4-byte length, the name's JSON
#: and the value's. Beside them, each record holds its clear ids sealed under a hashed
#: field, which counts as nothing (it is no part of the bag).
SEALED_NAMED_MARK = b"\x01"
SEALED_IDS_MARK = b"\x02"
SEALED_MARKS = (SEALED_MARK, SEALED_NAMED_MARK, SEALED_IDS_MARK)
#: The JSON length of a hashed name: a tilde and 22 base64url digits, quoted.
HASHED_NAME_JSON = 25
NAMED_OVERHEAD = SEAL_OVERHEAD + 4 + HASHED_NAME_JSON
#: A sealed string record (REST) is text: this prefix, then base64 of the sealed form.
SEALED_TEXT = "\x00is:sealed:"


def value_size(value: bytes) -> int:
    """The JSON length of a stored value, so that a size limit means the same with
    encryption on: a sealed one counts as the plaintext it holds; one sealed with its
    name, as its name and value less its hashed field name's length (so the member
    counts as the clear one would); a record's sealed ids, as minus their member's
    framing (so they count as nothing, comma included)."""
    mark = value[:1]
    if mark == SEALED_MARK:
        return len(value) - SEAL_OVERHEAD
    if mark == SEALED_NAMED_MARK:
        return len(value) - NAMED_OVERHEAD
    if mark == SEALED_IDS_MARK:
        return -(HASHED_NAME_JSON + 2)
    return len(value)


def is_sealed(value: bytes) -> bool:
    """Whether a stored value is sealed (in any of its forms)."""
    return value[:1] in SEALED_MARKS


def member_size(name: str, value: bytes) -> int:
    """The UTF-8 length of ``"name":value`` in a bag's JSON (a sealed value counted as
    its plaintext)."""
    return len(encode_name(name)) + 1 + value_size(value)


def bag_size(props: Mapping[str, bytes]) -> int:
    """UTF-8 length of ``join_bag(props)`` without building it."""
    if not props:
        return 2
    return 1 + sum(len(encode_name(k)) + 2 + len(v) for k, v in props.items())
