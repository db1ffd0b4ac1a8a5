"""The change replies make to the played-back bags: validate, diff, fold.

Diffing is per top-level property, on canonical JSON bytes: a property whose bytes
differ from the played ones is set, a played property absent from the bag is removed,
and an absent or null field changes nothing. All replies of a response fold into one
net change per record, where for each property the last reply that differs wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._change import DEFAULT_MAX_PROPERTIES, Change
from ._codec import DEFAULT_MAX_DEPTH, UnstorableValue, encode_name, encode_value, json_key
from ._errors import BagError
from ._keys import RecordKey
from ._message import Kind, bag_field_names

__all__: list[str] = []


class PendingChange:
    """The net change of one record kind while replies are folded."""

    __slots__ = ("removes", "replace", "sets")

    def __init__(self, sets: dict[str, bytes] | None = None, replace: bool = False) -> None:
        self.sets: dict[str, bytes] = sets if sets is not None else {}
        self.removes: set[str] = set()
        self.replace = replace

    def stamped(self, key: RecordKey, stamp: int, base: int, max_bytes: int) -> Change:
        """The Change a store applies for this record."""
        removes = frozenset(self.removes) if self.removes else _NO_NAMES
        return _new_change(Change, (key, self.sets, removes, self.replace, stamp, base, max_bytes))


_NO_NAMES: frozenset[str] = frozenset()
_new_change = tuple.__new__  # a NamedTuple without its Python-level __new__


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
        if values is not None and type(value) in _IMMUTABLE and values.get(name, _ABSENT) is value:
            data = played[name]  # type: ignore[index]
        else:
            try:
                data = encode_value(value, max_depth)
            except UnstorableValue as exc:
                raise BagError(
                    field_name, "unstorableValue", f"property {name!r}: {exc}", limit=limit
                ) from None
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
    """Validate every reply's bags, then fold them into one change per record kind.

    Kinds in ``whole_bag`` (``merge="bag"``) replace the record wholesale with the last
    bag that differs from the played one; kinds in ``text_kinds`` (records stored as a
    string, never played back) are replaced by any bag.
    Raises BagError before anything could be written.
    """
    bags: list[tuple[Kind, dict[str, bytes]]] = []
    for reply in replies:
        seen: dict[Kind, str] = {}
        for name, kind in bag_field_names(reply):
            value = reply[name]
            if kind in seen:
                raise BagError(
                    name,
                    "duplicateField",
                    f"one reply carries both {seen[kind]!r} and {name!r}",
                    limit=limit,
                )
            seen[kind] = name
            encoded = encode_bag(
                name,
                value,
                limit,
                played.get(kind),
                played_values.get(kind) if played_values is not None else None,
                max_properties=max_properties,
                max_depth=max_depth,
            )
            if encoded is not None:
                bags.append((kind, encoded))

    pending: dict[Kind, PendingChange] = {}
    for kind, encoded in bags:
        base = played.get(kind, {})
        if kind in whole_bag or kind in text_kinds:
            if encoded != base or kind in text_kinds:
                pending[kind] = PendingChange(sets=encoded, replace=True)
            continue
        change = pending.get(kind)
        if change is None:
            change = pending[kind] = PendingChange()
        for name, value in encoded.items():
            if base.get(name) != value:
                change.sets[name] = value
                change.removes.discard(name)
        for name in base:
            if name not in encoded:
                change.removes.add(name)
                change.sets.pop(name, None)
    return {
        kind: change
        for kind, change in pending.items()
        if change.sets or change.removes or change.replace
    }
