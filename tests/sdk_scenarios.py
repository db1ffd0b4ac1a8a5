"""Scenarios both SDK integrations pass: seed 004's state bot, inline and POSTed, and
what the channel and the store must show afterwards. No SDK is imported here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from inline_state import MemoryStore, RecordKey, set_user_data

from .support import Channel, Client, activity, carries_a_bag

USER_KEY = RecordKey("user", "bot-1", "test", "", "user-1")
CONV_KEY = RecordKey("conversation", "bot-1", "test", "conv-1", "")
OTHER_USER_KEY = RecordKey("user", "bot-1", "test", "", "user-2")


async def turn(client: Client, text: str, **extra: Any) -> list[str]:
    """One expectReplies turn: the replies' texts; the body must carry no bag."""
    response = await client.post("/api/messages", json=activity(text=text, **extra))
    raw = await response.read()
    assert response.status == 200, raw
    assert not carries_a_bag(raw), raw
    return [reply["text"] for reply in json.loads(raw)["activities"]]


async def posted_turn(client: Client, service_url: str, text: str) -> int:
    """One turn whose replies the SDK POSTs to ``service_url``; the HTTP status."""
    response = await client.post(
        "/api/messages", json=activity(text=text, serviceUrl=service_url, deliveryMode="normal")
    )
    return response.status


async def state_bot_conversation(client: Client, store: MemoryStore) -> None:
    """Three turns keep the user's name and the conversation's data."""
    assert await turn(client, "hi") == ["What is your name?"]
    assert await turn(client, "Ada") == ["Thanks Ada. To see conversation data, type anything."]
    third = await turn(client, "how are you?")

    assert third[0] == "Ada sent: how are you?"
    assert third[2] == "Message received from: test"
    user, conversation = await store.load([USER_KEY, CONV_KEY])
    assert json.loads(user.props["UserProfile"]) == {"name": "Ada"}
    assert json.loads(conversation.props["ConversationData"])["channel_id"] == "test"


async def state_bot_keeps_users_apart(client: Client) -> None:
    """Another user starts over; the same user in another conversation is remembered."""
    await turn(client, "hi")
    await turn(client, "Ada")

    assert await turn(client, "hi", user="user-2") == ["What is your name?"]
    assert (await turn(client, "again", conversation="conv-2"))[0] == "Ada sent: again"


async def state_bot_over_posted_replies(
    client: Client, store: MemoryStore, channel: tuple[Channel, str]
) -> None:
    """The same conversation with replies POSTed: persisted, and never on the wire."""
    fake, service_url = channel
    for text in ("hi", "Ada", "how are you?"):
        assert await posted_turn(client, service_url, text) in (200, 201, 202)

    texts = [body["text"] for _, _, body in fake.received]
    assert texts[:2] == [
        "What is your name?",
        "Thanks Ada. To see conversation data, type anything.",
    ]
    assert texts[2] == "Ada sent: how are you?"
    assert all(
        path.startswith("/v3/conversations/conv-1/activities") for path, _, _ in fake.received
    )
    assert_no_bag_was_sent(fake)
    [user] = await store.load([USER_KEY])
    assert json.loads(user.props["UserProfile"]) == {"name": "Ada"}


def assert_no_bag_was_sent(fake: Channel) -> None:
    """Nothing the channel received carried a bag."""
    assert not any(carries_a_bag(body) for _, _, body in fake.received)


async def assert_proactive_ping_stored_alone(fake: Channel, store: MemoryStore) -> None:
    """user-2's record holds only what the proactive message set."""
    [record] = await store.load([OTHER_USER_KEY])
    assert record.props == {"pinged": b"true"}, "user-1's name must not reach user-2"
    assert_no_bag_was_sent(fake)


async def assert_update_persisted(fake: Channel, store: MemoryStore) -> None:
    """A reply sent, then updated: both bag-free on the wire, the update's bag stored."""
    assert [body["text"] for _, _, body in fake.received] == ["first", "edited"]
    assert_no_bag_was_sent(fake)
    [user] = await store.load([USER_KEY])
    assert user.props == {"edits": b"1"}


Handler = Callable[[Any, Any], Awaitable[None]]


def send_then_update(message_factory: Any) -> Handler:
    """A message handler (adapter, context) that sends a reply with a bag, then updates
    that same object with another value. Both SDKs share this API."""

    async def on_message(_adapter: Any, context: Any) -> None:
        reply = message_factory.text("first")
        set_user_data(reply, "edits", 0)
        sent = await context.send_activity(reply)
        # The SDK sent a copy: the bot's own object still carries its bag.
        reply.id, reply.text = sent.id, "edited"
        set_user_data(reply, "edits", 1)
        await context.update_activity(reply)

    return on_message


def remember_then_ping_user_2(
    message_factory: Any,
    continue_with_user_2: Callable[[Any, Any, Callable[[Any], Awaitable[None]]], Awaitable[Any]],
) -> Handler:
    """A message handler: "remember" stores user-1's name; anything else makes the bot
    send user-2 a proactive message that sets one property, while handling user-1."""

    async def on_message(adapter: Any, context: Any) -> None:
        if context.activity.text == "remember":
            reply = message_factory.text("ok")
            set_user_data(reply, "name", "Ada")
            await context.send_activity(reply)
            return

        async def ping(proactive: Any) -> None:
            message = message_factory.text("ping")
            set_user_data(message, "pinged", True)
            await proactive.send_activity(message)

        await continue_with_user_2(adapter, context, ping)

    return on_message


def assert_switch_off_fails_loudly(
    module: str, message_factory_import: str, distribution: str, tested: str
) -> None:
    """In a fresh process, where the SDK's Activity is as shipped, the helpers refuse an
    activity and ``verify()`` names the installed and the tested version."""
    script = f"""
import inline_state, inline_state.{module}
{message_factory_import}
try:
    inline_state.set_user_data(MessageFactory.text("x"), "n", 1)
except TypeError as error:
    print("helper:", error)
inline_state.{module}.verify()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"helper: Activity does not carry botUserData: call inline_state.{module}.enable()"
        in result.stdout
    )
    assert (
        f"SdkSwitchError: {distribution} {version(distribution)}: Activity drops an incoming "
        f"bag; inline_state is tested on {distribution} {tested}"
    ) in result.stderr
