"""The same counter turn with inline state on any store URL (``--store``)."""

from __future__ import annotations

import argparse
from typing import Any

from _serve import serve
from aiohttp import web

import inline_state


async def messages(request: web.Request) -> web.Response:
    act: Any = inline_state.get_message(request)
    n = inline_state.get_user_data(act, "turns", 0) + 1
    c = inline_state.get_conversation_data(act, "turns", 0) + 1
    reply = {
        "type": "message",
        "channelId": act.get("channelId"),
        "conversation": act.get("conversation"),
        "from": act.get("recipient"),
        "recipient": act.get("from"),
        "replyToId": act.get("id"),
        "text": f"echo: {act.get('text', '')} (turn {n})",
    }
    inline_state.set_user_data(reply, "turns", n)
    inline_state.set_conversation_data(reply, "turns", c)
    if args_bag_bytes:
        inline_state.set_user_data(reply, "padding", act.get("botUserData", {}).get("padding") or "x" * args_bag_bytes)
    # ReplyResponse keeps the objects: the middleware reads the bags without a re-parse.
    return inline_state.ReplyResponse({"activities": [reply]})


args_bag_bytes = 0


def make_app(args: argparse.Namespace) -> web.Application:
    global args_bag_bytes
    args_bag_bytes = args.bag_bytes
    app = web.Application()
    inline_state.setup(app, args.store)
    app.router.add_post("/api/messages", messages)
    return app


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--bag-bytes", type=int, default=0, help="user bag padding (unchanged per turn)")


if __name__ == "__main__":
    serve(make_app, add_args)
