"""Seed 004's state-management bot on botbuilder-python, on inline state.

botbuilder's sample 45.state-management keeps the user's profile in ``UserState`` and
the conversation's data in ``ConversationState`` (accessors, ``save_changes`` after each
turn); here both ride on the replies (``botUserData``, ``botConversationData``) and come
back on the next activity. First turn: asks for the user's name. Second: stores it.
Later turns: report the name, time and channel.

    make run-botbuilder    # on 127.0.0.1:3978, store memory://, no app id
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from os import environ
from typing import Any

from aiohttp import web
from botbuilder.core import ActivityHandler, MessageFactory, TurnContext
from botbuilder.core.integration import aiohttp_error_middleware
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication

import inline_state
import inline_state.botbuilder


@dataclass
class UserProfile:
    name: str | None = None


@dataclass
class ConversationData:
    timestamp: str | None = None
    channel_id: str | None = None
    prompted_for_user_name: bool = False


class Config:
    """The sample's config.py: the app id and password from the environment."""

    PORT = 3978
    APP_ID = environ.get("MicrosoftAppId", "")  # noqa: SIM112 - the SDK's names
    APP_PASSWORD = environ.get("MicrosoftAppPassword", "")  # noqa: SIM112
    APP_TYPE = environ.get("MicrosoftAppType", "MultiTenant")  # noqa: SIM112
    APP_TENANTID = environ.get("MicrosoftAppTenantId", "")  # noqa: SIM112


def _local_time(when: datetime | None) -> str:
    return (when or datetime.now().astimezone()).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


class StateManagementBot(ActivityHandler):  # type: ignore[misc]  # botbuilder is untyped
    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        profile = inline_state.get_user_data(
            activity, "UserProfile", UserProfile(), type=UserProfile
        )
        data = inline_state.get_conversation_data(
            activity, "ConversationData", ConversationData(), type=ConversationData
        )
        text = activity.text or ""
        if profile.name is None:
            if data.prompted_for_user_name:
                profile.name = text
                data.prompted_for_user_name = False
                lines = [f"Thanks {profile.name}. To see conversation data, type anything."]
            else:
                data.prompted_for_user_name = True
                lines = ["What is your name?"]
        else:
            data.timestamp = _local_time(activity.timestamp)
            data.channel_id = activity.channel_id
            lines = [
                f"{profile.name} sent: {text}",
                f"Message received at: {data.timestamp}",
                f"Message received from: {data.channel_id}",
            ]
        replies = [MessageFactory.text(line) for line in lines]
        # Where the sample calls save_changes(): only changed properties are written.
        inline_state.set_user_data(replies[0], "UserProfile", profile)
        inline_state.set_conversation_data(replies[0], "ConversationData", data)
        await turn_context.send_activities(replies)

    async def on_members_added_activity(
        self, members_added: list[Any], turn_context: TurnContext
    ) -> None:
        for member in members_added:
            if member.id != turn_context.activity.recipient.id:
                await turn_context.send_activity(
                    "Welcome to State Bot Sample. Type anything to get started."
                )


def create_app(store: str | inline_state.Store = "memory://") -> web.Application:
    """The sample's app.py, wrapped by inline state."""
    adapter = inline_state.botbuilder.ExpectRepliesCloudAdapter(
        ConfigurationBotFrameworkAuthentication(Config())
    )
    bot = StateManagementBot()

    async def messages(request: web.Request) -> web.Response:
        response: web.Response = await adapter.process(request, bot)
        return response

    app = web.Application(middlewares=[aiohttp_error_middleware])
    app.router.add_post("/api/messages", messages)
    inline_state.botbuilder.setup(app, adapter, store)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=Config.PORT)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    web.run_app(create_app(args.store), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
