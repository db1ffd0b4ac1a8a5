"""The state-management bot of the Bot Framework samples, on inline state.

First turn: asks for the user's name. Second: stores it in user data. Later turns:
report the name, the time and the channel, kept in conversation data. The bot holds
no store code: the state rides on the replies (v3 activities, deliveryMode
expectReplies) and comes back on the next incoming activity.

    python samples/state_management/bot.py --port 3978 --store memory://

Then open http://127.0.0.1:3978/ to chat with it and watch its three bags change turn by
turn, and http://127.0.0.1:3978/inspector/ to browse and edit what it stored (without
a secret on loopback; with ``INLINE_STATE_SECRET`` set, behind that secret).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

import inline_state


@dataclass
class UserProfile:
    name: str | None = None


@dataclass
class ConversationData:
    timestamp: str | None = None
    channel_id: str | None = None
    prompted_for_user_name: bool = False


def _local_time(activity: dict[str, Any]) -> str:
    stamp = activity.get("timestamp")
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except (AttributeError, ValueError):
        when = None
    return (when or datetime.now().astimezone()).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def on_message(activity: dict[str, Any]) -> list[dict[str, Any]]:
    profile = inline_state.get_user_data(activity, "UserProfile", UserProfile(), type=UserProfile)
    data = inline_state.get_conversation_data(
        activity, "ConversationData", ConversationData(), type=ConversationData
    )
    text = activity.get("text") or ""
    if profile.name is None:
        if data.prompted_for_user_name:
            profile.name = text
            data.prompted_for_user_name = False
            replies = [f"Thanks {profile.name}. To see conversation data, type anything."]
        else:
            data.prompted_for_user_name = True
            replies = ["What is your name?"]
    else:
        data.timestamp = _local_time(activity)
        data.channel_id = activity.get("channelId")
        replies = [
            f"{profile.name} sent: {text}",
            f"Message received at: {data.timestamp}",
            f"Message received from: {data.channel_id}",
        ]
    out = [inline_state.create_reply(activity, line) for line in replies]
    # Unchanged values cost nothing: only properties that differ are written.
    inline_state.set_user_data(out[0], "UserProfile", profile)
    inline_state.set_conversation_data(out[0], "ConversationData", data)
    return out


def on_members_added(activity: dict[str, Any]) -> list[dict[str, Any]]:
    bot_id = (activity.get("recipient") or {}).get("id")
    return [
        inline_state.create_reply(
            activity, "Welcome to State Bot Sample. Type anything to get started."
        )
        for member in activity.get("membersAdded") or []
        if member.get("id") != bot_id
    ]


async def messages(request: web.Request) -> web.Response:
    activity = inline_state.get_message(request)
    if activity is None:
        raise web.HTTPBadRequest(text="expected a JSON activity")
    kind = activity.get("type")
    if kind == "message":
        replies = on_message(activity)
    elif kind == "conversationUpdate":
        replies = on_members_added(activity)
    else:
        replies = []
    return web.json_response({"activities": replies})


# -- the chat page (a stand-in channel for trying the bot in a browser) ----------------------

BOT_ID = "state-bot"  # the chat page's recipient.id: the bot id the inspector shows
CHAT = Path(__file__).parent / "chat"
_CHAT_FILES = {"": "index.html", "chat.js": "chat.js", "chat.css": "chat.css"}
_CHAT_TYPES = {"index.html": "text/html", "chat.js": "text/javascript", "chat.css": "text/css"}
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# What reverse proxies add: through one, a remote client would pass for a local one. (A
# proxy that adds nothing cannot be told apart: never publish the sample through one.)
_FORWARDING_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Via",
)
_LOOPBACK_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::\d{1,5})?", re.IGNORECASE)


def _local_only(request: web.Request) -> None:
    # The chat page reads any user's bags by id: only for this machine, and only under a
    # loopback name (a page whose own name resolves to 127.0.0.1 is refused).
    try:
        local = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        local = False
    if (
        not local
        or _LOOPBACK_HOST.fullmatch(request.headers.get("Host", "")) is None
        or any(h in request.headers for h in _FORWARDING_HEADERS)
    ):
        raise web.HTTPForbidden(text="the chat page answers on loopback only, not through a proxy")


async def chat_file(request: web.Request) -> web.Response:
    _local_only(request)
    name = _CHAT_FILES[request.match_info.get("name", "")]
    return web.Response(
        body=(CHAT / name).read_bytes(),
        content_type=_CHAT_TYPES[name],
        charset="utf-8",
        headers={"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff"},
    )


async def chat_bags(request: web.Request) -> web.Response:
    """The three bags of a chat user in a conversation, as formatted JSON (or null)."""
    _local_only(request)
    user, conversation = request.query.get("user"), request.query.get("conversation")
    if not user or not conversation:
        raise web.HTTPBadRequest(text="user and conversation are required")
    store = request.app[inline_state.STORE_KEY]
    bags: dict[str, str | None] = {}
    for kind, key in (
        ("user", inline_state.RecordKey("user", BOT_ID, "chat", "", user)),
        ("conversation", inline_state.RecordKey("conversation", BOT_ID, "chat", conversation, "")),
        ("private", inline_state.RecordKey("private", BOT_ID, "chat", conversation, user)),
    ):
        try:
            props = (await store.inspect(key)).record.props
        except inline_state.StoreUnavailable as exc:
            return web.json_response(
                {"error": f"the state store is unavailable: {exc}"}, status=503
            )
        bags[kind] = (
            json.dumps({n: json.loads(v) for n, v in sorted(props.items())}, indent=2)
            if props
            else None
        )
    return web.json_response(bags, headers={"Cache-Control": "no-store"})


def create_app(
    store: str | inline_state.Store = "memory://", *, secret: str | None = None
) -> web.Application:
    """The bot at /api/messages, its chat page at / and the inspector at /inspector/
    (behind ``secret``; without one, for loopback clients only)."""
    app = web.Application()
    inline_state.setup(app, store)
    app.router.add_post("/api/messages", messages)
    if secret:
        inline_state.add_inspector(app, secret=secret, bot_id=BOT_ID)
    else:
        inline_state.add_inspector(app, no_auth=True, bot_id=BOT_ID)
    app.router.add_get("/", chat_file)
    app.router.add_get("/{name:chat\\.(?:js|css)}", chat_file)
    app.router.add_get("/chat/bags", chat_bags)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3978)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    secret = os.environ.get("INLINE_STATE_SECRET") or None
    base = f"http://{args.host}:{args.port}/"
    print(f"Chat with the bot at {base}, and see what it stored at {base}inspector/", flush=True)
    web.run_app(create_app(args.store, secret=secret), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
