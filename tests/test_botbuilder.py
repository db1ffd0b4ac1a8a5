"""botbuilder-python (pinned extra) wrapped by inline state: the sample bot, inline and
POSTed replies, and the switch's failure mode."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from typing import Any

from aiohttp import web
from botbuilder.core import ActivityHandler, MessageFactory, TurnContext
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from botbuilder.schema import (
    Activity,
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
)
from samples.botbuilder_state_management.bot import Config, create_app

import inline_state
import inline_state.botbuilder
from inline_state import MemoryStore, RecordKey

from .support import Channel, Client, activity, carries_a_bag

USER_KEY = RecordKey("user", "bot-1", "test", "", "user-1")
CONV_KEY = RecordKey("conversation", "bot-1", "test", "conv-1", "")


async def turn(client: Client, text: str, **extra: Any) -> list[str]:
    response = await client.post("/api/messages", json=activity(text=text, **extra))
    raw = await response.read()
    assert response.status == 200, raw
    assert not carries_a_bag(raw), raw
    return [reply["text"] for reply in json.loads(raw)["activities"]]


async def test_three_turn_conversation_keeps_user_and_conversation_data(
    client_for: Any,
) -> None:
    store = MemoryStore()
    client = await client_for(create_app(store))

    assert await turn(client, "hi") == ["What is your name?"]
    assert await turn(client, "Ada") == ["Thanks Ada. To see conversation data, type anything."]
    third = await turn(client, "how are you?")

    assert third[0] == "Ada sent: how are you?"
    assert third[2] == "Message received from: test"
    user, conversation = await store.load([USER_KEY, CONV_KEY])
    assert json.loads(user.props["UserProfile"]) == {"name": "Ada"}
    assert json.loads(conversation.props["ConversationData"])["channel_id"] == "test"


async def test_other_users_and_conversations_are_kept_apart(client_for: Any) -> None:
    client = await client_for(create_app(MemoryStore()))
    await turn(client, "hi")
    await turn(client, "Ada")

    assert await turn(client, "hi", user="user-2") == ["What is your name?"]
    assert (await turn(client, "again", conversation="conv-2"))[0] == "Ada sent: again"


async def test_replies_posted_to_service_url_persist_and_leave_without_bags(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    store = MemoryStore()
    client = await client_for(create_app(store))

    for text in ("hi", "Ada", "how are you?"):
        response = await client.post(
            "/api/messages", json=activity(text=text, serviceUrl=service_url, deliveryMode="normal")
        )
        assert response.status in (200, 201, 202), await response.text()

    texts = [body["text"] for _, _, body in fake.received]
    assert texts[:2] == [
        "What is your name?",
        "Thanks Ada. To see conversation data, type anything.",
    ]
    assert texts[2] == "Ada sent: how are you?"
    assert all(
        path.startswith("/v3/conversations/conv-1/activities") for path, _, _ in fake.received
    )
    assert not any(carries_a_bag(body) for _, _, body in fake.received)
    [user] = await store.load([USER_KEY])
    assert json.loads(user.props["UserProfile"]) == {"name": "Ada"}


async def test_a_turn_whose_reply_the_channel_refuses_writes_nothing(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    fake.status = 503
    store = MemoryStore()
    client = await client_for(create_app(store))

    response = await client.post(
        "/api/messages", json=activity(text="hi", serviceUrl=service_url, deliveryMode="normal")
    )

    assert response.status == 500
    assert [body["text"] for _, _, body in fake.received] == ["What is your name?"]
    [conversation] = await store.load([CONV_KEY])
    assert not conversation.exists


def test_helpers_work_on_sdk_activities() -> None:
    inline_state.botbuilder.enable()
    incoming = Activity().deserialize(
        {"type": "message", "botUserData": {"n": 1}, "botConversationData": {"c": "x"}}
    )
    reply = MessageFactory.text("ok")

    inline_state.set_user_data(reply, "n", inline_state.get_user_data(incoming, "n") + 1)
    inline_state.del_conversation_data(reply, "c")

    assert inline_state.get_conversation_data(incoming, "c") == "x"
    serialized = reply.serialize()
    assert serialized["botUserData"] == {"n": 2}
    assert serialized["botConversationData"] == {}
    assert "botUserData" not in MessageFactory.text("untouched").serialize()


def test_enable_is_idempotent_and_verified() -> None:
    inline_state.botbuilder.enable()
    inline_state.botbuilder.enable()
    inline_state.botbuilder.verify()
    assert Activity._attribute_map["botUserData"] == {"key": "botUserData", "type": "object"}


def test_the_check_fails_loudly_where_the_switch_does_not_hold() -> None:
    script = """
import inline_state, inline_state.botbuilder
from botbuilder.core import MessageFactory
try:
    inline_state.set_user_data(MessageFactory.text("x"), "n", 1)
except TypeError as error:
    print("helper:", error)
inline_state.botbuilder.verify()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "helper: Activity does not carry botUserData: call inline_state.botbuilder.enable()" in (
        result.stdout
    )
    installed = version("botbuilder-schema")
    assert (
        f"SdkSwitchError: botbuilder-schema {installed}: Activity drops an incoming bag; "
        "inline_state is tested on botbuilder-schema 4.17.1"
    ) in result.stderr


class ScriptedBot(ActivityHandler):  # type: ignore[misc]  # botbuilder is untyped
    """A bot whose message handler is a function of (adapter, turn context)."""

    def __init__(self, adapter: Any, on_message: Any) -> None:
        self.adapter = adapter
        self.on_message = on_message

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        await self.on_message(self.adapter, turn_context)


async def posting_turns(
    client_for: Any, service_url: str, on_message: Any, *texts: str
) -> MemoryStore:
    adapter = inline_state.botbuilder.ExpectRepliesCloudAdapter(
        ConfigurationBotFrameworkAuthentication(Config())
    )
    bot = ScriptedBot(adapter, on_message)

    async def messages(request: web.Request) -> Any:
        return await adapter.process(request, bot)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    store = MemoryStore()
    inline_state.botbuilder.setup(app, adapter, store)
    client = await client_for(app)
    for text in texts:
        response = await client.post(
            "/api/messages", json=activity(text=text, serviceUrl=service_url, deliveryMode="normal")
        )
        assert response.status in (200, 201, 202), await response.text()
    return store


async def test_a_proactive_message_to_another_user_starts_from_that_users_bag(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel

    async def on_message(adapter: Any, context: TurnContext) -> None:
        if context.activity.text == "remember":
            reply = MessageFactory.text("ok")
            inline_state.set_user_data(reply, "name", "Ada")
            await context.send_activity(reply)
            return
        other = ConversationReference(
            channel_id="test",
            service_url=service_url,
            conversation=ConversationAccount(id="conv-2"),
            user=ChannelAccount(id="user-2"),
            bot=ChannelAccount(id="bot-1"),
        )

        async def ping(proactive: TurnContext) -> None:
            message = MessageFactory.text("ping")
            inline_state.set_user_data(message, "pinged", True)
            await proactive.send_activity(message)

        await adapter.continue_conversation(other, ping, "")

    store = await posting_turns(client_for, service_url, on_message, "remember", "ping user-2")

    [record] = await store.load([RecordKey("user", "bot-1", "test", "", "user-2")])
    assert record.props == {"pinged": b"true"}, "user-1's name must not reach user-2"
    assert not any(carries_a_bag(body) for _, _, body in fake.received)


async def test_an_updated_reply_keeps_its_bags_off_the_wire(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel

    async def on_message(_adapter: Any, context: TurnContext) -> None:
        reply = MessageFactory.text("first")
        inline_state.set_user_data(reply, "edits", 0)
        sent = await context.send_activity(reply)
        # botbuilder sent a copy: the bot's own object still carries its bag.
        reply.id, reply.text = sent.id, "edited"
        inline_state.set_user_data(reply, "edits", 1)
        await context.update_activity(reply)

    store = await posting_turns(client_for, service_url, on_message, "hi")

    assert [body["text"] for _, _, body in fake.received] == ["first", "edited"]
    assert not any(carries_a_bag(body) for _, _, body in fake.received)
    [user] = await store.load([USER_KEY])
    assert user.props == {"edits": b"1"}
