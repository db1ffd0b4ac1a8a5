"""SQLite specifics: durability across kill -9, URLs, synchronous modes, failures."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from inline_state import RecordKey, SqliteStore, StoreUnavailable, open_store

from .support import REPO, RunningBot, v1_message

COUNTER = REPO / "samples" / "counter_v1" / "bot.py"


async def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    url = f"sqlite:///{db}"
    users = [f"user-{i}" for i in range(10)]
    sent = {user: 0 for user in users}
    bot = RunningBot(COUNTER, "--store", url).start()
    try:
        async with aiohttp.ClientSession() as session:
            for turn in range(120):
                user = users[turn % len(users)]
                async with session.post(bot.url, json=v1_message(user=user)) as response:
                    assert response.status == 200
                    await response.read()
                sent[user] += 1  # acknowledged
        assert bot.process is not None
        os.kill(bot.process.pid, signal.SIGKILL)
        bot.process.wait(5)
    finally:
        bot.stop()

    async with SqliteStore(db) as store:
        keys = [RecordKey("user", "bot-1", None, "", user) for user in users]
        records = await store.load(keys)
        assert {u: int(r.props["count"]) for u, r in zip(users, records, strict=True)} == sent
        [conv] = await store.load([RecordKey("conversation", "bot-1", None, "conv-1", "")])
        assert int(conv.props["count"]) == 120

    restarted = RunningBot(COUNTER, "--store", url).start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(restarted.url, json=v1_message(user="user-0")) as response,
        ):
            reply = await response.json()
        assert reply["text"] == "you: 13 messages; this conversation: 121; you here: 13"
    finally:
        restarted.stop()


def test_urls() -> None:
    store = open_store("sqlite:///relative/state.db?synchronous=full&timeout=2.5")
    assert isinstance(store, SqliteStore)
    assert store.path == Path("relative/state.db")
    assert store.synchronous == "FULL"
    assert store.timeout == 2.5
    absolute = open_store("sqlite:////var/lib/bot/state.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == Path("/var/lib/bot/state.db")
    for bad in ("sqlite://host/x.db", "sqlite:///", "sqlite:///x.db?bogus=1", "mongo://x"):
        with pytest.raises(ValueError, match=r"sqlite|store URL"):
            open_store(bad)


async def test_wal_and_synchronous_are_set(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "a.db", synchronous="FULL") as store:
        await store.compare_and_set(
            RecordKey("user", "b", "c", "", "u"), {"a": b"1"}, "*", max_bytes=100
        )
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "b.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_an_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises((StoreUnavailable, OSError)):
        async with SqliteStore(blocker / "state.db"):
            pass


async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    async with store:
        pass
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.load([RecordKey("user", "b", "c", "", "u")])


async def test_node_ids_are_leased_per_file(tmp_path: Path) -> None:
    async with (
        SqliteStore(tmp_path / "state.db") as one,
        SqliteStore(tmp_path / "state.db") as two,
    ):
        # Two live stores on one file (two processes, or the state API beside the bot)
        # hold different node ids for their clocks, and allocate around them.
        assert one.clock.node_id != two.clock.node_id
        held = await one.allocate_node_id()
        assert held not in (one.clock.node_id, two.clock.node_id)
        released = two.clock.node_id
    async with SqliteStore(tmp_path / "state.db") as three:
        # Closing gave the clocks' ids back; the one allocated by hand is still leased.
        assert three.clock.node_id in (released, one.clock.node_id)
        assert await three.allocate_node_id() != held
