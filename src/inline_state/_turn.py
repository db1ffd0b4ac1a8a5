"""What one incoming message played back, kept immutable for the whole turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import orjson

from ._codec import join_bag
from ._counters import Counters
from ._keys import TurnKeys
from ._message import FIELD_OF_KIND, KINDS, Kind, Shape

__all__ = ["Turn", "current_turn"]

_EMPTY: Mapping[str, bytes] = MappingProxyType({})
_INDEX: dict[Kind, int] = {kind: index for index, kind in enumerate(KINDS)}


_NO_COUNTERS: Mapping[Kind, Counters] = MappingProxyType({})


class Turn:
    """The played-back state of one turn: replies are diffed against it.

    ``played`` maps each record kind to its properties as canonical JSON bytes (a
    read-only mapping of immutable bytes). ``keys`` is None when the incoming message
    named no bot, in which case nothing is loaded or persisted.
    """

    __slots__ = (
        "_decoded",
        "_json",
        "_message",
        "_shown",
        "base",
        "counters",
        "deleted",
        "keys",
        "played",
        "shape",
        "text_kinds",
    )

    def __init__(
        self,
        shape: Shape,
        keys: TurnKeys | None,
        played: Mapping[Kind, Mapping[str, bytes]],
        *,
        message: dict[str, Any],
        text_kinds: frozenset[Kind] = frozenset(),
        base: int = 0,
        deleted: bool = False,
        counters: Mapping[Kind, Counters] | None = None,
    ) -> None:
        self.shape = shape
        self.keys = keys
        # Values are immutable bytes in a read-only view; the bot only ever gets decoded
        # copies, so the snapshot the replies are diffed against cannot change.
        self.played: Mapping[Kind, Mapping[str, bytes]] = MappingProxyType(played)
        self.text_kinds = text_kinds
        self.base = base
        self.deleted = deleted
        # The records of kinds holding counters, as stored (parsed: _counters).
        self.counters: Mapping[Kind, Counters] = counters or _NO_COUNTERS
        self._message = message
        self._decoded: dict[Kind, dict[str, Any]] = {}
        self._json: dict[Kind, bytes] = {}
        self._shown = False

    def bag_json(self, kind: Kind) -> bytes:
        """The played-back bag of one kind as JSON bytes (joined once per turn)."""
        data = self._json.get(kind)
        if data is None:
            data = self._json[kind] = join_bag(self.played.get(kind, _EMPTY))
        return data

    def owns(
        self, kind: Kind, channel: str | None, conversation: str | None, user: str | None
    ) -> bool:
        """Whether a message with these ids belongs to this turn's record of ``kind``.

        Ids given as None are unknown and match; a reply built without addressing
        (the usual case) belongs to the turn it answers.
        """
        keys = self.keys
        if keys is None:
            return False
        key = (
            keys.user
            if kind == "user"
            else keys.conversation
            if kind == "conversation"
            else keys.private
        )
        if key is None:
            return False
        if channel is not None and key.channel is not None and channel != key.channel:
            return False
        if kind != "conversation" and user is not None and user != key.user:
            return False
        return kind == "user" or conversation is None or conversation == key.conversation

    def played_bag(self, kind: Kind) -> Mapping[str, bytes]:
        """The played-back properties of one kind (empty when nothing was stored)."""
        return self.played.get(kind, _EMPTY)

    @property
    def decoded(self) -> Mapping[Kind, Mapping[str, Any]]:
        """The played-back bags decoded so far (the objects the bot's copies share)."""
        return self._decoded

    def bag(self, kind: Kind) -> dict[str, Any]:
        """A decoded copy of the played-back bag of one kind (its top level is copied)."""
        decoded = self._decoded.get(kind)
        if decoded is None:
            props = self.played.get(kind)
            if props is None:
                return {}
            data = self._json.get(kind)
            if data is None:
                data = self._json[kind] = join_bag(props)
            decoded = self._decoded[kind] = (
                orjson.loads(data) if len(data) < _LONG else _decode_long(props, data)
            )
        return decoded.copy()

    def reply_bag(self, reply: dict[str, Any], kind: Kind) -> dict[str, Any]:
        """The bag a reply starts from when the bot first sets a property of ``kind``:
        a copy of the played one if the reply goes to this turn's record, else empty.

        ``owns`` with the reply's addressing, reading only the ids ``kind`` depends on.
        """
        if kind not in self.played or self.keys is None:
            return {}
        get = reply.get
        if "conversationId" in reply or "to" in reply:  # v1 addressing
            conversation, account = get("conversationId"), get("to")
            conversation = conversation if type(conversation) is str and conversation else None
            user = account.get("id") if type(account) is dict else None
            user = user if type(user) is str and user else None
            return self.bag(kind) if self.owns(kind, None, conversation, user) else {}
        key = self.keys[_INDEX[kind]]
        if key is None:
            return {}
        channel = get("channelId")
        if type(channel) is str and channel and key.channel is not None and channel != key.channel:
            return {}
        if kind != "conversation":
            account = get("recipient")
            user = account.get("id") if type(account) is dict else None
            if type(user) is str and user and user != key.user:
                return {}
        if kind != "user":
            conversation = get("conversation")
            conversation = conversation.get("id") if type(conversation) is dict else None
            if type(conversation) is str and conversation and conversation != key.conversation:
                return {}
        return self.bag(kind)

    @property
    def message(self) -> dict[str, Any]:
        """The incoming message as the bot sees it, bags included (parsed once)."""
        msg = self._message
        if self.played and not self._shown:
            self._shown = True
            for kind in self.played:
                field = FIELD_OF_KIND[kind]
                if field not in msg:
                    msg[field] = self.bag(kind)
        return msg


# A long string value is decoded once and shared by the turns that play it back: strings
# are immutable, so no bot can change what another turn sees, and an unchanged one is
# then the very object the diff recognizes (its stored bytes are reused, not encoded
# again). Without this a 60 KiB string costs a 60 KiB parse every turn. Keyed by the
# stored bytes; least recently used first; bounded by what it holds (the stored bytes and
# the decoded strings both count). Helpers may run in threads (asyncio.to_thread): the
# table changes under a lock.
_LONG = 4096
_STRINGS: dict[bytes, str] = {}
_STRINGS_MAX_BYTES = 16 * 1024 * 1024
_strings_bytes = 0
_strings_lock = threading.Lock()


def _decode_long(props: Mapping[str, bytes], data: bytes) -> dict[str, Any]:
    """A long bag decoded: long strings from the shared table, the rest parsed at once."""
    global _strings_bytes
    strings: dict[str, str] = {}
    rest: dict[str, bytes] = {}
    for name, value in props.items():
        if len(value) < _LONG or value[:1] != b'"':
            rest[name] = value
            continue
        with _strings_lock:
            text = _STRINGS.pop(value, None)
            if text is not None:
                _STRINGS[value] = text  # most recently used last
        if text is None:
            text = orjson.loads(value)
            cost = 2 * len(value)
            if cost <= _STRINGS_MAX_BYTES:
                with _strings_lock:
                    if value not in _STRINGS:
                        while _STRINGS and _strings_bytes + cost > _STRINGS_MAX_BYTES:
                            oldest = next(iter(_STRINGS))
                            del _STRINGS[oldest]
                            _strings_bytes -= 2 * len(oldest)
                        _STRINGS[value] = text
                        _strings_bytes += cost
        strings[name] = text
    if not strings:
        decoded: dict[str, Any] = orjson.loads(data)
        return decoded
    parsed = orjson.loads(join_bag(rest)) if rest else {}
    return {name: strings[name] if name in strings else parsed[name] for name in props}


_current: ContextVar[Turn | None] = ContextVar("inline_state_turn", default=None)


def current_turn() -> Turn | None:
    """The turn being handled in this task, or None outside a turn."""
    return _current.get()


@contextmanager
def outside_turn() -> Iterator[None]:
    """Run a block as if outside any turn (an SDK's proactive turn inside a request)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
