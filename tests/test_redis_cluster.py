"""The hot path of redis+cluster:// (``stores/_redis_cluster``), on a real Redis Cluster.

Topology changes under load (a failover, a stopped master, a slot migration) are in
``test_store_redis.py``; the store contract suite and the laws run on this path too.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

import inline_state
from inline_state import RecordKey, RedisStore, open_store
from inline_state.stores import _redis_cluster
from inline_state.stores._redis_cluster import Cluster, key_slot, parse_shards, parse_slots
from inline_state.stores._redis_wire import Connection

from .redis_servers import RedisCluster

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
    redis_cluster: RedisCluster,
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.port}?prefix=t{uuid.uuid4().hex}"
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        assert isinstance(store._wire, Cluster), "cluster URLs take the multiplexed path"
        await store.client.aclose()  # redis-py's client is only for the rest
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


async def test_a_cluster_with_no_node_up_is_unavailable_within_the_timeout() -> None:
    cluster = Cluster([("127.0.0.1", 1)], timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises((ConnectionError, TimeoutError)):
            await cluster.call([b"*1\r\n$4\r\nPING\r\n"], [0], started + 0.5)
    finally:
        cluster.close()
    assert loop.time() - started < 0.7
