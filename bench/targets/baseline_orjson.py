"""The floor with the JSON library held constant: baseline.py parsing and serializing
with orjson (inline_state's JSON library), state in two dicts, no middleware."""

from __future__ import annotations

import argparse
from typing import Any

import orjson
from _serve import serve
from aiohttp import web

USERS: dict[str, int] = {}
CONVERSATIONS: dict[str, int] = {}


async def messages(request: web.Request) -> web.Response:
    act: dict[str, Any] = orjson.loads(await request.read())
    user, conversation = act["from"]["id"], act["conversation"]["id"]
    n = USERS[user] = USERS.get(user, 0) + 1
    CONVERSATIONS[conversation] = CONVERSATIONS.get(conversation, 0) + 1
    reply = {
        "type": "message",
        "channelId": act.get("channelId"),
        "conversation": act.get("conversation"),
        "from": act.get("recipient"),
        "recipient": act.get("from"),
        "replyToId": act.get("id"),
        "text": f"echo: {act.get('text', '')} (turn {n})",
    }
    return web.Response(body=orjson.dumps({"activities": [reply]}), content_type="application/json")


def make_app(args: argparse.Namespace) -> web.Application:
    app = web.Application()
    app.router.add_post("/api/messages", messages)
    return app


if __name__ == "__main__":
    serve(make_app)
