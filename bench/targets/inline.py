"""The same counter turn with inline state on any store URL (``--store``).

``--api fast`` (the default) reads the message with ``get_message`` and answers with
``ReplyResponse``; ``--api plain`` is a bot that knows only aiohttp and the three JSON
fields: ``await request.json()`` and ``web.json_response``.

``--bag-bytes N`` adds an N-byte property to the user bag that no turn changes (how the
cost follows the bag's size); ``--seed-users N`` stores records of N other users before
the run (how the cost follows the number of stored users).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from _serve import serve
from aiohttp import web

import inline_state

PADDING = web.AppKey("padding", int)
INCREMENTS = web.AppKey("increments", bool)
SEED_BATCH = 1000


async def messages(request: web.Request) -> web.StreamResponse:
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
    if request.app[INCREMENTS]:  # exact counters: the reply records increments
        inline_state.incr_user_data(reply, "turns")
        inline_state.incr_conversation_data(reply, "turns")
    else:
        inline_state.set_user_data(reply, "turns", n)
        inline_state.set_conversation_data(reply, "turns", c)
    padding = request.app[PADDING]
    if padding and inline_state.get_user_data(act, "padding") is None:
        inline_state.set_user_data(reply, "padding", "x" * padding)
    # ReplyResponse keeps the objects: the middleware reads the bags without a re-parse.
    return inline_state.ReplyResponse({"activities": [reply]})


async def plain_messages(request: web.Request) -> web.StreamResponse:
    act: Any = await request.json()
    user = act.get("botUserData") or {}
    conversation = act.get("botConversationData") or {}
    n = user.get("turns", 0) + 1
    c = conversation.get("turns", 0) + 1
    reply = {
        "type": "message",
        "channelId": act.get("channelId"),
        "conversation": act.get("conversation"),
        "from": act.get("recipient"),
        "recipient": act.get("from"),
        "replyToId": act.get("id"),
        "text": f"echo: {act.get('text', '')} (turn {n})",
        "botUserData": {**user, "turns": n},
        "botConversationData": {**conversation, "turns": c},
    }
    padding = request.app[PADDING]
    if padding and "padding" not in user:
        reply["botUserData"]["padding"] = "x" * padding
    return web.json_response({"activities": [reply]})


def seeder(count: int, middleware: inline_state.InlineStateMiddleware) -> Any:
    async def seed(app: web.Application) -> None:
        clock = middleware.engine.clock
        for start in range(0, count, SEED_BATCH):
            stamp = clock.stamp()
            changes = []
            for i in range(start, min(start + SEED_BATCH, count)):
                for key in (
                    inline_state.RecordKey("user", "bot", "bench", "", f"seed{i}"),
                    inline_state.RecordKey("conversation", "bot", "bench", f"seed{i}", ""),
                ):
                    changes.append(inline_state.Change(key, {"turns": b"1"}, stamp=stamp))
            await middleware.engine.store.apply(changes)

    return seed


async def cache_stats(request: web.Request) -> web.Response:
    """The memory or SQLite store's cache counters, for the bench's hit ratio."""
    store = request.app[inline_state.STORE_KEY]
    store = getattr(store, "inner", store)  # a sealed store's
    if not isinstance(store, inline_state.MemoryStore | inline_state.SqliteStore):
        return web.json_response({})
    return web.json_response(store.cache_stats)


def make_app(args: argparse.Namespace) -> web.Application:
    app = web.Application()
    store: str | inline_state.Store = args.store
    if args.cache_bytes is not None:
        store = inline_state.MemoryStore(cache_bytes=args.cache_bytes)
    encryption = None
    if getattr(args, "encrypt", False):  # a fresh random key per run (never in code)
        from inline_state._seal import new_key

        hash_key = os.urandom(32) if getattr(args, "hash_ids", False) else None
        encryption = inline_state.KeyRing.from_text(
            new_key(), source="the bench's key", hash_key=hash_key
        )
    middleware = inline_state.setup(app, store, encryption=encryption)
    if getattr(args, "no_metrics", False):  # the engine's counters off, to measure them
        middleware.engine.metrics = None
    app.router.add_get("/cache-stats", cache_stats)
    app[PADDING] = args.bag_bytes
    app[INCREMENTS] = getattr(args, "increments", False)
    if args.seed_users:
        app.on_startup.append(seeder(args.seed_users, middleware))
    app.router.add_post("/api/messages", plain_messages if args.api == "plain" else messages)
    return app


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--bag-bytes", type=int, default=0)
    parser.add_argument("--seed-users", type=int, default=0)
    parser.add_argument("--api", choices=["fast", "plain"], default="fast")
    parser.add_argument("--cache-bytes", type=int, help="memory:// with this cache bound")
    parser.add_argument("--no-metrics", action="store_true", help="the engine counts nothing")
    parser.add_argument("--increments", action="store_true", help="count with incr_* helpers")
    parser.add_argument("--encrypt", action="store_true", help="seal stored values (AES-GCM)")
    parser.add_argument("--hash-ids", action="store_true", help="with --encrypt: hash ids, names")


if __name__ == "__main__":
    serve(make_app, add_args)
