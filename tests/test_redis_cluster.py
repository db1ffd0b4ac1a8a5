"""The hot path of redis+cluster:// (``stores/_redis_cluster``), on a real Redis Cluster.

Topology changes under load (a failover, a stopped master, a slot migration) are in
``test_store_redis.py``; the store contract suite and the laws run on this path too.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import NoReturn

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster as ClusterClient

import inline_state
from inline_state import RecordKey, RedisStore, open_store
from inline_state.stores import _redis_cluster
from inline_state.stores._redis_cluster import Cluster, key_slot, parse_shards, parse_slots
from inline_state.stores._redis_wire import Connection

from .redis_servers import RedisCluster
from .support import free_port

_KEYS = st.lists(
    st.binary(max_size=12) | st.text(alphabet="ab{}", max_size=8).map(str.encode),
    min_size=1,
    max_size=20,
)


@given(keys=_KEYS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_keys_slot_is_the_one_the_cluster_computes(
    redis_cluster: RedisCluster, keys: list[bytes]
) -> None:
    # Hash tags included: the first "{", the next "}", an empty tag hashing the whole key.
    client = SyncRedis(host="127.0.0.1", port=redis_cluster.port)
    try:
        expected = [client.execute_command("CLUSTER", "KEYSLOT", key) for key in keys]  # type: ignore[no-untyped-call]
    finally:
        client.close()
    assert [key_slot(key) for key in keys] == expected


def _slot_owners(ranges: list[tuple[int, int, tuple[str, int]]]) -> list[int]:
    owners = [0] * _redis_cluster.SLOTS
    for low, high, (_, port) in ranges:
        owners[low : high + 1] = [port] * (high + 1 - low)
    return owners


async def test_the_map_from_shards_and_from_slots_is_the_clusters(
    redis_cluster: RedisCluster,
) -> None:
    asked = ("127.0.0.1", redis_cluster.port)
    wire = Connection(*asked)
    try:
        shards, slots = await wire.call([["CLUSTER", "SHARDS"], ["CLUSTER", "SLOTS"]])
    finally:
        wire.close()
    from_shards = _slot_owners(parse_shards(shards, asked))
    assert from_shards == _slot_owners(parse_slots(slots, asked))
    for slot in range(0, _redis_cluster.SLOTS, 997):
        assert from_shards[slot] == redis_cluster.master_of_slot(slot).port, slot


async def test_a_turn_on_a_cluster_url_goes_by_slot_without_redis_py(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.port}?prefix=t{uuid.uuid4().hex}"
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        assert isinstance(store._wire, Cluster), "cluster URLs take the multiplexed path"

        def refuse(*args: object, **kwargs: object) -> NoReturn:
            raise AssertionError("a turn's load or apply went through redis-py")

        # redis-py's client is only for the rest (CAS, deletion, export, leases).
        monkeypatch.setattr(ClusterClient, "execute_command", refuse)
        monkeypatch.setattr(ClusterClient, "pipeline", refuse)
        user = RecordKey("user", "b", "c", "", "u")
        conversations = [RecordKey("conversation", "b", "c", f"c{i}", "") for i in range(12)]
        keys = [user, *conversations]
        slots = {store._spelled(key).slot for key in keys}
        masters = {redis_cluster.master_of_slot(slot).port for slot in slots}
        assert len(masters) == 3, "the turn's records are on every master"
        clock = inline_state.HybridClock(5)
        changes = [inline_state.Change(k, {"n": b"1"}, stamp=clock.stamp()) for k in keys]
        assert set(await store.apply(changes)) == {inline_state.ApplyResult.APPLIED}
        assert [dict(r.props) for r in await store.load(keys)] == [{"n": b"1"}] * len(keys)
        monkeypatch.undo()


async def test_a_master_that_lost_its_scripts_gets_them_again(
    redis_cluster: RedisCluster,
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.port}?prefix=t{uuid.uuid4().hex}"
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        keys = [RecordKey("conversation", "b", "c", f"c{i}", "") for i in range(12)]
        clock = inline_state.HybridClock(6)
        first = [inline_state.Change(k, {"a": b"1"}, stamp=clock.stamp()) for k in keys]
        await store.apply(first)
        for node in redis_cluster.nodes:  # as a restart or a newly promoted replica
            redis_cluster.cli(node.port, "script", "flush")
        again = [inline_state.Change(k, {"a": b"2"}, stamp=clock.stamp()) for k in keys]
        assert set(await store.apply(again)) == {inline_state.ApplyResult.APPLIED}
        assert {r.props["a"] for r in await store.load(keys)} == {b"2"}


@pytest.mark.parametrize("node", ["refusing", "silent"])
async def test_a_cluster_with_no_node_up_is_unavailable_within_the_deadline(node: str) -> None:
    # A port nobody listens on refuses at once; a node that accepts and never answers
    # (a paused process) makes every step wait: neither may go past the deadline.
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1] if node == "silent" else free_port()
    cluster = Cluster([("127.0.0.1", port)], timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises((ConnectionError, TimeoutError)):
            await cluster.call([b"*1\r\n$4\r\nPING\r\n"], [0], started + 0.5)
    finally:
        cluster.close()
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()
    assert loop.time() - started < 0.6


_NODE = [b"id", b"x", b"port", 7001, b"ip", b"10.0.0.1", b"endpoint", b"10.0.0.1"]


def _shard(slots: list[int], *nodes: list[object]) -> list[object]:
    return [b"slots", slots, b"nodes", list(nodes)]


def _node(**fields: object) -> list[object]:
    merged = dict(zip(_NODE[::2], _NODE[1::2], strict=True))
    merged.update({name.replace("_", "-").encode(): value for name, value in fields.items()})
    return [part for pair in merged.items() for part in pair]


@pytest.mark.parametrize(
    ("shard", "expected"),
    [
        (_shard([0, 99], _node(role=b"master", health=b"online")), ("10.0.0.1", 7001)),
        # During a failover: the failed master is still listed beside the promoted one.
        (
            _shard(
                [0, 99],
                _node(role=b"master", health=b"fail", port=7001),
                _node(role=b"master", health=b"online", port=7002),
            ),
            ("10.0.0.1", 7002),
        ),
        (
            _shard([0, 99], _node(role=b"replica"), _node(role=b"master", port=7003)),
            ("10.0.0.1", 7003),
        ),
        (_shard([0, 99], _node(role=b"master", endpoint=b"?")), ("10.0.0.1", 7001)),  # its ip
        (_shard([0, 99], _node(role=b"master", endpoint=b"")), ("127.0.0.9", 7001)),  # asked
        (_shard([], _node(role=b"master")), None),  # serves no slots
        (_shard([0, 99], _node(role=b"replica")), None),  # no master listed
    ],
)
def test_the_map_from_odd_shards(shard: list[object], expected: tuple[str, int] | None) -> None:
    ranges = parse_shards([shard], ("127.0.0.9", 6379))
    assert ranges == ([] if expected is None else [(0, 99, expected)])


def test_a_slot_range_without_an_endpoint_stays_unserved() -> None:
    reply = [[0, 9, [b"?", 7001, b"id"]], [10, 19, [b"", 7002, b"id"]]]
    assert parse_slots(reply, ("127.0.0.9", 6379)) == [(10, 19, ("127.0.0.9", 7002))]


async def test_turns_that_lose_their_connections_share_one_read_of_the_map(
    redis_cluster: RedisCluster,
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.port}?prefix=t{uuid.uuid4().hex}"

    def map_reads() -> int:
        total = 0
        for node in redis_cluster.nodes:
            stats = redis_cluster.cli(node.port, "info", "commandstats")
            line = next((x for x in stats.splitlines() if "cluster|shards" in x), "calls=0,")
            total += int(line.split("calls=")[1].split(",")[0])
        return total

    async with open_store(url) as store:
        keys = [RecordKey("conversation", "b", "c", f"c{i}", "") for i in range(200)]
        await store.load(keys)  # connected to every master
        before = map_reads()
        for node in redis_cluster.nodes:  # every client connection dropped, ours included
            redis_cluster.cli(node.port, "client", "kill", "type", "normal")
        results = await asyncio.gather(*(store.load([key]) for key in keys))
        assert all(not record.exists for [record] in results)
        reads = map_reads() - before
    # One shared read asks each master once (the kill may also cost one background read).
    assert reads <= 2 * len(redis_cluster.nodes), f"{reads} CLUSTER SHARDS for 200 turns"
