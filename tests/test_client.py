"""Replies POSTed to a (fake, but real) channel through the client middleware."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import inline_state
import inline_state._counters
from inline_state import BagError, MemoryStore, RecordKey

from .support import Channel, Client, activity, carries_a_bag, post, v1_message

StartFn = Callable[[web.Application], Awaitable[Client]]
USER_KEY = RecordKey("user", "bot-1", "test", "", "user-1")
CONV_KEY = RecordKey("conversation", "bot-1", "test", "conv-1", "")


def posting_bot(
    store: inline_state.Store, change: Callable[[dict[str, Any], dict[str, Any]], None]
) -> web.Application:
    """A bot that answers every activity by POSTing one reply to its serviceUrl."""
    app = web.Application()
    middleware = inline_state.setup(app, store)

    async def messages(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "posted")
        change(msg, reply)
        url = f"{msg['serviceUrl'].rstrip('/')}/v3/conversations/{msg['conversation']['id']}/activities/{msg['id']}"
        async with (
            aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
            session.post(url, json=reply) as response,
        ):
            await response.read()
        return web.json_response({}, status=200)

    app.router.add_post("/api/messages", messages)
    return app


def count_up(msg: dict[str, Any], reply: dict[str, Any]) -> None:
    inline_state.set_user_data(reply, "n", inline_state.get_user_data(msg, "n", 0) + 1)


async def test_posted_reply_is_stripped_and_persisted(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    fake, base = channel
    store = MemoryStore()
    client = await client_for(posting_bot(store, count_up))
    for _ in range(3):
        status, _ = await post(client, activity(serviceUrl=base))
        assert status == 200
    paths = [path for path, _, _ in fake.received]
    assert all(path.startswith("/v3/conversations/conv-1/activities/act-") for path in paths)
    for _, content_type, body in fake.received:
        assert content_type == "application/json"
        assert "botUserData" not in body
        assert body["text"] == "posted"
    [user] = await store.load([USER_KEY])
    assert user.props == {"n": b"3"}


async def test_307_redirect_keeps_json_and_persists_once(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    fake, base = channel
    store = MemoryStore()
    client = await client_for(posting_bot(store, count_up))
    fake.redirect_once = True
    await post(client, activity(serviceUrl=base))
    [(path, content_type, body)] = fake.received
    assert path.startswith("/moved/v3/conversations/")
    assert content_type == "application/json"
    assert "botUserData" not in body
    [user] = await store.load([USER_KEY])
    assert user.props == {"n": b"1"}
    assert user.etag.endswith(".1"), "written exactly once"


async def test_failed_channel_answer_persists_nothing_and_a_retry_does(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    fake, base = channel
    store = MemoryStore()
    client = await client_for(posting_bot(store, count_up))
    fake.status = 503
    await post(client, activity(serviceUrl=base))
    assert "botUserData" not in fake.received[0][2], "stripped even when the channel fails"
    [user] = await store.load([USER_KEY])
    assert not user.exists
    fake.status = 200
    await post(client, activity(serviceUrl=base))  # the channel redelivers the turn
    [user] = await store.load([USER_KEY])
    assert user.props == {"n": b"1"}


async def test_posted_replies_of_overlapping_turns_merge_per_property(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    _, base = channel
    store = MemoryStore()
    both_loaded = asyncio.Barrier(2)

    def set_own(msg: dict[str, Any], reply: dict[str, Any]) -> None:
        inline_state.set_conversation_data(reply, msg["text"], True)

    app = posting_bot(store, set_own)

    @web.middleware
    async def wait_for_both(request: web.Request, handler: Any) -> web.StreamResponse:
        # runs inside inline_state's middleware: both turns have loaded before either replies
        await both_loaded.wait()
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(wait_for_both)
    client = await client_for(app)
    await asyncio.gather(
        post(client, activity(text="first", serviceUrl=base, user="u1")),
        post(client, activity(text="second", serviceUrl=base, user="u2")),
    )
    [conv] = await store.load([CONV_KEY])
    assert conv.props == {"first": b"true", "second": b"true"}


async def test_a_posted_change_diffs_against_the_turn(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    _, base = channel
    store = MemoryStore()
    await store.apply(
        [
            inline_state.Change(
                USER_KEY, {"keep": b"1", "n": b"0"}, stamp=inline_state.HybridClock(9).stamp()
            )
        ]
    )

    def only_n(msg: dict[str, Any], reply: dict[str, Any]) -> None:
        reply["botUserData"] = {"n": 5}  # carries only n: keep was played, so it is removed

    client = await client_for(posting_bot(store, only_n))
    await post(client, activity(serviceUrl=base))
    [user] = await store.load([USER_KEY])
    assert user.props == {"n": b"5"}


async def test_proactive_message_replaces_whole_bags(channel: tuple[Channel, str]) -> None:
    fake, base = channel
    store = MemoryStore()
    app = web.Application()
    middleware = inline_state.setup(app, store)
    await store.apply(
        [inline_state.Change(USER_KEY, {"old": b"1"}, stamp=inline_state.HybridClock(9).stamp())]
    )
    proactive = {
        "type": "message",
        "channelId": "test",
        "conversation": {"id": "conv-1"},
        "from": {"id": "bot-1"},
        "recipient": {"id": "user-1"},
        "text": "reminder",
        "botUserData": {"reminded": True},
    }
    async with (
        aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
        session.post(f"{base}v3/conversations/conv-1/activities", json=proactive) as r,
    ):
        assert r.status == 200
    assert "botUserData" not in fake.received[0][2]
    [user] = await store.load([USER_KEY])
    assert user.props == {"reminded": b"true"}


async def test_v1_later_reply(channel: tuple[Channel, str]) -> None:
    fake, base = channel
    store = MemoryStore()
    app = web.Application()
    middleware = inline_state.setup(app, store)
    incoming = v1_message()
    later = inline_state.create_reply(incoming, "later")
    later["botConversationData"] = {"v1": True}
    async with (
        aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
        session.post(f"{base}bot/v1.0/messages", json=later) as r,
    ):
        assert r.status == 200
    assert "botConversationData" not in fake.received[0][2]
    [conv] = await store.load([RecordKey("conversation", "bot-1", None, "conv-1", "")])
    assert conv.props == {"v1": b"true"}


async def test_invalid_bag_raises_before_sending(channel: tuple[Channel, str]) -> None:
    fake, base = channel
    app = web.Application()
    middleware = inline_state.setup(app, MemoryStore())
    bad = {
        "type": "message",
        "channelId": "t",
        "from": {"id": "b"},
        "recipient": {"id": "u"},
        "botUserData": [1],
    }
    async with aiohttp.ClientSession(middlewares=(middleware.client,)) as session:
        with pytest.raises(BagError, match="botUserData"):
            await session.post(f"{base}v3/conversations/c/activities", json=bad)
    assert fake.received == []


async def test_bags_never_leave_on_other_paths(
    channel: tuple[Channel, str], caplog: pytest.LogCaptureFixture
) -> None:
    # A Teams batch send, say: no one record to persist to, so the bags are only stripped.
    fake, base = channel
    app = web.Application()
    store = MemoryStore()
    middleware = inline_state.setup(app, store)
    body = {"text": "to many", "botUserData": {"not": "a reply"}}
    async with (
        aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
        session.post(f"{base}v3/batch/conversation/users", json=body) as r,
        session.put(f"{base}some/other/api", json={"plain": True}) as untouched,
    ):
        assert r.status == 200 and untouched.status == 200
    assert fake.received[0][2] == {"text": "to many"}
    assert fake.received[1][2] == {"plain": True}
    assert "stripped and not persisted: not a reply path" in caplog.text
    [user] = await store.load([USER_KEY])
    assert not user.exists


async def test_an_updated_activity_persists_and_strips_its_bags(
    channel: tuple[Channel, str],
) -> None:
    # SDKs send a copy of each reply, so a bot may PUT the same object, bags included,
    # as an update: like a POSTed reply, its bags are persisted and never sent.
    fake, base = channel
    app = web.Application()
    store = MemoryStore()
    middleware = inline_state.setup(app, store)
    updated = {
        "type": "message",
        "channelId": "test",
        "from": {"id": "bot-1"},
        "recipient": {"id": "user-1"},
        "conversation": {"id": "conv-1"},
        "text": "edited",
        "botUserData": {"edits": 1},
    }
    async with (
        aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
        session.put(f"{base}v3/conversations/conv-1/activities/sent-1", json=updated) as r,
    ):
        assert r.status == 200
    assert "botUserData" not in fake.received[0][2]
    [user] = await store.load([USER_KEY])
    assert user.props == {"edits": b"1"}


@pytest.mark.parametrize("shape", ["utf-16", "list", "batch"])
async def test_bags_never_leave_in_other_charsets_lists_or_batches(
    channel: tuple[Channel, str], shape: str
) -> None:
    fake, base = channel
    app = web.Application()
    middleware = inline_state.setup(app, MemoryStore())
    message = {"type": "message", "text": "x", "botUserData": {"secret": 1}}
    if shape == "utf-16":
        body = json.dumps(message).encode("utf-16")
        headers = {"Content-Type": "application/json; charset=utf-16"}
        path = "v3/conversations/conv-1/activities"
    else:
        body = json.dumps([message] if shape == "list" else {"activity": message}).encode()
        headers = {"Content-Type": "application/json"}
        path = "v3/batch/conversation"
    fake.received.clear()
    async with (
        aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
        session.post(base + path, data=body, headers=headers) as answer,
    ):
        assert answer.status == 200
    assert fake.received and not carries_a_bag(json.dumps(fake.received[0][2]))


async def test_posted_replies_record_increments_exactly(
    client_for: StartFn, channel: tuple[Channel, str]
) -> None:
    fake, base = channel
    store = MemoryStore()

    def add_two(msg: dict[str, Any], reply: dict[str, Any]) -> None:
        inline_state.incr_user_data(reply, "n", 2)

    client = await client_for(posting_bot(store, add_two))
    answers = await asyncio.gather(*(post(client, activity(serviceUrl=base)) for _ in range(6)))
    assert [status for status, _ in answers] == [200] * 6
    for _, _, body in fake.received:
        assert not [key for key in body if "ncrements" in key], "increments reached the channel"
    [user] = await store.load([USER_KEY])
    assert inline_state._counters.effective(user.props) == {"n": b"12"}
