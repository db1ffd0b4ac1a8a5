"""botbuilder-python (pinned extra) wrapped by inline state: the sample bot, inline and
POSTed replies, and the switch's failure mode."""

from __future__ import annotations

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
from inline_state import MemoryStore

from .sdk_scenarios import (
    CONV_KEY,
    assert_proactive_ping_stored_alone,
    assert_switch_off_fails_loudly,
    assert_update_persisted,
    posted_turn,
    remember_then_ping_user_2,
    send_then_update,
    state_bot_conversation,
    state_bot_keeps_users_apart,
    state_bot_over_posted_replies,
)
from .support import Channel, activity


async def test_three_turn_conversation_keeps_user_and_conversation_data(
    client_for: Any,
) -> None:
    store = MemoryStore()
    await state_bot_conversation(await client_for(create_app(store)), store)


async def test_other_users_and_conversations_are_kept_apart(client_for: Any) -> None:
    await state_bot_keeps_users_apart(await client_for(create_app(MemoryStore())))


async def test_replies_posted_to_service_url_persist_and_leave_without_bags(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    store = MemoryStore()
    await state_bot_over_posted_replies(await client_for(create_app(store)), store, channel)


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
    assert_switch_off_fails_loudly(
        "botbuilder", "from botbuilder.core import MessageFactory", "botbuilder-schema", "4.17.1"
    )


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
        assert await posted_turn(client, service_url, text) in (200, 201, 202)
    return store


async def test_a_proactive_message_to_another_user_starts_from_that_users_bag(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel

    async def continue_with_user_2(adapter: Any, _context: TurnContext, ping: Any) -> None:
        user_2 = ConversationReference(
            channel_id="test",
            service_url=service_url,
            conversation=ConversationAccount(id="conv-2"),
            user=ChannelAccount(id="user-2"),
            bot=ChannelAccount(id="bot-1"),
        )
        await adapter.continue_conversation(user_2, ping, "")

    on_message = remember_then_ping_user_2(MessageFactory, continue_with_user_2)
    store = await posting_turns(client_for, service_url, on_message, "remember", "ping user-2")
    await assert_proactive_ping_stored_alone(fake, store)


async def test_an_updated_reply_keeps_its_bags_off_the_wire(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    store = await posting_turns(client_for, service_url, send_then_update(MessageFactory), "hi")
    await assert_update_persisted(fake, store)
