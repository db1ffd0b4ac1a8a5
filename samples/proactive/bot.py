"""Proactive messages with inline state: replies POSTed through the client middleware.

Each incoming activity is answered by POSTing a reply to the channel (its serviceUrl)
and the conversation is remembered; ``POST /api/notify`` then sends every remembered
conversation a proactive message that also records, in user data, when the user was
last notified. The client middleware strips the bags before the channel sees them and
persists them once the channel accepted the message.

    python samples/proactive/bot.py --port 3978
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import aiohttp
from aiohttp import web

import inline_state

SESSION = web.AppKey("session", aiohttp.ClientSession)
REFERENCES = web.AppKey("references", dict)
MIDDLEWARE = web.AppKey("middleware", inline_state.InlineStateMiddleware)


def activities_url(activity: dict[str, Any]) -> str:
    base = str(activity["serviceUrl"]).rstrip("/")
    return f"{base}/v3/conversations/{activity['conversation']['id']}/activities"


async def messages(request: web.Request) -> web.Response:
    activity = inline_state.get_message(request)
    if activity is None or activity.get("type") != "message":
        return web.json_response({})
    seen = inline_state.get_user_data(activity, "messages", 0) + 1
    reply = inline_state.create_reply(activity, f"message {seen}; I will remind you later")
    inline_state.set_user_data(reply, "messages", seen)
    # Remember where to reach this user (a conversation reference) for later.
    request.app[REFERENCES][activity["conversation"]["id"]] = {
        k: activity[k] for k in ("channelId", "serviceUrl", "conversation", "from", "recipient")
    }
    async with request.app[SESSION].post(
        f"{activities_url(activity)}/{activity['id']}", json=reply
    ) as answer:
        answer.raise_for_status()
    return web.json_response({})


async def notify(request: web.Request) -> web.Response:
    """Send every remembered conversation a proactive message (outside any turn)."""
    sent = 0
    for reference in request.app[REFERENCES].values():
        message = inline_state.create_reply(
            {**reference, "type": "message"}, "reminder: you asked me to remind you"
        )
        # Outside a turn there is no played-back bag: this replaces botUserData wholesale,
        # so carry what must survive.
        message["botUserData"] = {"lastNotified": int(time.time())}
        async with request.app[SESSION].post(activities_url(reference), json=message) as answer:
            sent += answer.status < 300
    return web.json_response({"sent": sent})


async def client_session(app: web.Application) -> Any:
    middleware = app[MIDDLEWARE]
    async with aiohttp.ClientSession(middlewares=(middleware.client,)) as session:
        app[SESSION] = session
        yield


def create_app(store: str | inline_state.Store = "memory://") -> web.Application:
    app = web.Application()
    app[MIDDLEWARE] = inline_state.setup(app, store)
    app[REFERENCES] = {}
    app.cleanup_ctx.append(client_session)
    app.router.add_post("/api/messages", messages)
    app.router.add_post("/api/notify", notify)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3978)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    web.run_app(create_app(args.store), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
