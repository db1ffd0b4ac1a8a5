"""Encodings: canonical JSON bytes for property values, msgpack for stored records.

A property value is kept as its compact JSON bytes, so playing a bag back is a byte
join and comparing a reply's value with the played one is a bytes comparison.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ._body import DEFAULT_MAX_DEPTH, depth

__all__ = ["UnstorableValue"]

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=True
)
_LONG_NUMBER = re.compile(rb"\d{19}")
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


class UnstorableValue(ValueError):
    """A value that JSON or msgpack cannot carry faithfully."""


_TRUE, _FALSE, _NULL = b"true", b"false", b"null"


def encode_value(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The canonical compact JSON bytes of a value.

    Raises UnstorableValue for NaN/Infinity, lone surrogates, integers beyond 64 bits,
    nesting deeper than ``max_depth``, and values JSON cannot represent.
    """
    kind = type(value)
    # Scalars are most of what bots store; skip the encoder machinery for them.
    if kind is int and _INT64_MIN <= value <= _UINT64_MAX:
        return str(value).encode()
    if kind is bool:
        return _TRUE if value else _FALSE
    if value is None:
        return _NULL
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
    if data.count(b"[") + data.count(b"{") >= max_depth and depth(value) >= max_depth:
        # The bag around the value is one level more.
        raise UnstorableValue(f"it nests deeper than {max_depth} levels")
    # Nineteen digits in a row may be an integer beyond 64 bits; only then walk the value.
    if _LONG_NUMBER.search(data) is not None:
        _check_ints(value)
    return data


def _check_ints(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _UINT64_MAX:
            raise UnstorableValue("an integer does not fit in 64 bits")
    elif isinstance(value, dict):
        for item in value.values():
            _check_ints(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_ints(item)


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
        if key != key or key in (float("inf"), float("-inf")):
            raise UnstorableValue("a property name is NaN or Infinity, which JSON cannot write")
        return float.__repr__(key)
    raise UnstorableValue(f"a property name must be a string, got {type(key).__name__}")


_NAMES: dict[str, bytes] = {}


def encode_name(name: str) -> bytes:
    """A property name as a JSON string literal (cached: bots reuse a few names)."""
    encoded = _NAMES.get(name)
    if encoded is not None:
        return encoded
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        encoded = b'"' + name.encode() + b'"'
    else:
        try:
            encoded = _ENCODER.encode(name).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnstorableValue("a property name holds a lone surrogate") from exc
    if len(_NAMES) < 4096:
        _NAMES[name] = encoded
    return encoded


def join_bag(props: Mapping[str, bytes]) -> bytes:
    """The JSON object of a bag whose values are already encoded."""
    return b"{" + b",".join([encode_name(k) + b":" + v for k, v in props.items()]) + b"}"


def bag_size(props: Mapping[str, bytes]) -> int:
    """UTF-8 length of ``join_bag(props)`` without building it."""
    if not props:
        return 2
    return 1 + sum(len(encode_name(k)) + 1 + len(v) + 1 for k, v in props.items())
