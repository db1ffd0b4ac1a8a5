"""A minimal v1 bot: counts messages per user, per conversation and per user in it.

The reply is one v1 Message returned inline, as the 2016 Bot Connector expected. With
``--exact`` the counts are increments (``incr_*``): overlapping turns all count.

    python samples/counter_v1/bot.py --port 3978 [--exact]
"""

from __future__ import annotations

import argparse

from aiohttp import web

import inline_state


async def messages(request: web.Request) -> web.Response:
    message = inline_state.get_message(request)
    if message is None:
        raise web.HTTPBadRequest(text="expected a JSON message")
    if message.get("type") != "Message":
        return web.json_response({"type": message.get("type")})
    users = inline_state.get_user_data(message, "count", 0) + 1
    here = inline_state.get_conversation_data(message, "count", 0) + 1
    mine = inline_state.get_private_conversation_data(message, "count", 0) + 1
    reply = inline_state.create_reply(
        message, f"you: {users} messages; this conversation: {here}; you here: {mine}"
    )
    if request.app[EXACT]:
        inline_state.incr_user_data(reply, "count")
        inline_state.incr_conversation_data(reply, "count")
        inline_state.incr_private_conversation_data(reply, "count")
    else:
        inline_state.set_user_data(reply, "count", users)
        inline_state.set_conversation_data(reply, "count", here)
        inline_state.set_private_conversation_data(reply, "count", mine)
    return web.json_response(reply)


EXACT = web.AppKey("exact", bool)


def create_app(
    store: str | inline_state.Store = "memory://", *, exact: bool = False
) -> web.Application:
    app = web.Application()
    app[EXACT] = exact
    inline_state.setup(app, store)
    app.router.add_post("/api/messages", messages)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3978)
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--exact", action="store_true", help="count with increments")
    args = parser.parse_args()
    web.run_app(create_app(args.store, exact=args.exact), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
