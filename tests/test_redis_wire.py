"""The multiplexed connection of redis:// (``stores/_redis_wire``), on a real redis-server."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from inline_state import RecordKey, StoreUnavailable, open_store
from inline_state.stores._redis_wire import Connection, ReplyError

from .redis_servers import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def test_every_reply_reaches_its_own_waiter_through_cancellations(
    redis_server: RedisServer,
) -> None:
    wire = Connection("127.0.0.1", redis_server.port, timeout=5.0)
    rng = random.Random(7)

    async def echo(i: int) -> None:
        tokens = [f"{i}-{j}-{'x' * rng.randint(0, 3000)}" for j in range(rng.randint(1, 4))]
        replies = await wire.call([["ECHO", t] for t in tokens])
        assert replies == [t.encode() for t in tokens], i  # never another waiter's

    try:
        for _ in range(5):
            tasks = [asyncio.create_task(echo(i)) for i in range(300)]
            await asyncio.sleep(0)
            for task in rng.sample(tasks, 60):  # handlers that went away mid-command
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
            assert sum(r is None for r in results) >= 240
        assert await wire.call([["PING"]]) == [b"PONG"]  # still in step
        assert await wire.call([]) == []  # nothing to wait for, and no waiter left behind
        assert await wire.call([["ECHO", "after"]]) == [b"after"]
        [error] = await wire.call([["NOSUCHCOMMAND"]])
        assert isinstance(error, ReplyError)
        big = "y" * 1_000_000  # a reply split across many reads
        assert await wire.call([["ECHO", big], ["PING"]]) == [big.encode(), b"PONG"]
    finally:
        wire.close()


BUSY = """
local start = redis.call('TIME')
local function elapsed()
  local now = redis.call('TIME')
  return (now[1] - start[1]) + (now[2] - start[2]) / 1e6
end
while elapsed() < tonumber(ARGV[1]) do end
return 'done'
"""


async def test_a_deadline_fails_its_own_call_and_leaves_the_connection_in_step(
    redis_server: RedisServer,
) -> None:
    # Redis busy in a script for 0.6 s: a call with a 0.2 s deadline fails on time, by the
    # connection's one timer; the busy call (1 s timeout) and later calls get their own.
    wire = Connection("127.0.0.1", redis_server.port, timeout=1.0)
    loop = asyncio.get_running_loop()
    try:
        assert await wire.call([["PING"]]) == [b"PONG"]
        busy = asyncio.create_task(wire.call([["EVAL", BUSY, 0, "0.6"]]))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await wire.call([["ECHO", "late"]], started + 0.2)
        assert 0.19 <= loop.time() - started < 0.45
        assert await busy == [b"done"]
        assert await wire.call([["ECHO", "after"]]) == [b"after"]
    finally:
        wire.close()


async def test_a_killed_redis_fails_the_commands_in_flight_then_reconnects(
    own_redis: RedisServer,
) -> None:
    wire = Connection("127.0.0.1", own_redis.port, timeout=1.0)
    try:
        assert await wire.call([["SET", "k", "1"]]) == [b"OK"]
        blocked = asyncio.create_task(wire.call([["BLPOP", "nothing", "5"]]))
        await asyncio.sleep(0.1)
        port = own_redis.port
        assert own_redis.process is not None
        own_redis.process.kill()
        own_redis.process.wait(5)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(blocked, 3)
        with pytest.raises(ConnectionError):
            await wire.call([["PING"]])  # nobody listens
        own_redis.start(port)
        assert await wire.call([["PING"], ["ECHO", "back"]]) == [b"PONG", b"back"]
    finally:
        wire.close()


async def test_a_paused_redis_gives_503_then_the_store_recovers(own_redis: RedisServer) -> None:
    key = RecordKey("user", "b", "c", "", "u")
    store = open_store(f"redis://127.0.0.1:{own_redis.port}?prefix=p&timeout=0.5")
    async with store:
        await store.load([key])
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                with pytest.raises(StoreUnavailable, match="did not answer"):
                    await store.load([key])
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        # The commands Redis runs after resuming are reads; the stalled connection is
        # dropped and the next load goes through a new one.
        [record] = await store.load([key])
        assert record.props == {}


async def test_acl_user_password_and_database(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "acl", "--user", "default", "off", "--user", "bot", "on", ">s3cret", "~*",
        "+@all",
    ).start()  # fmt: skip
    try:
        wire = Connection(
            "127.0.0.1", server.port, username="bot", password="s3cret", db=3, timeout=2.0
        )
        try:
            assert await wire.call([["SET", "here", "3"]]) == [b"OK"]
            [info] = await wire.call([["CLIENT", "INFO"]])
            assert b" db=3 " in info and b" user=bot " in info
        finally:
            wire.close()
        wrong = Connection("127.0.0.1", server.port, username="bot", password="no", timeout=2.0)
        with pytest.raises(ConnectionError, match="refused the connection"):
            await wrong.call([["PING"]])
        wrong.close()
        url = f"redis://bot:s3cret@127.0.0.1:{server.port}/3?prefix=acl"
        key = RecordKey("user", "b", "c", "", "u")
        async with open_store(url) as store:
            [record] = await store.load([key])
            assert record.props == {}
    finally:
        server.stop()


async def test_a_refused_select_never_leaves_commands_on_another_database(
    redis_server: RedisServer,
) -> None:
    wire = Connection("127.0.0.1", redis_server.port, db=99, timeout=1.0)  # 16 databases
    try:
        for _ in range(2):  # refused each time, never sent to database 0 instead
            with pytest.raises(ConnectionError, match="DB index is out of range"):
                await wire.call([["SET", "stray", "1"]])
    finally:
        wire.close()
    check = Connection("127.0.0.1", redis_server.port, timeout=1.0)
    try:
        assert await check.call([["EXISTS", "stray"]]) == [0]
    finally:
        check.close()
    with pytest.raises(ConnectionError, match="closed"):
        await wire.call([["PING"]])  # a closed connection stays closed
