"""Hashed ids and names (encryption's option): no user id, conversation id or property
name in the clear in what the stores keep, while export, listings, the inspector's
reads and deletion still see the clear ones; the hash key checked at start-up; values
bound to their hashed field and record."""

from __future__ import annotations

import base64
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import inline_state
from inline_state import (
    Change,
    KeyRing,
    KeyRingError,
    MemoryStore,
    RecordKey,
    SealedStore,
    UserRef,
    open_store,
)
from inline_state._http import STORE_KEY
from inline_state._seal import key_id, load_hash_key, new_key
from inline_state.stores.sealed import KEYS_RECORD, UnreadableRecord, rekey

from .redis_servers import RedisServer
from .support import Client, activity, echo_app, post
from .test_encryption import cli, file_and_wal, redis_bytes

StartFn = Callable[[web.Application], Awaitable[Client]]
SECRET = "rest-secret"
USER_MARK = "USER-MARKER-ünï"
CONV_MARK = "CONV-MARKER-ünï"
NAME_MARK = "NAME-MARKER-ünï"
USER = RecordKey("user", "bot-1", "test", "", f"{USER_MARK}-0")


def hashing_ring(hash_key: bytes | None = None, *keys: str) -> KeyRing:
    return KeyRing.from_text(
        " ".join(keys or (new_key(),)),
        source="the test's keys",
        hash_key=hash_key if hash_key is not None else os.urandom(32),
    )


def named(msg: dict[str, Any]) -> dict[str, Any]:
    """Keeps a property whose name marks it, in all three bags, and a counter."""
    reply = inline_state.create_reply(msg, "ok")
    inline_state.set_user_data(reply, f"{NAME_MARK}-user", msg["text"])
    inline_state.set_conversation_data(reply, f"{NAME_MARK}-conversation", 1)
    inline_state.set_private_conversation_data(reply, f"{NAME_MARK}-private", 2)
    inline_state.incr_user_data(reply, f"{NAME_MARK}-turns")
    return reply


def marks_in(raw: bytes) -> set[str]:
    return {mark for mark in (USER_MARK, CONV_MARK, NAME_MARK) if mark.encode() in raw}


def expected(hashed: bool) -> set[str]:
    """Hashed: none of the marks; in the clear (the check that the test can fail): all."""
    return set() if hashed else {USER_MARK, CONV_MARK, NAME_MARK}


async def conversation(client: Client) -> None:
    for turn in range(3):
        for i in range(2):
            body = activity(
                text=f"t{turn}", user=f"{USER_MARK}-{i}", conversation=f"{CONV_MARK}-{i}"
            )
            status, _ = await post(client, body)
            assert status == 200


def ring_for(hashed: bool) -> KeyRing:
    return hashing_ring() if hashed else KeyRing.from_text(new_key(), source="the test's key")


# -- nothing of ids and names in the clear at rest -------------------------------------------


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "clear"])
async def test_no_clear_id_or_name_in_memory_records(client_for: StartFn, hashed: bool) -> None:
    store = MemoryStore(cache_bytes=0)  # every record packed out after each operation
    app, seen = echo_app(named, store, encryption=ring_for(hashed))
    await conversation(await client_for(app))
    assert seen[-1]["botUserData"][f"{NAME_MARK}-user"] == "t1", "the bot reads its data"
    raw = b"".join(
        namespace.encode() + key + blob
        for namespace, records in store._packed.items()
        for key, blob in records.items()
    )
    raw += b"".join(
        key.encode().encode() + rec.pack(store.sealer, key.encode())
        for key, rec in store._hot.items()
    )
    assert store._packed_count > 0
    assert marks_in(raw) == expected(hashed)


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "clear"])
async def test_no_clear_id_or_name_in_the_sqlite_file(
    client_for: StartFn, tmp_path: Path, hashed: bool
) -> None:
    path = tmp_path / "state.db"
    app, _ = echo_app(named, f"sqlite:///{path}", encryption=ring_for(hashed))
    await conversation(await client_for(app))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    assert marks_in(file_and_wal(path)) == expected(hashed)


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "clear"])
async def test_no_clear_id_or_name_in_any_redis_key_or_field(
    client_for: StartFn, redis_server: RedisServer, hashed: bool
) -> None:
    prefix = f"t{uuid.uuid4().hex}"
    url = f"redis://127.0.0.1:{redis_server.port}?prefix={prefix}"
    app, _ = echo_app(named, url, encryption=ring_for(hashed))
    await conversation(await client_for(app))
    raw = await redis_bytes(app[STORE_KEY].inner.client, prefix)  # type: ignore[attr-defined]
    assert raw
    assert marks_in(raw) == expected(hashed)


# -- what still sees the clear ids -----------------------------------------------------------


async def test_rest_export_and_deletion_see_the_clear_ids(
    client_for: StartFn, tmp_path: Path
) -> None:
    app, seen = echo_app(named, f"sqlite:///{tmp_path / 'state.db'}", encryption=hashing_ring())
    inline_state.add_state_api(app, secret=SECRET, bot_id="bot-1")
    client = await client_for(app)
    await conversation(client)
    auth = {"Authorization": f"Bearer {SECRET}"}
    user = f"{USER_MARK}-0"
    response = await client.get(f"/v3/botstate/test/users/{user}", headers=auth)
    body = await response.json()
    assert body["data"] == {f"{NAME_MARK}-user": "t2", f"{NAME_MARK}-turns": 3}
    response = await client.get("/v3/botstate/test/exportBotStateData", headers=auth)
    items = (await response.json())["botStateData"]
    found = {(i["conversationId"], i["userId"]) for i in items}
    assert found == {(None, f"{USER_MARK}-{i}") for i in range(2)} | {
        (f"{CONV_MARK}-{i}", None) for i in range(2)
    } | {(f"{CONV_MARK}-{i}", f"{USER_MARK}-{i}") for i in range(2)}
    assert all(NAME_MARK in i["data"] for i in items)
    response = await client.delete(f"/v3/botstate/test/users/{user}", headers=auth)
    assert response.status == 200, await response.text()
    status, _ = await post(client, activity(text="again", user=user, conversation=f"{CONV_MARK}-0"))
    assert status == 200
    assert f"{NAME_MARK}-user" not in seen[-1].get("botUserData", {}), "the user's data is gone"
    assert seen[-1]["botConversationData"] == {f"{NAME_MARK}-conversation": 1}


async def test_listings_and_inspection_see_the_clear_ids_and_names() -> None:
    store = SealedStore(MemoryStore(), hashing_ring())
    await store.open()
    keys = [USER._replace(user=f"{USER_MARK}-{i}") for i in range(3)]
    private = RecordKey("private", "bot-1", "test", CONV_MARK, keys[0].user)
    for key in [*keys, private]:
        await store.apply([Change(key, {NAME_MARK: b"1", "b": b"2"}, stamp=store.clock.stamp())])
    page = await store.list_keys("bot-1", "test", "user")
    assert sorted(page.keys) == sorted(keys)
    # A prefix finds an exact id (a hash has no prefixes): the user's own records.
    assert (await store.list_keys("bot-1", "test", "user", prefix=USER_MARK)).keys == []
    assert (await store.list_keys("bot-1", "test", "user", prefix=keys[1].user)).keys == [keys[1]]
    assert (await store.list_keys("bot-1", "test", "private", prefix=keys[0].user)).keys == [
        private
    ]
    inspected = await store.inspect(private)
    assert dict(inspected.record.props) == {NAME_MARK: b"1", "b": b"2"}
    assert set(inspected.stamps) == {NAME_MARK, "b"}
    assert await store.channels("bot-1") == ["test"]
    # Deleting a user takes all of their records, found by the hashed id.
    await store.delete_user(UserRef("bot-1", "test", keys[0].user), store.clock.stamp())
    assert [r.exists for r in await store.load([keys[0], private, keys[1]])] == [False, False, True]
    await store.close()


# -- bound to their field and record ---------------------------------------------------------


async def test_a_value_or_the_ids_moved_elsewhere_do_not_open() -> None:
    seal, hash_key = new_key(), os.urandom(32)
    store = SealedStore(MemoryStore(), hashing_ring(hash_key, seal))
    await store.open()
    other, untouched = USER._replace(user="someone else"), USER._replace(user="untouched")
    for key in (USER, other, untouched):
        await store.apply([Change(key, {"a": b"1", "b": b"2"}, stamp=store.clock.stamp())])
    keys = store.keys
    stored, stored_other = (store._stored_key(k) for k in (USER, other))
    [record] = await store.inner.load([stored])
    a, b = keys.hash_name("a"), keys.hash_name("b")
    assert set(record.props) == {a, b, keys.ids_field}
    # The value of "a" under the field of "b": it names "a" inside, but its field says "b".
    stamp = store.clock.stamp()
    await store.inner.apply([Change(stored, {b: record.props[a]}, stamp=stamp)])
    with pytest.raises(UnreadableRecord, match="does not open"):
        await store.load([USER])
    # One record's ids in another record: the export leaves that record out.
    await store.inner.apply(
        [Change(stored_other, {keys.ids_field: record.props[keys.ids_field]}, stamp=stamp)]
    )
    page = await store.export("bot-1", "test")
    # USER does not open; other's ids are USER's: neither comes out, and the rest does.
    assert [k for k, _ in page.records] == [untouched]
    # A changed mark (sizes are counted by it) does not open either, nor rekey.
    [record] = await store.inner.load([store._stored_key(untouched)])
    flipped = b"\x02" + record.props[a][1:]
    await store.inner.apply([Change(store._stored_key(untouched), {a: flipped}, stamp=stamp)])
    store._records.clear()
    with pytest.raises(UnreadableRecord, match="does not open"):
        await store.load([untouched])
    # A rekey to a new key opens each of the three, and names them.
    rotated = SealedStore(store.inner, hashing_ring(hash_key, new_key(), seal), owns_inner=False)
    await rotated.open()
    assert (await rekey(rotated)).unreadable_count == 3
    await store.close()


async def test_the_ids_stay_beside_the_values_whatever_came_before() -> None:
    store = SealedStore(MemoryStore(), hashing_ring())
    await store.open()

    async def exported() -> dict[RecordKey, dict[str, bytes]]:
        page = await store.export("bot-1", "test")
        return {k: dict(r.props) for k, r in page.records}

    stamp = store.clock.stamp
    # A string record written by another process (REST), then a turn here reading it
    # and writing values.
    other = SealedStore(store.inner, store.keys, owns_inner=False)
    await other.open()
    await store.apply([Change(USER, {"a": b"1"}, stamp=stamp())])
    await other.compare_and_set(USER, "a string", "*", max_bytes=1000)
    await store.load([USER])
    await store.apply([Change(USER, {"b": b"2"}, stamp=stamp())])
    assert await exported() == {USER: {"b": b"2"}}
    # A whole-record write, then values written without a read between.
    await store.compare_and_set(USER, None, "*", max_bytes=1000)
    await store.apply([Change(USER, {"c": b"3"}, stamp=stamp())])
    assert await exported() == {USER: {"c": b"3"}}
    # A removal from a record this process forgot: the other values keep their ids.
    await store.apply([Change(USER, {"d": b"4"}, stamp=stamp())])
    store._records.clear()
    await store.apply([Change(USER, {}, frozenset({"c"}), stamp=stamp())])
    assert await exported() == {USER: {"d": b"4"}}
    # Every value removed: the record reads as missing, and a create (no eTag) works.
    await store.apply([Change(USER, {}, frozenset({"d"}), stamp=stamp())])
    assert await exported() == {}
    assert not (await store.load([USER]))[0].exists
    assert await store.channels("bot-1") == []
    await store.compare_and_set(USER, {"e": b"5"}, None, max_bytes=1000)
    await store.apply([Change(USER, {}, frozenset({"e"}), stamp=stamp())])
    await store.compare_and_set(USER, {"f": b"6"}, "", max_bytes=1000)
    assert await exported() == {USER: {"f": b"6"}}
    await store.close()


# -- the hash key, checked at start-up -------------------------------------------------------


async def test_the_hash_key_is_checked_at_start_up(tmp_path: Path) -> None:
    seal, hash_key = new_key(), os.urandom(32)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), hashing_ring(hash_key, seal)) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
    wanted = key_id(hash_key)
    without = KeyRing.from_text(seal, source="k")
    with pytest.raises(KeyRingError, match=f"hashed under hash key '{wanted}'.*none is configured"):
        await SealedStore(open_store(url), without).open()
    with pytest.raises(KeyRingError, match=f"hashed under hash key '{wanted}', not under"):
        await SealedStore(open_store(url), hashing_ring(os.urandom(32), seal)).open()
    async with SealedStore(open_store(url), hashing_ring(hash_key, seal)) as store:
        [record] = await store.load([USER])
        assert dict(record.props) == {"a": b"1"}
    # Hashing cannot be turned on for a store holding clear ids: it would hide them all.
    for clear in (f"sqlite:///{tmp_path / 'sealed.db'}", f"sqlite:///{tmp_path / 'plain.db'}"):
        first = open_store(clear)
        async with SealedStore(first, without) if "sealed" in clear else first as store:
            await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
        with pytest.raises(KeyRingError, match="only be hashed in a new store"):
            await SealedStore(open_store(clear), hashing_ring(hash_key, seal)).open()


async def test_a_start_with_the_other_choice_is_refused(tmp_path: Path) -> None:
    seal, hash_key = new_key(), os.urandom(32)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    # A store started once with ids in the clear, even with nothing written, stays so.
    async with SealedStore(open_store(url), KeyRing.from_text(seal, source="k")):
        pass
    with pytest.raises(KeyRingError, match="keeps them in the clear"):
        await SealedStore(open_store(url), hashing_ring(hash_key, seal)).open()
    # Two first starts that raced (both marks in the keys record): every start refuses.
    async with open_store(url) as plain:
        await plain.apply(
            [Change(KEYS_RECORD, {f"hash:{key_id(hash_key)}": b"1"}, stamp=plain.clock.stamp())]
        )
    for ring in (hashing_ring(hash_key, seal), KeyRing.from_text(seal, source="k")):
        with pytest.raises(KeyRingError, match="two first starts raced"):
            await SealedStore(open_store(url), ring).open()


async def test_copy_refuses_to_join_hashed_and_clear_stores(tmp_path: Path) -> None:
    seal, hash_key = new_key(), os.urandom(32)
    hashed, clear = (f"sqlite:///{tmp_path / name}" for name in ("hashed.db", "clear.db"))
    async with SealedStore(open_store(hashed), hashing_ring(hash_key, seal)) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
    async with SealedStore(open_store(clear), KeyRing.from_text(seal, source="k")) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
    code, _, err = await cli("copy", "--from", hashed, "--to", clear)
    assert code != 0 and "hashed under hash key" in err and "copy into an empty store" in err
    # Into an empty store it copies, and opens there with the same keys.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    code, _, err = await cli("copy", "--from", hashed, "--to", empty)
    assert code == 0, err
    async with SealedStore(open_store(empty), hashing_ring(hash_key, seal)) as store:
        assert dict((await store.load([USER]))[0].props) == {"a": b"1"}


def test_a_hash_key_is_one_key_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seal = new_key()
    with pytest.raises(KeyRingError, match="a key of its own"):
        hashing_ring(base64.b64decode(seal), seal)
    monkeypatch.setenv("INLINE_STATE_HASH_KEY", f"{new_key()} {new_key()}")
    with pytest.raises(KeyRingError, match=r"must hold one key .*never rotated"):
        load_hash_key()
    hash_key = new_key()
    monkeypatch.delenv("INLINE_STATE_HASH_KEY")
    (tmp_path / "hash.key").write_text(f"# the hash key\n{hash_key}\n")
    monkeypatch.setenv("INLINE_STATE_HASH_KEY_FILE", str(tmp_path / "hash.key"))
    monkeypatch.setenv("INLINE_STATE_KEYS", seal)
    ring = KeyRing.load()
    assert ring.hash_key_id == key_id(base64.b64decode(hash_key))
    monkeypatch.delenv("INLINE_STATE_HASH_KEY_FILE")
    assert KeyRing.load().hash_key_id is None


# -- rekey ---------------------------------------------------------------------------------


async def test_rekey_of_a_hashed_store_keeps_every_value(tmp_path: Path) -> None:
    old, new, hash_key = new_key(), new_key(), os.urandom(32)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    keys = [USER._replace(user=f"u{i}") for i in range(30)]
    async with SealedStore(open_store(url), hashing_ring(hash_key, old)) as store:
        for i, key in enumerate(keys):
            await store.apply([Change(key, {"n": str(i).encode()}, stamp=store.clock.stamp())])
        await store.compare_and_set(USER, "a string", "*", max_bytes=1000)
    async with SealedStore(open_store(url), hashing_ring(hash_key, new, old)) as store:
        done = await rekey(store, limit=7)
        assert done.done and done.found == {key_id(base64.b64decode(old)): 61}, done
    async with SealedStore(open_store(url), hashing_ring(hash_key, new)) as store:
        records = await store.load([*keys, USER])
        assert [dict(r.props) for r in records[:-1]] == [{"n": str(i).encode()} for i in range(30)]
        assert records[-1].text == "a string"
