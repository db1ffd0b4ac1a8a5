"""The contract every store backend passes. Parametrized over the backends."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from inline_state import (
    ApplyResult,
    Change,
    HybridClock,
    InvalidCursor,
    MemoryStore,
    PreconditionFailed,
    RecordKey,
    RecordTooLarge,
    Store,
    UserRef,
)
from inline_state._clock import EPOCH_MS, MS_SHIFT
from inline_state._message import Kind
from inline_state.stores.redis import RedisStore

from .conftest import StoreFactory, hashes_ids

START_MS = EPOCH_MS + 10**9  # a fixed "now" in 2025


class FakeTime:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


def stamp(ms_offset: int, node: int = 1) -> int:
    """A stamp ``ms_offset`` milliseconds after START_MS."""
    return ((START_MS - EPOCH_MS + ms_offset) << MS_SHIFT) | node


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def store(backend: StoreFactory, time: FakeTime) -> AsyncIterator[Store]:
    async with backend(clock=HybridClock(0, wall_ms=time)) as opened:
        yield opened


USER = RecordKey("user", "bot", "chan", "", "u1")
CONV = RecordKey("conversation", "bot", "chan", "c1", "")
PRIV = RecordKey("private", "bot", "chan", "c1", "u1")


def change(
    key: RecordKey,
    at: int,
    sets: dict[str, bytes] | None = None,
    removes: set[str] | None = None,
    *,
    replace: bool = False,
    base: int = 0,
    max_bytes: int = 64 * 1024,
) -> Change:
    return Change(key, sets or {}, frozenset(removes or ()), replace, at, base, max_bytes)


async def props(store: Store, key: RecordKey) -> dict[str, bytes]:
    [record] = await store.load([key])
    return dict(record.props)


async def test_missing_record_is_empty(store: Store) -> None:
    records = await store.load([USER, CONV, PRIV])
    assert [r.exists for r in records] == [False, False, False]
    assert [r.etag for r in records] == ["", "", ""]


async def test_apply_then_load(store: Store) -> None:
    results = await store.apply(
        [change(USER, stamp(1), {"a": b"1"}), change(CONV, stamp(1), {"b": b'"x"'})]
    )
    assert results == [ApplyResult.APPLIED, ApplyResult.APPLIED]
    user, conv, priv = await store.load([USER, CONV, PRIV])
    assert dict(user.props) == {"a": b"1"}
    assert dict(conv.props) == {"b": b'"x"'}
    assert not priv.exists
    assert user.etag and user.observed == stamp(1)
    assert user.modified_ms == START_MS + 1


async def test_later_stamp_wins_whatever_the_order(store: Store) -> None:
    assert await store.apply([change(USER, stamp(5), {"a": b"5"})]) == [ApplyResult.APPLIED]
    [before] = await store.load([USER])
    assert await store.apply([change(USER, stamp(3), {"a": b"3"})]) == [ApplyResult.STALE]
    [after] = await store.load([USER])
    assert dict(after.props) == {"a": b"5"}
    assert after.etag == before.etag, "a rejected change must not change the eTag"


async def test_different_properties_both_survive(store: Store) -> None:
    await store.apply([change(CONV, stamp(2), {"a": b"1"})])
    await store.apply([change(CONV, stamp(1), {"b": b"2"})])
    assert await props(store, CONV) == {"a": b"1", "b": b"2"}


async def test_tombstone_beats_an_older_set(store: Store) -> None:
    await store.apply([change(USER, stamp(1), {"a": b"1", "b": b"1"})])
    await store.apply([change(USER, stamp(3), removes={"a"})])
    assert await store.apply([change(USER, stamp(2), {"a": b"2"})]) == [ApplyResult.STALE]
    assert await props(store, USER) == {"b": b"1"}


async def test_a_record_without_live_properties_is_missing(store: Store) -> None:
    await store.apply([change(USER, stamp(1), {"a": b"1"})])
    await store.apply([change(USER, stamp(2), removes={"a"})])
    [record] = await store.load([USER])
    assert not record.exists and record.etag == ""
    assert record.observed == stamp(2), "tombstones still count as observed"


async def test_every_order_of_the_same_changes_gives_the_same_record(
    backend: StoreFactory, time: FakeTime
) -> None:
    changes = [
        change(CONV, stamp(1), {"a": b"1", "b": b"1", "c": b"1"}),
        change(CONV, stamp(2), {"a": b"2"}, {"b"}),
        change(CONV, stamp(3), {"d": b"3"}, replace=True),
        change(CONV, stamp(4), {"b": b"4"}, {"d"}),
        change(CONV, stamp(5, node=2), {"e": b"5"}),
    ]
    outcomes = set()
    async with backend(clock=HybridClock(0, wall_ms=time)) as store:
        for n, order in enumerate(itertools.permutations(changes)):
            key = CONV._replace(conversation=f"perm-{n}")
            for c in order:
                await store.apply(
                    [Change(key, c.sets, c.removes, c.replace, c.stamp, 0, c.max_bytes)]
                )
            outcomes.add(tuple(sorted((await props(store, key)).items())))
    assert outcomes == {(("b", b"4"), ("e", b"5"))}


async def test_replace_clears_older_entries_only(store: Store) -> None:
    await store.apply(
        [change(CONV, stamp(1), {"old": b"1"}), change(CONV, stamp(9), {"new": b"9"})]
    )
    await store.apply([change(CONV, stamp(5), {"mid": b"5"}, replace=True)])
    assert await props(store, CONV) == {"new": b"9", "mid": b"5"}


async def test_compare_and_set_etag_rules(store: Store) -> None:
    created = await store.compare_and_set(USER, {"a": b"1"}, "", max_bytes=1000)
    assert created
    with pytest.raises(PreconditionFailed):
        await store.compare_and_set(USER, {"a": b"2"}, "", max_bytes=1000)
    with pytest.raises(PreconditionFailed):
        await store.compare_and_set(USER, {"a": b"2"}, "not-the-etag", max_bytes=1000)
    updated = await store.compare_and_set(USER, {"b": b"2"}, created, max_bytes=1000)
    assert updated != created
    assert await props(store, USER) == {"b": b"2"}, "a whole-record write keeps no stale property"
    forced = await store.compare_and_set(USER, {"c": b"3"}, "*", max_bytes=1000)
    assert len({created, updated, forced}) == 3
    assert await store.compare_and_set(USER, None, forced, max_bytes=1000) == ""
    [gone] = await store.load([USER])
    assert not gone.exists
    with pytest.raises(PreconditionFailed):
        await store.compare_and_set(USER, {"x": b"1"}, forced, max_bytes=1000)
    recreated = await store.compare_and_set(USER, {"x": b"1"}, None, max_bytes=1000)
    assert recreated not in {created, updated, forced}


async def test_compare_and_set_beats_earlier_cookie_stamps(store: Store) -> None:
    far_future = stamp(10**7)
    await store.apply([change(USER, far_future, {"a": b"1"})])
    await store.compare_and_set(USER, {"b": b"2"}, "*", max_bytes=1000)
    assert await props(store, USER) == {"b": b"2"}


async def test_every_accepted_write_changes_the_etag(store: Store) -> None:
    # A compare-and-set raises its stamp above what the record holds (here a write from a
    # clock far ahead): the store's clock must never issue that stamp again, and a turn
    # that already holds it (another task, the same node) must still change the eTag, or
    # a PUT with the old eTag would overwrite the turn's write.
    await store.apply([change(USER, stamp(10**6, node=2), {"a": b"1"})])
    first = await store.compare_and_set(USER, {"a": b"2"}, "*", max_bytes=1000)
    [record] = await store.load([USER])
    raised = record.observed
    assert store.clock.stamp() > raised
    assert await store.apply([change(USER, raised, {"b": b"3"})]) == [ApplyResult.APPLIED]
    [after] = await store.load([USER])
    assert dict(after.props) == {"a": b"2", "b": b"3"} and after.etag != first
    with pytest.raises(PreconditionFailed):
        await store.compare_and_set(USER, {"a": b"4"}, first, max_bytes=1000)


async def test_string_records(store: Store) -> None:
    etag = await store.compare_and_set(CONV, "H4sIAAAA", "", max_bytes=1000)
    [record] = await store.load([CONV])
    assert record.text == "H4sIAAAA" and not record.props and record.etag == etag
    await store.apply([change(CONV, record.observed + 1, {"a": b"1"}, replace=True)])
    [after] = await store.load([CONV])
    assert after.text is None and dict(after.props) == {"a": b"1"}


async def test_delete_one_record(store: Store) -> None:
    await store.apply([change(USER, stamp(1), {"a": b"1"})])
    await store.delete(USER)
    [record] = await store.load([USER])
    assert not record.exists
    assert await store.apply([change(USER, stamp(0), {"a": b"0"})]) == [ApplyResult.STALE]


async def test_delete_user_removes_only_that_users_records(store: Store) -> None:
    other_conv = PRIV._replace(conversation="c2")
    other_user = PRIV._replace(user="u2")
    everything = [USER, CONV, PRIV, other_conv, other_user, USER._replace(user="u2")]
    await store.apply([change(k, stamp(1), {"a": b"1"}) for k in everything])
    deleted = await store.delete_user(UserRef("bot", "chan", "u1"), stamp(0))
    assert deleted > stamp(1), "the deletion stamp is above everything stored"
    loaded = await store.load(everything)
    assert [r.exists for r in loaded] == [False, True, False, False, True, True]
    assert loaded[0].deleted == deleted and loaded[2].deleted == deleted
    assert loaded[1].deleted == 0, "conversation records have no owner"


async def test_changes_older_than_a_deletion_are_dropped(store: Store) -> None:
    await store.apply([change(USER, stamp(1), {"a": b"1"})])
    deleted = await store.delete_user(UserRef("bot", "chan", "u1"), stamp(2))
    late = change(PRIV, stamp(50), {"a": b"again"}, base=stamp(1))
    assert await store.apply([late]) == [ApplyResult.DROPPED]
    after = change(USER, stamp(60), {"b": b"2"}, base=deleted)
    assert await store.apply([after]) == [ApplyResult.APPLIED]
    assert await props(store, PRIV) == {}
    assert await props(store, USER) == {"b": b"2"}


async def test_export_pages_each_live_record_once(store: Store) -> None:
    keys = [RecordKey("private", "bot", "chan", f"c{i % 7}", f"u/{i}") for i in range(23)]
    keys += [RecordKey("user", "bot", "chan", "", f"u%{i}") for i in range(9)]
    keys += [RecordKey("conversation", "bot", "chan", f"c{{{i}}}", "") for i in range(5)]
    noise = [USER._replace(channel="other"), USER._replace(bot="bot2"), USER._replace(channel=None)]
    await store.apply([change(k, stamp(1), {"v": b"1"}) for k in keys + noise])
    await store.apply([change(keys[0], stamp(2), removes={"v"})])
    seen: list[RecordKey] = []
    cursor = None
    for _ in range(100):
        page = await store.export("bot", "chan", cursor=cursor, limit=5)
        assert len(page.records) <= 5
        seen += [key for key, record in page.records if record.exists]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(keys[1:])
    assert len(seen) == len(set(seen))


async def test_ttl_is_sliding(backend: StoreFactory) -> None:
    # Real time: Redis expires keys by its own clock, so no injected clock here.
    async with backend(ttl={"conversation": 1.0}) as store:
        clock = HybridClock(1)
        await store.apply(
            [
                change(CONV, clock.stamp(), {"a": b"1"}),
                change(USER, clock.stamp(), {"a": b"1"}),
            ]
        )
        await asyncio.sleep(0.6)
        assert await props(store, CONV) == {"a": b"1"}, "a read refreshes the expiry"
        await asyncio.sleep(0.6)
        assert await props(store, CONV) == {"a": b"1"}, "1.2 s after the write, kept alive"
        await asyncio.sleep(1.6)
        assert await props(store, CONV) == {}
        assert await props(store, USER) == {"a": b"1"}, "kinds without a ttl never expire"


async def test_tombstones_expire(backend: StoreFactory, time: FakeTime) -> None:
    async with backend(clock=HybridClock(0, wall_ms=time), tombstone_ttl=1) as store:
        await store.apply([change(USER, stamp(1), {"a": b"1", "b": b"1"})])
        await store.apply([change(USER, stamp(2), removes={"a"})])
        time.now += 5_000
        await store.apply([change(USER, stamp(5_000), {"b": b"2"})])  # prunes on write
        assert await store.apply([change(USER, stamp(1_000), {"a": b"late"})]) == [
            ApplyResult.APPLIED
        ], "after the retention a late change is no longer recognised as stale"


@pytest.mark.parametrize(
    "ident", ["a/b", "50%", "%2F", "{tag}", "29:1A b/c", "ü€😀", "x" * 300, " ", "a\nb"]
)
async def test_odd_ids(store: Store, ident: str) -> None:
    key = RecordKey("private", ident, ident, ident, ident)
    plain = RecordKey("private", "a", "a", "a", "a")
    await store.apply(
        [change(key, stamp(1), {ident: b'"v"'}), change(plain, stamp(1), {"p": b"1"})]
    )
    assert await props(store, key) == {ident: b'"v"'}
    page = await store.export(ident, ident)
    assert [k for k, _ in page.records] == [key]


async def test_size_limit_is_enforced_on_the_merged_record(store: Store) -> None:
    limit = 1000
    big = b'"' + b"x" * 900 + b'"'  # {"a":<902 bytes>} is 908 bytes
    assert await store.apply([change(USER, stamp(1), {"a": big}, max_bytes=limit)]) == [
        ApplyResult.APPLIED
    ]
    more = change(USER, stamp(2), {"b": b'"' + b"y" * 90 + b'"'}, max_bytes=limit)
    assert await store.apply([more]) == [ApplyResult.TOO_LARGE]
    assert await props(store, USER) == {"a": big}
    exact = b'"' + b"y" * 85 + b'"'  # 908 + len(',"b":') + 87 == 1000
    assert await store.apply([change(USER, stamp(3), {"b": exact}, max_bytes=limit)]) == [
        ApplyResult.APPLIED
    ]
    one_more = change(USER, stamp(4), {"b": b'"' + b"y" * 86 + b'"'}, max_bytes=limit)
    assert await store.apply([one_more]) == [ApplyResult.TOO_LARGE]
    # A removal gives back exactly what its member took (each path counts sizes alike).
    assert await store.apply([change(USER, stamp(5), removes={"b"})]) == [ApplyResult.APPLIED]
    again = change(USER, stamp(6), {"c": exact}, max_bytes=limit)
    assert await store.apply([again]) == [ApplyResult.APPLIED]
    over = change(USER, stamp(7), {"c": b'"' + b"y" * 86 + b'"'}, max_bytes=limit)
    assert await store.apply([over]) == [ApplyResult.TOO_LARGE]
    with pytest.raises(RecordTooLarge):
        await store.compare_and_set(CONV, {"a": b"x" * 2000}, "*", max_bytes=limit)
    assert await props(store, CONV) == {}


async def test_large_values_round_trip(store: Store) -> None:
    value = b'"' + "é".encode() * 30_000 + b'"'
    await store.apply([change(USER, stamp(1), {"big": value}, max_bytes=64 * 1024)])
    assert await props(store, USER) == {"big": value}


async def test_concurrent_writers_all_land(store: Store) -> None:
    clock = HybridClock(1)
    await asyncio.gather(
        *(store.apply([change(CONV, clock.stamp(), {f"p{i}": b"1"})]) for i in range(50))
    )
    assert len(await props(store, CONV)) == 50


async def test_node_ids_are_distinct(store: Store) -> None:
    ids = {await store.allocate_node_id() for _ in range(10)}
    assert len(ids) == 10 and all(0 < i < 256 for i in ids)


# -- inspecting: channels, listings by id prefix, one record with its stamps ----------------

LISTED_IDS = ["u1", "u10", "u2", "u/1", "u%1", "u{1}", "ü1", "x", "U1", "u"]


def first_id(key: RecordKey) -> str:
    return key.conversation if key.kind == "conversation" else key.user


async def listed(
    store: Store, kind: Kind, prefix: str, limit: int, channel: str | None = "chan"
) -> list[RecordKey]:
    """Every page of a listing (Redis's SCAN may end a page early, or give empty ones)."""
    seen: list[RecordKey] = []
    cursor = None
    for _ in range(1000):
        page = await store.list_keys(
            "bot", channel, kind, prefix=prefix, cursor=cursor, limit=limit
        )
        assert len(page.keys) <= limit
        seen += page.keys
        cursor = page.cursor
        if cursor is None:
            return seen
    raise AssertionError("the listing did not end")


async def test_list_keys_pages_each_matching_record_once(store: Store) -> None:
    keys = [RecordKey("user", "bot", "chan", "", i) for i in LISTED_IDS]
    keys += [RecordKey("conversation", "bot", "chan", i, "") for i in LISTED_IDS]
    keys += [RecordKey("private", "bot", "chan", c, u) for u in LISTED_IDS for c in ("c1", "u1")]
    noise = [
        RecordKey("user", "bot", "chan2", "", "u1"),
        RecordKey("user", "bot2", "chan", "", "u1"),
        RecordKey("user", "bot", None, "", "u1"),
    ]
    await store.apply([change(k, stamp(1), {"v": b"1"}) for k in keys + noise])
    emptied = [keys[0], keys[len(LISTED_IDS)]]  # one user record, one conversation record
    await store.apply([change(k, stamp(2), removes={"v"}) for k in emptied])
    live = [k for k in keys if k not in emptied]
    hashed = hashes_ids(store)  # a prefix finds an exact id, in the hashes' order
    for kind in ("user", "conversation", "private"):
        for prefix in ["", "u", "u1", "u/", "u%", "u{", "ü", "U", "nothing", "u10"]:
            expected = [
                k
                for k in live
                if k.kind == kind
                and (first_id(k) == prefix if hashed and prefix else first_id(k).startswith(prefix))
            ]
            for limit in (1, 3, 50):
                seen = await listed(store, kind, prefix, limit)
                assert sorted(seen) == sorted(expected), (kind, prefix, limit)
                assert len(seen) == len(set(seen))
                inner = getattr(store, "inner", store)
                if not isinstance(inner, RedisStore) and not hashed:  # SCAN's order
                    assert [k.encode() for k in seen] == sorted(k.encode() for k in seen)


async def test_list_keys_refuses_a_cursor_it_did_not_issue(store: Store) -> None:
    await store.apply([change(k, stamp(1), {"v": b"1"}) for k in (USER, USER._replace(user="u2"))])
    for cursor in ("not a cursor", '[1, 2, ["v3/other/chan/u/x"]]', "{" * 10_000):
        with pytest.raises(InvalidCursor):
            await store.list_keys("bot", "chan", "user", cursor=cursor)


async def test_channels_lists_those_holding_data(store: Store) -> None:
    channels = ["chan", "b/c", "ü€", "{x}", "chan2"]
    keys = [RecordKey("user", "bot", c, "", "u1") for c in channels]
    keys += [RecordKey("user", "bot", None, "", "u1")]  # v1
    keys += [RecordKey("conversation", "bot2", "elsewhere", "c1", "")]
    keys += [RecordKey("conversation", "bo", "short", "c1", "")]
    emptied = RecordKey("private", "bot", "emptied", "c1", "u1")
    await store.apply([change(k, stamp(1), {"v": b"1"}) for k in [*keys, emptied]])
    await store.apply([change(emptied, stamp(2), removes={"v"})])
    assert await store.channels("bot") == [None, *sorted(channels)]
    assert await store.channels("bot2") == ["elsewhere"]
    assert await store.channels("nobody") == []
    await store.delete_user(UserRef("bot", "chan2", "u1"), stamp(3))
    assert "chan2" not in await store.channels("bot")


async def test_inspect_gives_each_property_its_stamp(store: Store) -> None:
    await store.apply([change(USER, stamp(1), {"a": b"1", "b": b'"x"'})])
    await store.apply([change(USER, stamp(2), {"b": b'"y"'}, {"a"})])
    inspected = await store.inspect(USER)
    assert dict(inspected.record.props) == {"b": b'"y"'}
    assert dict(inspected.stamps) == {"b": stamp(2)}
    [loaded] = await store.load([USER])
    assert inspected.record.etag == loaded.etag
    missing = await store.inspect(CONV)
    assert not missing.record.exists and dict(missing.stamps) == {}
    await store.compare_and_set(CONV, "some text", "*", max_bytes=1000)
    text = await store.inspect(CONV)
    assert text.record.text == "some text" and dict(text.stamps) == {}


async def test_inspecting_refreshes_no_expiry(backend: StoreFactory) -> None:
    async with backend(ttl={"user": 0.6}) as store:
        await store.apply([change(USER, HybridClock(1).stamp(), {"a": b"1"})])
        await asyncio.sleep(0.35)
        assert (await store.inspect(USER)).record.exists
        assert await listed(store, "user", "", 50) == [USER]
        await asyncio.sleep(0.45)
        assert not (await store.inspect(USER)).record.exists, "the inspection kept it alive"
        assert await listed(store, "user", "", 50) == []


async def test_memory_key_index_through_splits_and_removals() -> None:
    # Enough keys that the index splits its chunks many times, and enough deletions that
    # whole chunks empty; the listing stays exact throughout and holds no dead key.
    async with MemoryStore(cache_bytes=50_000) as store:
        users = [f"user{i:05}" for i in range(6000)]
        await store.apply(
            [change(RecordKey("user", "bot", "chan", "", u), stamp(1), {"v": b"1"}) for u in users]
        )
        for u in users[:4500]:
            await store.delete_user(UserRef("bot", "chan", u), stamp(2))
        again = users[:100]
        await store.apply(
            [
                change(
                    RecordKey("user", "bot", "chan", "", u), stamp(3), {"v": b"2"}, base=stamp(3)
                )
                for u in again
            ]
        )
        more = [f"later{i:05}" for i in range(3000)]
        await store.apply(
            [change(RecordKey("user", "bot", "chan", "", u), stamp(3), {"v": b"3"}) for u in more]
        )
        assert sum(map(len, store._index.values())) == len(more) + len(again) + len(users) - 4500
        seen = await listed(store, "user", "", 400)
        assert [k.user for k in seen] == sorted([*more, *again, *users[4500:]])
        assert [k.user for k in await listed(store, "user", "user0", 1000)] == sorted(
            [*again, *users[4500:]]
        )


async def test_a_listing_cursor_continues_only_its_own_listing(store: Store) -> None:
    users = [f"al{i:03}" for i in range(12)] + [f"aa{i:03}" for i in range(3)]
    await store.apply(
        [change(RecordKey("user", "bot", "chan", "", u), stamp(1), {"v": b"1"}) for u in users]
    )
    await store.apply(
        [change(RecordKey("private", "bot", "chan", "c", "al000"), stamp(1), {"v": b"1"})]
    )
    listing = "al"
    if hashes_ids(store):  # a prefix finds one exact id: list all users instead
        listing = ""
    cursor = None
    for _ in range(100):  # Redis may give empty pages before the first cursor that counts
        page = await store.list_keys("bot", "chan", "user", prefix=listing, cursor=cursor, limit=5)
        cursor = page.cursor
        if page.keys and cursor is not None:
            break
    assert cursor is not None
    others: list[tuple[Kind, str, str]] = [
        ("user", "a", "chan"),
        ("user", "al" if listing == "" else "", "chan"),
        ("private", listing, "chan"),
        ("user", listing, "other"),
    ]
    for kind, prefix, channel in others:
        with pytest.raises(InvalidCursor):
            await store.list_keys("bot", channel, kind, prefix=prefix, cursor=cursor)
    for forged in ('["v3/bot/chan/u/al", "v3/bot/chan/u/al\\ud800"]', '["x", "y"]', "[]"):
        with pytest.raises(InvalidCursor):
            await store.list_keys("bot", "chan", "user", prefix=listing, cursor=forged)


async def test_list_keys_on_v1(store: Store) -> None:
    keys = [RecordKey("user", "bot", None, "", u) for u in ("u1", "u2", "x")]
    keys += [RecordKey("conversation", "bot", None, "c1", "")]
    await store.apply([change(k, stamp(1), {"v": b"1"}) for k in [*keys, USER]])
    found = await listed(store, "user", "u", 50, channel=None)
    if hashes_ids(store):  # a prefix finds an exact id
        assert found == []
        assert await listed(store, "user", "u2", 50, channel=None) == keys[1:2]
    else:
        assert sorted(found) == keys[:2]
    assert await listed(store, "conversation", "", 50, channel=None) == [keys[3]]
    assert (await store.channels("bot")) == [None, "chan"]
