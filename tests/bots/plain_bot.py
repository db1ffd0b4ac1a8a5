"""A bot that knows nothing about inline_state: it only reads and writes the three
JSON fields, as a 2016 v1 bot would (here on v3 activities). Written as a separate
program so the proxy tests put a real process behind the proxy.

    python plain_bot.py --port 3978 [--post] [--channel-data]

With --post it POSTs its reply to {serviceUrl}/v3/conversations/{id}/activities/{id}
instead of answering inline. With --channel-data its replies carry the bags under
channelData.inlineState, beside a channelData key of the channel's own, as a bot on an
SDK that drops unknown activity fields must.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp
from aiohttp import web


def reply_to(activity: dict[str, Any], channel_data: bool = False) -> dict[str, Any]:
    user = activity.get("botUserData") or {}
    conversation = activity.get("botConversationData") or {}
    user_count = user.get("count", 0) + 1
    conversation_count = conversation.get("count", 0) + 1
    bags = {
        "botUserData": {**user, "count": user_count},
        "botConversationData": {**conversation, "count": conversation_count},
    }
    return {
        **(
            {"channelData": {"tenant": {"id": "t1"}, "inlineState": bags}} if channel_data else bags
        ),
        "type": "message",
        "channelId": activity["channelId"],
        "serviceUrl": activity["serviceUrl"],
        "conversation": activity["conversation"],
        "from": activity["recipient"],
        "recipient": activity["from"],
        "replyToId": activity.get("id"),
        "text": f"user {user_count} conversation {conversation_count}",
    }


def make_app(post: bool, channel_data: bool = False) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        activity = json.loads(await request.read())
        reply = reply_to(activity, channel_data)
        if not post:
            return web.json_response({"activities": [reply]})
        url = (
            f"{activity['serviceUrl'].rstrip('/')}/v3/conversations/"
            f"{activity['conversation']['id']}/activities/{activity['id']}"
        )
        async with aiohttp.ClientSession() as session, session.post(url, json=reply) as answer:
            return web.json_response({"channelStatus": answer.status})

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--post", action="store_true")
    parser.add_argument("--channel-data", action="store_true")
    args = parser.parse_args()
    web.run_app(
        make_app(args.post, args.channel_data), host="127.0.0.1", port=args.port, print=None
    )
