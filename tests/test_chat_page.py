"""The sample bot's chat page: its files, the bags it reads back, and who it answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from samples.state_management.bot import create_app

import inline_state

from .support import Client, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]


async def test_the_page_and_the_bags_after_a_turn(client_for: StartFn) -> None:
    client = await client_for(create_app(inline_state.MemoryStore()))
    for path in ("/", "/chat.js", "/chat.css"):
        response = await client.get(path)
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    turn = activity(text="hello", bot="state-bot", channel="chat", user="u1", conversation="c1")
    assert (await post(client, turn))[0] == 200
    response = await client.get("/chat/bags", params={"user": "u1", "conversation": "c1"})
    bags = await response.json()
    assert '"prompted_for_user_name": true' in bags["conversation"]
    assert bags["private"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example"},
        {"Host": "localhost:99999x"},
        {"Host": "[::1"},
        {"Host": "localhost.attacker.example"},
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-Proto": "https"},
        {"CF-Connecting-IP": "203.0.113.7"},
    ],
)
async def test_only_this_machine_is_answered(
    client_for: StartFn, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    client = await client_for(create_app(inline_state.MemoryStore()))
    for path in ("/", "/chat/bags?user=u1&conversation=c1"):
        response = await client.get(path, headers=headers)
        assert response.status == 403, (path, headers)
    assert "Traceback" not in caplog.text


async def test_a_store_that_is_down_is_a_503(client_for: StartFn) -> None:
    class Down(inline_state.MemoryStore):
        async def inspect(self, key: inline_state.RecordKey) -> inline_state.InspectedRecord:
            raise inline_state.StoreUnavailable("the test took it down")

    client = await client_for(create_app(Down()))
    response = await client.get("/chat/bags", params={"user": "u1", "conversation": "c1"})
    assert response.status == 503
    assert "took it down" in (await response.json())["error"]
