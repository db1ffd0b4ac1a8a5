"""The contract of ``dump`` and ``restore`` on every backend: a copy keeps everything,
a second copy changes nothing, a copy under traffic loses no newer write, and a reseal
changes values only where the stamp is the same."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator

import pytest

from inline_state import (
    ApplyResult,
    DumpedRecord,
    HybridClock,
    InvalidCursor,
    RecordKey,
    Store,
    UserRef,
)
from inline_state._codec import SEALED_MARKS, SEALED_TEXT
from inline_state.stores.sealed import KEYS_RECORD, SealedStore

from .conftest import StoreFactory, hashes_ids
from .test_store_contract import CONV, PRIV, USER, FakeTime, change, props, stamp


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def pair(backend: StoreFactory, time: FakeTime) -> AsyncIterator[tuple[Store, Store]]:
    async with (
        backend(clock=HybridClock(0, wall_ms=time)) as source,
        backend(clock=HybridClock(0, wall_ms=time)) as target,
    ):
        yield source, target


async def everything(store: Store) -> tuple[list[DumpedRecord], dict[UserRef, int]]:
    """The whole dump, in pages of 3, sorted by key (a sealed store's record of its keys
    left out)."""
    records: list[DumpedRecord] = []
    deletions: dict[UserRef, int] = {}
    cursor = None
    for _ in range(10_000):
        page = await store.dump(cursor=cursor, limit=3)
        records += page.records
        deletions.update(page.deletions)
        cursor = page.cursor
        if cursor is None:
            break
    records = [r for r in records if r.key != KEYS_RECORD]
    return sorted(records, key=lambda r: r.key.encode()), deletions


async def copy(source: Store, target: Store) -> int:
    changed = 0
    cursor = None
    while True:
        page = await source.dump(cursor=cursor, limit=2)
        changed += await target.restore(page.records, page.deletions)
        cursor = page.cursor
        if cursor is None:
            return changed


def comparable(records: list[DumpedRecord], store: Store | None = None) -> list[tuple[object, ...]]:
    """What the records hold; a sealed store's values opened (a store sealing at rest
    seals a record it holds decoded afresh in each dump)."""

    def opened(r: DumpedRecord) -> tuple[dict[str, tuple[int, bytes]], str | None]:
        if not isinstance(store, SealedStore):
            return dict(r.values), r.text
        keys, record, text = store.keys, r.key.encode(), r.text
        values = {
            n: (at, keys.open(record, n, v) if v[:1] in SEALED_MARKS else v)
            for n, (at, v) in r.values.items()
        }
        if text is not None and text.startswith(SEALED_TEXT):
            text = keys.open_text(record, text)
        return values, text

    return [
        (r.key, r.created, r.writes, r.clear, *opened(r), dict(r.tombs), r.text_stamp)
        for r in records
    ]


def raw(store: Store) -> Store:
    """The store under a sealed one, keeping values as they are written (not sealing
    at rest itself)."""
    inner = getattr(store, "inner", store)
    if hasattr(inner, "seal_at_rest"):
        inner.seal_at_rest(None)
    return inner


async def a_history(store: Store, seed: int) -> None:
    """Sets, removals, clears, a string record and a deleted user, in a random order."""
    rng = random.Random(seed)
    keys = [USER, CONV, PRIV, *(RecordKey("user", "bot", "chan", "", f"u{i}") for i in range(6))]
    for step in range(40):
        key = rng.choice(keys)
        name = rng.choice("abcd")
        roll = rng.random()
        at = stamp(step * 3 + rng.randrange(3), node=1 + rng.randrange(3))
        if roll < 0.6:
            await store.apply([change(key, at, {name: str(step).encode()})])
        elif roll < 0.8:
            await store.apply([change(key, at, removes={name})])
        else:
            await store.apply([change(key, at, {name: b"[]"}, replace=True)])
    await store.compare_and_set(
        RecordKey("conversation", "bot", "chan", "texts", ""), "a string", "*", max_bytes=1000
    )
    await store.apply([change(RecordKey("user", "bot", "chan", "", "gone"), stamp(1), {"a": b"1"})])
    await store.delete_user(UserRef("bot", "chan", "gone"), stamp(500))
    await store.apply(
        [change(RecordKey("user", "other-bot", None, "", "v1user"), stamp(2), {"x": b"2"})]
    )


async def test_a_copy_holds_everything_the_source_holds(pair: tuple[Store, Store]) -> None:
    source, target = pair
    await a_history(source, seed=7)
    assert await copy(source, target) > 0
    dumped, deletions = await everything(source)
    copied, copied_deletions = await everything(target)
    assert comparable(copied, target) == comparable(dumped, source)
    if isinstance(source, SealedStore):  # a sealed store's dump holds nothing in the clear
        for r in dumped:
            assert all(v[:1] in SEALED_MARKS for _, v in r.values.values()), r.key
            assert r.text is None or r.text.startswith(SEALED_TEXT), r.key
    assert copied_deletions == deletions
    hashed = hashes_ids(source)  # a dump holds the stored keys: read those as stored
    gone = source.keys.hash_user("gone") if isinstance(source, SealedStore) and hashed else "gone"
    assert list(deletions) == [UserRef("bot", "chan", gone)]
    keys = [r.key for r in dumped]
    reader, writer = (
        (source.inner, target.inner)
        if isinstance(source, SealedStore) and isinstance(target, SealedStore) and hashed
        else (source, target)
    )
    assert [(r.props, r.text, r.etag) for r in await writer.load(keys)] == [
        (r.props, r.text, r.etag) for r in await reader.load(keys)
    ]
    # The deletion stamp came along: a change from before the deletion is dropped there.
    late = change(
        RecordKey("user", "bot", "chan", "", "gone"), stamp(2), {"a": b"2"}, base=stamp(3)
    )
    assert await target.apply([late]) == [ApplyResult.DROPPED]


async def test_copying_again_changes_nothing(pair: tuple[Store, Store]) -> None:
    source, target = pair
    await a_history(source, seed=11)
    await copy(source, target)
    before, _ = await everything(target)
    assert await copy(source, target) == 0
    after, _ = await everything(target)
    assert comparable(after) == comparable(before)


async def test_a_copy_keeps_what_was_written_to_the_target_since(pair: tuple[Store, Store]) -> None:
    source, target = pair
    await source.apply([change(USER, stamp(1), {"a": b"1", "b": b"1"})])
    await copy(source, target)
    # The bot runs on the target now; the source still takes a late write.
    await target.apply([change(USER, stamp(5), {"a": b"5"}, {"b"})])
    await source.apply([change(USER, stamp(3), {"a": b"3", "c": b"3"})])
    [on_target] = await target.load([USER])
    assert await copy(source, target) == 1
    [merged] = await target.load([USER])
    assert dict(merged.props) == {"a": b"5", "c": b"3"}, "newer stays, the late write arrives"
    assert merged.etag != on_target.etag


@pytest.mark.parametrize("seed", range(3))
async def test_copies_in_any_order_agree(backend: StoreFactory, time: FakeTime, seed: int) -> None:
    """Two sources with overlapping histories, copied into a target in either order,
    give the record both histories would give one store."""
    rng = random.Random(seed)
    steps = [(stamp(i, node=1 + i % 2), rng.choice("abc"), rng.random() < 0.7) for i in range(12)]
    async with (
        backend(clock=HybridClock(0, wall_ms=time)) as left,
        backend(clock=HybridClock(0, wall_ms=time)) as right,
        backend(clock=HybridClock(0, wall_ms=time)) as both,
    ):
        for i, (at, name, is_set) in enumerate(steps):
            one = (
                change(CONV, at, {name: str(i).encode()})
                if is_set
                else change(CONV, at, removes={name})
            )
            await (left if i % 2 else right).apply([one])
            await both.apply([one])
        results = []
        for order in itertools.permutations([left, right]):
            async with backend(clock=HybridClock(0, wall_ms=time)) as target:
                for source in order:
                    await copy(source, target)
                [record] = await target.load([CONV])
                results.append(dict(record.props))
        [expected] = await both.load([CONV])
        assert results == [dict(expected.props)] * 2


async def test_reseal_replaces_values_at_the_same_stamp_only(pair: tuple[Store, Store]) -> None:
    # On the raw store: a sealed store's restore is its inner store's, and these
    # made-up values are not sealed.
    store = raw(pair[0])
    await store.apply([change(USER, stamp(1), {"a": b"1", "b": b"1"})])
    await store.apply([change(CONV, stamp(1), {"a": b"1"})])
    [before] = await store.load([USER])
    dumped, _ = await everything(store)
    # Meanwhile: b is rewritten, the conversation is deleted.
    await store.apply([change(USER, stamp(4), {"b": b"4"})])
    await store.delete(CONV)
    [after_write] = await store.load([USER])
    resealed = [
        r._replace(values={n: (s, v + b" ") for n, (s, v) in r.values.items()}) for r in dumped
    ]
    assert await store.restore(resealed, reseal=True) == 1
    user, conv = await store.load([USER, CONV])
    assert dict(user.props) == {"a": b"1 ", "b": b"4"}
    assert user.etag == after_write.etag != before.etag
    assert not conv.exists, "a reseal never brings a record back"
    assert await store.restore(resealed, reseal=True) == 0


async def test_a_reseal_does_not_bring_back_a_deleted_user(pair: tuple[Store, Store]) -> None:
    store, _ = pair
    await store.apply([change(USER, stamp(1), {"a": b"1"}), change(PRIV, stamp(1), {"p": b"1"})])
    dumped, _ = await everything(store)
    await store.delete_user(UserRef("bot", "chan", "u1"), stamp(2))
    assert await store.restore(dumped, reseal=True) == 0
    assert await store.restore(dumped) == 0, "entries below the deletion stamp are gone"
    assert [r.exists for r in await store.load([USER, PRIV])] == [False, False]


async def test_a_copy_keeps_the_expiry(backend: StoreFactory, time: FakeTime) -> None:
    ttl = {"user": 60.0}
    async with (
        backend(clock=HybridClock(0, wall_ms=time), ttl=ttl) as source,
        backend(clock=HybridClock(0, wall_ms=time), ttl=ttl) as target,
    ):
        await source.apply([change(USER, stamp(1), {"a": b"1"})])
        [dumped], _ = await everything(source)
        assert dumped.expires_ms > 0
        await target.restore([dumped])
        [copied], _ = await everything(target)
        assert abs(copied.expires_ms - dumped.expires_ms) < 5_000


async def test_a_dump_page_refuses_a_cursor_it_did_not_give(pair: tuple[Store, Store]) -> None:
    store, _ = pair
    for bad in ("", "nonsense", '["x", 1]', '{"a": 1}', "[" * 10_000):
        with pytest.raises(InvalidCursor):
            await store.dump(cursor=bad)
    with pytest.raises(ValueError, match="limit must be positive"):
        await store.dump(limit=0)


async def test_a_restore_of_nothing_changes_nothing(pair: tuple[Store, Store]) -> None:
    _, target = pair
    assert await target.restore([], []) == 0
    assert (await everything(target)) == ([], {})


async def test_a_copied_deletion_deletes_the_users_data_there(pair: tuple[Store, Store]) -> None:
    source, target = pair
    user = UserRef("bot", "chan", "u1")
    await source.apply([change(USER, stamp(1), {"a": b"1"}), change(PRIV, stamp(1), {"p": b"1"})])
    await copy(source, target)
    deleted = await source.delete_user(user, stamp(5))
    # Meanwhile the bot, running on the target, wrote after the deletion.
    await target.apply([change(USER, deleted + 256, {"new": b"1"}, base=deleted)])
    assert await copy(source, target) > 0
    mine, private = await target.load([USER, PRIV])
    assert dict(mine.props) == {"new": b"1"}, "what predates the deletion is gone"
    assert not private.exists
    assert mine.deleted == deleted
    assert await copy(source, target) == 0


async def test_a_copy_does_not_bring_back_a_string_deleted_there(pair: tuple[Store, Store]) -> None:
    source, target = pair
    await source.compare_and_set(CONV, "a string", "*", max_bytes=1000)
    await copy(source, target)
    await target.delete(CONV)
    await copy(source, target)
    [record] = await target.load([CONV])
    assert not record.exists


async def test_a_record_revived_by_a_copy_keeps_no_tombstone_expiry(
    pair: tuple[Store, Store],
) -> None:
    source, target = (raw(store) for store in pair)  # values as written
    await source.apply([change(CONV, stamp(1), {"a": b"1"})])
    await source.apply([change(CONV, stamp(2), removes={"a"})])  # tombstones only
    await copy(source, target)
    await source.apply([change(CONV, stamp(3), {"a": b"3"})])
    await copy(source, target)
    [copied], _ = await everything(target)
    assert dict(copied.values) == {"a": (stamp(3), b"3")}
    assert copied.expires_ms == 0, "a live record of a store without TTLs never expires"


async def test_a_copy_keeps_the_bytes_here_at_the_same_stamp(pair: tuple[Store, Store]) -> None:
    # As when an old backup is copied back over a store re-sealed since.
    live, backup = (getattr(store, "inner", store) for store in pair)
    await live.apply([change(USER, stamp(1), {"a": b"1"})])
    await copy(live, backup)
    dumped, _ = await everything(live)
    resealed = [r._replace(values={"a": (stamp(1), b"1 ")}) for r in dumped]
    assert await live.restore(resealed, reseal=True) == 1
    assert await copy(backup, live) == 0
    assert await props(live, USER) == {"a": b"1 "}
