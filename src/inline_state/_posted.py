"""Replies POSTed to the channel (not returned inline): where they go and whose records
their bags belong to.

Used by the engine for the client middleware (replies a Python bot POSTs itself) and
the proxy (replies a bot in any language POSTs to it). Keys follow DESIGN section 3: the bot is
the reply's ``from.id``, the user its ``recipient.id``/``to.id``, the conversation the
one in the URL path when there is one, else the body's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ._change import Change
from ._keys import TurnKeys, keys_for
from ._message import Shape, account_id, bag_field_names, detect_shape, increment_field_names
from ._turn import Turn

_V3_REPLY = re.compile(
    r"/v3/conversations/(?P<conversation>[^/]+)/activities(?:/(?P<reply_to>[^/]+))?/?$"
)
_V1_REPLY = re.compile(r"/bot/v1\.0/messages/?$")

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class PostedTarget:
    """What the URL of a POSTed reply tells: its shape and, on v3, the conversation."""

    shape: Shape
    conversation: str | None = None
    reply_to: str | None = None


def posted_target(raw_path: str) -> PostedTarget | None:
    """Recognise the connector paths replies are POSTed to; None for any other path.

    ``raw_path`` is the percent-encoded path, so an id holding ``/`` (``%2F``) stays one
    path segment; ids are decoded once here.
    """
    match = _V3_REPLY.search(raw_path)
    if match is not None:
        reply_to = match["reply_to"]
        return PostedTarget(
            Shape.V3, unquote(match["conversation"]), unquote(reply_to) if reply_to else None
        )
    if _V1_REPLY.search(raw_path) is not None:
        return PostedTarget(Shape.V1)
    return None


def posted_keys(msg: dict[str, Any], target: PostedTarget, turn: Turn | None) -> TurnKeys | None:
    """The records a POSTed reply's bags belong to."""
    shape = detect_shape(msg) or target.shape
    # A reply is addressed the other way round: from = the bot, recipient/to = the user.
    bot = account_id(msg.get("from"))
    if shape is Shape.V3:
        user = account_id(msg.get("recipient"))
        channel = msg.get("channelId") if isinstance(msg.get("channelId"), str) else None
        conversation = target.conversation or account_id(msg.get("conversation"))
    else:
        user = account_id(msg.get("to"))
        channel = None
        conversation = (
            msg.get("conversationId") if isinstance(msg.get("conversationId"), str) else None
        )
    if turn is not None and turn.keys is not None and shape is turn.shape:
        # A v1 later reply without full addressing belongs to the turn it answers.
        own = turn.keys
        known = own.user or own.private or own.conversation
        if known is not None:
            bot = bot or known.bot
            channel = channel if channel is not None else known.channel
            user = user or (own.user.user if own.user else None)
            conversation = conversation or (
                own.conversation.conversation if own.conversation else None
            )
    if bot is None or (shape is Shape.V3 and not channel):
        return None
    return keys_for(bot, channel, conversation, user)


@dataclass(slots=True)
class PendingWrite:
    """A POSTed reply's stamped changes, applied once the channel accepted it."""

    changes: list[Change]
    done: bool = False

    async def apply(self, commit: Callable[[list[Change]], Awaitable[None]]) -> None:
        """Commit once (``Engine.commit``); later calls (retries, redirects) do nothing."""
        if not self.done and self.changes:
            await commit(self.changes)
        self.done = True


def has_bags(msg: dict[str, Any]) -> bool:
    """True when any spelling of a bag field, or of an increments field, is present."""
    return bool(bag_field_names(msg)) or bool(increment_field_names(msg))
