"""Bags under ``channelData.inlineState``: for bots whose SDK drops unknown activity fields
(botbuilder-js POSTs replies through a mapper that keeps only known ones; every SDK
keeps ``channelData`` as it is). On every path a reply takes: inline and POSTed, through
the server middleware, the client middleware and the proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import inline_state
from inline_state import MemoryStore, RecordKey

from .support import (
    Channel,
    Client,
    RunningBot,
    activity,
    carries_a_bag,
    echo_app,
    post,
)
from .test_client import posting_bot

StartFn = Callable[[web.Application], Awaitable[Client]]
PLAIN_BOT = Path(__file__).resolve().parent / "bots" / "plain_bot.py"
USER = RecordKey("user", "bot-1", "test", "", "user-1")
CONVERSATION = RecordKey("conversation", "bot-1", "test", "conv-1", "")


def counting_reply(msg: dict[str, Any], **channel_data: Any) -> dict[str, Any]:
    """A reply counting the user's turns, its bag under channelData.inlineState."""
    reply = inline_state.create_reply(msg, "ok")
    n = inline_state.get_user_data(msg, "n", 0) + 1
    reply["channelData"] = {**channel_data, "inlineState": {"botUserData": {"n": n}}}
    return reply


async def test_an_inline_reply_keeps_its_bags_there_and_the_channel_never_sees_them(
    client_for: StartFn,
) -> None:
    store = MemoryStore()
    app, seen = echo_app(lambda msg: counting_reply(msg, tenant={"id": "t1"}), store)
    client = await client_for(app)
    for _ in range(3):
        status, reply = await post(client, activity())
        assert status == 200
        assert reply["channelData"] == {"tenant": {"id": "t1"}}, "the channel's own keys stay"
        assert not carries_a_bag(reply)
    assert [m.get("botUserData") for m in seen] == [None, {"n": 1}, {"n": 2}]
    [user] = await store.load([USER])
    assert user.props == {"n": b"3"}


@pytest.mark.parametrize(
    ("channel_data", "on_the_wire"),
    [
        ({}, None),  # left empty by the bags' removal: removed
        ({"inlineState": {"note": 1}}, {"inlineState": {"note": 1}}),  # not a bag: stays
        ({"other": []}, {"other": []}),
    ],
)
async def test_what_the_bags_leave_behind_in_channel_data(
    client_for: StartFn, channel_data: dict[str, Any], on_the_wire: dict[str, Any] | None
) -> None:
    def reply(msg: dict[str, Any]) -> dict[str, Any]:
        body = counting_reply(msg)
        body["channelData"] = {
            **channel_data,
            "inlineState": {**channel_data.get("inlineState", {}), "botUserData": {"n": 1}},
        }
        return body

    client = await client_for(echo_app(reply)[0])
    _, sent = await post(client, activity())
    assert sent.get("channelData") == on_the_wire


async def test_a_channel_data_that_is_not_an_object_is_left_alone(client_for: StartFn) -> None:
    def reply(msg: dict[str, Any]) -> dict[str, Any]:
        return {**inline_state.create_reply(msg, "ok"), "channelData": "inlineState"}

    client = await client_for(echo_app(reply)[0])
    _, sent = await post(client, activity())
    assert sent["channelData"] == "inlineState"


async def test_a_bag_given_at_the_top_and_in_channel_data_is_two_spellings(
    client_for: StartFn,
) -> None:
    store = MemoryStore()

    def reply(msg: dict[str, Any]) -> dict[str, Any]:
        return {**counting_reply(msg), "botUserData": {"n": 7}}

    client = await client_for(echo_app(reply, store)[0])
    status, body = await post(client, activity())
    assert status == 500, body
    assert (body["error"]["code"], body["error"]["reason"]) == ("InvalidBotData", "duplicateField")
    assert "channelData.inlineState.botUserData" in body["error"]["message"]
    [user] = await store.load([USER])
    assert not user.exists, "nothing stored"


async def test_bags_a_client_sends_there_are_stripped_on_the_way_in(client_for: StartFn) -> None:
    store = MemoryStore()
    app, seen = echo_app(lambda msg: inline_state.create_reply(msg, "ok"), store)
    client = await client_for(app)
    sent = activity(
        channelData={"tenant": {"id": "t1"}, "inlineState": {"botUserData": {"admin": True}}}
    )
    status, _ = await post(client, sent)
    assert status == 200
    assert seen[0]["channelData"] == {"tenant": {"id": "t1"}}
    assert "botUserData" not in seen[0]


async def test_a_channel_data_shared_by_replies_is_not_changed(client_for: StartFn) -> None:
    shared = {"inlineState": {"botUserData": {"n": 1}}, "tenant": {"id": "t1"}}

    async def handler(request: web.Request) -> web.StreamResponse:
        msg = await request.json()
        replies = [{**inline_state.create_reply(msg, t), "channelData": shared} for t in "ab"]
        return inline_state.ReplyResponse({"activities": replies})

    app = web.Application()
    inline_state.setup(app, MemoryStore())
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 200
    assert [r["channelData"] for r in body["activities"]] == [{"tenant": {"id": "t1"}}] * 2
    assert shared == {"inlineState": {"botUserData": {"n": 1}}, "tenant": {"id": "t1"}}


async def test_a_reply_posted_through_the_client_middleware(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    fake, base = channel
    store = MemoryStore()

    def change(msg: dict[str, Any], reply: dict[str, Any]) -> None:
        reply["channelData"] = counting_reply(msg, tenant={"id": "t1"})["channelData"]

    client = await client_for(posting_bot(store, change))
    for _ in range(3):
        status, _ = await post(client, activity(serviceUrl=base))
        assert status == 200
    assert len(fake.received) == 3
    for _, _, body in fake.received:
        assert body["channelData"] == {"tenant": {"id": "t1"}}
        assert not carries_a_bag(body)
    [user] = await store.load([USER])
    assert user.props == {"n": b"3"}


async def test_a_bot_in_another_language_behind_the_proxy(client_for: StartFn) -> None:
    # Inline replies here; POSTed ones in test_proxy.py, with both spellings.
    store = MemoryStore()
    bot = RunningBot(PLAIN_BOT, "--channel-data").start()
    try:
        proxy = await client_for(inline_state.proxy_app(upstream=bot.url, store=store))
        replies = []
        for _ in range(3):
            status, body = await post(proxy, activity())
            assert status == 200, body
            replies += body["activities"]
    finally:
        bot.stop()
    for reply in replies:
        assert reply["channelData"] == {"tenant": {"id": "t1"}}
        assert not carries_a_bag(reply)
    assert replies[-1]["text"] == "user 3 conversation 3"
    user, conversation = await store.load([USER, CONVERSATION])
    assert (user.props, conversation.props) == ({"count": b"3"}, {"count": b"3"})


@pytest.mark.parametrize(
    ("channel_data_name", "namespace"),
    [("ChannelData", "inlineState"), ("channeldata", "INLINESTATE")],
)
async def test_bags_a_client_sends_under_any_case_are_stripped(
    client_for: StartFn, channel_data_name: str, namespace: str
) -> None:
    # A bot whose JSON library reads names case-insensitively would see them as ours.
    app, seen = echo_app(lambda msg: inline_state.create_reply(msg, "ok"))
    client = await client_for(app)
    sent = activity()
    sent[channel_data_name] = {"tenant": 1, namespace: {"BotUserData": {"a": 1}}}
    status, _ = await post(client, sent)
    assert status == 200
    assert seen[0][channel_data_name] == {"tenant": 1}
    assert not carries_a_bag(seen[0])


async def test_with_keep_fields_a_reply_goes_out_as_the_bot_wrote_it(client_for: StartFn) -> None:
    store = MemoryStore()
    app, _ = echo_app(lambda msg: counting_reply(msg, tenant=1), store, keep_fields=True)
    client = await client_for(app)
    _, reply = await post(client, activity())
    assert reply["channelData"] == {"tenant": 1, "inlineState": {"botUserData": {"n": 1}}}
    assert not any(name.startswith("channelData.") for name in reply)
    [user] = await store.load([USER])
    assert user.props == {"n": b"1"}
