"""Encryption at rest: nothing of a bag's values in what the stores keep, values bound to
their record and property, keys checked at start-up, rotation and rekey under traffic,
old plaintext still read, and a record that does not open failing its turn alone."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import sqlite3
import sys
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import inline_state
from inline_state import (
    Change,
    DumpedRecord,
    KeyRing,
    KeyRingError,
    MemoryStore,
    RecordKey,
    SealedStore,
    SqliteStore,
    Store,
    open_store,
)
from inline_state._codec import SEAL_OVERHEAD, SEALED_TEXT
from inline_state._http import STORE_KEY
from inline_state._seal import BUCKETS, SealError, key_id, new_key
from inline_state.stores._record import Record
from inline_state.stores.memory import _split
from inline_state.stores.sealed import KEYS_RECORD, UnreadableRecord, rekey

from .redis_servers import RedisServer
from .support import Client, activity, echo_app, post
from .test_cli import state_service

StartFn = Callable[[web.Application], Awaitable[Client]]
USER = RecordKey("user", "bot-1", "test", "", "user-1")
SECRET = "rest-secret"


def ring(*keys: str) -> KeyRing:
    return KeyRing.from_text(" ".join(keys), source="the test's keys")


def remember(msg: dict[str, Any]) -> dict[str, Any]:
    """Keeps the message's text in all three bags."""
    reply = inline_state.create_reply(msg, "ok")
    text = msg["text"]
    inline_state.set_user_data(reply, "secret", text)
    inline_state.set_conversation_data(reply, "topic", text + " (topic)")
    inline_state.set_private_conversation_data(reply, "note", text + " (note)")
    inline_state.incr_user_data(reply, "turns")
    return reply


def memo_bot(store: str | Store, keys: KeyRing | None) -> tuple[web.Application, list[Any]]:
    """A bot keeping each message's text, with the REST API, its store sealed by ``keys``."""
    app, seen = echo_app(remember, store, encryption=keys)
    inline_state.add_state_api(app, secret=SECRET, bot_id="bot-1")
    return app, seen


MARKERS = [f"PLAINTEXT-MARKER-{i}-ünï" for i in range(5)]


async def chat(client: Client, users: int = 3) -> None:
    for marker in MARKERS:
        for user in range(users):
            status, _ = await post(client, activity(text=marker, user=f"user-{user}"))
            assert status == 200


def markers_in(raw: bytes) -> list[str]:
    return [m for m in MARKERS if m.encode() in raw]


def expected(encrypted: bool) -> Callable[[list[str]], bool]:
    """Sealed: no marker at all; plain (the check that the test can fail): at least the
    latest one, in the clear."""
    return (lambda found: found == []) if encrypted else (lambda found: MARKERS[-1] in found)


# -- nothing in the clear at rest ------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "plain"])
async def test_no_plaintext_in_memory_records(client_for: StartFn, encrypted: bool) -> None:
    store = MemoryStore(cache_bytes=0)  # every record packed out after each operation
    app, seen = memo_bot(store, ring(new_key()) if encrypted else None)
    client = await client_for(app)
    await chat(client)
    assert seen[-1]["botUserData"]["secret"] == MARKERS[-2], "the bot reads its data"
    raw = b"".join(blob for records in store._packed.values() for blob in records.values())
    # The decoded record (the cache, as any sealing store keeps one) as it is packed.
    raw += b"".join(rec.pack(store.sealer, key.encode()) for key, rec in store._hot.items())
    assert store._packed_count > 0
    assert expected(encrypted)(markers_in(raw))


def file_and_wal(path: Path) -> bytes:
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "plain"])
async def test_no_plaintext_in_the_sqlite_file_or_its_wal(
    client_for: StartFn, tmp_path: Path, encrypted: bool
) -> None:
    path = tmp_path / "state.db"
    app, _ = memo_bot(f"sqlite:///{path}", ring(new_key()) if encrypted else None)
    client = await client_for(app)
    await chat(client)
    before_checkpoint = file_and_wal(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    after = file_and_wal(path)
    assert expected(encrypted)(markers_in(before_checkpoint))
    assert expected(encrypted)(markers_in(after))


@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "plain"])
async def test_no_plaintext_in_any_redis_value(
    client_for: StartFn, redis_server: RedisServer, encrypted: bool
) -> None:
    prefix = f"t{uuid.uuid4().hex}"
    url = f"redis://127.0.0.1:{redis_server.port}?prefix={prefix}"
    app, _ = memo_bot(url, ring(new_key()) if encrypted else None)
    client = await client_for(app)
    await chat(client)
    store: Any = app[STORE_KEY]
    raw = await redis_bytes(store.inner.client if encrypted else store.client, prefix)
    assert raw
    assert expected(encrypted)(markers_in(raw))


async def redis_bytes(redis: Any, prefix: str) -> bytes:
    """Everything Redis keeps under a key prefix, as raw bytes: key names, every hash's
    fields and values (HGETALL, not DUMP, which compresses), sets, sorted sets, strings."""
    raw = b""
    async for name in redis.scan_iter(match=f"{prefix}:*"):
        raw += name
        kind = await redis.type(name)
        if kind == b"hash":
            raw += b"".join(k + v for k, v in (await redis.hgetall(name)).items())
        elif kind == b"set":
            raw += b"".join(await redis.smembers(name))
        elif kind == b"zset":
            raw += b"".join(await redis.zrange(name, 0, -1))
        elif kind == b"string":
            raw += await redis.get(name)
    return raw


# -- bound to its record and property, and never wrong data ----------------------------------


def tamper(path: Path, name: str, change: Callable[[bytes], bytes]) -> None:
    """Another program rewrites a stored value in the SQLite file."""
    with sqlite3.connect(path) as conn:
        for key, value in conn.execute("SELECT key, value FROM properties WHERE name = ?", (name,)):
            conn.execute(
                "UPDATE properties SET value = ? WHERE key = ? AND name = ?",
                (change(value), key, name),
            )


def a_user_in_the_bucket_of(key: RecordKey, same: bool) -> RecordKey:
    """Another user's record sealed under the same bucket key as ``key`` (so that only
    the record's part of the associated data can tell the two apart), or another one."""
    bucket = zlib.crc32(key.encode().encode()) % BUCKETS
    for n in range(100 * BUCKETS):
        other = key._replace(user=f"user-{n}")
        if other != key and (zlib.crc32(other.encode().encode()) % BUCKETS == bucket) == same:
            return other
    raise AssertionError("no such user among the first ones")


def test_the_sealed_form_opens_by_its_specification() -> None:
    """What the module docstring and the README say, done apart from the key ring: the
    bucket key an HMAC of the master over the bucket's number, the bucket the CRC-32 of
    the record's encoded key, the associated data that key (length first) and the name."""
    master = os.urandom(32)
    keys = KeyRing([master], source="the test")
    record, name, value = USER.encode(), "secret", b'"mine"'
    sealed = keys.seal(record, name, value)
    assert sealed[:5] == b"\x00" + hmac.digest(master, b"inline_state key id", "sha256")[:4]
    encoded = record.encode()
    bucket = zlib.crc32(encoded) % 1024
    key = hmac.digest(master, b"inline_state bucket " + bucket.to_bytes(2, "big"), "sha256")
    aad = len(encoded).to_bytes(4, "big") + encoded + name.encode()
    assert AESGCM(key).decrypt(sealed[5:17], sealed[17:], aad) == value
    assert len(sealed) == len(value) + SEAL_OVERHEAD
    assert keys.open(record, name, sealed) == value


@pytest.mark.parametrize("same_bucket", [True, False], ids=["same-bucket", "other-bucket"])
async def test_a_value_moved_to_another_record_or_property_does_not_open(
    tmp_path: Path, same_bucket: bool
) -> None:
    path, keys = tmp_path / "state.db", ring(new_key())
    other = a_user_in_the_bucket_of(USER, same_bucket)
    async with SealedStore(SqliteStore(path), keys) as store:
        for key in (USER, other):
            await store.apply([Change(key, {"secret": b'"mine"'}, stamp=store.clock.stamp())])
    with sqlite3.connect(path) as conn:  # another program moves USER's value about
        (sealed,) = conn.execute(
            "SELECT value FROM properties WHERE key = ? AND name = 'secret'", (USER.encode(),)
        ).fetchone()
        assert b"mine" not in sealed and len(sealed) == len(b'"mine"') + SEAL_OVERHEAD
        conn.execute(
            "UPDATE properties SET value = ? WHERE key = ? AND name = 'secret'",
            (sealed, other.encode()),
        )
        conn.execute(
            "UPDATE properties SET name = 'renamed' WHERE key = ? AND name = 'secret'",
            (USER.encode(),),
        )
    async with SealedStore(SqliteStore(path), keys) as store:
        for key in (other, USER):
            with pytest.raises(UnreadableRecord, match="does not open"):
                await store.load([key])


@pytest.mark.parametrize("where", [1, 3, 8, 20, -1])
async def test_a_tampered_value_does_not_open(tmp_path: Path, where: int) -> None:
    path, keys = tmp_path / "state.db", ring(new_key())
    async with SealedStore(SqliteStore(path), keys) as store:
        await store.apply([Change(USER, {"secret": b'"mine"'}, stamp=store.clock.stamp())])

    def flip(value: bytes) -> bytes:
        tampered = bytearray(value)
        tampered[where] ^= 0x01
        return bytes(tampered)

    tamper(path, "secret", flip)
    async with SealedStore(SqliteStore(path), keys) as store:
        with pytest.raises(UnreadableRecord, match=r"does not open|not configured"):
            await store.load([USER])


async def test_a_record_that_does_not_open_fails_its_turn_and_locks_no_one_out(
    client_for: StartFn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    app, seen = memo_bot(f"sqlite:///{path}", ring(new_key()))
    client = await client_for(app)
    assert (await post(client, activity(text="hello")))[0] == 200
    tamper(path, "secret", lambda v: v[:20] + bytes([v[20] ^ 1]) + v[21:])
    caplog.set_level(logging.DEBUG, "inline_state")
    status, body = await post(client, activity(text="again"))
    assert status == 503
    assert "does not open" in body["error"]["message"]
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    # Another user is not affected.
    assert (await post(client, activity(text="other", user="user-2")))[0] == 200
    # A REST overwrite of the record works, and so does the next turn.
    auth = {"Authorization": f"Bearer {SECRET}"}
    response = await client.post(
        "/v3/botstate/test/users/user-1",
        json={"data": {"secret": "reset"}, "eTag": "*"},
        headers=auth,
    )
    assert response.status == 200, await response.text()
    assert (await post(client, activity(text="after")))[0] == 200
    assert seen[-1]["botUserData"] == {"secret": "reset"}
    # So does deleting the user's data, even while their record does not open.
    tamper(path, "note", lambda v: b"\x00" + os.urandom(40))
    assert (await post(client, activity(text="broken")))[0] == 503
    response = await client.delete("/v3/botstate/test/users/user-1", headers=auth)
    assert response.status == 200, await response.text()
    assert (await post(client, activity(text="fresh start")))[0] == 200


# -- keys: checked at start-up, rotated, rekeyed ---------------------------------------------


async def test_a_missing_key_fails_at_start_up_naming_it(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), ring(old)) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
    old_id = key_id(base64.b64decode(old))
    with pytest.raises(KeyRingError, match=f"sealed under key '{old_id}', which"):
        await SealedStore(open_store(url), ring(new)).open()
    # With the old key beside the new one it opens, reads the old value, seals anew.
    async with SealedStore(open_store(url), ring(new, old)) as store:
        [record] = await store.load([USER])
        assert dict(record.props) == {"a": b"1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("not base64!", "key 1 of the test's keys is not base64"),
        (base64.b64encode(b"short").decode(), "holds 5 bytes; a key is 32"),
        (
            f"{new_key()} {base64.b64encode(bytes(31)).decode()}",
            "key 2 of the test's keys holds 31",
        ),
    ],
)
def test_a_malformed_key_is_named(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        ring(text)


def test_keys_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, second = new_key(), new_key()
    monkeypatch.delenv("INLINE_STATE_KEYS", raising=False)
    monkeypatch.delenv("INLINE_STATE_KEY_FILE", raising=False)
    with pytest.raises(KeyRingError, match="set INLINE_STATE_KEYS or INLINE_STATE_KEY_FILE"):
        KeyRing.load()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the sealing key first\n{second}\n{first}  # the old one\n")
    monkeypatch.setenv("INLINE_STATE_KEY_FILE", str(keys_file))
    assert KeyRing.load().ids == [key_id(base64.b64decode(k)) for k in (second, first)]
    monkeypatch.setenv("INLINE_STATE_KEYS", f"{first},{second}")
    assert KeyRing.load().current_id == key_id(base64.b64decode(first))


async def values_by_key(store: Store) -> dict[str, int]:
    """How many stored values each key id sealed ("plain" for unsealed ones)."""
    counts: dict[str, int] = {}
    cursor = None
    while True:
        page = await store.dump(cursor=cursor, limit=50)
        for dumped in page.records:
            if dumped.key == KEYS_RECORD:
                continue
            for _, value in dumped.values.values():
                by = value[1:5].hex() if value[:1] == b"\x00" else "plain"
                counts[by] = counts.get(by, 0) + 1
        cursor = page.cursor
        if cursor is None:
            return counts


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}?prefix=t{uuid.uuid4().hex}"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("redis_url"))


async def traffic(
    client: Client, users: int, rounds: int, stop: asyncio.Event | None = None
) -> dict[str, int]:
    """Turns from many users, each counting its turns; returns how many each made."""
    made = dict.fromkeys((f"user-{i}" for i in range(users)), 0)
    for round_ in range(rounds):
        if stop is not None and stop.is_set():
            break
        results = await asyncio.gather(
            *(post(client, activity(text=f"r{round_}", user=user)) for user in made)
        )
        for user, (status, _) in zip(made, results, strict=True):
            assert status == 200
            made[user] += 1
        await asyncio.sleep(0)
    return made


async def test_rotation_and_rekey_under_live_traffic_lose_nothing(
    client_for: StartFn, store_url: str
) -> None:
    old, new = new_key(), new_key()
    old_id, new_id = (key_id(base64.b64decode(k)) for k in (old, new))
    app, _ = memo_bot(store_url, ring(old))
    client = await client_for(app)
    await traffic(client, users=10, rounds=3)
    await client.close()
    # Rotate: the new key seals, the old one still opens; the bot runs on while a rekey
    # (another process's store on the same data) re-seals everything.
    app, seen = memo_bot(store_url, ring(new, old))
    client = await client_for(app)
    async with SealedStore(open_store(store_url), ring(new, old)) as rekeying:
        assert set(await values_by_key(rekeying)) == {old_id}
        stop = asyncio.Event()
        running = asyncio.create_task(traffic(client, users=10, rounds=200, stop=stop))
        progress: list[tuple[int, int]] = []
        found = (await rekey(rekeying, limit=7, progress=lambda *p: progress.append(p))).found
        stop.set()
        made = await running
        assert found.get(old_id, 0) > 0 and progress and progress[-1][1] > 0
        assert set(await values_by_key(rekeying)) == {new_id}, "nothing left under the old key"
    # Every turn counted, for every user.
    for user, turns in made.items():
        status, _ = await post(client, activity(text="count", user=user))
        assert status == 200
        assert seen[-1]["botUserData"]["turns"] == 3 + turns, user
    await client.close()
    # The old key can go now.
    async with SealedStore(open_store(store_url), ring(new)) as store:
        [record] = await store.load([USER._replace(user="user-0")])
        assert record.props["secret"] == b'"count"'


async def test_turning_encryption_on_reads_old_values_and_rekey_seals_them(
    tmp_path: Path, client_for: StartFn
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    app, _ = memo_bot(url, None)
    client = await client_for(app)
    await traffic(client, users=3, rounds=2)
    await client.close()
    keys = ring(new_key())
    app, seen = memo_bot(url, keys)
    client = await client_for(app)
    await post(client, activity(text="now sealed", user="user-0"))
    assert seen[-1]["botUserData"]["secret"] == "r1", "a plain value still reads"
    assert seen[-1]["botUserData"]["turns"] == 2
    async with SealedStore(open_store(url), keys) as store:
        assert (await values_by_key(store)).get("plain", 0) > 0
        found = (await rekey(store)).found
        assert found["plain"] > 0
        assert set(await values_by_key(store)) == {keys.current_id}
    await client.close()
    # From now on a plain value is tampering.
    tamper(tmp_path / "state.db", "secret", lambda value: b'"forged"')
    async with SealedStore(open_store(url), keys) as store:
        with pytest.raises(UnreadableRecord, match="plain value where every value is sealed"):
            await store.load([USER])


async def test_a_string_record_is_sealed_and_its_limit_is_on_the_plaintext(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with SealedStore(SqliteStore(path), ring(new_key())) as store:
        await a_string_record_on(store, path)


async def a_string_record_on(store: SealedStore, path: Path) -> None:
    etag = await store.compare_and_set(USER, "a REST string ü", "*", max_bytes=100)
    with sqlite3.connect(path) as conn:
        (stored,) = conn.execute(
            "SELECT text FROM heads WHERE key = ?", (USER.encode(),)
        ).fetchone()
    assert stored is not None and "REST string" not in stored
    [record] = await store.load([USER])
    assert record.text == "a REST string ü" and record.etag == etag
    exact = "x" * 98  # 100 bytes as JSON
    await store.compare_and_set(USER, exact, "*", max_bytes=100)
    with pytest.raises(inline_state.RecordTooLarge):
        await store.compare_and_set(USER, exact + "x", "*", max_bytes=100)


async def test_a_copy_needs_no_key_and_opens_on_the_target(tmp_path: Path) -> None:
    keys = ring(new_key())
    source_url = f"sqlite:///{tmp_path / 'a.db'}"
    target_url = f"sqlite:///{tmp_path / 'b.db'}"
    async with SealedStore(open_store(source_url), keys) as source:
        await source.apply([Change(USER, {"a": b'"x"'}, stamp=source.clock.stamp())])
    from inline_state.stores._copying import copy_records

    async with open_store(source_url) as raw_source, open_store(target_url) as raw_target:
        copied = await copy_records(raw_source, raw_target)
        assert copied.records == 2 and copied.changed == 2  # the record, and the keys' record
    async with SealedStore(SqliteStore(tmp_path / "b.db"), keys) as target:
        [record] = await target.load([USER])
        assert dict(record.props) == {"a": b'"x"'}


# -- the command line: keygen, rekey, copy -----------------------------------------------------


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inline_state",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_copy_from_sqlite_to_redis_under_traffic_then_the_bot_runs_on_redis(
    client_for: StartFn, tmp_path: Path, redis_url: str
) -> None:
    keys_text = new_key()
    sqlite_url = f"sqlite:///{tmp_path / 'state.db'}"
    app, _ = memo_bot(sqlite_url, ring(keys_text))
    client = await client_for(app)
    await traffic(client, users=12, rounds=2)
    stop = asyncio.Event()
    running = asyncio.create_task(traffic(client, users=12, rounds=100, stop=stop))
    code, _, err = await cli("copy", "--from", sqlite_url, "--to", redis_url)  # no key needed
    stop.set()
    made = await running
    assert code == 0, err
    assert "copy: done" in err
    # The bot stopped; a second run brings what the first missed, and changes nothing else.
    await client.close()
    code, _, err = await cli("copy", "--from", sqlite_url, "--to", redis_url)
    assert code == 0, err
    async with (
        SealedStore(open_store(sqlite_url), ring(keys_text)) as source,
        SealedStore(open_store(redis_url), ring(keys_text)) as target,
    ):
        users = [USER._replace(user=user) for user in made]
        keys = users + [RecordKey("private", "bot-1", "test", "conv-1", u.user) for u in users]
        keys.append(RecordKey("conversation", "bot-1", "test", "conv-1", ""))
        on_source, on_target = await source.load(keys), await target.load(keys)
        assert [(r.props, r.etag) for r in on_target] == [(r.props, r.etag) for r in on_source]
        assert all(r.exists for r in on_target)
    # The bot on the target: every user's state is there.
    app, seen = memo_bot(redis_url, ring(keys_text))
    client = await client_for(app)
    for user, turns in made.items():
        assert (await post(client, activity(text="on redis", user=user)))[0] == 200
        assert seen[-1]["botUserData"]["turns"] == 2 + turns, user


async def test_copy_refuses_memory_and_names_a_bad_url(tmp_path: Path) -> None:
    code, _, err = await cli("copy", "--from", "memory://", "--to", f"sqlite:///{tmp_path}/a.db")
    assert code != 0 and "memory:// lives in one process" in err
    code, _, err = await cli("copy", "--from", "ftp://x", "--to", f"sqlite:///{tmp_path}/a.db")
    assert code != 0 and "unsupported store URL" in err and "Traceback" not in err


async def test_keygen_then_rekey_from_the_command_line(tmp_path: Path) -> None:
    code, out, err = await cli("keygen")
    assert code == 0
    new = out.strip()
    assert f"key id {key_id(base64.b64decode(new))}" in err
    old = new_key()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), ring(old)) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
    code, _, err = await cli("rekey", "--store", url, env={"INLINE_STATE_KEYS": new})
    assert code != 0 and f"sealed under key '{key_id(base64.b64decode(old))}'" in err
    assert "Traceback" not in err
    code, _, err = await cli("rekey", "--store", url, env={"INLINE_STATE_KEYS": f"{new},{old}"})
    assert code == 0, err
    assert f"1 under {key_id(base64.b64decode(old))}" in err
    assert "rekey: done; the old keys can go" in err
    async with SealedStore(open_store(url), ring(new)) as store:  # the old key can go
        assert await values_by_key(store) == {key_id(base64.b64decode(new)): 1}
        [record] = await store.load([USER])
        assert dict(record.props) == {"a": b"1"}


async def test_the_state_service_reads_sealed_state_only_with_encrypt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setenv("INLINE_STATE_KEYS", key)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), ring(key)) as store:
        await store.apply([Change(USER, {"name": b'"Ada"'}, stamp=store.clock.stamp())])
    args = ["--store", url, "--secret", SECRET, "--bot-id", "bot-1"]
    auth = {"Authorization": f"Bearer {SECRET}"}
    for extra, status in (([], 503), (["--encrypt"], 200)):
        service = state_service(*args, *extra).start()
        try:
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{service.port}/v3/botstate/test/users/user-1"
                async with session.get(base, headers=auth) as response:
                    body = await response.json()
                    assert response.status == status, body
                if status == 503:
                    assert "the store holds sealed values" in body["error"]["message"]
                    continue
                assert body["data"] == {"name": "Ada"}
                written = {"data": {"name": "Grace Hopper"}, "eTag": body["eTag"]}
                async with session.post(base, json=written, headers=auth) as response:
                    assert response.status == 200, await response.text()
        finally:
            service.stop()
    assert b"Grace Hopper" not in file_and_wal(tmp_path / "state.db")


async def test_a_bot_without_the_keys_does_not_start_on_a_sealed_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), ring(new_key())) as store:
        await store.apply([Change(USER, {"a": b'"x"'}, stamp=store.clock.stamp())])
    engine = inline_state.Engine.create(url)
    with pytest.raises(inline_state.StoreError, match=r"sealed: open it with its keys"):
        await engine.start()
    engine = inline_state.Engine.create("sqlite:///" + str(tmp_path / "other.db"))
    await engine.start()  # a plain store of plain data starts
    await engine.stop()


async def test_rekey_names_a_record_that_does_not_open_and_exits_1(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with SealedStore(open_store(url), ring(old)) as store:
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
        other = USER._replace(user="user-2")
        await store.apply([Change(other, {"b": b"2"}, stamp=store.clock.stamp())])
    tamper(tmp_path / "state.db", "a", lambda v: v[:-1] + bytes([v[-1] ^ 1]))
    code, _, err = await cli("rekey", "--store", url, env={"INLINE_STATE_KEYS": f"{new},{old}"})
    assert code == 1, err
    assert "does not open: 'v3/bot-1/test/u/user-1'" in err
    assert "1 records do not open" in err and "Traceback" not in err
    code, _, err = await cli("copy", "--from", f"sqlite:///{tmp_path / 'typo.db'}", "--to", url)
    assert code != 0 and "no such SQLite file" in err
    assert not (tmp_path / "typo.db").exists()


# -- memory:// and SQLite seal at rest themselves ---------------------------------------------


def rows_of(path: Path) -> bytes:
    with sqlite3.connect(path) as conn:
        values = conn.execute("SELECT coalesce(value, x'') FROM properties").fetchall()
        texts = conn.execute("SELECT coalesce(text, '') FROM heads").fetchall()
    return b"".join(v for (v,) in values) + "".join(t for (t,) in texts).encode()


async def test_a_store_sealing_at_rest_goes_on_after_its_sealed_store_closes(
    tmp_path: Path,
) -> None:
    seal = new_key()
    path, keys = tmp_path / "state.db", ring(seal)
    inner = SqliteStore(path, cache_bytes=0)
    async with inner:
        async with SealedStore(inner, keys, owns_inner=False) as first:
            # A second sealed store over the same store shares its sealing; it reads the
            # keys record as stored, whatever the first opened.
            async with SealedStore(inner, keys, owns_inner=False) as second:
                await second.apply([Change(USER, {"a": b'"MARK-1"'}, stamp=second.clock.stamp())])
            await first.apply([Change(USER, {"b": b'"MARK-2"'}, stamp=first.clock.stamp())])
        await inner.apply([Change(USER, {"c": b'"MARK-3"'}, stamp=inner.clock.stamp())])
        with pytest.raises(KeyRingError, match="seals it with keys this key ring lacks"):
            await SealedStore(inner, ring(new_key()), owns_inner=False).open()
    assert b"MARK-" not in rows_of(path)
    async with SealedStore(SqliteStore(path), keys) as store:
        [record] = await store.load([USER])
        assert dict(record.props) == {"a": b'"MARK-1"', "b": b'"MARK-2"', "c": b'"MARK-3"'}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_string_that_looks_sealed_is_sealed_too(tmp_path: Path, backend: str) -> None:
    path, keys = tmp_path / "state.db", ring(new_key())
    text = SEALED_TEXT + "MARK-card 4111"
    inner: Store = MemoryStore(cache_bytes=0) if backend == "memory" else SqliteStore(path)
    async with inner, SealedStore(inner, keys, owns_inner=False) as store:
        await store.compare_and_set(USER, text, "*", max_bytes=1000)
        await store.apply(
            [Change(USER._replace(user="other"), {"a": b"1"}, stamp=store.clock.stamp())]
        )
        if isinstance(inner, MemoryStore):  # packed out by the other record
            at_rest = b"".join(b for records in inner._packed.values() for b in records.values())
            assert inner._packed_count and b"MARK-" not in at_rest
        [record] = await store.load([USER])
        assert record.text == text
    if isinstance(inner, SqliteStore):
        assert b"MARK-" not in rows_of(path)
        async with SealedStore(SqliteStore(path), keys) as store:
            assert (await store.load([USER]))[0].text == text


async def dumped_records(store: Store) -> list[DumpedRecord]:
    found: list[DumpedRecord] = []
    cursor: str | None = None
    while True:
        page = await store.dump(cursor=cursor)
        found += page.records
        cursor = page.cursor
        if cursor is None:
            return found


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_restore_where_every_value_is_sealed(tmp_path: Path, backend: str) -> None:
    keys = ring(new_key())

    def opened(kind: str, name: str) -> Store:
        return MemoryStore() if kind == "memory" else SqliteStore(tmp_path / name)

    async with (
        SealedStore(opened(backend, "a.db"), keys) as store,
        SealedStore(opened(backend, "b.db"), keys) as source,
    ):
        assert (await rekey(store)).done  # nothing plain: from now on plain is tampering
        await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
        await source.apply([Change(USER, {"b": b"2"}, stamp=source.clock.stamp())])
        [dumped] = [r for r in await dumped_records(source) if r.key == USER]
        # A restore bringing a sealed value leaves the values written here readable.
        assert await store.restore([dumped]) == 1
        [record] = await store.load([USER])
        assert dict(record.props) == {"a": b"1", "b": b"2"}
        # A plain value is refused, as a rekey refuses it.
        forged = dumped._replace(values={"b": (dumped.values["b"][0] + 1, b'"forged"')})
        with pytest.raises(SealError, match="plain value"):
            await store.restore([forged])


async def test_a_tampered_packed_record_does_not_open() -> None:
    keys = ring(new_key())
    inner = MemoryStore(cache_bytes=0)
    async with SealedStore(inner, keys, owns_inner=False) as store:
        await store.apply([Change(USER, {"secret": b'"mine"'}, stamp=store.clock.stamp())])
        other = USER._replace(user="other")
        await store.apply([Change(other, {"a": b"1"}, stamp=store.clock.stamp())])  # packs USER
        namespace, local = _split(USER.encode())
        records = inner._packed[namespace]
        blob = records[local]
        sealed = Record.unpack(blob).values["secret"]
        assert sealed[:1] == b"\x00" and b"mine" not in sealed
        records[local] = blob.replace(sealed, sealed[:-1] + bytes([sealed[-1] ^ 1]))
        with pytest.raises(UnreadableRecord, match="does not open"):
            await store.load([USER])
        # Deleting the user's data still works, and so does an overwrite.
        await store.compare_and_set(USER, {"secret": b'"new"'}, "*", max_bytes=1000)
        assert dict((await store.load([USER]))[0].props) == {"secret": b'"new"'}


async def test_sealed_stores_over_one_store_share_what_a_rekey_settles(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    inner = MemoryStore()
    async with inner:
        async with SealedStore(inner, ring(old), owns_inner=False) as store:
            await store.apply([Change(USER, {"a": b"1"}, stamp=store.clock.stamp())])
        # Rotating a memory:// store in its process: a ring holding the old key too.
        async with (
            SealedStore(inner, ring(new, old), owns_inner=False) as first,
            SealedStore(inner, ring(new, old), owns_inner=False) as second,
        ):
            assert (await rekey(first)).done
            [dumped] = [r for r in await dumped_records(inner) if r.key == USER]
            forged = dumped._replace(values={"a": (dumped.values["a"][0] + 1, b'"forged"')})
            with pytest.raises(SealError, match="plain value"):
                await second.restore([forged])  # the first's rekey settled it for both
            assert dict((await second.load([USER]))[0].props) == {"a": b"1"}


async def test_a_restore_leaves_a_string_that_looks_sealed_sealed(tmp_path: Path) -> None:
    path, keys = tmp_path / "state.db", ring(new_key())
    text = SEALED_TEXT + "MARK-card 4111"
    async with SealedStore(SqliteStore(path), keys) as store:
        await store.compare_and_set(USER, text, "*", max_bytes=1000)
        [dumped] = [r for r in await dumped_records(store) if r.key == USER]
        later = dumped._replace(tombs={"x": dumped.text_stamp + 1})  # only a tombstone new
        assert await store.restore([later]) == 1
        assert (await store.load([USER]))[0].text == text
    assert b"MARK-" not in rows_of(path)
    async with SealedStore(SqliteStore(path), keys) as store:
        assert (await store.load([USER]))[0].text == text
