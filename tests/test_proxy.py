"""The state proxy in front of bots that know nothing about inline_state."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

import inline_state
from inline_state import MemoryStore, RecordKey

from .support import Client, RunningBot, activity, carries_a_bag, free_port, post

StartFn = Callable[[web.Application], Awaitable[Client]]
PLAIN_BOT = Path(__file__).resolve().parent / "bots" / "plain_bot.py"
BAGS = {"botuserdata", "botconversationdata", "botperuserinconversationdata"}


class Recorder:
    """A channel (or a trap) on loopback that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], str | None]] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            self.received.append((request.path, body, request.headers.get("Authorization")))
            return web.json_response({"id": "sent"})

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        return app


@pytest.fixture
def plain_bot() -> Iterator[RunningBot]:
    bot = RunningBot(PLAIN_BOT).start()
    yield bot
    bot.stop()


def no_bags(message: dict[str, Any]) -> bool:
    return not {key.lower() for key in message} & BAGS


async def test_multi_turn_conversation_through_the_proxy(
    client_for: StartFn, plain_bot: RunningBot
) -> None:
    store = MemoryStore()
    proxy = await client_for(inline_state.proxy_app(upstream=plain_bot.url, store=store))
    texts = []
    for user in ("u1", "u1", "u2", "u1"):
        status, body = await post(proxy, activity(user=user, botUserData={"count": 1000}))
        assert status == 200
        [reply] = body["activities"]
        assert no_bags(reply), "the channel never sees the bags"
        texts.append(reply["text"])
    assert texts == [
        "user 1 conversation 1",
        "user 2 conversation 2",
        "user 1 conversation 3",
        "user 3 conversation 4",
    ]
    [record] = await store.load([RecordKey("user", "bot-1", "test", "", "u1")])
    assert record.props == {"count": b"3"}


async def test_killing_the_upstream_gives_502_quickly(client_for: StartFn) -> None:
    bot = RunningBot(PLAIN_BOT).start()
    proxy = await client_for(inline_state.proxy_app(upstream=bot.url, timeout=5))
    assert (await post(proxy, activity()))[0] == 200
    bot.stop()
    started = time.monotonic()
    status, body = await post(proxy, activity())
    assert status == 502
    assert body["error"]["code"] == "BadGateway"
    assert time.monotonic() - started < 2.0


async def test_a_bot_that_never_answers_gives_504(
    client_for: StartFn, aiohttp_server: AiohttpServer
) -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/messages", silent)
    upstream = await aiohttp_server(app)
    proxy = await client_for(
        inline_state.proxy_app(upstream=str(upstream.make_url("/api/messages")), timeout=0.5)
    )
    status, body = await asyncio.wait_for(post(proxy, activity()), 10)
    assert status == 504
    assert "did not answer within 0.5 s" in body["error"]["message"]


@pytest.mark.parametrize("spelling", ["top-level", "channelData"])
async def test_replies_the_bot_posts_go_through_the_proxy_to_the_channel(
    aiohttp_server: AiohttpServer, spelling: str
) -> None:
    # channelData.inlineState: where a bot on an SDK that drops unknown fields puts them.
    channel = Recorder()
    channel_server = await aiohttp_server(channel.app())
    store = MemoryStore()
    proxy_port = free_port()
    bot = RunningBot(PLAIN_BOT, "--post", *(["--channel-data"] * (spelling == "channelData")))
    bot.start()
    try:
        proxy = inline_state.proxy_app(
            upstream=bot.url,
            store=store,
            channel=str(channel_server.make_url("")).rstrip("/"),
            rewrite_service_url=f"http://127.0.0.1:{proxy_port}",
        )
        proxy_server = await aiohttp_server(proxy, port=proxy_port)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(
                    proxy_server.make_url("/api/messages"),
                    json=activity(serviceUrl="https://channel.invalid/"),
                    headers={"Authorization": "Bearer bot-token"},
                ) as response:
                    assert response.status == 200
                    assert await response.json() == {"channelStatus": 200}
    finally:
        bot.stop()
    assert len(channel.received) == 3
    for path, body, _ in channel.received:
        assert path.startswith("/v3/conversations/conv-1/activities/act-")
        assert not carries_a_bag(body)
        if spelling == "channelData":
            assert body["channelData"] == {"tenant": {"id": "t1"}}, "the channel's own stay"
    assert [body["text"] for _, body, _ in channel.received][-1] == "user 3 conversation 3"
    [conv] = await store.load([RecordKey("conversation", "bot-1", "test", "conv-1", "")])
    assert conv.props == {"count": b"3"}


async def test_service_url_outside_the_allow_list_is_never_contacted(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    allowed, trap = Recorder(), Recorder()
    allowed_server = await aiohttp_server(allowed.app())
    trap_server = await aiohttp_server(trap.app())
    store = MemoryStore()
    proxy = await client_for(
        inline_state.proxy_app(
            upstream="http://127.0.0.1:9/api/messages",
            store=store,
            allow_service_urls=[str(allowed_server.make_url("/"))],
        )
    )
    reply = {
        "type": "message",
        "channelId": "test",
        "conversation": {"id": "c/1"},
        "from": {"id": "bot-1"},
        "recipient": {"id": "user-1"},
        "text": "hi",
        "botUserData": {"x": 1},
    }
    for service_url in (
        str(trap_server.make_url("/")),
        str(allowed_server.make_url("/")).replace("127.0.0.1", "127.0.0.1.evil.example"),
        "file:///etc/passwd",
    ):
        response = await proxy.post(
            "/v3/conversations/c%2F1/activities", json=reply | {"serviceUrl": service_url}
        )
        assert response.status == 403
        assert "allow-list" in (await response.json())["error"]["message"]
    assert trap.received == []
    [user] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert not user.exists, "nothing persisted for a reply that was not delivered"

    response = await proxy.post(
        "/v3/conversations/c%2F1/activities",
        json=reply | {"serviceUrl": str(allowed_server.make_url("/"))},
        headers={"Authorization": "Bearer t"},
    )
    assert response.status == 200
    [(path, body, auth)] = allowed.received
    assert (path, auth) == ("/v3/conversations/c/1/activities", "Bearer t")
    assert no_bags(body)
    [user] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert user.props == {"x": b"1"}


async def test_v1_later_reply_matches_its_turn(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    channel = Recorder()
    channel_server = await aiohttp_server(channel.app())
    store = MemoryStore()

    async def v1_bot(request: web.Request) -> web.Response:
        assert json.loads(await request.read())["text"] == "hi"
        return web.json_response({"type": "Message", "text": "first", "botUserData": {"n": 1}})

    upstream = web.Application()
    upstream.router.add_post("/api/messages", v1_bot)
    upstream_server = await aiohttp_server(upstream)
    proxy = await client_for(
        inline_state.proxy_app(
            upstream=str(upstream_server.make_url("/api/messages")),
            store=store,
            channel=str(channel_server.make_url("")).rstrip("/"),
        )
    )
    incoming = {
        "type": "Message",
        "id": "m-1",
        "conversationId": "conv-1",
        "from": {"id": "user-1"},
        "to": {"id": "bot-1"},
        "text": "hi",
    }
    status, first = await post(proxy, incoming)
    assert (status, first) == (200, {"type": "Message", "text": "first"})
    later = {
        "type": "Message",
        "replyToMessageId": "m-1",
        "text": "later",
        "botUserData": {"n": 1, "m": 2},
    }
    response = await proxy.post("/bot/v1.0/messages", json=later)
    assert response.status == 200
    assert channel.received[0][0] == "/bot/v1.0/messages"
    assert no_bags(channel.received[0][1])
    [user] = await store.load([RecordKey("user", "bot-1", None, "", "user-1")])
    assert user.props == {"n": b"1", "m": b"2"}


class AnyCall:
    """A channel on loopback that answers every method and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, str | None]] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.calls.append(
                (request.method, request.path_qs, body, request.headers.get("Authorization"))
            )
            if request.method == "DELETE":
                return web.Response(status=204)
            return web.json_response({"members": [{"id": "user-1"}]}, status=201)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


async def _in_front_of(
    channel: web.Application, aiohttp_server: AiohttpServer, client_for: StartFn
) -> tuple[Client, MemoryStore]:
    """A proxy (no bot behind it: the tests play the bot) in front of a channel app."""
    channel_server = await aiohttp_server(channel)
    store = MemoryStore()
    proxy = await client_for(
        inline_state.proxy_app(
            upstream="http://127.0.0.1:9/api/messages",
            store=store,
            channel=str(channel_server.make_url("")).rstrip("/"),
        )
    )
    return proxy, store


async def test_every_other_connector_call_is_forwarded_to_the_channel(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    channel = AnyCall()
    proxy, store = await _in_front_of(channel.app(), aiohttp_server, client_for)
    auth = {"Authorization": "Bearer bot-token"}
    members = await proxy.get("/v3/conversations/c%2F1/members?pageSize=5", headers=auth)
    assert (members.status, await members.json()) == (201, {"members": [{"id": "user-1"}]})
    create = {"isGroup": False, "activity": {"type": "message", "botUserData": {"x": 1}}}
    created = await proxy.post("/v3/conversations", json=create, headers=auth)
    assert created.status == 201
    deleted = await proxy.delete("/v3/conversations/c1/activities/a1", headers=auth)
    assert deleted.status == 204
    assert [(m, path, a) for m, path, _, a in channel.calls] == [
        ("GET", "/v3/conversations/c%2F1/members?pageSize=5", "Bearer bot-token"),
        ("POST", "/v3/conversations", "Bearer bot-token"),
        ("DELETE", "/v3/conversations/c1/activities/a1", "Bearer bot-token"),
    ]
    sent = json.loads(channel.calls[1][2])
    assert sent == {"isGroup": False, "activity": {"type": "message"}}, "bags never leave"
    [user] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert not user.exists, "and are not stored: they belong to no turn"


async def test_a_call_without_a_channel_url_goes_where_its_conversation_came_from(
    aiohttp_server: AiohttpServer, client_for: StartFn, plain_bot: RunningBot
) -> None:
    channel, trap = AnyCall(), AnyCall()
    channel_server = await aiohttp_server(channel.app())
    trap_server = await aiohttp_server(trap.app())
    service_url = str(channel_server.make_url("/"))
    proxy = await client_for(
        inline_state.proxy_app(
            upstream=plain_bot.url,
            allow_service_urls=[service_url],
            rewrite_service_url="http://127.0.0.1:9",
        )
    )
    status, _ = await post(proxy, activity(conversation="c1", serviceUrl=service_url))
    assert status == 200
    status, _ = await post(
        proxy, activity(conversation="c2", serviceUrl=str(trap_server.make_url("/")))
    )
    assert status == 200
    answer = await proxy.get("/v3/conversations/c1/members")
    assert answer.status == 201
    refused = await proxy.get("/v3/conversations/c2/members")  # its serviceUrl: not allowed
    assert refused.status == 403
    unknown = await proxy.get("/v3/conversations/c3/members")
    assert unknown.status == 403
    assert "allow-list" in (await unknown.json())["error"]["message"]
    assert [path for _, path, _, _ in channel.calls] == ["/v3/conversations/c1/members"]
    assert trap.calls == []


async def test_an_updated_activity_is_persisted_against_the_turn_it_answers(
    aiohttp_server: AiohttpServer, client_for: StartFn, plain_bot: RunningBot
) -> None:
    channel = AnyCall()
    channel_server = await aiohttp_server(channel.app())
    store = MemoryStore()
    proxy = await client_for(
        inline_state.proxy_app(
            upstream=plain_bot.url,
            store=store,
            channel=str(channel_server.make_url("")).rstrip("/"),
        )
    )
    incoming = activity()
    status, _ = await post(proxy, incoming)  # the bot stores count 1 in both bags
    assert status == 200
    user_key = RecordKey("user", "bot-1", "test", "", "user-1")
    # Another turn's write meanwhile: kept by a diff against the turn, not by a replace.
    other = inline_state.Change(user_key, {"other": b"2"}, stamp=store.clock.stamp())
    assert await store.apply([other]) == [inline_state.ApplyResult.APPLIED]
    update = {
        "type": "message",
        "id": "sent-1",
        "channelId": "test",
        "conversation": {"id": "conv-1"},
        "from": {"id": "bot-1"},
        "recipient": {"id": "user-1"},
        "replyToId": incoming["id"],
        "text": "edited",
        "botUserData": {"count": 1, "edited": True},  # diffed: one property added
    }
    answer = await proxy.put("/v3/conversations/conv-1/activities/sent-1", json=update)
    assert answer.status == 201
    [(method, path, body, _)] = channel.calls
    assert (method, path) == ("PUT", "/v3/conversations/conv-1/activities/sent-1")
    assert no_bags(json.loads(body))
    [user] = await store.load([user_key])
    assert user.props == {"count": b"1", "other": b"2", "edited": b"true"}

    # Without a replyToId the update is proactive: its bag replaces the stored one.
    proactive = {**update, "botUserData": {"only": 1}}
    del proactive["replyToId"]
    answer = await proxy.put("/v3/conversations/conv-1/activities/sent-1", json=proactive)
    assert answer.status == 201
    [user] = await store.load([user_key])
    assert user.props == {"only": b"1"}


def test_cli_parses_proxy_options() -> None:
    from inline_state.__main__ import build_parser, proxy_app_from

    args = build_parser().parse_args(
        [
            "proxy",
            "--listen",
            "127.0.0.1:4000",
            "--upstream",
            "http://127.0.0.1:3978/api/messages",
            "--allow-service-url",
            "https://smba.trafficmanager.net/",
            "--timeout",
            "3",
        ]
    )
    assert args.listen == ("127.0.0.1", 4000)
    app = proxy_app_from(args)
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}
    assert "/v3/conversations/{conversationId}/activities/{activityId}{slash}" in paths


async def _raw_request(url: URL, method: str, raw_path: str) -> int:
    """The status of a request whose path is sent byte for byte (clients resolve dots)."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            f"{method} {raw_path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v3/../api/messages",
        "/v3/conversations/c1/%2e%2e/%2e%2e/%2E%2E/emea/secret",
        "/v3/conversations/c1/activities/./a1",
        "/v3/conversations/c1/activities/%2e%2e",
    ],
)
async def test_a_path_that_would_climb_out_of_the_channel_url_is_refused(
    aiohttp_server: AiohttpServer, raw_path: str
) -> None:
    channel = AnyCall()
    channel_server = await aiohttp_server(channel.app())
    proxy = await aiohttp_server(
        inline_state.proxy_app(
            upstream="http://127.0.0.1:9/api/messages",
            store=MemoryStore(),
            channel=str(channel_server.make_url("/amer")),
        )
    )
    for method in ("GET", "POST", "PUT"):
        assert await _raw_request(proxy.make_url("/"), method, raw_path) in (400, 404, 405)
    assert channel.calls == [], "nothing reached the channel"


async def test_a_message_the_bot_refused_does_not_choose_where_calls_go(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    real, other = AnyCall(), AnyCall()
    real_server, other_server = await aiohttp_server(real.app()), await aiohttp_server(other.app())

    async def bot(request: web.Request) -> web.Response:  # authenticates: a forgery gets 401
        message = await request.json()
        return web.json_response({}, status=401 if message["text"] == "forged" else 200)

    upstream = web.Application()
    upstream.router.add_post("/api/messages", bot)
    upstream_server = await aiohttp_server(upstream)
    proxy = await client_for(
        inline_state.proxy_app(
            upstream=str(upstream_server.make_url("/api/messages")),
            allow_service_urls=[str(real_server.make_url("/")), str(other_server.make_url("/"))],
        )
    )
    status, _ = await post(
        proxy, activity(conversation="c1", serviceUrl=str(real_server.make_url("/")))
    )
    assert status == 200
    forged = activity(conversation="c1", text="forged", serviceUrl=str(other_server.make_url("/")))
    status, _ = await post(proxy, forged)
    assert status == 401
    answer = await proxy.get("/v3/conversations/c1/members")
    assert answer.status == 201
    assert [path for _, path, _, _ in real.calls] == ["/v3/conversations/c1/members"]
    assert other.calls == []


async def test_a_history_s_activities_never_carry_bags_to_the_channel(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    channel = AnyCall()
    proxy, _ = await _in_front_of(channel.app(), aiohttp_server, client_for)
    history = {
        "activities": [
            {"type": "message", "botUserData": {"x": 1}},
            {"type": "message", "channelData": {"inlineState": {"botConversationData": {}}}},
        ]
    }
    answer = await proxy.post("/v3/conversations/c1/activities/history", json=history)
    assert answer.status == 201
    [(_, _, body, _)] = channel.calls
    assert json.loads(body) == {"activities": [{"type": "message"}, {"type": "message"}]}


async def test_the_channel_s_answer_keeps_its_headers(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "busy"}, status=429, headers={"Retry-After": "7", "X-Channel": "1"}
        )

    channel = web.Application()
    channel.router.add_route("*", "/{tail:.*}", busy)
    proxy, _ = await _in_front_of(channel, aiohttp_server, client_for)
    for answer in (
        await proxy.get("/v3/conversations/c1/members"),
        await proxy.post("/v3/conversations/c1/activities", json={"type": "message"}),
    ):
        assert answer.status == 429
        assert (answer.headers["Retry-After"], answer.headers["X-Channel"]) == ("7", "1")


async def test_a_reply_path_with_a_trailing_slash_is_still_a_reply(
    aiohttp_server: AiohttpServer, client_for: StartFn
) -> None:
    channel = AnyCall()
    proxy, store = await _in_front_of(channel.app(), aiohttp_server, client_for)
    reply = {
        "type": "message",
        "channelId": "test",
        "from": {"id": "bot-1"},
        "recipient": {"id": "user-1"},
        "botUserData": {"x": 1},
    }
    answer = await proxy.post("/v3/conversations/c1/activities/a1/", json=reply)
    assert answer.status == 201
    [user] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert user.props == {"x": b"1"}
