"""Hostile input, case by case: every body a client or a bot can send gets through, or
gets a JSON error saying what was wrong; never a bare 500, never a traceback, never a
client-sent bag in the bot's hands or a bot's bag on the wire."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import inline_state
from inline_state import RecordKey, Store
from inline_state._message import kind_of_field

from .conftest import StoreFactory
from .support import Client, activity, carries_a_bag

StartFn = Callable[[web.Application], Awaitable[Client]]
SECRET = "s3cret-for-tests"
BEARER = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose requests logged a traceback or aiohttp's bare-500 message."""
    caplog.set_level(logging.INFO)
    yield
    bad = [
        record
        for record in caplog.records
        if (record.exc_info and record.levelno >= logging.INFO)
        or "Error handling request" in record.getMessage()
        or "Unhandled exception" in record.getMessage()
        or "internal error" in record.getMessage()
    ]
    assert not bad, [record.getMessage() for record in bad]


@pytest.fixture
async def store(backend: StoreFactory) -> AsyncIterator[Store]:
    async with backend() as opened:
        yield opened


class Bot:
    """A counter bot on inline state that records what it parsed."""

    def __init__(self, store: Store | str = "memory://", **options: Any) -> None:
        self.seen: list[Any] = []
        self.reply: Callable[[dict[str, Any]], web.StreamResponse] | None = None
        self.app = web.Application()
        self.middleware = inline_state.setup(self.app, store, **options)
        inline_state.add_state_api(self.app, secret=SECRET, bot_id="bot-1")
        self.app.router.add_post("/api/messages", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        msg = await request.json()
        self.seen.append(msg)
        if self.reply is not None:
            return self.reply(msg)
        if not isinstance(msg, dict) or not isinstance(msg.get("from"), dict):
            return web.json_response({"ok": True})
        n = inline_state.get_user_data(msg, "n", 0) + 1
        reply = inline_state.create_reply(msg, f"turn {n}")
        inline_state.set_user_data(reply, "n", n)
        return web.json_response({"activities": [reply]})


@pytest.fixture
def bot() -> Bot:
    return Bot()


async def raw_post(
    client: Client, body: bytes, content_type: str | None = "application/json", **headers: str
) -> tuple[int, Any]:
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    response = await client.post("/api/messages", data=body, headers=sent)
    text = await response.text()
    try:
        answer = json.loads(text)
    except ValueError:
        assert not carries_a_bag(text), text
        return response.status, text
    assert not has_bag_field(answer), answer
    return response.status, answer


def has_bag_field(value: Any) -> bool:
    """True when any object in a JSON value has a bag field (any spelling) as a key."""
    if isinstance(value, dict):
        return any(kind_of_field(k) is not None or has_bag_field(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_bag_field(v) for v in value)
    return False


# -- the incoming message --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["{}", "[]", "1.5", "null"])
async def test_odd_types_pass_to_the_bot(client_for: StartFn, bot: Bot, kind: str) -> None:
    client = await client_for(bot.app)
    status, _ = await raw_post(client, f'{{"type": {kind}, "text": "x"}}'.encode())
    assert status == 200 and bot.seen == [{"type": json.loads(kind), "text": "x"}]


async def test_deep_nesting_is_refused_before_the_bot(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    for body in (b"[" * 100_000, b"[" * 300 + b"]" * 300, b'{"a":' * 300 + b"1" + b"}" * 300):
        status, answer = await raw_post(client, body)
        assert status == 400, body[:20]
        assert answer["error"]["code"] == "TooDeep" and "256" in answer["error"]["message"]
    assert bot.seen == []
    # 256 levels is allowed.
    status, _ = await raw_post(client, b"[" * 256 + b"]" * 256)
    assert status == 200 and len(bot.seen) == 1


async def test_body_over_client_max_size_is_413_json(client_for: StartFn) -> None:
    bot = Bot()
    bot.app._client_max_size = 10_000
    client = await client_for(bot.app)
    status, answer = await raw_post(client, json.dumps(activity(text="x" * 20_000)).encode())
    assert status == 413 and answer["error"]["code"] == "BodyTooLarge"
    assert "10000" in answer["error"]["message"]


async def test_bad_content_encoding_is_400_without_a_traceback(
    client_for: StartFn, bot: Bot
) -> None:
    client = await client_for(bot.app)
    status, answer = await raw_post(client, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert status == 400 and answer["error"]["code"] == "UndecodableBody"
    assert "gzip" in answer["error"]["message"]
    # A real gzip body is read as usual.
    body = gzip.compress(json.dumps(activity(botUserData={"x": 1})).encode())
    status, _ = await raw_post(client, body, **{"Content-Encoding": "gzip"})
    assert status == 200 and not carries_a_bag(bot.seen[-1])


@pytest.mark.parametrize("charset", ["bogus", "rot13", "zlib"])
async def test_unknown_charsets_are_400(client_for: StartFn, bot: Bot, charset: str) -> None:
    client = await client_for(bot.app)
    body = json.dumps(activity()).encode()
    status, answer = await raw_post(client, body, f"application/json; charset={charset}")
    assert status == 400 and answer["error"]["code"] == "UnsupportedCharset"
    assert charset in answer["error"]["message"]
    assert bot.seen == []


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "utf-32", "cp037", "latin-1"])
async def test_rewritten_bodies_keep_their_charset(
    client_for: StartFn, bot: Bot, charset: str
) -> None:
    client = await client_for(bot.app)
    for turn in (1, 2, 3):
        msg = activity(text="café ü", botUserData={"n": 100})  # the injected bag goes
        body = json.dumps(msg, ensure_ascii=False).encode(charset)
        status, answer = await raw_post(client, body, f"application/json; charset={charset}")
        assert status == 200, answer
        assert bot.seen[-1]["text"] == "café ü"
        assert answer["activities"][0]["text"] == f"turn {turn}"


async def test_lone_surrogates_survive_a_rewritten_body(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    for _ in range(2):
        body = json.dumps(activity(text="\ud800 alone", botUserData={"n": 9})).encode()
        status, _ = await raw_post(client, body)
        assert status == 200
    assert [m["text"] for m in bot.seen] == ["\ud800 alone"] * 2
    assert bot.seen[-1]["botUserData"] == {"n": 1}


async def test_ids_with_lone_surrogates_work_on_every_backend(
    client_for: StartFn, store: Store
) -> None:
    bot = Bot(store)
    client = await client_for(bot.app)
    # The last is a valid pair once JSON reads it: one character, U+1F600.
    odd = ["\ud800", "a\udfffb", "%uD800", "\ud83d\ude00"]
    for user in odd:
        for turn in (1, 2):
            body = json.dumps(activity(user=user, conversation=user + "/c")).encode()
            status, answer = await raw_post(client, body)
            assert status == 200, answer
            assert answer["activities"][0]["text"] == f"turn {turn}", user
    odd = [json.loads(json.dumps(user)) for user in odd]
    keys = [RecordKey("user", "bot-1", "test", "", user) for user in odd]
    assert [r.props for r in await store.load(keys)] == [{"n": b"2"}] * len(odd)
    # The export pages over them, cursors included.
    tokens: list[str | None] = [None]
    seen: list[str] = []
    page = 0
    while page == 0 or tokens[-1]:
        query = {"continuationToken": tokens[-1]} if tokens[-1] else {}
        response = await client.get(
            "/v3/botstate/test/exportBotStateData", params=query, headers=BEARER
        )
        assert response.status == 200
        answer = await response.json()
        seen += [item["userId"] for item in answer["botStateData"]]
        tokens.append(answer["continuationToken"])
        page += 1
    assert sorted(u for u in seen if u is not None and "/c" not in u) == sorted(odd)


async def test_bag_injection_through_any_content_type(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    await raw_post(client, json.dumps(activity()).encode())  # the stored n is 1
    for content_type in (
        "text/plain",
        None,
        "text/json",
        "application/x-json",
        "multipart/form-data; boundary=zz",
        "application/octet-stream",
    ):
        body = json.dumps(activity(botUserData={"n": 1000, "admin": True})).encode()
        status, _ = await raw_post(client, body, content_type)
        assert status == 200
        assert bot.seen[-1]["botUserData"]["n"] < 1000
        assert "admin" not in bot.seen[-1]["botUserData"]


async def test_a_message_without_a_shape_has_its_bags_stripped(
    client_for: StartFn, bot: Bot
) -> None:
    client = await client_for(bot.app)
    status, _ = await raw_post(client, b'{"type": "", "BOTUSERDATA": {"x": 1}, "k": 2}')
    assert status == 200 and bot.seen == [{"type": "", "k": 2}]


# -- the bot's reply -------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [300, 3000])
async def test_deeply_nested_bags_fail_the_turn_cleanly(
    client_for: StartFn, bot: Bot, depth: int
) -> None:
    client = await client_for(bot.app)

    def reply(msg: dict[str, Any]) -> web.StreamResponse:
        return inline_state.ReplyResponse(
            {"activities": [{"botUserData": {"deep": nested(depth)}}]}
        )

    bot.reply = reply
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 500 and answer["error"]["field"] == "botUserData"
    assert "deeper than 256" in answer["error"]["message"]

    def raw_reply(msg: dict[str, Any]) -> web.StreamResponse:
        body = '{"activities": [{"botUserData": {"deep": ' + '{"a":' * depth + "1"
        body += "}" * depth + "}}]}"
        return web.Response(text=body, content_type="application/json")

    bot.reply = raw_reply
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 500, answer
    assert "256" in answer["error"]["message"]
    [record] = await bot.middleware.store.load([RecordKey("user", "bot-1", "test", "", "user-1")])
    assert not record.exists


async def test_non_string_bag_keys_behave_as_json_response(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    bags: list[Any] = [{1: "one", 2.5: "x", False: "f", None: "n"}]

    def reply(msg: dict[str, Any]) -> web.StreamResponse:
        return inline_state.ReplyResponse({"activities": [{"botUserData": bags[0]}]})

    bot.reply = reply
    status, _ = await raw_post(client, json.dumps(activity()).encode())
    assert status == 200
    bot.reply = None
    await raw_post(client, json.dumps(activity()).encode())
    assert bot.seen[-1]["botUserData"] == {"1": "one", "2.5": "x", "false": "f", "null": "n"}
    bags[0] = {(1, 2): "tuple"}
    bot.reply = reply
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 500 and answer["error"]["reason"] == "unstorableValue"
    assert "must be a string" in answer["error"]["message"]


async def test_unserializable_reply_response_is_a_json_error(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)

    def reply(msg: dict[str, Any]) -> web.StreamResponse:
        circular: list[Any] = []
        circular.append(circular)
        return inline_state.ReplyResponse({"activities": [{"text": "x", "loop": circular}]})

    bot.reply = reply
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 500 and answer["error"]["code"] == "InvalidReply"


async def test_too_many_properties_fail_the_turn(client_for: StartFn) -> None:
    bot = Bot(max_properties=10)
    client = await client_for(bot.app)
    bot.reply = lambda msg: web.json_response(
        {"activities": [{"botUserData": {f"p{i}": i for i in range(11)}}]}
    )
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 500 and answer["error"]["reason"] == "tooManyProperties"


async def test_long_ids_are_refused_for_writes_only(client_for: StartFn, store: Store) -> None:
    bot = Bot(store, max_id_length=64)
    client = await client_for(bot.app)
    long_user = "u" * 65
    status, answer = await raw_post(client, json.dumps(activity(user=long_user)).encode())
    assert status == 400 and answer["error"]["code"] == "IdTooLong"
    assert "user id is 65 characters" in answer["error"]["message"]
    # A record that exists (written before the limit, say) is still played back.
    key = RecordKey("user", "bot-1", "test", "", long_user)
    await store.compare_and_set(key, {"n": b"41"}, "*", max_bytes=1000)
    bot.reply = lambda msg: web.json_response({"got": msg.get("botUserData")})
    status, answer = await raw_post(client, json.dumps(activity(user=long_user)).encode())
    assert status == 200 and answer == {"got": {"n": 41}}


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("application/vnd.api+json", "utf-8"),
        ("application/json", "utf-16"),
        ("text/json", "latin-1"),
        ("application/hal+json", "utf-32"),
    ],
)
async def test_replies_in_any_json_type_and_charset_are_persisted_and_stripped(
    client_for: StartFn, bot: Bot, content_type: str, charset: str
) -> None:
    client = await client_for(bot.app)

    def reply(msg: dict[str, Any]) -> web.StreamResponse:
        n = inline_state.get_user_data(msg, "n", 0) + 1
        body = {"activities": [{"text": f"né {n}", "botUserData": {"n": n}}]}
        return web.Response(
            body=json.dumps(body, ensure_ascii=False).encode(charset),
            content_type=content_type,
            charset=charset,
        )

    bot.reply = reply
    for turn in (1, 2):
        response = await client.post("/api/messages", json=activity())
        raw = await response.read()
        assert response.status == 200
        text = raw.decode(charset)
        assert not carries_a_bag(text)
        assert json.loads(text) == {"activities": [{"text": f"né {turn}"}]}


# -- the REST API ----------------------------------------------------------------------


async def test_rest_bad_credentials_are_401(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    path = "/v3/botstate/test/users/u1"
    for header in ("Basic é", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Bearer é"):
        response = await client.get(path, headers={"Authorization": header})
        assert response.status == 401, header
    # A raw byte that is not UTF-8, straight on the socket.
    host, port = client.server.host, client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (
            b'{"data": {}, "eTag": "*"}',
            {"Content-Type": "application/json; charset=bogus"},
            400,
            "UnsupportedCharset",
        ),
        (
            b'{"data": {}, "eTag": "*"}',
            {"Content-Type": "application/json; charset=rot13"},
            400,
            "UnsupportedCharset",
        ),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "UndecodableBody"),
        (b"[" * 100_000, {}, 400, "TooDeep"),
        (b'{"data": "\\ud800", "eTag": "*"}', {}, 400, "BadArgument"),
        (b'{"data": {"a": "\\udc00"}, "eTag": "*"}', {}, 400, "BadArgument"),
    ],
)
async def test_rest_bad_bodies_are_json_errors(
    client_for: StartFn, bot: Bot, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    client = await client_for(bot.app)
    path = "/v3/botstate/test/users/u1"
    response = await client.post(path, data=body, headers=BEARER | headers)
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    response = await client.get(path, headers=BEARER)
    assert (await response.json()) == {"data": None, "eTag": ""}


async def test_rest_addresses_ids_with_braces(client_for: StartFn, bot: Bot) -> None:
    client = await client_for(bot.app)
    for ident in ("{x}", "a{b", "}", "{{}}"):
        quoted = ident.replace("{", "%7B").replace("}", "%7D")
        path = f"/v3/botstate/%7Bch%7D/conversations/{quoted}/users/{quoted}"
        response = await client.post(path, json={"data": {"k": ident}, "eTag": "*"}, headers=BEARER)
        assert response.status == 200, ident
        response = await client.get(path, headers=BEARER)
        assert (await response.json())["data"] == {"k": ident}


async def test_rest_refuses_writes_with_long_ids(client_for: StartFn) -> None:
    app = web.Application()
    inline_state.setup(app)
    inline_state.add_state_api(app, secret=SECRET, bot_id="bot-1", max_id_length=8)
    client = await client_for(app)
    response = await client.post(
        "/v3/botstate/test/users/" + "u" * 9, json={"data": {}, "eTag": "*"}, headers=BEARER
    )
    assert response.status == 400 and "9 characters" in (await response.text())
    response = await client.get("/v3/botstate/test/users/" + "u" * 9, headers=BEARER)
    assert response.status == 200


# -- node ids --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster"])
async def test_live_stores_on_one_backend_never_share_a_node_id(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
        scheme = "redis" if kind == "redis" else "redis+cluster"
        url = f"{scheme}://127.0.0.1:{server.port}?prefix=n{uuid.uuid4().hex}"
    stores = [inline_state.open_store(url) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        nodes = [store.clock.node_id for store in stores]
        assert len(set(nodes)) == 4 and 0 not in nodes
        more = {await stores[0].allocate_node_id() for _ in range(20)}
        assert len(more) == 20 and not more & set(nodes)
    finally:
        for store in stores:
            await store.close()


async def test_node_ids_never_wrap_onto_a_live_one() -> None:
    store = inline_state.MemoryStore()
    held = [await store.allocate_node_id() for _ in range(255)]
    assert sorted(held) == list(range(1, 256))
    with pytest.raises(inline_state.StoreUnavailable, match="held"):
        await store.allocate_node_id()
    await store.release_node_id(17)
    assert await store.allocate_node_id() == 17


async def test_stamps_taken_above_stored_ones_stay_on_their_node(store: Store) -> None:
    # A REST write and a user deletion are stamped above what is stored: the stamp must
    # stay on the writer's node, or it could equal a stamp another node issues.
    other = inline_state.HybridClock(200, wall_ms=lambda: 3_600_000_000_000)  # year 2084
    key = RecordKey("user", "b", "c", "", "u")
    from inline_state import Change

    await store.apply([Change(key, {"x": b"1"}, stamp=other.stamp())])
    await store.compare_and_set(key, {"y": b"2"}, "*", max_bytes=1000)
    [record] = await store.load([key])
    assert record.observed % 256 == store.clock.node_id
    deleted = await store.delete_user(key.owner, store.clock.stamp())  # type: ignore[arg-type]
    assert deleted % 256 == store.clock.node_id


# -- found in review ---------------------------------------------------------------------


async def test_a_record_merged_past_the_property_limit_can_still_be_answered(
    client_for: StartFn,
) -> None:
    # Two overlapping turns each add their own properties: the record holds more than a
    # reply may add, and a bot that carries the bag back must not fail forever.
    bot = Bot(max_properties=10)
    client = await client_for(bot.app)
    store = bot.middleware.engine.store
    key = RecordKey("user", "bot-1", "test", "", "user-1")
    from inline_state import Change

    for start in (0, 10):
        bag = {f"p{i}": str(i).encode() for i in range(start, start + 10)}
        await store.apply([Change(key, bag, stamp=store.clock.stamp())])
    status, answer = await raw_post(client, json.dumps(activity()).encode())
    assert status == 200, answer
    [record] = await store.load([key])
    assert len(record.props) == 21 and record.props["n"] == b"1"


def test_values_orjson_writes_but_json_refuses_are_still_refused() -> None:
    import enum
    import uuid as uuid_module

    from inline_state._codec import UnstorableValue, encode_value

    class Color(enum.Enum):
        RED = 1

    for value in (Color.RED, uuid_module.uuid4(), [Color.RED], {"id": uuid_module.uuid4()}):
        with pytest.raises(UnstorableValue):
            encode_value(value)


def test_a_value_deeper_than_orjson_writes_reads_back_after_packing() -> None:
    from inline_state._codec import encode_value
    from inline_state.stores._record import Record

    deep: Any = 1e-7
    for _ in range(254):
        deep = [deep]
    data = encode_value(deep)
    rec = Record()
    rec.apply(
        inline_state.Change(RecordKey("user", "b", "c", "", "u"), {"deep": data}, stamp=1 << 20)
    )
    assert Record.unpack(rec.pack()).values["deep"] == data


async def test_a_store_the_caller_never_opened_still_leases_a_node_id(
    client_for: StartFn, redis_server: Any
) -> None:
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=redis_server.port)
    store = inline_state.RedisStore(client, prefix=f"lease{uuid.uuid4().hex}")
    app = web.Application()
    inline_state.setup(app, store)  # never opened by the caller
    served = await client_for(app)
    assert store.clock.node_id != 0 and store.clock.lease_deadline is not None
    await served.close()  # the app's cleanup gives the lease back, then the client closes
    assert store.clock.node_id is not None
    await client.aclose()


async def test_replies_as_text_plain_are_persisted_and_stripped(
    client_for: StartFn, bot: Bot
) -> None:
    client = await client_for(bot.app)

    def reply(msg: dict[str, Any]) -> web.StreamResponse:
        n = inline_state.get_user_data(msg, "n", 0) + 1
        return web.Response(text=json.dumps({"text": "hi", "botUserData": {"n": n}}))

    bot.reply = reply
    for _ in range(2):
        await raw_post(client, json.dumps(activity()).encode())
    assert bot.seen[-1]["botUserData"] == {"n": 1}
