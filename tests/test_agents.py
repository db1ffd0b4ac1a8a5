"""The Microsoft 365 Agents SDK (pinned extra) wrapped by inline state: the sample bot,
inline and POSTed replies, and the switch's failure mode."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from microsoft_agents.activity import (
    Activity,
    ConversationReference,
    load_configuration_from_env,
)
from microsoft_agents.hosting.core import MessageFactory, TurnContext, TurnState
from samples.agents_state_management.bot import create_app, sdk_app

import inline_state
import inline_state.agents
from inline_state import MemoryStore

from .sdk_scenarios import (
    CONV_KEY,
    USER_KEY,
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

ANONYMOUS = load_configuration_from_env(
    {"CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED": "true"}
)


async def test_three_turn_conversation_keeps_user_and_conversation_data(
    client_for: Any,
) -> None:
    store = MemoryStore()
    await state_bot_conversation(await client_for(create_app(store, ANONYMOUS)), store)


async def test_other_users_and_conversations_are_kept_apart(client_for: Any) -> None:
    await state_bot_keeps_users_apart(await client_for(create_app(MemoryStore(), ANONYMOUS)))


async def test_replies_posted_to_service_url_persist_and_leave_without_bags(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    store = MemoryStore()
    await state_bot_over_posted_replies(
        await client_for(create_app(store, ANONYMOUS)), store, channel
    )


async def test_a_reply_the_channel_refuses_writes_nothing(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    fake.status = 503
    store = MemoryStore()
    client = await client_for(create_app(store, ANONYMOUS))

    response = await client.post(
        "/api/messages", json=activity(text="hi", serviceUrl=service_url, deliveryMode="normal")
    )

    # The reply, then the SDK's own error message: both refused, the turn fails.
    assert response.status == 500
    assert fake.received[0][2]["text"] == "What is your name?"
    [conversation] = await store.load([CONV_KEY])
    assert not conversation.exists


def test_helpers_work_on_sdk_activities() -> None:
    inline_state.agents.enable()
    incoming = Activity.model_validate(
        {"type": "message", "botUserData": {"n": 1}, "botConversationData": {"c": "x"}}
    )
    reply = MessageFactory.text("ok")

    inline_state.set_user_data(reply, "n", inline_state.get_user_data(incoming, "n") + 1)
    inline_state.del_conversation_data(reply, "c")

    assert inline_state.get_conversation_data(incoming, "c") == "x"
    dumped = reply.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped["botUserData"] == {"n": 2}
    assert dumped["botConversationData"] == {}


def test_enable_is_idempotent_and_verified() -> None:
    inline_state.agents.enable()
    inline_state.agents.enable()
    inline_state.agents.verify()
    assert Activity.model_config["extra"] == "allow"


def test_the_check_fails_loudly_where_the_switch_does_not_hold() -> None:
    assert_switch_off_fails_loudly(
        "agents",
        "from microsoft_agents.hosting.core import MessageFactory",
        "microsoft-agents-activity",
        "1.9.0",
    )


async def test_overlapping_turns_keep_each_others_changes(client_for: Any) -> None:
    # The SDK's own MemoryStorage state hands both turns the same dict and the last save
    # wins; on inline state each turn's changed property survives.
    app, agent_app, adapter = sdk_app(ANONYMOUS)
    both_loaded = asyncio.Barrier(2)

    async def remember(context: TurnContext, _state: TurnState) -> None:
        await both_loaded.wait()  # both turns have had their (empty) bags played back
        reply = MessageFactory.text("noted")
        inline_state.set_user_data(reply, context.activity.text or "", True)
        await context.send_activity(reply)

    agent_app.activity("message")(remember)
    store = MemoryStore()
    inline_state.agents.setup(app, adapter, store)
    client = await client_for(app)

    statuses = await asyncio.gather(
        *(client.post("/api/messages", json=activity(text=name)) for name in ("first", "second"))
    )

    assert [response.status for response in statuses] == [200, 200]
    [user] = await store.load([USER_KEY])
    assert set(user.props) == {"first", "second"}


async def posting_turns(
    client_for: Any, service_url: str, on_message: Any, *texts: str
) -> MemoryStore:
    """An SDK app whose message handler is ``on_message``; one POSTing turn per text."""
    app, agent_app, adapter = sdk_app(ANONYMOUS)
    agent_app.activity("message")(lambda context, state: on_message(adapter, context))
    store = MemoryStore()
    inline_state.agents.setup(app, adapter, store)
    client = await client_for(app)
    for text in texts:
        assert await posted_turn(client, service_url, text) in (200, 202)
    return store


async def test_a_proactive_message_to_another_user_starts_from_that_users_bag(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel

    async def continue_with_user_2(adapter: Any, context: TurnContext, ping: Any) -> None:
        user_2 = ConversationReference.model_validate(
            {
                "channelId": "test",
                "serviceUrl": service_url,
                "conversation": {"id": "conv-2"},
                "user": {"id": "user-2"},
                "agent": {"id": "bot-1"},
            }
        )
        await adapter.continue_conversation_with_claims(
            context.identity, user_2.get_continuation_activity(), ping
        )

    on_message = remember_then_ping_user_2(MessageFactory, continue_with_user_2)
    store = await posting_turns(client_for, service_url, on_message, "remember", "ping user-2")
    await assert_proactive_ping_stored_alone(fake, store)


async def test_an_updated_reply_keeps_its_bags_off_the_wire(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    store = await posting_turns(client_for, service_url, send_then_update(MessageFactory), "hi")
    await assert_update_persisted(fake, store)


async def test_an_adapter_serves_one_inline_state() -> None:
    app, _, adapter = sdk_app(ANONYMOUS)
    inline_state.agents.setup(app, adapter, MemoryStore())
    with pytest.raises(ValueError, match="already sends through an inline state"):
        inline_state.agents.setup(app, adapter, MemoryStore())
