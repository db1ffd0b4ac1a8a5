"""The Microsoft 365 Agents SDK (pinned extra) wrapped by inline state: the sample bot,
inline and POSTed replies, and the switch's failure mode."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from importlib.metadata import version
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
from inline_state import MemoryStore, RecordKey

from .support import Channel, Client, activity, carries_a_bag

ANONYMOUS = load_configuration_from_env(
    {"CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED": "true"}
)
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
    client = await client_for(create_app(store, ANONYMOUS))

    assert await turn(client, "hi") == ["What is your name?"]
    assert await turn(client, "Ada") == ["Thanks Ada. To see conversation data, type anything."]
    third = await turn(client, "how are you?")

    assert third[0] == "Ada sent: how are you?"
    assert third[2] == "Message received from: test"
    user, conversation = await store.load([USER_KEY, CONV_KEY])
    assert json.loads(user.props["UserProfile"]) == {"name": "Ada"}
    assert json.loads(conversation.props["ConversationData"])["channel_id"] == "test"


async def test_other_users_and_conversations_are_kept_apart(client_for: Any) -> None:
    client = await client_for(create_app(MemoryStore(), ANONYMOUS))
    await turn(client, "hi")
    await turn(client, "Ada")

    assert await turn(client, "hi", user="user-2") == ["What is your name?"]
    # Same user, new conversation: the name is remembered, the conversation is fresh.
    assert (await turn(client, "again", conversation="conv-2"))[0] == "Ada sent: again"


async def test_replies_posted_to_service_url_persist_and_leave_without_bags(
    client_for: Any, channel: tuple[Channel, str]
) -> None:
    fake, service_url = channel
    store = MemoryStore()
    client = await client_for(create_app(store, ANONYMOUS))

    for text in ("hi", "Ada", "how are you?"):
        response = await client.post(
            "/api/messages", json=activity(text=text, serviceUrl=service_url, deliveryMode="normal")
        )
        assert response.status in (200, 202), await response.text()

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
    # A fresh process, where the SDK's Activity is as shipped: the check must name the
    # installed version and what is dropped, and the helpers must refuse the activity.
    script = """
import inline_state, inline_state.agents
from microsoft_agents.hosting.core import MessageFactory, TurnContext, TurnState
try:
    inline_state.set_user_data(MessageFactory.text("x"), "n", 1)
except TypeError as error:
    print("helper:", error)
inline_state.agents.verify()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "helper: Activity does not carry botUserData: call inline_state.agents.enable()" in (
        result.stdout
    )
    installed = version("microsoft-agents-activity")
    assert (
        f"SdkSwitchError: microsoft-agents-activity {installed}: Activity drops an incoming bag; "
        "inline_state is tested on microsoft-agents-activity 1.9.0"
    ) in result.stderr


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
        response = await client.post(
            "/api/messages", json=activity(text=text, serviceUrl=service_url, deliveryMode="normal")
        )
        assert response.status in (200, 202), await response.text()
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
        other = ConversationReference.model_validate(
            {
                "channelId": "test",
                "serviceUrl": service_url,
                "conversation": {"id": "conv-2"},
                "user": {"id": "user-2"},
                "agent": {"id": "bot-1"},
            }
        )

        async def ping(proactive: TurnContext) -> None:
            message = MessageFactory.text("ping")
            inline_state.set_user_data(message, "pinged", True)
            await proactive.send_activity(message)

        await adapter.continue_conversation_with_claims(
            context.identity, other.get_continuation_activity(), ping
        )

    store = await posting_turns(client_for, service_url, on_message, "remember", "ping user-2")

    user_2 = RecordKey("user", "bot-1", "test", "", "user-2")
    [record] = await store.load([user_2])
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
        # The SDK sent a copy: the bot's own object still carries its bag.
        reply.id, reply.text = sent.id, "edited"
        inline_state.set_user_data(reply, "edits", 1)
        await context.update_activity(reply)

    store = await posting_turns(client_for, service_url, on_message, "hi")

    assert [method_body["text"] for _, _, method_body in fake.received] == ["first", "edited"]
    assert not any(carries_a_bag(body) for _, _, body in fake.received)
    [user] = await store.load([USER_KEY])
    assert user.props == {"edits": b"1"}


async def test_an_adapter_serves_one_inline_state() -> None:
    app, _, adapter = sdk_app(ANONYMOUS)
    inline_state.agents.setup(app, adapter, MemoryStore())
    with pytest.raises(ValueError, match="already sends through an inline state"):
        inline_state.agents.setup(app, adapter, MemoryStore())
