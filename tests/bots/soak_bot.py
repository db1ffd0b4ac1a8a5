"""The bot the soak test (soak/run.py) loads and kills: each turn writes one unique
property, named by the message text, into the user's bag.

    python soak_bot.py --port 3978 --store sqlite:///state.db

POST /fault/sqlite-full?on=1 makes the SQLite file unable to grow (``max_page_count``
at its current size, as a full disk would), ``?on=0`` lifts it: the soak's way to hit
a full disk without a small filesystem. Test code only, never part of the package.
"""

from __future__ import annotations

import argparse
import sqlite3

from aiohttp import web

import inline_state
from inline_state import SqliteStore


def make_app(store_url: str) -> web.Application:
    app = web.Application()
    middleware = inline_state.setup(app, store_url, max_properties=100_000)

    async def messages(request: web.Request) -> web.Response:
        msg = inline_state.get_message(request)
        assert msg is not None
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_user_data(reply, msg["text"], 1)
        return inline_state.ReplyResponse({"activities": [reply]})

    async def sqlite_full(request: web.Request) -> web.Response:
        store = middleware.store
        assert isinstance(store, SqliteStore) and store._conn is not None
        on = request.query.get("on") == "1"
        conn: sqlite3.Connection = store._conn  # used on the loop, as the store does
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        limit = conn.execute(f"PRAGMA max_page_count = {pages if on else 1 << 30}").fetchone()[0]
        return web.json_response({"max_page_count": int(limit)})

    app.router.add_post("/api/messages", messages)
    app.router.add_post("/fault/sqlite-full", sqlite_full)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.store), host="127.0.0.1", port=args.port, print=None)
