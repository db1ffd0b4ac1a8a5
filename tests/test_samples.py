"""The samples, run as their own processes, answer real conversations."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from samples.proactive.bot import create_app

import inline_state

from .support import REPO, RunningBot, RunningProcess, activity, v1_message

ANONYMOUS_AGENTS = "CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED=true"


def sample_bot(name: str, *env: str) -> RunningProcess:
    """A state-management sample as its make target starts it."""
    script = str(REPO / "samples" / name / "bot.py")
    return RunningProcess(
        lambda port: [
            "env",
            *env,
            sys.executable,
            script,
            "--port",
            str(port),
            "--store",
            "memory://",
        ]
    )


@pytest.fixture(
    params=[
        pytest.param(("state_management",), id="plain-aiohttp"),
        pytest.param(("agents_state_management", ANONYMOUS_AGENTS), id="agents-sdk"),
        pytest.param(("botbuilder_state_management",), id="botbuilder"),
    ]
)
def state_bot(request: pytest.FixtureRequest) -> Iterator[RunningProcess]:
    bot = sample_bot(*request.param)
    yield bot.start(timeout=60)
    bot.stop()


async def say(url: str, message: dict[str, Any]) -> list[str]:
    # A fresh client per turn: the state must live in the server, not in the client.
    async with aiohttp.ClientSession() as session, session.post(url, json=message) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    for reply in body["activities"]:
        assert not {k for k in reply if k.lower().startswith("bot")}, "bags leaked to the wire"
    return [reply["text"] for reply in body["activities"]]


async def test_seed_004_conversation(state_bot: RunningProcess) -> None:
    url = state_bot.url
    joined = activity(
        type="conversationUpdate",
        text="",
        membersAdded=[{"id": "user-1"}, {"id": "bot-1"}],
    )
    assert await say(url, joined) == ["Welcome to State Bot Sample. Type anything to get started."]
    assert await say(url, activity(text="hello")) == ["What is your name?"]
    assert await say(url, activity(text="Ada")) == [
        "Thanks Ada. To see conversation data, type anything."
    ]
    third = await say(url, activity(text="how are you", timestamp="2026-11-23T10:00:00Z"))
    assert third[0] == "Ada sent: how are you"
    assert third[1].startswith("Message received at: 2026-11-23")
    assert third[2] == "Message received from: test"
    # Another conversation of the same user: the name is remembered, the rest is new.
    other = await say(url, activity(text="hi", conversation="conv-2"))
    assert other[0] == "Ada sent: hi"
    # Another user starts over.
    assert await say(url, activity(text="hi", user="user-2")) == ["What is your name?"]


async def test_v1_counter_sample() -> None:
    bot = RunningBot(REPO / "samples" / "counter_v1" / "bot.py").start()
    try:
        texts = []
        for message in (
            v1_message(),
            v1_message(),
            v1_message(conversation="conv-2"),
            v1_message(user="user-2"),
        ):
            async with aiohttp.ClientSession() as session, session.post(bot.url, json=message) as r:
                reply = await r.json()
                assert "botUserData" not in reply
                texts.append(reply["text"])
        assert texts == [
            "you: 1 messages; this conversation: 1; you here: 1",
            "you: 2 messages; this conversation: 2; you here: 2",
            "you: 3 messages; this conversation: 1; you here: 1",
            "you: 1 messages; this conversation: 3; you here: 1",
        ]
    finally:
        bot.stop()


async def test_proactive_sample(aiohttp_server: Any, client_for: Any) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def channel_handler(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"id": "ok"})

    channel_app = web.Application()
    channel_app.router.add_post("/{tail:.*}", channel_handler)
    channel = await aiohttp_server(channel_app)
    store = inline_state.MemoryStore()
    bot = await client_for(create_app(store))
    service_url = str(channel.make_url("/"))
    for _ in range(2):
        response = await bot.post("/api/messages", json=activity(serviceUrl=service_url))
        assert response.status == 200
    assert [r["text"] for r in received] == [
        "message 1; I will remind you later",
        "message 2; I will remind you later",
    ]
    response = await bot.post("/api/notify")
    assert await response.json() == {"sent": 1}
    assert received[-1]["text"] == "reminder: you asked me to remind you"
    assert all("botUserData" not in r for r in received)
    [user] = await store.load([inline_state.RecordKey("user", "bot-1", "test", "", "user-1")])
    assert set(user.props) == {"lastNotified"}
