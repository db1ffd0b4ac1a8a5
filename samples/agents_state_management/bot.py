"""Seed 004's state-management bot on the Microsoft 365 Agents SDK, on inline state.

The SDK's own sample keeps the user's profile in ``UserState`` and the conversation's
data in ``ConversationState``; here both ride on the replies (``botUserData`` and
``botConversationData``) and come back on the next activity. First turn: asks for the
user's name. Second: stores it. Later turns: report the name, time and channel.

    make run-agents        # anonymous, on 127.0.0.1:3978, store memory://

Configuration comes from the SDK's environment variables
(``CONNECTIONS__SERVICE_CONNECTION__SETTINGS__CLIENTID`` and so on); ``make run-agents``
sets ``...__ANONYMOUS_ALLOWED=true`` for a local run without an app id.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from datetime import datetime
from os import environ
from typing import Any

from aiohttp import web
from microsoft_agents.activity import Activity, load_configuration_from_env
from microsoft_agents.authentication.msal import MsalConnectionManager
from microsoft_agents.hosting.aiohttp import (
    CloudAdapter,
    jwt_authorization_middleware,
    start_agent_process,
)
from microsoft_agents.hosting.core import (
    AgentApplication,
    Authorization,
    MemoryStorage,
    MessageFactory,
    TurnContext,
    TurnState,
)

import inline_state
import inline_state.agents


@dataclass
class UserProfile:
    name: str | None = None


@dataclass
class ConversationData:
    timestamp: str | None = None
    channel_id: str | None = None
    prompted_for_user_name: bool = False


def _local_time(when: datetime | None) -> str:
    return (when or datetime.now().astimezone()).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


async def on_message(context: TurnContext, _state: TurnState) -> None:
    activity = context.activity
    profile = inline_state.get_user_data(activity, "UserProfile", UserProfile(), type=UserProfile)
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
    replies: list[Activity] = [MessageFactory.text(line) for line in lines]
    # Where UserState/ConversationState would save_changes(): only changed properties
    # are written.
    inline_state.set_user_data(replies[0], "UserProfile", profile)
    inline_state.set_conversation_data(replies[0], "ConversationData", data)
    await context.send_activities(replies)


async def on_members_added(context: TurnContext, _state: TurnState) -> None:
    bot = context.activity.recipient
    for member in context.activity.members_added or []:
        if bot is None or member.id != bot.id:
            await context.send_activity(
                "Welcome to State Bot Sample. Type anything to get started."
            )


def sdk_app(
    config: dict[str, Any] | None = None,
) -> tuple[web.Application, AgentApplication[TurnState], CloudAdapter]:
    """The aiohttp app, agent application and adapter as the SDK's samples build them.

    ``config`` defaults to the SDK's environment variables.
    """
    config = config if config is not None else load_configuration_from_env(environ)
    # The SDK requires a storage for its own use (sign-in state, the TurnState it loads);
    # the bot's data never goes there.
    storage = MemoryStorage()
    connection_manager = MsalConnectionManager(**config)
    adapter = CloudAdapter(connection_manager=connection_manager)
    authorization = Authorization(storage, connection_manager, **config)
    agent_app = AgentApplication[TurnState](storage=storage, authorization=authorization, **config)

    async def messages(request: web.Request) -> web.Response:
        response = await start_agent_process(request, agent_app, adapter)
        return response if response is not None else web.Response(status=202)

    app = web.Application(middlewares=[jwt_authorization_middleware])
    app.router.add_post("/api/messages", messages)
    with warnings.catch_warnings():  # the SDK's middleware reads this string key
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["agent_configuration"] = connection_manager.get_default_connection_configuration()
    return app, agent_app, adapter


def create_app(
    store: str | inline_state.Store = "memory://", config: dict[str, Any] | None = None
) -> web.Application:
    """The state-management bot, wrapped by inline state."""
    app, agent_app, adapter = sdk_app(config)
    agent_app.activity("message")(on_message)
    agent_app.conversation_update("membersAdded")(on_members_added)
    inline_state.agents.setup(app, adapter, store)
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
