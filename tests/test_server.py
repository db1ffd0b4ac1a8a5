"""The middleware end to end: a real aiohttp server, a real client, the memory store."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

import inline_state
from inline_state import HybridClock, MemoryStore, RecordKey, StoreUnavailable
from inline_state._clock import EPOCH_MS

from .support import Client, activity, carries_a_bag, echo_app, memory_records, post, v1_message

StartFn = Callable[[web.Application], Awaitable[Client]]
BAGS = ("botUserData", "botConversationData", "botPerUserInConversationData")


def reply_to(msg: dict[str, Any], **bags: Any) -> dict[str, Any]:
    reply = inline_state.create_reply(msg, "ok")
    reply.update(bags)
    return reply


def bags_of(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k.lower() in {b.lower() for b in BAGS}}


async def test_v3_bags_round_trip_and_leave_the_wire(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        if msg["text"] == "save":
            return {
                "activities": [
                    reply_to(
                        msg,
                        botUserData={"name": "Ada"},
                        botConversationData={"topic": "maths"},
                        botPerUserInConversationData={"step": 2},
                    )
                ]
            }
        return {"activities": [reply_to(msg)]}

    app, seen = echo_app(bot)
    client = await client_for(app)
    status, body = await post(client, activity(text="save"))
    assert status == 200
    assert bags_of(seen[0]) == {}
    assert bags_of(body["activities"][0]) == {}, "bags never reach the channel"
    await post(client, activity(text="again"))
    assert bags_of(seen[1]) == {
        "botUserData": {"name": "Ada"},
        "botConversationData": {"topic": "maths"},
        "botPerUserInConversationData": {"step": 2},
    }


async def test_bot_reads_state_through_json_text_and_get_message(client_for: StartFn) -> None:
    views: list[tuple[Any, Any, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        parsed = await request.json()
        text = json.loads(await request.text())
        views.append((parsed, text, inline_state.get_message(request)))
        return web.json_response(reply_to(parsed, botUserData={"n": len(views)}))

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    await post(client, activity())
    await post(client, activity())
    parsed, text, message = views[1]
    assert parsed == text == message
    assert parsed["botUserData"] == {"n": 1}


async def test_v1_message_with_inline_reply(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        count = inline_state.get_private_conversation_data(msg, "counter", 0) + 1
        reply = inline_state.create_reply(msg, str(count))
        inline_state.set_private_conversation_data(reply, "counter", count)
        return reply

    app, seen = echo_app(bot)
    client = await client_for(app)
    texts = [(await post(client, v1_message()))[1]["text"] for _ in range(3)]
    assert texts == ["1", "2", "3"]
    assert seen[2]["botPerUserInConversationData"] == {"counter": 2}
    status, body = await post(client, v1_message())
    assert status == 200
    assert "botPerUserInConversationData" not in body
    assert body["to"]["id"] == "user-1"
    assert body["from"]["id"] == "bot-1"


def remember_all(msg: dict[str, Any]) -> Any:
    """Store the message's text under its own name in all three bags."""
    text = msg["text"]
    return [
        reply_to(
            msg,
            botUserData={**msg.get("botUserData", {}), text: 1},
            botConversationData={**msg.get("botConversationData", {}), text: 1},
            botPerUserInConversationData={**msg.get("botPerUserInConversationData", {}), text: 1},
        )
    ]


async def test_scopes_v3(client_for: StartFn) -> None:
    app, seen = echo_app(remember_all)
    client = await client_for(app)
    await post(client, activity(text="a", user="u1", conversation="c1"))
    # same user, other conversation: user bag follows, the other two do not
    await post(client, activity(text="b", user="u1", conversation="c2"))
    assert bags_of(seen[-1]) == {"botUserData": {"a": 1}}
    # other user, same conversation: only the conversation bag
    await post(client, activity(text="c", user="u2", conversation="c1"))
    assert bags_of(seen[-1]) == {"botConversationData": {"a": 1}}
    # same ids on another channel: nothing (v3 scopes users to the channel)
    await post(client, activity(text="d", user="u1", conversation="c1", channel="other"))
    assert bags_of(seen[-1]) == {}
    # same ids, another bot: nothing
    await post(client, activity(text="e", user="u1", conversation="c1", bot="bot-2"))
    assert bags_of(seen[-1]) == {}
    await post(client, activity(text="f", user="u1", conversation="c1"))
    assert bags_of(seen[-1]) == {
        "botUserData": {"a": 1, "b": 1},
        "botConversationData": {"a": 1, "c": 1},
        "botPerUserInConversationData": {"a": 1},
    }


async def test_scopes_v1_user_is_global_across_channels(client_for: StartFn) -> None:
    app, seen = echo_app(remember_all)
    client = await client_for(app)
    await post(client, v1_message(text="a", user="u1", conversation="c1"))
    other_channel = v1_message(text="b", user="u1", conversation="c9")
    other_channel["from"]["channelId"] = "sms"
    await post(client, other_channel)
    assert bags_of(seen[-1]) == {"botUserData": {"a": 1}}
    # v1 and v3 live in separate namespaces
    await post(client, activity(text="c", user="u1", conversation="c1"))
    assert bags_of(seen[-1]) == {}


@pytest.mark.parametrize(
    ("user", "conversation"),
    [("a/b", "c"), ("a", "b/c"), ("29:1A b/c", "50%"), ("x%2Fy", "{z}"), ("ü/€", "a\u0000b")],
)
async def test_ids_with_separators_do_not_collide(
    client_for: StartFn, user: str, conversation: str
) -> None:
    app, seen = echo_app(remember_all)
    client = await client_for(app)
    await post(client, activity(text="mine", user=user, conversation=conversation))
    await post(client, activity(text="theirs", user=f"{user}/{conversation}", conversation=""))
    await post(client, activity(text="look", user=user, conversation=conversation))
    assert bags_of(seen[-1]) == {
        "botUserData": {"mine": 1},
        "botConversationData": {"mine": 1},
        "botPerUserInConversationData": {"mine": 1},
    }


async def test_set_remove_clear_and_absent(client_for: StartFn) -> None:
    script: list[Any] = [
        {"a": 1, "b": 2, "c": 3},  # set three
        None,  # absent: nothing changes
        {"a": 1, "c": 30},  # b removed, c changed
        {"a": 1, "c": 30, "n": None},  # a property set to null is stored as null
        {},  # clear
    ]
    step = iter(script)

    def bot(msg: dict[str, Any]) -> Any:
        bag = next(step, None)
        return reply_to(msg) if bag is None else reply_to(msg, botUserData=bag)

    app, seen = echo_app(bot)
    client = await client_for(app)
    for _ in script:
        await post(client, activity())
    await post(client, activity(text="after the clear"))
    assert [m.get("botUserData") for m in seen] == [
        None,
        {"a": 1, "b": 2, "c": 3},
        {"a": 1, "b": 2, "c": 3},
        {"a": 1, "c": 30},
        {"a": 1, "c": 30, "n": None},
        None,
    ]


async def test_cleared_bag_is_absent_next_turn(client_for: StartFn) -> None:
    bags = iter([{"a": 1}, {}, None, None])

    def bot(msg: dict[str, Any]) -> Any:
        bag = next(bags)
        return reply_to(msg) if bag is None else reply_to(msg, botUserData=bag)

    app, seen = echo_app(bot)
    client = await client_for(app)
    for _ in range(3):
        await post(client, activity())
    assert [m.get("botUserData") for m in seen] == [None, {"a": 1}, None]


async def test_one_and_one_point_oh_and_true_are_different_values(client_for: StartFn) -> None:
    values = iter([1, 1.0, True, True, 1])

    def bot(msg: dict[str, Any]) -> Any:
        return reply_to(msg, botUserData={"v": next(values)})

    app, seen = echo_app(bot)
    client = await client_for(app)
    store = app[inline_state.STORE_KEY]
    key = RecordKey("user", "bot-1", "test", "", "user-1")
    etags = []
    for _ in range(5):
        await post(client, activity())
        etags.append((await store.load([key]))[0].etag)
    assert [m.get("botUserData") for m in seen[1:]] == [
        {"v": 1},
        {"v": 1.0},
        {"v": True},
        {"v": True},
    ]
    assert [type(m["botUserData"]["v"]) for m in seen[1:]] == [int, float, bool, bool]
    assert len(set(etags)) == 4, "writing true over true writes nothing"
    assert etags[2] == etags[3]


async def test_several_replies_fold_into_one_change(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        if "botUserData" not in msg:
            return [reply_to(msg, botUserData={"keep": 1, "drop": 1})]
        played = msg["botUserData"]
        return {
            "activities": [
                reply_to(msg, botUserData={**played, "first": 1}),
                reply_to(msg, text="no bag"),
                reply_to(msg, botUserData=played),  # carries the played bag back: no undo
                reply_to(msg, botUserData={"keep": 1, "first": 2}),  # drop removed, first=2
            ]
        }

    app, seen = echo_app(bot)
    client = await client_for(app)
    await post(client, activity())
    status, body = await post(client, activity())
    assert status == 200
    assert all(bags_of(r) == {} for r in body["activities"])
    await post(client, activity())
    assert seen[-1]["botUserData"] == {"keep": 1, "first": 2}


@pytest.mark.parametrize(
    "field",
    [
        "botUserData",
        "BotUserData",
        "botuserdata",
        "BOTCONVERSATIONDATA",
        "botPerUserConversationData",
        "BotPerUserInConversationData",
    ],
)
async def test_injected_bags_are_dropped(client_for: StartFn, field: str) -> None:
    app, seen = echo_app(lambda msg: reply_to(msg))
    client = await client_for(app)
    injected = activity()
    injected[field] = {"admin": True}
    await post(client, injected)
    assert bags_of(seen[0]) == {}


async def test_injected_bags_never_replace_stored_ones(client_for: StartFn) -> None:
    bags = iter([{"role": "user"}, None])
    app, seen = echo_app(lambda m: reply_to(m, botUserData=next(bags)))
    client = await client_for(app)
    await post(client, activity())
    await post(client, activity(BotUserData={"role": "admin"}, botuserdata={"x": 1}))
    assert bags_of(seen[1]) == {"botUserData": {"role": "user"}}


@pytest.mark.parametrize(
    ("bag", "reason"),
    [
        ({"big": "x" * 70_000}, "tooLarge"),
        ([1, 2, 3], "notAnObject"),
        ("a string", "notAnObject"),
        ({"n": 2**70}, "unstorableValue"),
    ],
)
async def test_invalid_bag_fails_the_turn_and_writes_nothing(
    client_for: StartFn, bag: Any, reason: str
) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        return [reply_to(msg, botConversationData={"fine": 1}), reply_to(msg, botUserData=bag)]

    app, _ = echo_app(bot)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500
    error = body["error"]
    assert error["field"] == "botUserData"
    assert error["reason"] == reason
    assert error["limit"] == 64 * 1024
    if reason == "tooLarge":
        assert error["size"] > 70_000
    store = app[inline_state.STORE_KEY]
    loaded = await store.load([RecordKey("conversation", "bot-1", "test", "conv-1", "")])
    assert not loaded[0].exists, "no bag of a failed response is written"


async def test_nan_in_a_reply_body_fails_cleanly(client_for: StartFn) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text='{"type":"message","botUserData":{"n":NaN}}', content_type="application/json"
        )

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500
    assert body["error"]["reason"] == "unstorableValue"


async def test_max_bag_bytes_is_configurable(client_for: StartFn) -> None:
    app, _ = echo_app(lambda m: reply_to(m, botUserData={"s": "x" * 100}), max_bag_bytes=50)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500
    assert body["error"]["limit"] == 50


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"type": "message", "text": ', "application/json"),
        (b"\xff\xfe not json", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (b'{"hello": "world"}', "application/json"),
        (b'{"type": {}}', "application/json"),
        (b'{"type": []}', "application/json"),
        (b"plain words", "text/plain"),
    ],
)
async def test_bodies_it_cannot_interpret_reach_the_bot_untouched(
    client_for: StartFn, raw: bytes, content_type: str
) -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        assert inline_state.get_message(request) is None
        return web.json_response({"ok": True})

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    response = await client.post("/api/messages", data=raw, headers={"Content-Type": content_type})
    assert response.status == 200
    assert received == [raw]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"hello": "world", "botUserData": {"x": 1}}', "application/json"),
        (b'{"type": "", "botUserData": {"x": 1}}', "application/json"),
        (b'{"type":"message","botUserData":{"x":1}}', "text/plain"),
        (b'{"type":"message","BotUserData":{"x":1}}', ""),
        (b'{"type":"message","botuserdata":{"x":1}}', "text/json"),
        (b'{"type":"message","botUserData":{"x":1}}', "application/x-json"),
        (b'{"type":"message","botUserData":{"x":1}}', "multipart/form-data; boundary=x"),
        (b'[{"type":"message","botUserData":{"x":1}}, 2]', "application/json"),
    ],
)
async def test_client_bags_are_stripped_whatever_the_content_type_or_shape(
    client_for: StartFn, raw: bytes, content_type: str
) -> None:
    parsed: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        parsed.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    headers = {"Content-Type": content_type} if content_type else {}
    if not content_type:
        headers["Content-Type"] = ""  # aiohttp would add application/octet-stream
    response = await client.post("/api/messages", data=raw, headers=headers)
    assert response.status == 200
    assert len(parsed) == 1 and not carries_a_bag(parsed[0])
    assert json.dumps(parsed[0]) != raw.decode()  # something was taken out


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "message", "botUserData": ',
        b'{"type": "message", "botUserData": {"x": 1}, }',
        '{"type":"message","botUserData":{"x":1}}'.encode("utf-16-le"),
    ],
)
async def test_unreadable_bodies_naming_a_bag_are_refused(client_for: StartFn, raw: bytes) -> None:
    called: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        called.append(True)
        return web.json_response({"ok": True})

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    response = await client.post(
        "/api/messages",
        data=raw,
        headers={"Content-Type": "application/json; charset=latin-1"},
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "UnreadableBody"
    assert not called


async def test_content_length_is_right_after_stripping(client_for: StartFn) -> None:
    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        text = json.dumps(reply_to(msg, botUserData={"padding": "x" * 500}))
        # An explicit, soon stale Content-Length: the middleware must drop it.
        return web.Response(
            text=text,
            content_type="application/json",
            headers={"Content-Length": str(len(text))},
        )

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    response = await asyncio.wait_for(client.post("/api/messages", json=activity()), 10)
    raw = await asyncio.wait_for(response.read(), 10)
    assert int(response.headers["Content-Length"]) == len(raw)
    assert "padding" not in raw.decode()


async def test_http_exception_with_json_is_persisted_and_stripped(client_for: StartFn) -> None:
    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        raise web.HTTPAccepted(
            text=json.dumps({"activities": [reply_to(msg, botUserData={"seen": True})]}),
            content_type="application/json",
        )

    seen: list[dict[str, Any]] = []

    async def recorder(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return await handler(request)

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", recorder)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 202
    assert bags_of(body["activities"][0]) == {}
    await post(client, activity())
    assert seen[1]["botUserData"] == {"seen": True}


async def test_streamed_response_passes_through_with_a_warning(
    client_for: StartFn, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"type":"message","botUserData":{"a":1}}')
        return response

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    with caplog.at_level(logging.WARNING, logger="inline_state"):
        response = await client.post("/api/messages", json=activity())
        assert json.loads(await response.read()) == {"type": "message", "botUserData": {"a": 1}}
    assert "streamed or prepared response" in caplog.text


async def test_keep_fields_leaves_bags_on_the_wire(client_for: StartFn) -> None:
    app, seen = echo_app(lambda m: reply_to(m, botUserData={"a": 1}), keep_fields=True)
    client = await client_for(app)
    _, body = await post(client, activity())
    assert body["botUserData"] == {"a": 1}
    await post(client, activity())
    assert seen[1]["botUserData"] == {"a": 1}


@pytest.mark.parametrize(("merge", "expected"), [("bag", {"a": 2}), ("property", {"a": 2, "z": 1})])
async def test_merge_bag_replaces_whole_bags(
    client_for: StartFn, merge: str, expected: dict[str, int]
) -> None:
    # A property another turn added after this one loaded is not in this turn's reply:
    # merging per property keeps it; merge="bag" replaces the whole bag, as v1 did.
    store = MemoryStore()
    loaded, added = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        if msg["text"] == "first":
            return web.json_response(reply_to(msg, botUserData={"a": 1}))
        if msg["text"] == "other":
            bag = {**msg["botUserData"], "z": 1}
            return web.json_response(reply_to(msg, botUserData=bag))
        loaded.set()
        await added.wait()
        return web.json_response(reply_to(msg, botUserData={**msg["botUserData"], "a": 2}))

    app = web.Application()
    inline_state.setup(app, store, merge=merge)  # type: ignore[arg-type]
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    await post(client, activity(text="first"))
    slow = asyncio.create_task(post(client, activity(text="slow")))
    await loaded.wait()
    await post(client, activity(text="other"))
    added.set()
    await slow
    [record] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert {k: json.loads(v) for k, v in record.props.items()} == expected


async def test_an_unchanged_bag_writes_nothing(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        return reply_to(msg, botUserData=msg.get("botUserData") or {"a": [1, {"b": 2}]})

    app, _ = echo_app(bot)
    client = await client_for(app)
    store = app[inline_state.STORE_KEY]
    key = RecordKey("user", "bot-1", "test", "", "user-1")
    await post(client, activity())
    [first] = await store.load([key])
    for _ in range(3):
        await post(client, activity())
    [later] = await store.load([key])
    assert later.etag == first.etag
    assert later.observed == first.observed


async def test_other_routes_and_methods_pass_untouched(client_for: StartFn) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    app = web.Application()
    inline_state.setup(app, paths=["/bot"])
    app.router.add_post("/api/messages", handler)
    app.router.add_post("/bot", handler)
    client = await client_for(app)
    _, body = await post(client, activity(botUserData={"a": 1}))
    assert body["botUserData"] == {"a": 1}, "not a configured path: untouched"
    response = await client.post("/bot", json=activity(botUserData={"a": 1}))
    assert "botUserData" not in await response.json()


async def test_user_data_deletion(client_for: StartFn) -> None:
    def bot(msg: dict[str, Any]) -> Any:
        return remember_all(msg)

    app, seen = echo_app(bot)
    client = await client_for(app)
    await post(client, activity(text="a"))
    await post(client, activity(text="other", user="user-2"))
    status, body = await post(client, activity(text="gone", type="deleteUserData"))
    assert status == 200
    assert bags_of(seen[-1]) == {}, "nothing is played back on the deletion turn"
    assert bags_of(body[0]) == {}
    await post(client, activity(text="b"))
    assert bags_of(seen[-1]) == {"botConversationData": {"a": 1, "other": 1}}, (
        "user and per-user records are gone, the reply bags of the deletion turn ignored,"
        " the conversation stays"
    )
    await post(client, activity(text="c", user="user-2"))
    assert seen[-1]["botUserData"] == {"other": 1}


async def test_v1_delete_user_data(client_for: StartFn) -> None:
    app, seen = echo_app(remember_all)
    client = await client_for(app)
    await post(client, v1_message(text="a"))
    await post(client, v1_message(text="x", type="DeleteUserData"))
    await post(client, v1_message(text="b"))
    assert bags_of(seen[-1]) == {"botConversationData": {"a": 1}}


async def test_a_turn_older_than_a_deletion_cannot_bring_the_data_back(
    client_for: StartFn,
) -> None:
    loaded = asyncio.Event()
    deleted = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        if msg["text"] == "slow":
            loaded.set()
            await deleted.wait()
            return web.json_response(reply_to(msg, botUserData={"back": True}))
        return web.json_response(reply_to(msg, botUserData={"a": 1}))

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    await post(client, activity(text="first"))
    slow = asyncio.create_task(post(client, activity(text="slow")))
    await loaded.wait()
    await post(client, activity(text="x", type="deleteUserData"))
    deleted.set()
    await slow
    store = app[inline_state.STORE_KEY]
    [user] = await store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert not user.exists


async def test_fifty_overlapping_turns_keep_all_fifty_properties(client_for: StartFn) -> None:
    barrier = asyncio.Barrier(50)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        await barrier.wait()  # every turn has loaded before any replies
        bag = dict(msg.get("botConversationData") or {})
        bag[msg["text"]] = True
        return web.json_response({"activities": [reply_to(msg, botConversationData=bag)]})

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    results = await asyncio.gather(
        *(post(client, activity(text=f"p{i}", user=f"u{i}")) for i in range(50))
    )
    assert all(status == 200 for status, _ in results)
    store = app[inline_state.STORE_KEY]
    [conv] = await store.load([RecordKey("conversation", "bot-1", "test", "conv-1", "")])
    assert sorted(conv.props) == sorted(f"p{i}" for i in range(50))


async def test_the_later_stamp_wins_even_when_applied_first(client_for: StartFn) -> None:
    store = MemoryStore()
    early = HybridClock(1, wall_ms=lambda: EPOCH_MS + 1_000)
    late = HybridClock(2, wall_ms=lambda: EPOCH_MS + 2_000)
    both_loaded = asyncio.Barrier(2)
    late_applied = asyncio.Event()

    def make(clock: HybridClock, value: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            msg = await request.json()
            await both_loaded.wait()
            if clock is early:
                await late_applied.wait()
            return web.json_response(reply_to(msg, botConversationData={"winner": value}))

        app = web.Application()
        inline_state.setup(app, store, clock=clock)
        app.router.add_post("/api/messages", handler)
        return app

    client_early = await client_for(make(early, "early"))
    client_late = await client_for(make(late, "late"))

    async def late_turn() -> None:
        await post(client_late, activity())
        late_applied.set()

    await asyncio.gather(post(client_early, activity()), late_turn())
    [conv] = await store.load([RecordKey("conversation", "bot-1", "test", "conv-1", "")])
    assert conv.props == {"winner": b'"late"'}


async def test_a_string_record_is_not_played_back_and_is_replaced(
    client_for: StartFn, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    key = RecordKey("user", "bot-1", "test", "", "user-1")
    await store.compare_and_set(key, "H4sIAAAAAAAA", "", max_bytes=1000)
    app, seen = echo_app(lambda m: reply_to(m, botUserData={"a": 1}), store)
    client = await client_for(app)
    with caplog.at_level(logging.WARNING, logger="inline_state"):
        await post(client, activity())
    assert bags_of(seen[0]) == {}
    assert "string written through the REST API" in caplog.text
    [record] = await store.load([key])
    assert record.text is None
    assert record.props == {"a": b"1"}


async def test_store_unavailable_gives_503(client_for: StartFn) -> None:
    class DownStore(MemoryStore):
        async def load(self, keys: Any) -> Any:
            raise StoreUnavailable("connection refused by 127.0.0.1:1")

    called: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        called.append(True)
        return web.json_response({})

    app = web.Application()
    inline_state.setup(app, DownStore())
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 503
    assert body["error"]["code"] == "StoreUnavailable"
    assert "connection refused" in body["error"]["message"]
    assert not called, "the bot does not run without its state"


async def test_missing_bot_id_strips_but_persists_nothing(client_for: StartFn) -> None:
    store = MemoryStore()
    app, seen = echo_app(lambda m: reply_to(m, botUserData={"a": 1}), store)
    client = await client_for(app)
    msg = activity(botUserData={"injected": 1})
    del msg["recipient"]
    _, body = await post(client, msg)
    assert bags_of(seen[0]) == {}
    assert bags_of(body) == {}
    assert memory_records(store) == 0, "a reply to a message naming no bot was stored"


async def test_non_utf8_charset_request(client_for: StartFn) -> None:
    app, seen = echo_app(lambda m: reply_to(m, botUserData={"name": "Zoë"}))
    client = await client_for(app)
    for _ in range(2):
        body = json.dumps(activity(text="café"), ensure_ascii=False).encode("latin-1")
        await client.post(
            "/api/messages",
            data=body,
            headers={"Content-Type": "application/json; charset=latin-1"},
        )
    assert seen[1]["text"] == "café"
    assert seen[1]["botUserData"] == {"name": "Zoë"}


async def test_reply_response_skips_the_reparse_and_strips(client_for: StartFn) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        msg = inline_state.get_message(request)
        assert msg is not None
        seen.append(msg)
        n = inline_state.get_user_data(msg, "n", 0) + 1
        reply = inline_state.create_reply(msg, str(n))
        inline_state.set_user_data(reply, "n", n)
        return inline_state.ReplyResponse({"activities": [reply]}, status=200)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        return inline_state.ReplyResponse({"botUserData": {"kept": True}}, status=201)

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    app.router.add_post("/other", elsewhere)
    client = await client_for(app)
    for expected in ("1", "2", "3"):
        status, body = await post(client, activity())
        assert status == 200
        assert body["activities"][0]["text"] == expected
        assert bags_of(body["activities"][0]) == {}
    assert seen[2]["botUserData"] == {"n": 2}
    response = await client.post("/other", json={})
    assert response.status == 201
    assert await response.json() == {"botUserData": {"kept": True}}


async def test_reply_response_with_an_invalid_bag_fails_cleanly(client_for: StartFn) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return inline_state.ReplyResponse({"type": "message", "botUserData": [1]})

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500
    assert body["error"]["reason"] == "notAnObject"


async def test_a_merged_record_over_the_limit_fails_the_turn(client_for: StartFn) -> None:
    # Each reply's bag is under the limit; merged with what an overlapping turn stored,
    # the record would not be.
    both_loaded = asyncio.Barrier(2)
    first_done = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        await both_loaded.wait()
        if msg["text"] == "second":
            await first_done.wait()
        big = {"a" if msg["text"] == "first" else "b": "x" * 40_000}
        return web.json_response(reply_to(msg, botUserData=big))

    app = web.Application()
    inline_state.setup(app)
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)

    async def first() -> tuple[int, Any]:
        result = await post(client, activity(text="first"))
        first_done.set()
        return result

    (status1, _), (status2, body2) = await asyncio.gather(
        first(), post(client, activity(text="second"))
    )
    assert status1 == 200
    assert status2 == 500
    assert body2["error"]["reason"] == "tooLarge"
    assert "merged" in body2["error"]["message"]
    [user] = await app[inline_state.STORE_KEY].load(
        [RecordKey("user", "bot-1", "test", "", "user-1")]
    )
    assert set(user.props) == {"a"}, "the record stays as it was"
