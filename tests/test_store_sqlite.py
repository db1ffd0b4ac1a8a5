"""SQLite specifics: durability across kill -9, URLs, synchronous modes, failures,
several writers on one file, the decoded records, the file layout and its upgrade."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from inline_state import (
    ApplyResult,
    Change,
    MemoryStore,
    PreconditionFailed,
    RecordKey,
    SqliteStore,
    StoreError,
    StoreUnavailable,
    UserRef,
    open_store,
)
from inline_state._clock import HybridClock
from inline_state.stores import sqlite as sqlite_module
from inline_state.stores._record import Record

from .support import REPO, RunningBot, RunningProcess, v1_message

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


async def test_kill_9_under_concurrent_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    bot = RunningBot(COUNTER, "--store", f"sqlite:///{db}").start()
    users = [f"user-{i}" for i in range(16)]
    acked = dict.fromkeys(users, 0)

    async def drive(session: aiohttp.ClientSession, mine: list[str]) -> None:
        for turn in range(10_000):
            user = mine[turn % len(mine)]
            try:
                async with session.post(bot.url, json=v1_message(user=user)) as response:
                    if response.status != 200:
                        return
                    await response.read()
            except aiohttp.ClientError:
                return  # the bot is gone
            acked[user] += 1

    try:
        async with aiohttp.ClientSession() as session:
            drivers = [asyncio.create_task(drive(session, users[i::8])) for i in range(8)]
            for _ in range(300):  # until group commits of several turns are in flight
                if sum(acked.values()) > 200:
                    break
                await asyncio.sleep(0.05)
            assert bot.process is not None
            os.kill(bot.process.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*drivers), 10)
    finally:
        bot.stop()
    assert sum(acked.values()) > 50
    async with SqliteStore(db) as store:
        records = await store.load([RecordKey("user", "bot-1", None, "", u) for u in users])
    for user, record in zip(users, records, strict=True):
        stored = int(record.props["count"]) if record.props else 0
        # each user's turns are sequential: at most the one in flight when killed is extra
        assert acked[user] <= stored <= acked[user] + 1, (user, acked[user], stored)


def test_urls() -> None:
    store = open_store("sqlite:///relative/state.db?synchronous=full&timeout=2.5&cache_bytes=9")
    assert isinstance(store, SqliteStore)
    assert store.cache_bytes == 9
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


# -- several writers on one file, and the decoded records ---------------------------------

USER = RecordKey("user", "bot-1", None, "", "u1")


def _change(store: SqliteStore, key: RecordKey, **props: bytes) -> Change:
    return Change(key, props, stamp=store.clock.stamp())


async def test_a_bot_and_the_state_service_on_one_file_see_each_others_writes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    bot = RunningBot(COUNTER, "--store", url).start()
    service = RunningProcess(
        lambda port: [
            sys.executable, "-m", "inline_state", "state-service", "--listen",
            f"127.0.0.1:{port}", "--store", url, "--secret", "pw", "--bot-id", "bot-1",
        ]
    ).start()  # fmt: skip
    path = f"http://127.0.0.1:{service.port}/bot/v1.0/bots/bot-1/users/u1"
    auth = {"Authorization": "Bearer pw"}
    try:
        async with aiohttp.ClientSession() as session:
            for round_ in range(1, 6):
                # The bot's write is the service's next read ...
                async with session.post(bot.url, json=v1_message(user="u1")) as response:
                    assert response.status == 200
                    reply = await response.json()
                expected = 1 if round_ == 1 else 100 * (round_ - 1) + 1
                assert reply["text"].startswith(f"you: {expected} messages")
                async with session.get(path, headers=auth) as response:
                    state = await response.json()
                assert state["data"] == {"count": expected}
                # ... and the service's write is the bot's next read.
                body = {"data": {"count": 100 * round_}, "eTag": state["eTag"]}
                async with session.post(path, json=body, headers=auth) as response:
                    assert response.status == 200, await response.text()
    finally:
        bot.stop()
        service.stop()


async def test_a_write_through_another_store_on_the_file_is_the_next_read(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as one, SqliteStore(tmp_path / "s.db") as two:
        for n in range(5):
            writer, reader = (one, two) if n % 2 else (two, one)
            [before] = await reader.load([USER])  # decoded now
            [seen] = await writer.load([USER])
            writer.clock.observe(seen.observed)  # as a turn does, so its stamp is newer
            assert await writer.apply([_change(writer, USER, n=str(n).encode())]) == [
                ApplyResult.APPLIED
            ]
            [after] = await reader.load([USER])
            assert after.props == {"n": str(n).encode()}, (n, before)
        assert one.cache_stats["hits"] > 0  # the decoded records were in use


async def test_a_program_writing_the_file_without_inline_state_is_seen(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        await store.apply([_change(store, USER, n=b"1")])
        assert (await store.load([USER]))[0].props == {"n": b"1"}
        hits = store.cache_stats["hits"]
        with sqlite3.connect(tmp_path / "s.db", isolation_level=None) as shell:
            shell.execute("UPDATE properties SET value = '2' WHERE name = 'n'")
        assert (await store.load([USER]))[0].props == {"n": b"2"}
        assert store.cache_stats["hits"] == hits  # read from the file, not the cache


async def test_a_rolled_back_transaction_never_shows_in_reads(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        other = RecordKey("user", "bot-1", None, "", "u2")
        await store.apply([_change(store, USER, n=b"1"), _change(store, other, n=b"1")])
        await store.load([USER, other])  # both decoded
        # The file may not grow: a change that needs new pages fails at its write, and
        # rolls back the whole group commit, including the small change queued with it.
        assert store._conn is not None
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        small = store.apply([_change(store, USER, n=b"2")])
        huge = _change(store, other, n=b'"' + b"x" * 200_000 + b'"')._replace(max_bytes=10**6)
        big = store.apply([huge])
        results = await asyncio.gather(small, big, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert [r.props for r in await store.load([USER, other])] == [{"n": b"1"}] * 2
        store._conn.execute("PRAGMA max_page_count = 1073741823")
        await store.apply([_change(store, USER, n=b"3")])
        assert (await store.load([USER]))[0].props == {"n": b"3"}
    async with SqliteStore(tmp_path / "s.db") as fresh:
        assert (await fresh.load([USER]))[0].props == {"n": b"3"}


async def test_a_refused_operation_in_a_group_commit_leaves_the_rest(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        await store.apply([_change(store, USER, n=b"1")])
        [loaded] = await store.load([USER])
        refused = store.compare_and_set(USER, {"n": b"9"}, "wrong-etag", max_bytes=1000)
        accepted = store.apply([_change(store, USER, m=b"2")])
        results = await asyncio.gather(refused, accepted, return_exceptions=True)
        assert isinstance(results[0], PreconditionFailed)
        assert results[1] == [ApplyResult.APPLIED]
        [now] = await store.load([USER])
        assert now.props == {"n": b"1", "m": b"2"}
        assert now.etag != loaded.etag


async def test_a_locked_file_is_waited_for_without_blocking_the_loop(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db", timeout=2.0) as store:
        holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write lock
        gaps: list[float] = []

        async def tick() -> None:
            last = asyncio.get_running_loop().time()
            while True:
                await asyncio.sleep(0.01)
                now = asyncio.get_running_loop().time()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        write = asyncio.create_task(store.apply([_change(store, USER, n=b"1")]))
        await asyncio.sleep(0.3)
        assert not write.done()
        holder.execute("COMMIT")
        assert await write == [ApplyResult.APPLIED]
        assert len(gaps) > 5 and max(gaps) < 0.2  # the loop kept running while it waited
        ticker.cancel()
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked by another writer"):
            await store.apply([_change(store, USER, n=b"2")])
        holder.execute("COMMIT")
        holder.close()
        assert (await store.load([USER]))[0].props == {"n": b"1"}


async def test_one_changed_counter_writes_one_row(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        bag = {f"p{i}": b'"' + b"x" * 600 + b'"' for i in range(100)}  # 60 KiB
        await store.apply([_change(store, USER, **bag, count=b"1")])
        assert store._conn is not None
        before = store._conn.total_changes
        await store.apply([_change(store, USER, count=b"2")])
        assert store._conn.total_changes - before == 2  # the head and one property
    async with SqliteStore(tmp_path / "s.db") as fresh:  # what the file holds
        [loaded] = await fresh.load([USER])
        assert loaded.props == {**bag, "count": b"2"}


async def test_the_wal_stays_bounded_under_steady_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A passive checkpoint never catches up with writes that keep coming, and only a
    # WAL copied to its end is written again from its start: without restarts it grows
    # by every commit's pages, for as long as the writes go on.
    monkeypatch.setattr(sqlite_module, "_WAL_RESTART_FRAMES", 100)
    wal = tmp_path / "s.db-wal"
    largest = 0
    async with SqliteStore(tmp_path / "s.db") as store:
        for i in range(12000):
            key = RecordKey("user", "bot-1", None, "", f"u{i % 500}")
            await store.apply([_change(store, key, n=b"%d" % i, pad=b'"' + b"x" * 300 + b'"')])
            if i % 100 == 0:
                largest = max(largest, wal.stat().st_size)
                await asyncio.sleep(0)
        [loaded] = await store.load([RecordKey("user", "bot-1", None, "", "u499")])
        assert loaded.props["n"] == b"11999"
    # 12,000 commits of a few 4 KiB pages each come to over 100 MiB; a restart can come
    # late (its thread waits for the GIL and the lock), so the bound is loose.
    assert 0 < largest < 48 * 1024 * 1024, f"the WAL reached {largest} bytes"


_SCHEMA_1 = """
CREATE TABLE records (key TEXT PRIMARY KEY, blob BLOB NOT NULL, expires INTEGER) WITHOUT ROWID;
CREATE INDEX records_expires ON records(expires) WHERE expires IS NOT NULL;
CREATE TABLE deletions (user TEXT PRIMARY KEY, stamp INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta(name, value) VALUES ('schema', 1), ('node', 0);
CREATE TABLE nodes (node INTEGER PRIMARY KEY, holder TEXT NOT NULL, expires INTEGER NOT NULL);
"""


async def test_a_file_of_schema_1_is_upgraded_and_reads_the_same(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conv = RecordKey("conversation", "bot-1", "slack", "c1", "")
    rec = Record()
    rec.apply(Change(USER, {"name": b'"Ada"', "n": b"1"}, stamp=1 << 30))
    rec.apply(Change(USER, {}, frozenset({"gone"}), stamp=(1 << 30) + 1))
    text = Record()
    text.replace("plain text", 1 << 31)
    with sqlite3.connect(db) as old:
        old.executescript(_SCHEMA_1)
        old.execute("INSERT INTO records VALUES (?, ?, NULL)", (USER.encode(), rec.pack()))
        old.execute("INSERT INTO records VALUES (?, ?, NULL)", (conv.encode(), text.pack()))
    old.close()
    async with SqliteStore(db) as store:
        user, conversation = await store.load([USER, conv])
        assert user == rec.view()
        assert conversation == text.view()
        # the tombstone came along: an older write of "gone" stays refused
        late = Change(USER, {"gone": b"1"}, stamp=1 << 30)
        assert await store.apply([late]) == [ApplyResult.STALE]
    with sqlite3.connect(db) as upgraded:
        assert upgraded.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == (2,)
        tables = {row[0] for row in upgraded.execute("SELECT name FROM sqlite_master")}
        assert "records" not in tables
    upgraded.close()


async def test_a_file_from_a_newer_inline_state_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    async with SqliteStore(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 3 WHERE name = 'schema'")
    conn.close()
    with pytest.raises(StoreError, match=r"schema 3.*newer inline_state"):
        async with SqliteStore(db):
            pass


async def test_an_expired_record_written_again_holds_only_the_new_write(tmp_path: Path) -> None:
    from .test_store_contract import FakeTime, stamp

    time = FakeTime()
    other = RecordKey("user", "bot-1", None, "", "u2")
    async with SqliteStore(
        tmp_path / "s.db", clock=HybridClock(0, wall_ms=time), ttl={"user": 10.0}
    ) as store:
        await store.apply([Change(USER, {"a": b"1", "b": b"1"}, stamp=stamp(0))])
        time.now += 9_000
        await store.apply([Change(other, {"x": b"1"}, stamp=stamp(9_000))])  # a sweep ran
        time.now += 1_500  # USER expired; the next sweep is not due yet
        await store.apply([Change(USER, {"c": b"2"}, stamp=stamp(10_500))])
        assert (await store.load([USER]))[0].props == {"c": b"2"}
        time.now += 20_000
        await store.apply([Change(other, {"x": b"2"}, stamp=stamp(30_500))])  # sweeps USER
    with sqlite3.connect(tmp_path / "s.db") as conn:
        names = {row[0] for row in conn.execute("SELECT key FROM properties")}
    conn.close()
    assert names == {other.encode()}, "the sweep took the expired record's rows too"


async def test_a_late_change_after_a_deletion_is_dropped_when_the_stamp_was_forgotten(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        await store.apply([_change(store, USER, n=b"1")])
        base = (await store.load([USER]))[0].observed  # a turn saw this much ...
        deleted = await store.delete_user(UserRef("bot-1", None, "u1"), store.clock.stamp())
        assert (await store.load([USER]))[0].deleted == deleted  # decoded (empty) again
        # ... and the remembered deletion stamps are dropped (as at their bound, 65,536)
        store._deletions.clear()
        late = Change(USER, {"n": b"2"}, stamp=store.clock.stamp(), base=base)
        assert await store.apply([late]) == [ApplyResult.DROPPED]
        assert (await store.load([USER]))[0].props == {}


async def test_close_with_writes_waiting_for_a_lock_ends_within_the_timeout(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db", timeout=0.5)
    await store.open()
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(store.apply([_change(store, USER, n=b"1")]))
        await asyncio.sleep(0.05)  # queued, retrying
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(store.close(), 5)
        assert asyncio.get_running_loop().time() - started < 2.0
        with pytest.raises(StoreUnavailable, match="locked by another writer"):
            await write
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.load([USER])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_decoded_records_are_what_the_file_holds(tmp_path: Path, seed: int) -> None:
    # A law over random operations of every kind: after each, the store that made it
    # (answering from its decoded records) and a second store on the file (which
    # must read the file, since the first one committed) load the same records.
    import random

    from .test_store_contract import FakeTime, stamp

    rng = random.Random(seed)
    time = FakeTime()
    keys = [
        RecordKey("user", "bot-1", None, "", "u1"),
        RecordKey("private", "bot-1", None, "c1", "u1"),
        RecordKey("conversation", "bot-1", None, "c1", ""),
    ]
    names = ["a", "b", "c", "d"]
    clock = HybridClock(0, wall_ms=time)
    async with (
        SqliteStore(tmp_path / "s.db", clock=clock, tombstone_ttl=5) as store,
        SqliteStore(tmp_path / "s.db", clock=HybridClock(0, wall_ms=time)) as reader,
    ):
        for step in range(150):
            time.now += rng.choice([1, 10, 1_000, 6_000])
            key = rng.choice(keys)
            offset = time.now - FakeTime().now - rng.choice([0, 0, 0, 3_000, 9_000])
            kind = rng.random()
            if kind < 0.55:
                sets = {n: str(rng.randint(0, 9)).encode() for n in rng.sample(names, 2)}
                removes = frozenset(rng.sample(names, rng.randint(0, 1))) - set(sets)
                replace = rng.random() < 0.2
                change = Change(key, sets, removes, replace, stamp(offset), max_bytes=60)
                await store.apply([change])
            elif kind < 0.7:
                data: dict[str, bytes] | str | None = rng.choice(
                    [{"t": b'"x"'}, "plain text", None]
                )
                await store.compare_and_set(key, data, "*", max_bytes=1000)
            elif kind < 0.75:
                user = UserRef("bot-1", None, "u1")
                await store.delete_user(user, stamp(offset))
            mine = await store.load(keys)
            theirs = await reader.load(keys)
            assert mine == theirs, (step, mine, theirs)
        assert store.cache_stats["hits"] > 50  # the first store did answer from memory


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_a_tombstone_older_than_the_retention_is_not_kept(
    tmp_path: Path, backend: str
) -> None:
    # The stores' inline merges agree with the general path, which prunes it at once.
    from .test_store_contract import FakeTime, stamp

    time = FakeTime()
    clock = HybridClock(0, wall_ms=time)
    store = (
        SqliteStore(tmp_path / "s.db", clock=clock, tombstone_ttl=1)
        if backend == "sqlite"
        else MemoryStore(clock=clock, tombstone_ttl=1)
    )
    async with store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=stamp(0))])
        await store.load([USER])  # decoded
        time.now += 10_000
        late = Change(USER, {}, frozenset({"b"}), stamp=stamp(1_000))
        assert await store.apply([late]) == [ApplyResult.APPLIED]
        [loaded] = await store.load([USER])
        assert loaded.observed == stamp(0), "the late tombstone was pruned at once"
