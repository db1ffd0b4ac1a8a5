"""Test helpers: message factories and tiny real bots."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

import inline_state

Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ids = itertools.count(1)


def activity(
    *,
    text: str = "hi",
    user: str = "user-1",
    conversation: str = "conv-1",
    channel: str = "test",
    bot: str = "bot-1",
    type: str = "message",
    **extra: Any,
) -> dict[str, Any]:
    """A v3 Activity as a channel sends it."""
    return {
        "type": type,
        "id": f"act-{next(_ids)}",
        "channelId": channel,
        "serviceUrl": "http://127.0.0.1:1/",
        "conversation": {"id": conversation},
        "from": {"id": user, "name": "User"},
        "recipient": {"id": bot, "name": "Bot"},
        "deliveryMode": "expectReplies",
        "text": text,
        **extra,
    }


def v1_message(
    *,
    text: str = "hi",
    user: str = "user-1",
    conversation: str = "conv-1",
    bot: str = "bot-1",
    type: str = "Message",
    **extra: Any,
) -> dict[str, Any]:
    """A v1 Message as the 2016 Bot Connector sent it."""
    return {
        "type": type,
        "id": f"msg-{next(_ids)}",
        "conversationId": conversation,
        "from": {"id": user, "channelId": "test", "address": user},
        "to": {"id": bot, "channelId": "test", "address": bot, "isBot": True},
        "text": text,
        **extra,
    }


ReplyFn = Callable[[dict[str, Any]], Any]


def echo_app(
    make_body: ReplyFn, store: str | inline_state.Store = "memory://", **options: Any
) -> tuple[web.Application, list[dict[str, Any]]]:
    """An app whose bot records what it received and answers ``make_body(message)``."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        message = await request.json()
        seen.append(message)
        return web.json_response(make_body(message))

    app = web.Application()
    inline_state.setup(app, store, **options)
    app.router.add_post("/api/messages", handler)
    return app, seen


async def post(client: Client, body: Any) -> tuple[int, Any]:
    """POST a JSON body to /api/messages; return status and parsed JSON (or text)."""
    response = await client.post("/api/messages", json=body)
    text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text
