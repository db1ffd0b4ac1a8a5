"""Record keys: which record a message's bag lives in, and its unambiguous encoding."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from ._message import Kind, Shape

__all__ = ["RecordKey", "UserRef"]

_KIND_LETTER: dict[Kind, str] = {"user": "u", "conversation": "c", "private": "p"}


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"%(u[0-9A-Fa-f]{4}|[0-9A-Fa-f]{2})")


def escape_part(part: str) -> str:
    """Escape one id so that ``/`` separates parts and ``{``/``}`` stay ours (hash tags).

    A lone surrogate (JSON can carry ``"\\ud800"``, UTF-8 cannot) becomes ``%uD800``,
    so an encoded key is always valid UTF-8 for SQLite, Redis and the export cursor.
    """
    if "%" in part:
        part = part.replace("%", "%25")
    if "/" in part:
        part = part.replace("/", "%2F")
    if "{" in part or "}" in part:
        part = part.replace("{", "%7B").replace("}", "%7D")
    if not part.isascii() and _SURROGATE.search(part) is not None:
        part = _SURROGATE.sub(lambda m: f"%u{ord(m.group()):04X}", part)
    return part


def _unescape_match(match: re.Match[str]) -> str:
    code = match.group(1)
    return chr(int(code[1:] if code[0] in "uU" else code, 16))


def unescape_part(part: str) -> str:
    """The inverse of ``escape_part``."""
    return _ESCAPE.sub(_unescape_match, part) if "%" in part else part


class UserRef(NamedTuple):
    """A user of one bot: the owner of a user record and its per-conversation records.

    ``channel`` is None for v1, whose user ids are global across channels.
    """

    bot: str
    channel: str | None
    user: str

    def encode(self) -> str:
        """The stable string form used by stores (user index, deletion stamp)."""
        return f"{_namespace(self.bot, self.channel)}/u/{escape_part(self.user)}"


class RecordKey(NamedTuple):
    """The address of one record.

    ``channel`` is None for v1 records (their own namespace). ``conversation`` is empty
    for user records and ``user`` is empty for conversation records.
    """

    kind: Kind
    bot: str
    channel: str | None
    conversation: str
    user: str

    @property
    def owner(self) -> UserRef | None:
        """The user whose data this is (user and private records), else None."""
        if self.kind == "conversation":
            return None
        return UserRef(self.bot, self.channel, self.user)

    def encode(self) -> str:
        """Encode unambiguously: every id is escaped, parts are separated by ``/``."""
        return _encode_key(self)


@functools.lru_cache(maxsize=1024)
def _encode_key(key: RecordKey) -> str:
    # A turn encodes its keys several times (load, apply, index) within microseconds:
    # a small cache of recent ones is enough and costs no memory per stored user.
    prefix = _namespace(key.bot, key.channel)
    if key.kind == "user":
        return f"{prefix}/u/{escape_part(key.user)}"
    if key.kind == "conversation":
        return f"{prefix}/c/{escape_part(key.conversation)}"
    return f"{prefix}/p/{escape_part(key.user)}/{escape_part(key.conversation)}"


def _namespace(bot: str, channel: str | None) -> str:
    if channel is None:
        return f"v1/{escape_part(bot)}"
    return f"v3/{escape_part(bot)}/{escape_part(channel)}"


def namespace_prefix(bot: str, channel: str | None) -> str:
    """The prefix every encoded key of one bot on one channel starts with."""
    return _namespace(bot, channel) + "/"


def listing_prefix(bot: str, channel: str | None, kind: Kind, prefix: str) -> str:
    """The prefix of the encoded keys of one kind whose first id (the user's for user and
    private records, the conversation's for conversation records) starts with
    ``prefix``: escaping works character by character, so it keeps prefixes."""
    return f"{_namespace(bot, channel)}/{_KIND_LETTER[kind]}/{escape_part(prefix)}"


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None when its
    last character is the highest code point)."""
    following = ord(prefix[-1]) + 1
    if following > 0x10FFFF:
        return None
    if 0xD800 <= following <= 0xDFFF:  # encoded keys hold no surrogates, SQLite takes none
        following = 0xE000
    return prefix[:-1] + chr(following)


def sorted_channels(channels: Iterable[str | None]) -> list[str | None]:
    """Channels in the order ``Store.channels`` gives them: None (v1) first, then by id."""
    return sorted(channels, key=lambda channel: (channel is not None, channel or ""))


def channel_of(encoded: str) -> str | None:
    """The channel of an encoded v3 key (None for a v1 key)."""
    if encoded.startswith("v1/"):
        return None
    return unescape_part(encoded.split("/", 3)[2])


class TurnKeys(NamedTuple):
    """The keys of the three records a turn reads, each None when its ids are missing."""

    user: RecordKey | None
    conversation: RecordKey | None
    private: RecordKey | None

    def of(self, kind: Kind) -> RecordKey | None:
        """The key of one kind."""
        if kind == "user":
            return self.user
        if kind == "conversation":
            return self.conversation
        return self.private


_new_key = tuple.__new__  # a NamedTuple without its Python-level __new__ (every turn)


def turn_keys(msg: dict[str, Any], shape: Shape) -> TurnKeys | None:
    """Keys for an incoming message; None when it names no bot (or, on v3, no channel).

    An id is a non-empty string; anything else there counts as missing.
    """
    get = msg.get
    if shape is Shape.V3:
        channel = get("channelId")
        if type(channel) is not str or not channel:
            return None
        bot_account, conversation = get("recipient"), get("conversation")
        conversation = conversation.get("id") if type(conversation) is dict else None
    else:
        bot_account, conversation, channel = get("to"), get("conversationId"), None
    bot = bot_account.get("id") if type(bot_account) is dict else None
    if type(bot) is not str or not bot:
        return None
    user = get("from")
    user = user.get("id") if type(user) is dict else None
    if type(user) is not str:
        user = None
    if type(conversation) is not str:
        conversation = None
    return keys_for(bot, channel, conversation, user)


def keys_for(bot: str, channel: str | None, conversation: str | None, user: str | None) -> TurnKeys:
    """The keys of the three records of a bot, channel, conversation and user (a key is
    None when its ids are missing)."""
    return _new_key(
        TurnKeys,
        (
            _new_key(RecordKey, ("user", bot, channel, "", user)) if user else None,
            _new_key(RecordKey, ("conversation", bot, channel, conversation, ""))
            if conversation
            else None,
            _new_key(RecordKey, ("private", bot, channel, conversation, user))
            if user and conversation
            else None,
        ),
    )


_KIND_OF_LETTER: dict[str, Kind] = {"u": "user", "c": "conversation", "p": "private"}


def decode_key(encoded: str) -> RecordKey:
    """The inverse of ``RecordKey.encode``."""
    parts = [unescape_part(p) for p in encoded.split("/")]
    if parts[0] == "v1":
        bot, channel, rest = parts[1], None, parts[2:]
    elif parts[0] == "v3":
        bot, channel, rest = parts[1], parts[2], parts[3:]
    else:
        raise ValueError(f"not an encoded record key: {encoded!r}")
    kind = _KIND_OF_LETTER[rest[0]]
    if kind == "user":
        return RecordKey(kind, bot, channel, "", rest[1])
    if kind == "conversation":
        return RecordKey(kind, bot, channel, rest[1], "")
    return RecordKey(kind, bot, channel, rest[2], rest[1])
