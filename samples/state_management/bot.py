"""The state-management bot of the Bot Framework samples, on inline state.

First turn: asks for the user's name. Second: stores it in user data. Later turns:
report the name, the time and the channel, kept in conversation data. The bot holds
no store code: the state rides on the replies (v3 activities, deliveryMode
expectReplies) and comes back on the next incoming activity.

    python samples/state_management/bot.py --port 3978 --store memory://
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
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


def create_app(store: str | inline_state.Store = "memory://") -> web.Application:
    app = web.Application()
    inline_state.setup(app, store)
    app.router.add_post("/api/messages", messages)
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
