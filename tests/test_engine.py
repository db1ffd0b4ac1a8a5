"""The engine's rules that no single adapter owns: the base of a change, one stamp per
response, and what happens to a POSTed reply whose merged bag is too large."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import inline_state
from inline_state import HybridClock, MemoryStore, RecordKey

from .support import Client, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
USER = RecordKey("user", "bot-1", "test", "", "user-1")
DAY_MS = 86_400_000


def fast_clock(node: int) -> HybridClock:
    """A host whose clock runs a day ahead."""
    return HybridClock(node, wall_ms=lambda: time.time_ns() // 1_000_000 + DAY_MS)


def host(store: MemoryStore, clock: HybridClock, handler: Any) -> web.Application:
    app = web.Application()
    inline_state.setup(app, store, clock=clock)
    app.router.add_post("/api/messages", handler)
    return app


async def test_a_fast_conversation_clock_cannot_undo_a_deletion_inline(
    client_for: StartFn,
) -> None:
    store = MemoryStore()
    loaded, deleted = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        if msg["text"] == "conversation":
            inline_state.set_conversation_data(reply, "topic", "written a day ahead")
        elif msg["text"] == "slow":
            loaded.set()
            await deleted.wait()
            inline_state.set_user_data(reply, "back", True)
        else:
            inline_state.set_user_data(reply, "name", "Ada")
        return web.json_response(reply)

    normal = await client_for(host(store, HybridClock(1), handler))
    ahead = await client_for(host(store, fast_clock(2), handler))
    # The deletion comes through a third host, whose clock never saw the fast stamp.
    other = await client_for(host(store, HybridClock(3), handler))
    await post(normal, activity(text="hello"))
    # Another host, a day ahead, writes the conversation record: its stamp is far above
    # anything the user's records hold.
    await post(ahead, activity(text="conversation", user="user-2"))
    slow = asyncio.create_task(post(normal, activity(text="slow")))
    await loaded.wait()  # the slow turn loaded the user's data and the fast conversation
    await post(other, activity(type="deleteUserData"))
    deleted.set()
    await slow
    [record] = await store.load([USER])
    assert not record.exists, "a reply loaded before the deletion brought the data back"


async def test_a_fast_conversation_clock_cannot_undo_a_deletion_posted(
    client_for: StartFn,
) -> None:
    store = MemoryStore()
    sent, deleted = asyncio.Event(), asyncio.Event()

    async def slow_channel(request: web.Request) -> web.Response:
        await request.read()
        sent.set()
        await deleted.wait()  # the user is deleted while the reply is in flight
        return web.json_response({"id": "1"})

    channel_app = web.Application()
    channel_app.router.add_post("/{tail:.*}", slow_channel)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_conversation_data(reply, "topic", "written a day ahead")
        return web.json_response(reply)

    ahead = await client_for(host(store, fast_clock(2), handler))
    sender_app = web.Application()
    middleware = inline_state.setup(sender_app, store, clock=HybridClock(1))
    # The deletion comes through a third host, whose clock never saw the fast stamp.
    other = await client_for(host(store, HybridClock(3), handler))
    await post(ahead, activity(text="conversation", user="user-2"))
    async with TestServer(channel_app) as channel:
        # A proactive message (outside any turn) to user-1 in that conversation: the
        # client middleware loads both records, then POSTs, then writes after the 2xx.
        proactive = activity(text="reminder")
        proactive.update(
            {
                "from": {"id": "bot-1"},
                "recipient": {"id": "user-1"},
                "botUserData": {"reminded": True},
                "botConversationData": {"topic": "changed"},
            }
        )
        url = channel.make_url("/v3/conversations/conv-1/activities")
        async with aiohttp.ClientSession(middlewares=(middleware.client,)) as session:
            task = asyncio.create_task(session.post(url, json=proactive))
            await sent.wait()
            await post(other, activity(type="deleteUserData"))
            deleted.set()
            async with await task as answer:
                assert answer.status == 200
    [record] = await store.load([USER])
    assert not record.exists, "a proactive reply loaded before the deletion wrote user data"


async def test_one_response_takes_one_stamp(client_for: StartFn) -> None:
    store = MemoryStore()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        first, second = inline_state.create_reply(msg, "1"), inline_state.create_reply(msg, "2")
        inline_state.set_user_data(first, "a", 1)
        inline_state.set_conversation_data(second, "b", 2)
        inline_state.set_private_conversation_data(second, "c", 3)
        return web.json_response({"activities": [first, second]})

    client = await client_for(host(store, HybridClock(1), handler))
    await post(client, activity())
    records = await store.load(
        [
            USER,
            RecordKey("conversation", "bot-1", "test", "conv-1", ""),
            RecordKey("private", "bot-1", "test", "conv-1", "user-1"),
        ]
    )
    assert len({record.observed for record in records}) == 1


async def test_a_posted_reply_whose_merged_bag_is_too_large_is_delivered_not_stored(
    client_for: StartFn, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    received: list[Any] = []
    answers: list[int] = []

    async def channel_handler(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"id": "1"})

    channel_app = web.Application()
    channel_app.router.add_post("/{tail:.*}", channel_handler)
    app = web.Application()
    middleware = inline_state.setup(app, store, max_bag_bytes=150)
    loaded, grown = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        loaded.set()
        await grown.wait()  # meanwhile another writer adds a property
        reply = inline_state.create_reply(msg, "posted")
        inline_state.set_user_data(reply, "more", "y" * 40)  # with "big": fits alone
        url = f"{msg['serviceUrl']}v3/conversations/conv-1/activities/{msg['id']}"
        async with (
            aiohttp.ClientSession(middlewares=(middleware.client,)) as session,
            session.post(url, json=reply) as answer,
        ):
            answers.append(answer.status)  # delivered: no error raised to the bot
        return web.json_response({})

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    big = b'"' + b"x" * 60 + b'"'
    await store.compare_and_set(USER, {"big": big}, "*", max_bytes=1000)
    async with TestServer(channel_app) as channel:
        turn = asyncio.create_task(post(client, activity(serviceUrl=str(channel.make_url("/")))))
        await loaded.wait()
        other = inline_state.Change(
            USER, {"other": b'"' + b"z" * 40 + b'"'}, stamp=store.clock.stamp()
        )
        await store.apply([other])
        grown.set()
        status, _ = await turn
    assert status == 200 and answers == [200]
    assert len(received) == 1 and "botUserData" not in received[0]
    [record] = await store.load([USER])
    assert set(record.props) == {"big", "other"}, "the record is left as it was"
    assert any(
        "delivered, its bag was not stored" in r.getMessage() and r.levelno == logging.ERROR
        for r in caplog.records
    )
