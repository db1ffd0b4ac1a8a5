"""Wire shapes: v1 Messages and v3 Activities, reply addresses, and the three bag fields.

Pure functions over parsed JSON (``dict``/``list``); no aiohttp, no store.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from typing import Any, Literal

__all__: list[str] = []

Kind = Literal["user", "conversation", "private"]
KINDS: tuple[Kind, ...] = ("user", "conversation", "private")

#: The lowerCamel wire names we always emit, by record kind.
FIELD_OF_KIND: dict[Kind, str] = {
    "user": "botUserData",
    "conversation": "botConversationData",
    "private": "botPerUserInConversationData",
}
BAG_FIELDS: tuple[str, ...] = tuple(FIELD_OF_KIND.values())

# Every spelling is matched case-insensitively; the doc variant without "In" too.
_KIND_OF_LOWERED: dict[str, Kind] = {
    "botuserdata": "user",
    "botconversationdata": "conversation",
    "botperuserinconversationdata": "private",
    "botperuserconversationdata": "private",
}

#: Where a bot whose SDK drops unknown activity fields puts its bags instead (every SDK
#: keeps ``channelData`` as it is): ``{"channelData": {"inlineState": {"botUserData":
#: ...}}}``. ``lifted`` reads them as if at the top under this prefix, so a bag given in
#: both places is two spellings of one bag.
CHANNEL_DATA, NAMESPACE = "channelData", "inlineState"
_CHANNEL_DATA_LOWERED, _NAMESPACE_LOWERED = CHANNEL_DATA.lower(), NAMESPACE.lower()
LIFTED_PREFIX = f"{CHANNEL_DATA}.{NAMESPACE}."
_FIELD_KINDS = dict(_KIND_OF_LOWERED)  # the names under channelData.inlineState
_KIND_OF_LOWERED.update({LIFTED_PREFIX.lower() + name: k for name, k in _FIELD_KINDS.items()})

#: Where a reply records increments instead of values (exact counters), by record kind:
#: ``{"botUserDataIncrements": {"count": 1}}``; any case, and under
#: ``channelData.inlineState`` too, like the bags.
INCREMENT_FIELD_OF_KIND: dict[Kind, str] = {
    kind: field + "Increments" for kind, field in FIELD_OF_KIND.items()
}
_INCREMENT_FIELD_KINDS = {name + "increments": kind for name, kind in _FIELD_KINDS.items()}
_INCREMENT_KIND_OF_LOWERED = dict(_INCREMENT_FIELD_KINDS)
_INCREMENT_KIND_OF_LOWERED.update(
    {LIFTED_PREFIX.lower() + name: k for name, k in _INCREMENT_FIELD_KINDS.items()}
)

# Lowercase substrings that any spelling of a bag field contains. Used to skip parsing
# reply bodies that cannot carry a bag (JSON escapes are checked separately).
BAG_MARKERS: tuple[bytes, ...] = (b"botuserdata", b"botconversationdata", b"botperuser")

_V1_TYPES = frozenset(
    {
        "Message",
        "Ping",
        "DeleteUserData",
        "BotAddedToConversation",
        "BotRemovedFromConversation",
        "UserAddedToConversation",
        "UserRemovedFromConversation",
        "EndOfConversation",
    }
)


class Shape(enum.Enum):
    """Which Bot Framework generation a message belongs to."""

    V1 = "v1"
    V3 = "v3"


def kind_of_field(name: object) -> Kind | None:
    """The record kind a field name (any spelling) stands for, or None."""
    return _KIND_OF_LOWERED.get(name.lower()) if isinstance(name, str) else None


def detect_shape(msg: dict[str, Any]) -> Shape | None:
    """Tell a v3 Activity from a v1 Message; None for anything else."""
    if isinstance(msg.get("conversation"), dict) or "recipient" in msg or "channelId" in msg:
        return Shape.V3
    if "conversationId" in msg or "to" in msg:
        return Shape.V1
    kind = msg.get("type")
    if isinstance(kind, str) and kind in _V1_TYPES:
        return Shape.V1
    return None


# Keys seen not to be bag fields ("type", "text", ...): messages carry the same dozen, and
# one set difference in C passes over all of them. Bounded: ids never land here, and a
# client sending odd keys only makes the scan slower, never wrong.
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_LIMIT = 512


_KIND_OF_CANONICAL: dict[str, Kind] = {field: kind for kind, field in FIELD_OF_KIND.items()}
# Every set of the names we emit, with its answer: most messages carry only these.
_INCREMENT_OF_CANONICAL: dict[str, Kind] = {
    field + "Increments": kind for kind, field in FIELD_OF_KIND.items()
}
_CANONICAL = (*BAG_FIELDS, *_INCREMENT_OF_CANONICAL)
# Every set of the names we emit (bags and increments), with the bag fields among them.
_FIELDS_OF_CANONICAL: dict[frozenset[str], tuple[tuple[str, Kind], ...]] = {
    frozenset(names): tuple(
        (name, _KIND_OF_CANONICAL[name]) for name in names if name in BAG_FIELDS
    )
    for count in range(1, len(_CANONICAL) + 1)
    for names in itertools.combinations(_CANONICAL, count)
}


_CANONICAL_SET = frozenset(_CANONICAL)


def bag_field_names(msg: dict[Any, Any]) -> Sequence[tuple[str, Kind]]:
    """(spelling, kind) of every bag field in ``msg`` (any spelling), in no set order.

    A tuple when every name is one we emit (so no kind appears twice); a list otherwise.
    """
    rest = msg.keys() - _PLAIN_KEYS
    if not rest:
        return ()
    canonical = _FIELDS_OF_CANONICAL.get(frozenset(rest))
    if canonical is not None:
        return canonical
    found: list[tuple[str, Kind]] = []
    for name in rest:
        if not isinstance(name, str):
            continue
        # Every spelling starts with b/B (c when lifted); most fields skip the lower() call.
        kind = _KIND_OF_LOWERED.get(name.lower()) if name[:1] in "bBc" else None
        if kind is not None:
            found.append((name, kind))
        elif (
            type(name) is str
            and len(_PLAIN_KEYS) < _PLAIN_KEYS_LIMIT
            and (name == CHANNEL_DATA or name.lower() != _CHANNEL_DATA_LOWERED)
            and name.lower() not in _INCREMENT_KIND_OF_LOWERED
        ):
            _PLAIN_KEYS.add(name)
    return found


def increment_field_names(msg: dict[Any, Any]) -> list[tuple[str, Kind]]:
    """(spelling, kind) of every increments field in ``msg`` (any spelling)."""
    rest = msg.keys() - _PLAIN_KEYS
    if not rest:
        return []
    if rest <= _CANONICAL_SET:  # only names we emit: one lookup each
        return [(n, k) for n in rest if (k := _INCREMENT_OF_CANONICAL.get(n)) is not None]
    return [
        (name, kind)
        for name in rest
        if isinstance(name, str)
        and name[:1] in "bBc"
        and (kind := _INCREMENT_KIND_OF_LOWERED.get(name.lower())) is not None
    ]


def lifted(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` as a reply's bags are read from it: ``msg`` itself when nothing is under
    ``channelData.inlineState``, else a shallow copy with those bags at the top, each
    named ``LIFTED_PREFIX`` + its field (so a bag also given at the top is two spellings
    of one bag). ``msg`` is never changed."""
    data = msg.get(CHANNEL_DATA)
    if type(data) is not dict:
        return msg
    spaced = data.get(NAMESPACE)
    if type(spaced) is not dict:
        return msg
    bags = {
        LIFTED_PREFIX + name: value
        for name, value in spaced.items()
        if isinstance(name, str)
        and (name.lower() in _FIELD_KINDS or name.lower() in _INCREMENT_FIELD_KINDS)
    }
    return {**msg, **bags} if bags else msg


def strip_bags(msg: dict[str, Any]) -> bool:
    """Remove every spelling of the three fields from ``msg``, those under
    ``channelData.inlineState`` too (both names in any case: a client must not slip a bag
    past us to a bot that reads them case-insensitively); True if anything was removed.

    A ``channelData`` that held bags is replaced by a copy without them, never changed in
    place (a bot may share it between replies); an ``inlineState``, then a
    ``channelData``, left empty is removed; one that is not an object is left alone.
    """
    found = [*bag_field_names(msg), *increment_field_names(msg)]
    for name, _ in found:
        del msg[name]
    removed = bool(found)
    for name in _channel_data_names(msg):
        removed = _strip_spaced(msg, name) or removed
    return removed


def has_spaced_bags(msg: dict[str, Any]) -> bool:
    """True when a ``channelData.inlineState`` of ``msg`` (any case) holds a bag."""
    return any(_spaced_bags(msg[name]) for name in _channel_data_names(msg))


def _channel_data_names(msg: dict[str, Any]) -> list[str]:
    # "channelData" itself is one lookup; another case of it is never a plain key (see
    # bag_field_names), so it is among the keys the set difference leaves.
    names = [CHANNEL_DATA] if type(msg.get(CHANNEL_DATA)) is dict else []
    rest = msg.keys() - _PLAIN_KEYS
    if rest:
        names += [
            n
            for n in rest
            if type(n) is str and n != CHANNEL_DATA and n.lower() == _CHANNEL_DATA_LOWERED
        ]
    return names


def _spaced_bags(data: Any) -> list[tuple[str, list[str]]]:
    """(namespace spelling, its bag names) for every ``inlineState`` (any case) in a
    ``channelData``."""
    if type(data) is not dict:
        return []
    found = []
    for name, spaced in data.items():
        if type(name) is str and name.lower() == _NAMESPACE_LOWERED and type(spaced) is dict:
            bags = [
                n
                for n in spaced
                if isinstance(n, str)
                and (n.lower() in _FIELD_KINDS or n.lower() in _INCREMENT_FIELD_KINDS)
            ]
            if bags:
                found.append((name, bags))
    return found


def _strip_spaced(msg: dict[str, Any], name: str) -> bool:
    found = _spaced_bags(msg[name])
    if not found:
        return False
    data = dict(msg[name])
    for namespace, bags in found:
        rest = {k: v for k, v in data[namespace].items() if k not in bags}
        if rest:
            data[namespace] = rest
        else:
            del data[namespace]
    if data:
        msg[name] = data
    else:
        del msg[name]
    return True


def strip_nested_bags(value: Any, *, dry_run: bool) -> bool:
    """Bags at the top of a message, of a list of messages, or of the messages under
    ``activity``/``activities`` (batch sends, a conversation's history), those under
    ``channelData.inlineState`` too; True when there were any."""
    found = False
    if isinstance(value, list):
        for item in value:
            found = strip_nested_bags(item, dry_run=dry_run) or found
        return found
    if not isinstance(value, dict):
        return False
    found = (
        (
            bool(bag_field_names(value))
            or bool(increment_field_names(value))
            or has_spaced_bags(value)
        )
        if dry_run
        else strip_bags(value)
    )
    for nested in ("activity", "activities"):
        inner = value.get(nested)
        if isinstance(inner, (dict, list)):
            found = strip_nested_bags(inner, dry_run=dry_run) or found
    return found


def may_carry_bags(raw: bytes | bytearray) -> bool:
    """False when a JSON body cannot hold any spelling of a bag field (skip parsing it)."""
    lowered = raw.lower()
    return b"\\u" in raw or any(marker in lowered for marker in BAG_MARKERS)


def may_hide_bags(raw: bytes | bytearray) -> bool:
    """``may_carry_bags`` for bytes in any charset: UTF-16 and UTF-32 hide the ASCII
    markers between NUL bytes."""
    return may_carry_bags(raw) or may_carry_bags(raw.replace(b"\0", b""))


def account_id(account: Any) -> str | None:
    """The non-empty ``id`` of a channel account given as a JSON object, else None."""
    if isinstance(account, dict):
        ident = account.get("id")
        if isinstance(ident, str) and ident:
            return ident
    return None


def activity_address(
    activity: object, user_field: str
) -> tuple[str | None, str | None, str | None]:
    """(channel, conversation, user) of an SDK activity object; both SDKs name the
    attributes alike (``channel_id``, ``conversation``, ``from_property``, ``recipient``).
    ``user_field`` is ``from_property`` for an incoming activity, ``recipient`` for a reply.
    """
    channel = getattr(activity, "channel_id", None)
    ids = [
        getattr(getattr(activity, name, None), "id", None) for name in ("conversation", user_field)
    ]
    conversation, user = (ident if isinstance(ident, str) and ident else None for ident in ids)
    return (channel if isinstance(channel, str) and channel else None), conversation, user


def reply_messages(body: Any) -> list[dict[str, Any]] | None:
    """The messages in a reply body: one message, a list, or ``{"activities": [...]}``.

    Returns None when the body has none of these shapes.
    """
    if isinstance(body, dict):
        activities = body.get("activities")
        if isinstance(activities, list) and "type" not in body:
            return [m for m in activities if isinstance(m, dict)]
        return [body]
    if isinstance(body, list):
        return [m for m in body if isinstance(m, dict)]
    return None
