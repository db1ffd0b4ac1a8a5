"""Exact counters through the cookie, on every backend: increments overlapping turns never
lose, a retried apply counts once, every order of the same changes gives the same value,
and the edges (64 bits, a set and an increment at once, whole-bag merge, REST)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import inline_state
from inline_state import Change, Engine, HybridClock, RecordKey, Store
from inline_state._clock import EPOCH_MS, MS_SHIFT
from inline_state._counters import effective, increment_name, mark_name
from inline_state._message import Shape

from .conftest import StoreFactory
from .support import REPO, Client, RunningBot, activity, post, v1_message

StartFn = Callable[[web.Application], Awaitable[Client]]
USER = RecordKey("user", "bot-1", "test", "", "user-1")


def barrier_bot(
    store: Store, turns: int, *, exact: bool, merge: Any = "property"
) -> web.Application:
    """Every turn reads the count, waits until all ``turns`` have read it, then adds 1."""
    barrier = asyncio.Barrier(turns)
    app = web.Application()
    inline_state.setup(app, store, merge=merge)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        count = inline_state.get_user_data(msg, "count", 0)
        if msg.get("text") == "go":
            await barrier.wait()
        reply = inline_state.create_reply(msg, f"count {count}")
        if exact:
            inline_state.incr_user_data(reply, "count")
        else:
            inline_state.set_user_data(reply, "count", count + 1)
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    return app


@pytest.mark.parametrize("exact", [True, False], ids=["increments", "sets"])
async def test_fifty_overlapping_turns_end_at_fifty(
    backend: StoreFactory, client_for: StartFn, exact: bool
) -> None:
    async with backend() as store:
        client = await client_for(barrier_bot(store, 50, exact=exact))
        answers = await asyncio.gather(*(post(client, activity(text="go")) for _ in range(50)))
        assert [status for status, _ in answers] == [200] * 50
        assert {reply["text"] for _, reply in answers} == {"count 0"}, "they overlapped"
        _, reply = await post(client, activity(text="read"))
        if exact:
            assert reply["text"] == "count 50"
        else:
            assert reply["text"] == "count 1", "sets are last-writer-wins: the gap increments fill"


async def test_the_next_turn_and_the_rest_api_read_a_plain_number(
    backend: StoreFactory, client_for: StartFn
) -> None:
    async with backend() as store:
        app = barrier_bot(store, 1, exact=True)
        inline_state.add_state_api(app, secret="s", bot_id="bot-1")
        client = await client_for(app)
        for _ in range(3):
            await post(client, activity(text="one"))
        headers = {"Authorization": "Bearer s"}
        response = await client.get("/v3/botstate/test/users/user-1", headers=headers)
        body = await response.json()
        assert body["data"] == {"count": 3}
        # A REST write replaces the number, increments and all.
        response = await client.post(
            "/v3/botstate/test/users/user-1",
            json={"data": {"count": 10}, "eTag": body["eTag"]},
            headers=headers,
        )
        assert response.status == 200
        _, reply = await post(client, activity(text="one"))
        assert reply["text"] == "count 10"
        _, reply = await post(client, activity(text="one"))
        assert reply["text"] == "count 11"


async def test_a_retried_apply_counts_once(backend: StoreFactory) -> None:
    async with backend() as store:
        engine = Engine(store)
        for _ in range(3):
            turn = await engine.open_turn(activity(), Shape.V3)
            reply = inline_state.create_reply(turn.message, "ok")
            inline_state.incr_user_data(reply, "count", 2)
            changes = engine.reply_changes(turn, [reply])
            await engine.commit(changes)
            await engine.commit(changes)  # the store's retry after a lost answer
        [record] = await store.load([USER])
        assert effective(record.props) == {"count": b"6"}


def _stamp(ms: int, node: int = 1) -> int:
    return ((10**9 + ms) << MS_SHIFT) | node


async def test_every_order_of_sets_removals_clears_and_increments_agrees(
    backend: StoreFactory,
) -> None:
    # The five changes of the store contract's orderings test, with increments mixed in:
    # all 120 orders give one record, and the rule (last write at b, plus every
    # increment above b).
    def change(at: int, sets: dict[str, bytes], removes: frozenset[str] = frozenset()) -> Change:
        return Change(USER, sets, removes, False, _stamp(at), 0)

    changes = [
        change(
            1, {"a": b"1", mark_name("a"): b"%d" % _stamp(1), increment_name("b", _stamp(1)): b"5"}
        ),
        change(2, {increment_name("a", _stamp(2)): b"3"}),
        change(3, {"a": b"100", mark_name("a"): b"%d" % _stamp(3)}),
        change(4, {increment_name("a", _stamp(4)): b"-1", increment_name("b", _stamp(4)): b"2"}),
        change(5, {mark_name("b"): b"%d" % _stamp(5)}, frozenset({"b"})),
    ]
    clock = HybridClock(0, wall_ms=lambda: EPOCH_MS + 10**9 + 10)
    outcomes = set()
    async with backend(clock=clock) as store:
        for n, order in enumerate(itertools.permutations(changes)):
            key = USER._replace(user=f"perm-{n}")
            for c in order:
                await store.apply([c._replace(key=key)])
            [record] = await store.load([key])
            outcomes.add(tuple(sorted(effective(record.props).items())))
    # a: set 100 at 3, plus -1 at 4 (3 at 2 is below the set); b: removed at 5.
    assert outcomes == {(("a", b"99"),)}


@pytest.mark.parametrize(
    ("increments", "says"),
    [
        ({"count": 1.5}, "must be an integer"),
        ({"count": True}, "must be an integer"),
        ({"count": 2**63}, "64 bits"),
        ({"\x00is:+x": 1}, "cannot increment"),
        ({"\ud800": 1}, "surrogate"),
        ({f"p{i}": 1 for i in range(1001)}, "over the limit"),
        ([1], "JSON object"),
    ],
)
async def test_a_bad_increment_is_a_bag_error(
    client_for: StartFn, increments: Any, says: str
) -> None:
    store = inline_state.MemoryStore()
    app = web.Application()
    inline_state.setup(app, store)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        reply["botUserDataIncrements"] = increments
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500 and says in body["error"]["message"], body
    assert (await store.load([USER]))[0].props == {}


async def test_two_spellings_of_increments_and_a_sum_past_64_bits_are_bag_errors(
    client_for: StartFn,
) -> None:
    store = inline_state.MemoryStore()
    replies: list[dict[str, Any]] = []
    app = web.Application()
    inline_state.setup(app, store)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        reply.update(replies.pop(0))
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    replies.append({"botUserDataIncrements": {"n": 1}, "BotUserDataIncrements": {"n": 1}})
    status, body = await post(client, activity())
    assert status == 500 and "duplicateField" in json.dumps(body), body
    replies.append({"botUserData": {"n": 2**63 - 2}})
    assert (await post(client, activity()))[0] == 200
    replies.append({"botUserDataIncrements": {"n": 5}})
    status, body = await post(client, activity())
    assert status == 500 and "64 bits" in body["error"]["message"], body
    replies.append({"botUserDataIncrements": {"n": 1}})
    assert (await post(client, activity()))[0] == 200
    [record] = await store.load([USER])
    assert effective(record.props) == {"n": b"%d" % (2**63 - 1)}


async def test_whole_bag_merge_takes_a_set_beside_an_increment(client_for: StartFn) -> None:
    app = web.Application()
    inline_state.setup(app, inline_state.MemoryStore(), merge="bag")

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(
            msg, f"count {inline_state.get_user_data(msg, 'count', 0)}"
        )
        inline_state.set_user_data(reply, "name", "Ada")
        inline_state.incr_user_data(reply, "count")
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    texts = [(await post(client, activity()))[1]["text"] for _ in range(3)]
    assert texts == ["count 0", "count 1", "count 2"]


async def test_a_set_and_an_increment_of_one_property_is_a_bag_error(client_for: StartFn) -> None:
    store = inline_state.MemoryStore()
    app = web.Application()
    inline_state.setup(app, store)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_user_data(reply, "count", 5)
        inline_state.incr_user_data(reply, "count")
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    status, body = await post(client, activity())
    assert status == 500 and "both sets and increments" in body["error"]["message"]


async def test_increments_never_reach_the_wire_nor_the_bot(client_for: StartFn) -> None:
    seen: list[dict[str, Any]] = []
    app = web.Application()
    inline_state.setup(app, inline_state.MemoryStore())

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        seen.append(msg)
        reply = inline_state.create_reply(msg, "ok")
        inline_state.incr_conversation_data(reply, "n", 4)
        reply["channelData"] = {"inlineState": {"botUserDataIncrements": {"m": 1}}, "keep": 1}
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    forged = activity(botUserDataIncrements={"m": 1000}, BOTCONVERSATIONDATAINCREMENTS={"n": 9})
    status, reply = await post(client, forged)
    assert status == 200
    assert reply["channelData"] == {"keep": 1}
    assert not [k for k in reply if "ncrements" in k.lower()]
    assert not [k for k in seen[0] if "ncrements" in k.lower()], (
        "a client's increments reached the bot"
    )
    status, reply = await post(client, activity())
    assert inline_state.get_user_data(seen[1], "m") == 1
    assert inline_state.get_conversation_data(seen[1], "n") == 4


async def test_whole_bag_merge_keeps_the_replys_own_increments(
    backend: StoreFactory, client_for: StartFn
) -> None:
    # merge="bag": a reply's bag replaces the record, so increments of other turns stamped
    # before it are gone; its own increment lands on top.
    async with backend() as store:
        client = await client_for(barrier_bot(store, 1, exact=True, merge="bag"))
        for _ in range(3):
            _, reply = await post(client, activity(text="one"))
        assert reply["text"] == "count 2"
        _, reply = await post(client, activity(text="one"))
        assert reply["text"] == "count 3"


async def test_old_increments_are_folded_into_the_value(backend: StoreFactory) -> None:
    now = [EPOCH_MS + 10**9]
    clock = HybridClock(3, wall_ms=lambda: now[0])

    async def one_turn(engine: Engine, by: int | None) -> list[Change]:
        turn = await engine.open_turn(activity(), Shape.V3)
        reply = inline_state.create_reply(turn.message, "ok")
        if by is None:  # the played bag with one more property (no middleware: by hand)
            reply["botUserData"] = {**turn.bag("user"), "other": now[0]}
        else:
            inline_state.incr_user_data(reply, "count", by)
        changes = engine.reply_changes(turn, [reply])
        await engine.commit(changes)
        return changes

    def entries(props: Any) -> int:
        return sum(name.startswith("\x00is:+") for name in props)

    async with backend(clock=clock) as store:
        engine = Engine(store, clock=clock)
        for _ in range(5):
            await one_turn(engine, 1)
        now[0] += 120_000  # past the fold age, on this host's clock and the record's
        await one_turn(engine, 1)
        [record] = await store.load([USER])
        assert entries(record.props) == 6, "the record had seen nothing newer: no fold yet"
        changes = await one_turn(engine, None)
        assert len(changes) == 2, "a fold, then the turn's own change"
        [record] = await store.load([USER])
        assert effective(record.props) == {"count": b"6", "other": b"%d" % now[0]}
        assert entries(record.props) == 1, record.props
        now[0] += 1
        changes = await one_turn(engine, None)
        assert len(changes) == 1, "a fold repeated"


EXACT_COUNTER = REPO / "samples" / "counter_v1" / "bot.py"


async def test_a_counter_survives_kill_9_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    bot = RunningBot(EXACT_COUNTER, "--store", url, "--exact").start()
    acknowledged = 0
    try:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.post(bot.url, json=v1_message(user="u")) as response:
                    await response.read()
                    return 1 if response.status == 200 else 0

            for _ in range(10):  # 10 rounds of 8 overlapping turns on one user
                acknowledged += sum(await asyncio.gather(*(one() for _ in range(8))))
        assert bot.process is not None
        os.kill(bot.process.pid, signal.SIGKILL)
        bot.process.wait(5)
    finally:
        bot.stop()
    assert acknowledged == 80
    async with inline_state.open_store(url) as store:
        [record] = await store.load([RecordKey("user", "bot-1", None, "", "u")])
        assert effective(record.props) == {"count": b"80"}
