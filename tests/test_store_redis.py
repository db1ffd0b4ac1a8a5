"""Redis specifics: outages, scale-out across processes, URLs, the cluster's hash slots."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

import inline_state
from inline_state import ApplyResult, InvalidCursor, RecordKey, RedisStore, UserRef, open_store
from inline_state._codec import encode_name, join_bag
from inline_state.stores import _redis_lua

from . import redis_layout_1 as layout_1
from .redis_servers import RedisCluster, RedisServer
from .support import REPO, Client, RunningBot, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
STATE_BOT = REPO / "samples" / "state_management" / "bot.py"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may stop and start."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def url_of(target: RedisServer | RedisCluster, prefix: str) -> str:
    scheme = "redis+cluster" if isinstance(target, RedisCluster) else "redis"
    return f"{scheme}://127.0.0.1:{target.port}?prefix={prefix}"


@pytest.fixture(params=["redis", "redis-cluster"])
def shared(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    target: RedisServer | RedisCluster = request.getfixturevalue(name)
    return target


async def test_redis_down_gives_503_then_recovers(
    client_for: StartFn, own_redis: RedisServer
) -> None:
    def bot(request_msg: dict[str, Any]) -> Any:
        n = inline_state.get_user_data(request_msg, "n", 0) + 1
        reply = inline_state.create_reply(request_msg, str(n))
        inline_state.set_user_data(reply, "n", n)
        return reply

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(bot(await request.json()))

    app = web.Application()
    inline_state.setup(app, f"redis://127.0.0.1:{own_redis.port}")
    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    assert (await post(client, activity()))[1]["text"] == "1"
    assert (await post(client, activity()))[1]["text"] == "2"

    own_redis.stop()
    started = time.monotonic()
    status, body = await asyncio.wait_for(post(client, activity()), 10)
    elapsed = time.monotonic() - started
    assert status == 503
    assert body["error"]["code"] == "StoreUnavailable"
    assert "Redis" in body["error"]["message"]
    assert elapsed < 3.0, f"the 503 took {elapsed:.2f} s; the configured bound is 1 s"

    own_redis.start(port=own_redis.port)  # empty again: no persistence in tests
    status, body = await post(client, activity())
    assert status == 200
    assert body["text"] == "1"


async def test_alternate_turns_on_two_processes_share_state(
    shared: RedisServer | RedisCluster,
) -> None:
    url = url_of(shared, f"t{uuid.uuid4().hex}")
    bots = [RunningBot(STATE_BOT, "--store", url).start() for _ in range(2)]
    try:
        texts = []
        async with aiohttp.ClientSession() as session:
            for turn, text in enumerate(["hello", "Ada", "still there?"]):
                bot = bots[turn % 2]
                async with session.post(bot.url, json=activity(text=text)) as response:
                    assert response.status == 200, await response.text()
                    texts.append([r["text"] for r in (await response.json())["activities"]])
        assert texts[0] == ["What is your name?"]
        assert texts[1] == ["Thanks Ada. To see conversation data, type anything."]
        assert texts[2][0] == "Ada sent: still there?"
    finally:
        for bot in bots:
            bot.stop()


async def test_overlapping_turns_on_two_apps_keep_both_properties(
    client_for: StartFn, shared: RedisServer | RedisCluster
) -> None:
    url = url_of(shared, f"t{uuid.uuid4().hex}")
    both_loaded = asyncio.Barrier(2)

    def make(name: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            msg = await request.json()
            await both_loaded.wait()  # each turn loaded before the other replied
            bag = {**(msg.get("botConversationData") or {}), name: True}
            return web.json_response(
                inline_state.create_reply(msg, "ok") | {"botConversationData": bag}
            )

        app = web.Application()
        inline_state.setup(app, url)  # each app has its own client, like a process
        app.router.add_post("/api/messages", handler)
        return app

    first, second = await client_for(make("first")), await client_for(make("second"))
    results = await asyncio.gather(post(first, activity()), post(second, activity()))
    assert [status for status, _ in results] == [200, 200]
    async with open_store(url) as store:
        [conv] = await store.load([RecordKey("conversation", "bot-1", "test", "conv-1", "")])
    assert dict(conv.props) == {"first": b"true", "second": b"true"}


async def test_a_users_records_share_one_hash_slot(redis_cluster: RedisCluster) -> None:
    async with open_store(url_of(redis_cluster, "slots")) as store:
        assert isinstance(store, RedisStore)
        cluster = store.client
        assert isinstance(cluster, ClusterClient)
        user = RecordKey("user", "28:bot", "msteams", "", "29:1A b/c{x}")
        private = [user._replace(kind="private", conversation=f"conv/{i}") for i in range(20)]
        slots = {cluster.keyslot(k) for key in [user, *private] for k in store._script_keys(key)}
        assert len(slots) == 1
        assert {store._spelled(key).slot for key in [user, *private]} == slots  # the hot path's
        conversations = {
            cluster.keyslot(store._record_key(RecordKey("conversation", "b", "c", f"{i}", "")))
            for i in range(20)
        }
        assert len(conversations) > 1, "conversations spread over the cluster"


async def test_injected_client_is_not_closed(redis_server: RedisServer) -> None:
    client = Redis(host="127.0.0.1", port=redis_server.port)
    async with RedisStore(client, prefix=f"t{uuid.uuid4().hex}") as store:
        await store.compare_and_set(
            RecordKey("user", "b", "c", "", "u"), {"a": b"1"}, "*", max_bytes=100
        )
    assert await client.ping()
    await client.aclose()


def test_urls_and_arguments() -> None:
    store = open_store("redis://user:secret@127.0.0.1:1/2?prefix=bots&timeout=0.5")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.timeout) == ("bots", 0.5)
    kwargs = store.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "secret", 2)
    assert kwargs["socket_connect_timeout"] == 0.5
    with pytest.raises(ValueError, match="hash tags"):
        RedisStore(Redis(), prefix="a{b}")
    with pytest.raises(TypeError, match="Redis"):
        RedisStore("redis://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="redis"):
        open_store("redis+cluster://")


async def test_setup_with_an_existing_client(
    client_for: StartFn, redis_server: RedisServer
) -> None:
    redis_client = Redis(host="127.0.0.1", port=redis_server.port)
    app = web.Application()
    inline_state.setup(app, redis_client, prefix=f"t{uuid.uuid4().hex}")

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        n = inline_state.get_user_data(msg, "n", 0) + 1
        reply = inline_state.create_reply(msg, str(n))
        inline_state.set_user_data(reply, "n", n)
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    client = await client_for(app)
    texts = [(await post(client, activity()))[1]["text"] for _ in range(3)]
    assert texts == ["1", "2", "3"]
    await client.close()
    assert await redis_client.ping(), "the caller's client is still open"
    await redis_client.aclose()


async def test_apply_survives_a_script_flush(redis_server: RedisServer) -> None:
    async with open_store(url_of(redis_server, f"t{uuid.uuid4().hex}")) as store:
        assert isinstance(store, RedisStore)
        key = RecordKey("user", "b", "c", "", "u")
        clock = inline_state.HybridClock(3)
        await store.apply([inline_state.Change(key, {"a": b"1"}, stamp=clock.stamp())])
        await store.client.script_flush()
        results = await store.apply([inline_state.Change(key, {"a": b"2"}, stamp=clock.stamp())])
        assert results == [inline_state.ApplyResult.APPLIED]
        [record] = await store.load([key])
        assert record.props == {"a": b"2"}


# -- record layouts -----------------------------------------------------------------------


def _old_apply_args(change: inline_state.Change, ttl_ms: int = 0) -> list[Any]:
    args: list[Any] = [change.stamp, change.base, 1 if change.replace else 0, change.max_bytes]
    args += [ttl_ms, 30 * 86400 * 1000, len(change.sets), 0]
    for name, value in change.sets.items():
        args += (name.encode(), value, len(encode_name(name)) + 1 + len(value))
    return args + [name.encode() for name in change.removes]


async def test_layout_1_records_are_read_then_upgraded_on_write(
    redis_server: RedisServer,
) -> None:
    """Records written by the previous layout's scripts read the same, keep their eTag
    and expiry when a write upgrades them, and take part in CAS, deletion and export."""
    prefix = f"t{uuid.uuid4().hex}"
    clock = inline_state.HybridClock(5)
    user = RecordKey("user", "b", "c", "", "u1")
    private = RecordKey("private", "b", "c", "conv", "u1")
    conversation = RecordKey("conversation", "b", "c", "conv", "")
    async with open_store(url_of(redis_server, prefix)) as store:
        assert isinstance(store, RedisStore)
        raw = store.client
        old_apply = raw.register_script(layout_1.APPLY_LAYOUT_1)
        old_cas = raw.register_script(layout_1.COMPARE_AND_SET_LAYOUT_1)
        write = [
            inline_state.Change(user, {"a": b"1", 'q"\n': b'"x"'}, stamp=clock.stamp()),
            inline_state.Change(user, {}, frozenset({"gone"}), stamp=clock.stamp()),
            inline_state.Change(private, {"p": b"[1,2]"}, stamp=clock.stamp()),
        ]
        for change in write:
            keys = store._script_keys(change.key)
            assert await old_apply(keys=keys, args=_old_apply_args(change, 600_000)) == b"applied"
        text_stamp = clock.stamp()
        await old_cas(
            keys=store._script_keys(conversation),
            args=["*", text_stamp, 1000, 0, 1000, "text", b"c3RyaW5n", 10],
        )
        user_key = store._record_key(user)
        assert await raw.hget(user_key, "f") == b"1", "written in layout 1"

        before = await store.load([user, private, conversation])
        assert [dict(r.props) for r in before] == [{"a": b"1", 'q"\n': b'"x"'}, {"p": b"[1,2]"}, {}]
        assert before[2].text == "c3RyaW5n"
        old_etag = await raw.hget(user_key, "e")
        assert isinstance(old_etag, bytes) and before[0].etag == old_etag.decode()
        assert before[0].observed == write[1].stamp, "the tombstone's stamp counts"

        # A stale write upgrades the record without changing what it holds.
        stale = inline_state.Change(user, {"gone": b"2"}, stamp=write[1].stamp - 256)
        assert await store.apply([stale]) == [ApplyResult.STALE]
        fields = await raw.hgetall(user_key)
        assert b"\xff" in fields and b"f" not in fields and b"v:a" not in fields
        assert 0 < await raw.pttl(user_key) <= 600_000, "the expiry survives the upgrade"
        [after] = await store.load([user])
        assert (after.props, after.etag, after.observed) == (
            before[0].props,
            before[0].etag,
            before[0].observed,
        )

        # The size the old layout kept carries over exactly.
        size = len(join_bag({**after.props, "z": b"1"}))
        grow = inline_state.Change(user, {"z": b"1"}, stamp=clock.stamp(), max_bytes=size - 1)
        assert await store.apply([grow]) == [ApplyResult.TOO_LARGE]
        assert await store.apply([grow._replace(max_bytes=size)]) == [ApplyResult.APPLIED]

        # CAS with the eTag the old layout issued, on a record still in that layout.
        [old_private] = await store.load([private])
        etag = await store.compare_and_set(private, {"p": b"3"}, old_private.etag, max_bytes=100)
        assert etag != old_private.etag

        page = await store.export("b", "c")
        assert {key for key, _ in page.records} == {user, private, conversation}

        deleted = await store.delete_user(UserRef("b", "c", "u1"), 1)
        assert deleted > max(r.observed for r in before)
        assert [r.exists for r in await store.load([user, private])] == [False, False]


@given(name=st.text(st.characters(exclude_categories=["Cs"]), max_size=12))
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_scripts_measure_a_name_as_the_bot_encodes_it(redis_server: RedisServer, name: str) -> None:
    # The scripts count a removed or cleared name's JSON length themselves (``jlen``).
    client = SyncRedis(host="127.0.0.1", port=redis_server.port)
    try:
        measured = client.eval(_redis_lua._PRELUDE + "return jlen(ARGV[1])", 0, name.encode())
    finally:
        client.close()
    assert measured == len(encode_name(name))


@pytest.mark.parametrize(
    "cursor",
    [
        "not json",
        "{}",
        "[0, 0]",
        "[0, 0, [1]]",
        "[0, 0, [null]]",
        "[true, 0, []]",
        "[0, -1, []]",
        "[0, 99999999999999999999999, []]",
        '[0, 0, "v3/bot/chan/u/x"]',
        '[0, 0, ["v3/bot"]]',
        '[0, 0, ["v3/other/chan/u/x"]]',
        "[" * 3000 + "]" * 3000,
        "[0, 0, " + "[" * 3000 + "]" * 3000 + "]",
        "[0, 0, []]" + " " * (1 << 20),
    ],
)
async def test_an_export_cursor_it_did_not_issue_is_refused(
    redis_server: RedisServer, cursor: str
) -> None:
    async with open_store(url_of(redis_server, f"t{uuid.uuid4().hex}")) as store:
        with pytest.raises(InvalidCursor):
            await store.export("bot", "chan", cursor=cursor)


# -- a cluster that changes under load ---------------------------------------------------


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters with a replica each, for tests that fail one over."""
    cluster = RedisCluster(tmp_path / "cluster", replicas=1).start()
    yield cluster
    cluster.stop()


async def _ledger_until(
    store: RedisStore, users: list[RecordKey], stop: asyncio.Event
) -> tuple[list[tuple[RecordKey, str, float]], list[float]]:
    """Eight writers, each turn setting a property of its own name on one of the users:
    the acknowledged (APPLIED) ones with their loop time, and how long each failed turn
    took to fail (StoreUnavailable; anything else escapes), until ``stop``."""
    acknowledged: list[tuple[RecordKey, str, float]] = []
    failed: list[float] = []
    loop = asyncio.get_running_loop()

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            key, name = users[(w + n) % len(users)], f"w{w}-{n}"
            n += 1
            started = loop.time()
            try:
                # A limit no run reaches: a fast machine writes 64 KiB per record in seconds.
                change = inline_state.Change(
                    key, {name: b"1"}, stamp=store.clock.stamp(), max_bytes=1 << 30
                )
                result = await store.apply([change])
                assert result == [ApplyResult.APPLIED], f"a write came back {result}"
                acknowledged.append((key, name, loop.time()))
            except inline_state.StoreUnavailable:
                failed.append(loop.time() - started)
                await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(w) for w in range(8)))
    return acknowledged, failed


def _assert_none_lost(
    acknowledged: list[tuple[RecordKey, str, float]],
    keys: list[RecordKey],
    records: list[inline_state.StoredRecord],
) -> None:
    stored = {
        (key, name) for key, record in zip(keys, records, strict=True) for name in record.props
    }
    lost = [(key, name) for key, name, _ in acknowledged if (key, name) not in stored]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost: {lost[:3]}"


async def test_a_failover_under_load_loses_no_acknowledged_write(
    cluster_with_replicas: RedisCluster,
) -> None:
    cluster = cluster_with_replicas
    url = f"redis+cluster://127.0.0.1:{cluster.port}?prefix=t{uuid.uuid4().hex}&timeout=2"
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        users = [RecordKey("user", "b", "c", "", f"u{i}") for i in range(6)]
        slot = int(cluster.cli(cluster.port, "cluster", "keyslot", store._record_key(users[0])))
        master = cluster.master_of_slot(slot)
        replica = cluster.replica_of(master)
        stop = asyncio.Event()
        load = asyncio.create_task(_ledger_until(store, users, stop))
        try:
            await asyncio.sleep(1.0)
            assert "OK" in await asyncio.to_thread(cluster.cli, replica.port, "cluster", "failover")
            for _ in range(100):
                if await asyncio.to_thread(cluster.master_of_slot, slot) is replica:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the replica did not take over the slot within 10 s")
            switched = asyncio.get_running_loop().time()
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            acknowledged, failed = await load
        records = await store.load(users)
    _assert_none_lost(acknowledged, users, records)
    after = [name for key, name, at in acknowledged if key == users[0] and at > switched]
    assert len(after) > 20, f"the failed-over slot's turns go on after the switch: {len(after)}"
    # MOVED sends a turn on to the new master: none fails.
    assert not failed, f"{len(failed)} of {len(failed) + len(acknowledged)} turns failed"


async def test_a_stopped_master_fails_its_slots_within_the_bound_then_recovers(
    cluster_with_replicas: RedisCluster,
) -> None:
    # SIGSTOP, not SIGKILL: a killed master refuses connections at once, a stopped one
    # never answers, so every turn on its slots meets the store's timeout.
    cluster = cluster_with_replicas
    timeout = 1.0
    url = f"redis+cluster://127.0.0.1:{cluster.port}?prefix=t{uuid.uuid4().hex}&timeout={timeout}"
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        candidates = [RecordKey("user", "b", "c", "", f"u{i}") for i in range(40)]

        def master_of(key: RecordKey) -> RedisServer:
            slot = int(cluster.cli(cluster.port, "cluster", "keyslot", store._record_key(key)))
            return cluster.master_of_slot(slot)

        # The busy user on a master other than the node the URL names (kept up, for the
        # test's own cluster queries); three users on the other masters.
        masters = {key: master_of(key) for key in candidates}
        busy = next(k for k in candidates if masters[k] is not cluster.nodes[0])
        master = masters[busy]
        elsewhere = [k for k in candidates if masters[k] is not master][:3]
        users = [busy, *elsewhere]
        replica = cluster.replica_of(master)
        assert master.process is not None
        stop = asyncio.Event()
        load = asyncio.create_task(_ledger_until(store, users, stop))
        try:
            await asyncio.sleep(0.5)
            stopped = asyncio.get_running_loop().time()
            master.process.send_signal(signal.SIGSTOP)
            for _ in range(150):  # cluster-node-timeout is 2 s; promotion follows
                await asyncio.sleep(0.1)
                replication = await asyncio.to_thread(
                    cluster.cli, replica.port, "info", "replication"
                )
                if "role:master" in replication:
                    break
            else:
                raise AssertionError("the replica was not promoted within 15 s")
            promoted = asyncio.get_running_loop().time()
            await asyncio.sleep(2.0)
        finally:
            master.process.send_signal(signal.SIGCONT)
            stop.set()
            acknowledged, failed = await load
    assert failed, "turns on the stopped master's slots fail"
    assert max(failed) <= timeout + 0.5, f"each fails within the bound: {max(failed):.2f} s"
    after = [name for key, name, at in acknowledged if key == busy and at > promoted]
    assert len(after) > 20, f"turns on its slots succeed once the replica took over: {len(after)}"
    meanwhile = [name for key, name, at in acknowledged if key != busy and stopped < at < promoted]
    assert meanwhile, "the other masters' slots kept working meanwhile"


async def test_a_slot_migration_under_load_loses_no_acknowledged_write(
    redis_cluster: RedisCluster,
) -> None:
    # The busy user's slot moves to another master key by key (MIGRATE, then CLUSTER
    # SETSLOT NODE), as redis-cli --cluster reshard does. While it moves, a key already
    # gone answers ASK (sent on, behind ASKING), and a script whose keys are split
    # between the two nodes (or not all there yet) TRYAGAIN (sent again after a pause);
    # after the move the slot's turns go on (MOVED).
    cluster = redis_cluster
    url = f"redis+cluster://127.0.0.1:{cluster.port}?prefix=t{uuid.uuid4().hex}&timeout=2"

    def cli(port: int, *args: str) -> Awaitable[str]:  # off the loop: the writers run on
        return asyncio.to_thread(cluster.cli, port, *args)

    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        busy = RecordKey("user", "b", "c", "", "busy")
        # The busy user's per-conversation records and their index share the slot: the
        # slot holds a dozen keys.
        privates = [RecordKey("private", "b", "c", f"c{i}", "busy") for i in range(10)]
        others = [RecordKey("user", "b", "c", "", f"u{i}") for i in range(3)]
        users = [busy, *privates, *others]
        slot = int(await cli(cluster.port, "cluster", "keyslot", store._record_key(busy)))
        source = cluster.master_of_slot(slot)
        target = next(n for n in cluster.nodes if n is not source)
        source_id = (await cli(source.port, "cluster", "myid")).strip()
        target_id = (await cli(target.port, "cluster", "myid")).strip()
        stop = asyncio.Event()
        load = asyncio.create_task(_ledger_until(store, users, stop))
        moved = 0
        try:
            await asyncio.sleep(0.5)
            await cli(target.port, "cluster", "setslot", str(slot), "importing", source_id)
            await cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id)
            while True:  # a few keys at a time, with turns running in between
                listed = await cli(source.port, "cluster", "getkeysinslot", str(slot), "2")
                if not listed.split():
                    break
                migrate = ["migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys"]
                assert "OK" in await cli(source.port, *migrate, *listed.split())
                moved += len(listed.split())
                await asyncio.sleep(0.05)
        finally:  # the session's cluster ends with the slot on one node, whatever happened
            # The source first, as a reshard that stops halfway leaves it: for a moment
            # each node names the other (MOVED both ways), until the target is told.
            await cli(source.port, "cluster", "setslot", str(slot), "node", target_id)
            await asyncio.sleep(0.3)
            for node in cluster.nodes:
                if node is not source:
                    await cli(node.port, "cluster", "setslot", str(slot), "node", target_id)
        done = asyncio.get_running_loop().time()
        try:
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            acknowledged, failed = await load
        records = await store.load(users)
    assert moved >= 10 and cluster.master_of_slot(slot) is target
    _assert_none_lost(acknowledged, users, records)
    in_slot = {busy, *privates}
    after = [name for key, name, at in acknowledged if key in in_slot and at > done]
    assert len(after) > 20, f"the moved slot's turns go on: {len(after)} ({len(failed)} failed)"
    # ASK, TRYAGAIN and MOVED (both ways, then one way) are followed within the
    # timeout: none fails.
    assert not failed, f"{len(failed)} of {len(failed) + len(acknowledged)} turns failed"


async def test_a_dump_reads_layout_1_records(redis_server: RedisServer) -> None:
    """A record still in layout 1 is dumped whole: a copy of it reads the same."""
    clock = inline_state.HybridClock(5)
    user = RecordKey("user", "b", "c", "", "u1")
    async with (
        open_store(url_of(redis_server, f"t{uuid.uuid4().hex}")) as store,
        open_store(url_of(redis_server, f"t{uuid.uuid4().hex}")) as target,
    ):
        assert isinstance(store, RedisStore)
        old_apply = store.client.register_script(layout_1.APPLY_LAYOUT_1)
        for change in (
            inline_state.Change(user, {"a": b"1", "b": b'"x"'}, stamp=clock.stamp()),
            inline_state.Change(user, {}, frozenset({"b"}), stamp=clock.stamp()),
        ):
            keys = store._script_keys(change.key)
            assert await old_apply(keys=keys, args=_old_apply_args(change, 0)) == b"applied"
        assert await store.client.hget(store._record_key(user), "f") == b"1"
        page = await store.dump()
        [dumped] = page.records
        assert dict(dumped.tombs) == {"b": change.stamp}
        assert await target.restore(page.records) == 1
        [source], [copied] = await store.load([user]), await target.load([user])
        assert (
            (copied.props, copied.etag) == (source.props, source.etag) == ({"a": b"1"}, source.etag)
        )
