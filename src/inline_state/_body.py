"""HTTP bodies as JSON: decoded in their declared charset, parsed, nesting bounded, and
encoded back in the charset they came in.

Every adapter reads bodies through here, so a body is interpreted one way everywhere:
the way ``await request.json()`` would (the declared charset, UTF-8 when none), plus
what ``json.loads`` on the raw bytes would find (UTF-16 and UTF-32 without a declared
charset), so that no reading of a body a bot might use sees a bag we did not.
"""

from __future__ import annotations

import json
from typing import Any, Final, NamedTuple

from ._codec import DEFAULT_MAX_DEPTH, depth, dumps, loads

__all__: list[str] = []

_UTF8: Final = frozenset({None, "utf-8", "utf8"})


class BodyError(ValueError):
    """A body that cannot be interpreted and must not reach the bot as it is.

    ``status`` is the HTTP status to answer with (400 or 413), ``code`` a short
    machine-readable name, the message says what was wrong and where;
    ``close_connection`` asks to close the connection after the answer.
    """

    def __init__(
        self, status: int, code: str, message: str, *, close_connection: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.close_connection = close_connection

    def to_json(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"code": self.code, "message": str(self)}}


class _NotJson:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_JSON"


#: What ``parse`` returns for a body that is not JSON in its charset.
NOT_JSON: Final = _NotJson()


class Parsed(NamedTuple):
    """A parsed body: ``value``, and whether ``json`` had to read it (then ``encode``
    writes it back with ``json`` too, keeping what orjson would change)."""

    value: Any
    exact: bool


def is_utf8(charset: str | None) -> bool:
    """True for the charsets whose JSON is parsed straight from the bytes."""
    return charset in _UTF8 or charset.lower() in _UTF8  # type: ignore[union-attr]


def is_json_type(content_type: str) -> bool:
    """True for JSON media types: ``application/json``, ``text/json``, any ``+json``."""
    return content_type in (
        "application/json",
        "text/json",
        "application/x-json",
    ) or content_type.endswith("+json")


def decode(raw: bytes, charset: str) -> str | None:
    """The text of a body in a declared charset, None when the bytes do not decode.

    Raises BodyError (400) for a charset Python does not know as a text encoding
    (``bogus``, ``rot13``, ``zlib``).
    """
    try:
        return raw.decode(charset)
    except LookupError:
        raise BodyError(
            400,
            "UnsupportedCharset",
            f"the body's charset {charset!r} is not a text encoding this server knows",
        ) from None
    except UnicodeError:
        return None


def parse_body(raw: bytes, charset: str | None, max_depth: int = DEFAULT_MAX_DEPTH) -> Parsed:
    """A body's JSON; ``NOT_JSON`` as its value when it is none.

    Raises BodyError for an unknown charset and for nesting deeper than ``max_depth``.
    """
    source: bytes | str | None = raw if is_utf8(charset) else decode(raw, charset or "utf-8")
    if source is None:
        return Parsed(NOT_JSON, False)
    try:
        value, fast = loads(source)
    except RecursionError:
        raise _too_deep("the body", max_depth) from None
    except ValueError:
        return Parsed(NOT_JSON, False)
    check_depth(source, value, max_depth, "the body")
    return Parsed(value, not fast)


def parse(raw: bytes, charset: str | None, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value of a body, or NOT_JSON (see ``parse_body``)."""
    return parse_body(raw, charset, max_depth).value


def _too_deep(what: str, max_depth: int) -> BodyError:
    return BodyError(400, "TooDeep", f"{what} nests JSON deeper than {max_depth} levels")


def check_depth(source: bytes | str, value: Any, max_depth: int, what: str) -> None:
    """Raise BodyError when ``value`` (parsed from ``source``) nests past ``max_depth``.

    Counting brackets in the text is a bound on the depth that costs two C scans, so
    the walk runs only for texts with many brackets.
    """
    if isinstance(source, bytes):
        brackets = source.count(b"{") + source.count(b"[")
    else:
        brackets = source.count("{") + source.count("[")
    if brackets > max_depth and depth(value) > max_depth:
        raise _too_deep(what, max_depth)


def encode(value: Any, charset: str | None, *, exact: bool = False) -> bytes:
    """A JSON value as a body in ``charset`` (UTF-8 when None), readable back as sent.

    UTF-8 keeps non-ASCII text as is; a lone surrogate, which UTF-8 cannot carry, is
    written as its escape, the way it came in. Other charsets get ASCII-only JSON, whose
    characters every text encoding carries, encoded in that charset. ``exact`` (a body
    ``json`` parsed) writes with ``json``, so ``NaN`` stays ``NaN``.
    """
    if is_utf8(charset):
        if not exact:
            return dumps(value)
        try:
            return json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value).encode("ascii")
    try:
        return json.dumps(value).encode(charset or "utf-8")
    except UnicodeEncodeError:
        raise BodyError(
            400,
            "UnsupportedCharset",
            f"JSON cannot be written in the body's charset {charset!r}",
        ) from None
