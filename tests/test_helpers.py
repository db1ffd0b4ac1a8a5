"""Typed helpers and create_reply, inside real turns and on plain dicts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

import inline_state
from inline_state import (
    create_reply,
    del_user_data,
    get_conversation_data,
    get_private_conversation_data,
    get_user_data,
    set_conversation_data,
    set_private_conversation_data,
    set_user_data,
)

from .support import Client, activity, echo_app, post, v1_message

StartFn = Callable[[web.Application], Awaitable[Client]]


@dataclass
class Profile:
    name: str = ""
    tags: list[str] = field(default_factory=list)


def test_get_with_default_type_and_dataclass() -> None:
    msg = {"botUserData": {"n": "7", "profile": {"name": "Ada", "tags": ["x"]}, "none": None}}
    assert get_user_data(msg, "n") == "7"
    assert get_user_data(msg, "n", type=int) == 7
    assert get_user_data(msg, "missing", 5) == 5
    assert get_user_data(msg, "none", 5) is None, "a stored null is a value"
    assert get_user_data(msg, "profile", type=Profile) == Profile("Ada", ["x"])
    assert get_conversation_data(msg, "n", "default") == "default"
    assert get_private_conversation_data({}, "x") is None
    assert get_user_data({"BotUserData": {"a": 1}}, "a") == 1, "other spellings are read too"


def test_set_outside_a_turn_starts_from_an_empty_bag() -> None:
    reply: dict[str, Any] = {}
    set_user_data(reply, "profile", Profile("Ada"))
    set_conversation_data(reply, "n", 1)
    assert reply == {
        "botUserData": {"profile": {"name": "Ada", "tags": []}},
        "botConversationData": {"n": 1},
    }
    del_user_data(reply, "profile")
    assert reply["botUserData"] == {}


def test_create_reply_addresses_the_sender() -> None:
    incoming = activity(user="u", bot="b", conversation="c", channel="ch")
    reply = create_reply(incoming, "hello")
    assert reply["from"]["id"] == "b"
    assert reply["recipient"]["id"] == "u"
    assert reply["conversation"] == {"id": "c"}
    assert reply["channelId"] == "ch"
    assert reply["replyToId"] == incoming["id"]
    assert reply["text"] == "hello"
    v1 = create_reply(v1_message(user="u", bot="b", conversation="c"), "hi")
    assert (v1["type"], v1["from"]["id"], v1["to"]["id"], v1["conversationId"]) == (
        "Message",
        "b",
        "u",
        "c",
    )


async def test_copy_on_write_keeps_the_other_played_properties(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        replies = [create_reply(msg, "first"), create_reply(msg, "untouched")]
        set_user_data(replies[0], "turns", get_user_data(msg, "turns", 0) + 1)
        if msg["text"] == "forget":
            del_user_data(replies[0], "name")
        elif msg["text"] != "hi":
            set_user_data(replies[0], "name", msg["text"])
        return {"activities": replies}

    app, seen = echo_app(bot)
    client = await client_for(app)
    _, body = await post(client, activity(text="Ada"))
    assert "botUserData" not in body["activities"][1], "a reply nobody touched has no bag"
    await post(client, activity(text="hi"))
    await post(client, activity(text="forget"))
    await post(client, activity(text="hi"))
    assert [m.get("botUserData") for m in seen] == [
        None,
        {"turns": 1, "name": "Ada"},
        {"turns": 2, "name": "Ada"},
        {"turns": 3},
    ]


async def test_current_turn_is_visible_to_the_bot(client_for: StartFn) -> None:
    turns: list[inline_state.Turn | None] = []

    async def handler(request: web.Request) -> web.Response:
        turns.append(inline_state.current_turn())
        assert inline_state.get_turn(request) is turns[-1]
        msg = await request.json()
        reply = create_reply(msg, "x")
        set_user_data(reply, "a", 1)
        return web.json_response(reply)

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    await post(client, activity())
    await post(client, activity())
    assert turns[0] is not None
    assert turns[1] is not None
    assert dict(turns[1].played_bag("user")) == {"a": b"1"}
    assert turns[1].bag("user") == {"a": 1}
    assert inline_state.current_turn() is None, "reset after the turn"


async def test_values_changed_in_place_are_still_written(client_for: StartFn) -> None:
    # Unchanged immutable values are recognised by identity and not re-encoded; a played
    # list or dict changed in place must still count as changed.
    def bot(msg: dict[str, Any]) -> Any:
        reply = create_reply(msg, "x")
        tags = get_user_data(msg, "tags")
        if tags is None:
            set_user_data(reply, "tags", ["a"])
            set_user_data(reply, "big", "z" * 10_000)
        else:
            tags.append(str(len(tags)))  # mutate the played list in place
            set_user_data(reply, "tags", tags)
        return reply

    app, _ = echo_app(bot)
    client = await client_for(app)
    for _ in range(3):
        await post(client, activity())
    store = app[inline_state.STORE_KEY]
    [user] = await store.load([inline_state.RecordKey("user", "bot-1", "test", "", "user-1")])
    assert user.props["tags"] == b'["a","1","2"]'
    assert user.props["big"] == b'"' + b"z" * 10_000 + b'"'


async def test_a_message_to_another_user_does_not_start_from_this_users_bag(
    client_for: StartFn,
) -> None:
    started: list[dict[str, Any]] = []

    def bot(msg: dict[str, Any]) -> Any:
        reply = create_reply(msg, "ok")
        set_user_data(reply, "name", msg["text"])
        set_conversation_data(reply, "topic", "weather")
        # A message the bot builds for someone else during this turn.
        other = {**create_reply(msg, "ping"), "recipient": {"id": "user-2"}}
        set_user_data(other, "pinged", True)
        same = create_reply(msg, "again")
        set_conversation_data(same, "seen", True)
        started.extend([other["botUserData"], same["botConversationData"]])
        return reply

    app, _ = echo_app(bot)
    client = await client_for(app)
    await post(client, activity(text="Ada"))
    started.clear()
    await post(client, activity(text="Ada"))

    assert started[0] == {"pinged": True}, "user-2's bag must not start from user-1's"
    assert started[1] == {"topic": "weather", "seen": True}, "the same record: copy-on-write"


async def test_a_message_to_another_conversation_or_channel_starts_from_nothing(
    client_for: StartFn,
) -> None:
    started: list[Any] = []

    def bot(msg: dict[str, Any]) -> Any:
        reply = create_reply(msg, "ok")
        set_user_data(reply, "name", "Ada")
        set_conversation_data(reply, "topic", "weather")
        set_private_conversation_data(reply, "step", 1)
        elsewhere = {**create_reply(msg, "hi"), "conversation": {"id": "another"}}
        set_conversation_data(elsewhere, "seen", True)
        set_private_conversation_data(elsewhere, "seen", True)
        set_user_data(elsewhere, "seen", True)  # the user record spans conversations
        other_channel = {**create_reply(msg, "hi"), "channelId": "another-channel"}
        set_user_data(other_channel, "seen", True)
        started.extend(
            [
                elsewhere["botConversationData"],
                elsewhere["botPerUserInConversationData"],
                elsewhere["botUserData"],
                other_channel["botUserData"],
            ]
        )
        return reply

    app, _ = echo_app(bot)
    client = await client_for(app)
    await post(client, activity(text="Ada"))
    started.clear()
    await post(client, activity(text="Ada"))

    assert started == [
        {"seen": True},
        {"seen": True},
        {"name": "Ada", "seen": True},
        {"seen": True},
    ]


def test_a_bag_the_reply_already_carries_is_kept_whatever_its_dict_type() -> None:
    reply: dict[str, Any] = {"type": "message", "botUserData": OrderedDict(a=1)}
    set_user_data(reply, "b", 2)
    del_user_data(reply, "a")
    assert reply["botUserData"] == OrderedDict(b=2)
    assert type(reply["botUserData"]) is OrderedDict
