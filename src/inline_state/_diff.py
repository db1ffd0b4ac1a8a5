"""The change replies make to the played-back bags: validate, diff, fold.

Diffing is per top-level property, on canonical JSON bytes: a property whose bytes
differ from the played ones is set, a played property absent from the bag is removed,
and an absent or null field changes nothing. All replies of a response fold into one
net change per record, where for each property the last reply that differs wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._change import DEFAULT_MAX_PROPERTIES
from ._codec import (
    DEFAULT_MAX_DEPTH,
    UnstorableValue,
    encode_name,
    encode_value,
    json_key,
    string_json,
)
from ._counters import HIDDEN, checked_delta
from ._errors import BagError
from ._message import INCREMENT_FIELD_OF_KIND, Kind, bag_field_names, increment_field_names

__all__: list[str] = []


class PendingChange:
    """The net change of one record kind while replies are folded."""

    __slots__ = ("removes", "replace", "sets")

    def __init__(self, sets: dict[str, bytes] | None = None, replace: bool = False) -> None:
        self.sets: dict[str, bytes] = sets if sets is not None else {}
        self.removes: set[str] = set()
        self.replace = replace


_IMMUTABLE = (str, int, float, bool, type(None))
_ABSENT: Any = object()


def encode_bag(
    field_name: str,
    bag: Any,
    limit: int,
    played: Mapping[str, bytes] | None = None,
    played_values: Mapping[str, Any] | None = None,
    *,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, bytes] | None:
    """Validate one reply bag and encode its properties; None when the field is null.

    ``played_values`` are the decoded played-back values the bot was given: a reply
    value that is the very same immutable object (a string, a number) is known to be
    unchanged and reuses its played bytes instead of being encoded again, so an
    untouched large value costs nothing. Property names that are not strings are
    written the way ``json.dumps`` writes them (``1`` as ``"1"``). ``max_properties``
    bounds the properties a reply adds or changes: the played-back ones it carries
    unchanged do not count, so a record that overlapping turns merged past the limit
    can still be answered.
    """
    if bag is None:
        return None
    if not isinstance(bag, dict):
        raise BagError(
            field_name,
            "notAnObject",
            f"must be a JSON object or null, got {type(bag).__name__}",
            limit=limit,
        )
    encoded: dict[str, bytes] = {}
    # Reuse played bytes only with the played values to compare identities against.
    values = played_values if played_values and played else None
    size = 1  # the JSON object's braces and commas, counted as the members are encoded
    for key, value in bag.items():
        name = key if type(key) is str else _property_name(field_name, key, limit)
        if name.startswith(HIDDEN):
            _refuse_hidden(field_name, {name: value}, limit)
        if values is not None and type(value) in _IMMUTABLE and values.get(name, _ABSENT) is value:
            data = played[name]  # type: ignore[index]
        else:
            try:
                data = encode_value(value, max_depth)
            except UnstorableValue as exc:
                raise _unstorable(field_name, name, str(exc), limit) from None
        try:
            size += len(encode_name(name)) + 2 + len(data)
        except UnstorableValue as exc:
            raise BagError(field_name, "unstorableValue", str(exc), limit=limit) from None
        previous = encoded.get(name)
        if previous is not None:  # two keys that JSON writes alike (1 and "1"): the last wins
            size -= len(encode_name(name)) + 2 + len(previous)
        encoded[name] = data
    if not encoded:
        size = 2
    if len(encoded) > max_properties:
        written = (
            len(encoded)
            if not played
            else sum(1 for name, data in encoded.items() if played.get(name) != data)
        )
        if written > max_properties:
            raise BagError(
                field_name,
                "tooManyProperties",
                f"adds or changes {written} properties, over the limit of {max_properties}",
                limit=limit,
            )
    if size > limit:
        raise BagError(
            field_name,
            "tooLarge",
            f"is {size} bytes of JSON, over the limit of {limit}",
            size=size,
            limit=limit,
        )
    return encoded


def _unstorable(field_name: str, name: str, why: str, limit: int) -> BagError:
    """The error for a property whose value cannot be stored."""
    return BagError(field_name, "unstorableValue", f"property {name!r}: {why}", limit=limit)


def _property_name(field_name: str, key: object, limit: int) -> str:
    try:
        return json_key(key)
    except UnstorableValue as exc:
        raise BagError(field_name, "unstorableValue", str(exc), limit=limit) from None


def fold_replies(
    replies: Sequence[dict[str, Any]],
    played: Mapping[Kind, Mapping[str, bytes]],
    *,
    whole_bag: frozenset[Kind],
    text_kinds: frozenset[Kind] = frozenset(),
    limit: int,
    played_values: Mapping[Kind, Mapping[str, Any]] | None = None,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[Kind, PendingChange]:
    """Fold every reply's bags into one change per record kind, validating each bag as
    it is diffed (an invalid bag raises before anything is written).

    Kinds in ``whole_bag`` (``merge="bag"``) replace the record wholesale with the last
    bag that differs from the played one; kinds in ``text_kinds`` (records stored as a
    string, never played back) are replaced by any bag.
    Raises BagError.
    """
    pending: dict[Kind, PendingChange] = {}
    for reply in replies:
        fields = bag_field_names(reply)
        if not fields:
            continue
        if type(fields) is list and len(fields) > 1:  # other spellings: maybe twice a kind
            _refuse_duplicates(fields, limit)
        for name, kind in fields:
            bag = reply[name]
            if bag is None:
                continue
            base = played.get(kind, _NO_PROPS)
            if kind in whole_bag or kind in text_kinds:
                encoded = encode_bag(
                    name,
                    bag,
                    limit,
                    base,
                    played_values.get(kind) if played_values is not None else None,
                    max_properties=max_properties,
                    max_depth=max_depth,
                )
                if encoded is not None and (encoded != base or kind in text_kinds):
                    pending[kind] = PendingChange(sets=encoded, replace=True)
                continue
            change = pending.get(kind)
            if change is None:
                change = pending[kind] = PendingChange()
            _fold_bag(
                change,
                name,
                bag,
                base,
                played_values.get(kind) if played_values is not None else None,
                limit,
                max_properties,
                max_depth,
            )
    return {
        kind: change
        for kind, change in pending.items()
        if change.sets or change.removes or change.replace
    }


_NO_PROPS: Mapping[str, bytes] = {}


def fold_increments(
    replies: Sequence[dict[str, Any]],
    pending: dict[Kind, PendingChange],
    played: Mapping[Kind, Mapping[str, bytes]],
    *,
    whole_bag: frozenset[Kind],
    limit: int,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
) -> dict[Kind, dict[str, int]]:
    """Every reply's increments, summed per record kind and property.

    BagError for an increment that is not an integer, a name that cannot be stored, two
    spellings of one field in a reply, a property a reply of the same response also
    sets, or a played value plus the sum beyond 64 bits. A property incremented is not
    removed: the bag a reply left it out of only says nothing of it. In ``whole_bag``
    kinds (``merge="bag"``) an increment becomes a value: the played one plus the sum,
    last writer wins like the rest of the bag.
    """
    summed: dict[Kind, dict[str, int]] = {}
    for reply in replies:
        fields = increment_field_names(reply)
        if len(fields) > 1:
            _refuse_duplicates(fields, limit)
        for field_name, kind in fields:
            increments = reply[field_name]
            if increments is None:
                continue
            if type(increments) is not dict:
                raise BagError(
                    field_name,
                    "notAnObject",
                    f"must be a JSON object of integers or null, got {type(increments).__name__}",
                    limit=limit,
                )
            totals = summed.setdefault(kind, {})
            for name, delta in increments.items():
                if type(name) is not str or not name or name.startswith(HIDDEN):
                    raise BagError(field_name, "badName", f"cannot increment {name!r}", limit=limit)
                try:
                    encode_name(name)
                except UnstorableValue as exc:
                    raise BagError(field_name, "unstorableValue", str(exc), limit=limit) from None
                try:
                    total = checked_delta(name, totals.get(name, 0) + checked_delta(name, delta))
                except ValueError as exc:
                    raise BagError(field_name, "notAnInteger", str(exc), limit=limit) from None
                totals[name] = total
            if len(totals) > max_properties:
                raise BagError(
                    field_name,
                    "tooManyProperties",
                    f"increments {len(totals)} properties, over the limit of {max_properties}",
                    limit=limit,
                )
    out: dict[Kind, dict[str, int]] = {}
    for kind, totals in summed.items():
        stored = played.get(kind, _NO_PROPS)
        for name, total in totals.items():
            try:
                checked_delta(name, _played_int(stored.get(name)) + total)
            except ValueError:
                raise BagError(
                    INCREMENT_FIELD_OF_KIND[kind],
                    "notAnInteger",
                    f"{name!r} plus its increment would leave 64 bits",
                    limit=limit,
                ) from None
        change = pending.get(kind)
        if kind in whole_bag:
            if change is None:
                change = pending[kind] = PendingChange(replace=True)
                change.sets.update(stored)
            for name, total in totals.items():
                change.sets[name] = b"%d" % (_played_int(stored.get(name)) + total)
            continue
        if change is not None:
            both = totals.keys() & change.sets.keys()
            if both:
                raise BagError(
                    INCREMENT_FIELD_OF_KIND[kind],
                    "setAndIncrement",
                    f"a reply both sets and increments {sorted(both)[0]!r}",
                    limit=limit,
                )
            change.removes -= totals.keys()
        if totals:
            out[kind] = totals
    return out


def _played_int(value: bytes | None) -> int:
    if value is None or not value.lstrip(b"-").isdigit():
        return 0
    return int(value)


def _refuse_duplicates(fields: Sequence[tuple[str, Kind]], limit: int) -> None:
    seen: dict[Kind, str] = {}
    for name, kind in sorted(fields):
        if kind in seen:
            raise BagError(
                name,
                "duplicateField",
                f"one reply carries both {seen[kind]!r} and {name!r}",
                limit=limit,
            )
        seen[kind] = name


_INT_RANGE = range(-(2**63), 2**64)
_STR_ONLY = {str}


def _fold_bag(
    change: PendingChange,
    field_name: str,
    bag: Any,
    played: Mapping[str, bytes],
    played_values: Mapping[str, Any] | None,
    limit: int,
    max_properties: int,
    max_depth: int,
) -> None:
    """Diff one reply bag against the played one into ``change`` (``merge="property"``):
    a property whose bytes differ is set, a played one the bag lacks is removed.

    Encodes and compares in one pass; the bag's JSON size is bounded from the values'
    lengths and the names' lengths, and counted exactly only near the limit.
    """
    if type(bag) is not dict and not isinstance(bag, dict):
        raise BagError(
            field_name,
            "notAnObject",
            f"must be a JSON object or null, got {type(bag).__name__}",
            limit=limit,
        )
    key_types = set(map(type, bag))
    if type(bag) is not dict or (key_types and key_types != _STR_ONLY) or len(bag) > max_properties:
        # A dict subclass (its own items()), names that are not plain strings (1 -> "1",
        # as json.dumps writes them), or more properties than the limit (which counts
        # only what the bag adds or changes): the general encoder, then the same diff.
        encoded = encode_bag(
            field_name,
            bag,
            limit,
            played,
            played_values,
            max_properties=max_properties,
            max_depth=max_depth,
        )
        assert encoded is not None
        _merge(change, encoded, played)
        return
    names = "".join(bag)
    if "\x00" in names:
        _refuse_hidden(field_name, bag, limit)
    sets = change.sets
    removes = change.removes
    values = played_values if played_values and played else None
    value_bytes = 0
    for name, value in bag.items():
        kind = type(value)
        if values is not None and kind in _IMMUTABLE and values.get(name, _ABSENT) is value:
            # The very object the bot was given: unchanged, its played bytes stand.
            value_bytes += len(played[name])
            continue
        if kind is str:
            try:
                data = string_json(value)
            except TypeError:
                raise _unstorable(
                    field_name, name, "a string holds a lone surrogate", limit
                ) from None
        elif kind is int and value in _INT_RANGE:
            data = b"%d" % value
        else:
            try:
                data = encode_value(value, max_depth)
            except UnstorableValue as exc:
                raise _unstorable(field_name, name, str(exc), limit) from None
        value_bytes += len(data)
        if played.get(name) != data:
            sets[name] = data
            if removes:
                removes.discard(name)
    if played and not played.keys() <= bag.keys():
        for name in played:
            if name not in bag:
                removes.add(name)
                sets.pop(name, None)
    if not names.isascii():
        for name in bag:
            try:
                encode_name(name)
            except UnstorableValue as exc:
                raise BagError(field_name, "unstorableValue", str(exc), limit=limit) from None
    count = len(bag)
    # A name's JSON is at most six bytes per character plus its quotes.
    if 1 + value_bytes + 6 * len(names) + 4 * count > limit and count:
        size = 1 + value_bytes + sum([len(encode_name(name)) + 2 for name in bag])
        if size > limit:
            raise BagError(
                field_name,
                "tooLarge",
                f"is {size} bytes of JSON, over the limit of {limit}",
                size=size,
                limit=limit,
            )


def _refuse_hidden(field_name: str, bag: Mapping[str, Any], limit: int) -> None:
    for name in bag:
        if name.startswith(HIDDEN):
            raise BagError(
                field_name,
                "badName",
                f"property names starting with {HIDDEN!r} are inline_state's own: {name!r}",
                limit=limit,
            )


def _merge(
    change: PendingChange, encoded: Mapping[str, bytes], played: Mapping[str, bytes]
) -> None:
    for name, value in encoded.items():
        if played.get(name) != value:
            change.sets[name] = value
            change.removes.discard(name)
    for name in played:
        if name not in encoded:
            change.removes.add(name)
            change.sets.pop(name, None)
