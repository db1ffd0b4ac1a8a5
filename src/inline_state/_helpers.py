"""Typed helpers over the three bags, after the v1 C# extension methods, and create_reply.

Bags are attached to replies copy-on-write: ``set_*``/``del_*`` on a reply without a bag
start from the turn's played-back bag, so they never drop other properties, and a reply
nobody touched carries no bag at all.

A message is a ``dict`` or an SDK activity object whose bag fields were enabled
(``inline_state.agents.enable()`` or ``inline_state.botbuilder.enable()``): there the
bags are attributes under their wire names (``activity.botUserData``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._message import (
    FIELD_OF_KIND,
    INCREMENT_FIELD_OF_KIND,
    Kind,
    Shape,
    activity_address,
    detect_shape,
    kind_of_field,
)
from ._turn import _current

__all__ = [
    "create_reply",
    "del_conversation_data",
    "del_private_conversation_data",
    "del_user_data",
    "get_conversation_data",
    "get_private_conversation_data",
    "get_user_data",
    "incr_conversation_data",
    "incr_private_conversation_data",
    "incr_user_data",
    "set_conversation_data",
    "set_private_conversation_data",
    "set_user_data",
]

T = TypeVar("T")
Message = dict[str, Any]
_MISSING: Any = object()


def _check_carries(msg: object, field: str) -> None:
    """Refuse an SDK activity that would drop the field silently (switch not enabled)."""
    cls = type(msg)
    attribute_map = getattr(cls, "_attribute_map", None)  # msrest models (botbuilder)
    if isinstance(attribute_map, dict) and field not in attribute_map:
        raise TypeError(
            f"{cls.__name__} does not carry {field}: call inline_state.botbuilder.enable() "
            "once at start-up"
        )
    config = getattr(cls, "model_config", None)  # pydantic models (Agents SDK)
    if isinstance(config, dict) and config.get("extra") != "allow":
        raise TypeError(
            f"{cls.__name__} does not carry {field}: call inline_state.agents.enable() "
            "once at start-up"
        )


def _read_bag(msg: object, kind: Kind) -> dict[str, Any] | None:
    field = FIELD_OF_KIND[kind]
    if isinstance(msg, dict):
        bag = msg.get(field)
        if bag is None:  # tolerate other spellings on messages built by hand
            for name, value in msg.items():
                if kind_of_field(name) == kind:
                    bag = value
                    break
    else:
        _check_carries(msg, field)
        bag = getattr(msg, field, None)
    return bag if isinstance(bag, dict) else None


def _writable_bag(msg: object, kind: Kind) -> dict[str, Any]:
    """The reply's bag of ``kind``, attached first if it has none: copy-on-write from the
    played-back bag, only for a reply to the same record (a message to another user must
    not inherit this user's data)."""
    field = FIELD_OF_KIND[kind]
    if isinstance(msg, dict):
        bag = msg.get(field)
        if isinstance(bag, dict):
            return bag
        turn = _current.get()
        fresh = turn.reply_bag(msg, kind) if turn is not None else {}
        msg[field] = fresh
        return fresh
    _check_carries(msg, field)
    bag = getattr(msg, field, None)
    if isinstance(bag, dict):
        return bag
    turn = _current.get()
    # An SDK activity: its addressing attributes, set once it is sent (or by the bot).
    if turn is not None and turn.owns(kind, *activity_address(msg, "recipient")):
        fresh = turn.bag(kind)
    else:
        fresh = {}
    setattr(msg, field, fresh)
    return fresh


def _get(msg: object, kind: Kind, name: str, default: Any, as_type: Any) -> Any:
    bag = msg.get(FIELD_OF_KIND[kind]) if type(msg) is dict else None
    if type(bag) is not dict:  # another spelling, an SDK activity, or no bag
        bag = _read_bag(msg, kind)
    value = bag.get(name, _MISSING) if bag is not None else _MISSING
    if value is _MISSING:
        return default
    if as_type is None or value is None:
        return value
    if isinstance(as_type, type) and dataclasses.is_dataclass(as_type) and isinstance(value, dict):
        return as_type(**value)
    return as_type(value)


_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})


def _to_json_value(value: Any) -> Any:
    plain = type(value) in _PLAIN
    if not plain and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _set(msg: object, kind: Kind, name: str, value: Any) -> None:
    bag = _writable_bag(msg, kind)
    bag[name] = value if type(value) in _PLAIN else _to_json_value(value)


def _del(msg: object, kind: Kind, name: str) -> None:
    _writable_bag(msg, kind).pop(name, None)


def _incr(msg: object, kind: Kind, name: str, by: int) -> None:
    if type(by) is not int:
        raise TypeError(f"an increment is an integer, got {type(by).__name__}")
    if not isinstance(msg, dict):
        raise TypeError(
            "increments are recorded on dict replies only (an SDK activity does not carry"
            f" {INCREMENT_FIELD_OF_KIND[kind]})"
        )
    field = INCREMENT_FIELD_OF_KIND[kind]
    increments = msg.get(field)
    if not isinstance(increments, dict):
        increments = msg[field] = {}
    increments[name] = increments.get(name, 0) + by


@overload
def get_user_data(msg: object, name: str, default: Any = None) -> Any: ...
@overload
def get_user_data(
    msg: object, name: str, default: Any = None, *, type: Callable[[Any], T]
) -> T: ...
def get_user_data(msg: object, name: str, default: Any = None, *, type: Any = None) -> Any:
    """A property of ``botUserData``, or ``default``; ``type`` converts (a dataclass, say)."""
    return _get(msg, "user", name, default, type)


def set_user_data(msg: object, name: str, value: Any) -> None:
    """Set a property of the reply's ``botUserData`` (a dataclass is stored as a dict)."""
    _set(msg, "user", name, value)


def del_user_data(msg: object, name: str) -> None:
    """Remove a property from the reply's ``botUserData``."""
    _del(msg, "user", name)


def incr_user_data(msg: object, name: str, by: int = 1) -> None:
    """Add ``by`` to a ``botUserData`` number, exactly: overlapping turns that each add
    to it all count (the reply records the increment, not a value; the next turn plays
    the sum back)."""
    _incr(msg, "user", name, by)


@overload
def get_conversation_data(msg: object, name: str, default: Any = None) -> Any: ...
@overload
def get_conversation_data(
    msg: object, name: str, default: Any = None, *, type: Callable[[Any], T]
) -> T: ...
def get_conversation_data(msg: object, name: str, default: Any = None, *, type: Any = None) -> Any:
    """A property of ``botConversationData``, or ``default``; ``type`` converts."""
    return _get(msg, "conversation", name, default, type)


def set_conversation_data(msg: object, name: str, value: Any) -> None:
    """Set a property of the reply's ``botConversationData``."""
    _set(msg, "conversation", name, value)


def del_conversation_data(msg: object, name: str) -> None:
    """Remove a property from the reply's ``botConversationData``."""
    _del(msg, "conversation", name)


def incr_conversation_data(msg: object, name: str, by: int = 1) -> None:
    """Add ``by`` to a ``botConversationData`` number, exactly (see ``incr_user_data``)."""
    _incr(msg, "conversation", name, by)


@overload
def get_private_conversation_data(msg: object, name: str, default: Any = None) -> Any: ...
@overload
def get_private_conversation_data(
    msg: object, name: str, default: Any = None, *, type: Callable[[Any], T]
) -> T: ...
def get_private_conversation_data(
    msg: object, name: str, default: Any = None, *, type: Any = None
) -> Any:
    """A property of ``botPerUserInConversationData``, or ``default``; ``type`` converts."""
    return _get(msg, "private", name, default, type)


def set_private_conversation_data(msg: object, name: str, value: Any) -> None:
    """Set a property of the reply's ``botPerUserInConversationData``."""
    _set(msg, "private", name, value)


def del_private_conversation_data(msg: object, name: str) -> None:
    """Remove a property from the reply's ``botPerUserInConversationData``."""
    _del(msg, "private", name)


def incr_private_conversation_data(msg: object, name: str, by: int = 1) -> None:
    """Add ``by`` to a ``botPerUserInConversationData`` number, exactly (see
    ``incr_user_data``)."""
    _incr(msg, "private", name, by)


def create_reply(msg: Message, text: str = "") -> Message:
    """A reply addressed back to the sender of ``msg`` (v1 Message or v3 Activity)."""
    if detect_shape(msg) is Shape.V1:
        reply: Message = {
            "type": "Message",
            "from": msg.get("to"),
            "to": msg.get("from"),
            "conversationId": msg.get("conversationId"),
            "replyToMessageId": msg.get("id"),
            "text": text,
        }
    else:
        reply = {
            "type": "message",
            "channelId": msg.get("channelId"),
            "serviceUrl": msg.get("serviceUrl"),
            "conversation": msg.get("conversation"),
            "from": msg.get("recipient"),
            "recipient": msg.get("from"),
            "replyToId": msg.get("id"),
            "text": text,
        }
    return {k: v for k, v in reply.items() if v is not None}
