"""The Bot State REST API through a real server, on every backend."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import inline_state
from inline_state import PreconditionFailed, RecordKey, StateClient, Store

from .conftest import StoreFactory
from .support import Client, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
SECRET = "s3cret-for-tests"
BEARER = {"Authorization": f"Bearer {SECRET}"}
ODD_IDS = ["29:1A b/c", "50%", "a%2Fb", "ü€ 😀", "x/y/z"]


@pytest.fixture
async def store(backend: StoreFactory) -> AsyncIterator[Store]:
    async with backend() as opened:
        yield opened


def counter_bot_app(store: Store, **api: Any) -> web.Application:
    """A cookie-path bot (user counter) plus the REST API on one app."""

    async def messages(request: web.Request) -> web.Response:
        msg = await request.json()
        n = inline_state.get_user_data(msg, "n", 0) + 1
        reply = inline_state.create_reply(msg, str(n))
        inline_state.set_user_data(reply, "n", n)
        return web.json_response(reply)

    app = web.Application()
    inline_state.setup(app, store)
    inline_state.add_state_api(app, **({"secret": SECRET, "bot_id": "bot-1"} | api))
    app.router.add_post("/api/messages", messages)
    return app


@pytest.fixture
async def client(client_for: StartFn, store: Store) -> Client:
    return await client_for(counter_bot_app(store))


def url(client: Client) -> str:
    return str(client.make_url("/"))


async def call(
    client: Client, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    response = await client.request(method, path, json=body, headers=BEARER | headers)
    return response.status, await response.json()


async def test_missing_record_reads_as_null_never_404(client: Client) -> None:
    for path in (
        "/v3/botstate/test/users/nobody",
        "/v3/botstate/test/conversations/none",
        "/v3/botstate/test/conversations/none/users/nobody",
        "/bot/v1.0/bots/bot-1/users/nobody",
    ):
        assert await call(client, "GET", path) == (200, {"data": None, "eTag": ""})


async def test_etag_rules_v3(client: Client) -> None:
    path = "/v3/botstate/test/users/user-1"
    status, created = await call(client, "POST", path, {"data": {"a": 1}})
    assert status == 200
    assert created["eTag"]
    status, body = await call(client, "POST", path, {"data": {"a": 2}, "eTag": ""})
    assert status == 412
    assert set(body["error"]) == {"code", "message"}, "v3 errors carry no statusCode"
    status, body = await call(client, "POST", path, {"data": {"a": 2}, "eTag": "stale"})
    assert status == 412
    status, updated = await call(client, "POST", path, {"data": {"a": 2}, "eTag": created["eTag"]})
    assert status == 200
    assert updated["eTag"] != created["eTag"]
    status, _ = await call(client, "POST", path, {"data": {"a": 3}, "eTag": created["eTag"]})
    assert status == 412, "an old eTag no longer matches"
    status, forced = await call(client, "POST", path, {"data": {"b": 1}, "eTag": "*"})
    assert status == 200
    assert await call(client, "GET", path) == (200, {"data": {"b": 1}, "eTag": forced["eTag"]})
    status, gone = await call(client, "POST", path, {"data": None, "eTag": forced["eTag"]})
    assert (status, gone["eTag"]) == (200, "")
    assert await call(client, "GET", path) == (200, {"data": None, "eTag": ""})


async def test_v1_paths_and_errors(client: Client) -> None:
    path = "/bot/v1.0/bots/bot-1/conversations/c1/users/u1"
    status, _ = await call(client, "POST", path, {"data": {"step": 1}, "eTag": "*"})
    assert status == 200
    status, body = await call(client, "POST", path, {"data": {"step": 2}, "eTag": "nope"})
    assert status == 412
    assert body["error"]["statusCode"] == 412
    status, body = await call(client, "GET", "/bot/v1.0/bots/other-bot/users/u1")
    assert status == 403
    assert body["error"]["statusCode"] == 403
    assert (await call(client, "GET", path))[1]["data"] == {"step": 1}
    # v1 and v3 records are separate namespaces
    assert (await call(client, "GET", "/v3/botstate/test/conversations/c1/users/u1"))[1][
        "data"
    ] is None


@pytest.mark.parametrize("ident", ODD_IDS)
async def test_odd_ids_round_trip_and_meet_the_cookie_path(
    client: Client, store: Store, ident: str
) -> None:
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        written = await api.set_user_data(ident, {"n": 41}, None)
        assert (await api.get_user_data(ident)).data == {"n": 41}
        await api.set_private_conversation_data(ident, ident, {"p": ident}, "*")
        assert (await api.get_private_conversation_data(ident, ident)).data == {"p": ident}
    [record] = await store.load([RecordKey("user", "bot-1", "test", "", ident)])
    assert record.etag == written.etag
    # the cookie path reads what REST wrote, and REST reads what the cookie path wrote
    status, reply = await post(client, activity(user=ident))
    assert (status, reply["text"]) == (200, "42")
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        after = await api.get_user_data(ident)
    assert after.data == {"n": 42}
    assert after.etag != written.etag, "a cookie write gives the record a new eTag"


async def test_string_data_is_stored_as_sent(client: Client) -> None:
    blob = base64.b64encode(b"\x1f\x8b compressed state").decode()
    path = "/v3/botstate/test/conversations/conv-1"
    status, written = await call(client, "POST", path, {"data": blob, "eTag": "*"})
    assert (status, written["data"]) == (200, blob)
    assert await call(client, "GET", path) == (200, {"data": blob, "eTag": written["eTag"]})


async def test_auth(client_for: StartFn, store: Store) -> None:
    client = await client_for(counter_bot_app(store, app_id="app-1"))
    path = "/v3/botstate/test/users/u1"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic !!!"}):
        response = await client.post(path, json={"data": {"x": 1}, "eTag": "*"}, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "Unauthorized"
    basic = "Basic " + base64.b64encode(f"app-1:{SECRET}".encode()).decode()
    wrong_app = "Basic " + base64.b64encode(f"app-2:{SECRET}".encode()).decode()
    assert (await client.get(path, headers={"Authorization": wrong_app})).status == 401
    response = await client.get(path, headers={"Authorization": basic})
    assert (response.status, await response.json()) == (200, {"data": None, "eTag": ""}), (
        "nothing was written by the refused requests"
    )
    with pytest.raises(ValueError, match="not mounted without a secret"):
        inline_state.add_state_api(web.Application())


async def test_no_auth_mode_answers_loopback(client_for: StartFn, store: Store) -> None:
    client = await client_for(counter_bot_app(store, secret=None, no_auth=True))
    response = await client.get("/v3/botstate/test/users/u1")
    assert response.status == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "BadSyntax"),
        (b"[1, 2]", "BadArgument"),
        (b'{"data": 42, "eTag": "*"}', "BadArgument"),
        (b'{"data": [1], "eTag": "*"}', "BadArgument"),
        (b'{"data": {"a": 1}, "eTag": 7}', "BadArgument"),
        (b'{"data": {"a": NaN}, "eTag": "*"}', "BadArgument"),
        (json.dumps({"data": {"big": "x" * 70_000}, "eTag": "*"}).encode(), "MessageSizeTooBig"),
        (json.dumps({"data": "y" * 70_000, "eTag": "*"}).encode(), "MessageSizeTooBig"),
    ],
)
async def test_bad_input_is_400_and_writes_nothing(client: Client, body: bytes, code: str) -> None:
    path = "/v3/botstate/test/users/u1"
    response = await client.post(
        path, data=body, headers=BEARER | {"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == code
    assert await call(client, "GET", path) == (200, {"data": None, "eTag": ""})


async def test_delete_user_removes_all_their_records_and_nothing_else(client: Client) -> None:
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        await api.set_user_data("u1", {"a": 1}, "*")
        for conv in ("c1", "c2", "c/3"):
            await api.set_private_conversation_data(conv, "u1", {"a": 1}, "*")
            await api.set_private_conversation_data(conv, "u2", {"b": 2}, "*")
            await api.set_conversation_data(conv, {"c": 3}, "*")
        await api.set_user_data("u2", {"a": 2}, "*")
        await api.delete_user("u1")
        assert (await api.get_user_data("u1")).data is None
        for conv in ("c1", "c2", "c/3"):
            assert (await api.get_private_conversation_data(conv, "u1")).data is None
            assert (await api.get_private_conversation_data(conv, "u2")).data == {"b": 2}
            assert (await api.get_conversation_data(conv)).data == {"c": 3}
        assert (await api.get_user_data("u2")).data == {"a": 2}


async def test_export_pages_every_record_once(client: Client) -> None:
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        for i in range(130):
            await api.set_private_conversation_data(f"c{i % 4}", f"u/{i}", {"i": i}, "*")
        await api.set_user_data("someone", "c3RyaW5n", "*")
        async with StateClient(url(client), secret=SECRET, channel="elsewhere") as other:
            await other.set_user_data("not-exported", {"x": 1}, "*")
        seen: list[tuple[Any, Any, Any]] = []
        token = None
        for _ in range(10):
            items, token = await api.export(token)
            seen += [(i["conversationId"], i["userId"], json.loads(i["data"])) for i in items]
            assert all(i["lastModified"].endswith("Z") for i in items)
            if token is None:
                break
    expected: set[tuple[str | None, str, str]] = {
        (f"c{i % 4}", f"u/{i}", json.dumps({"i": i})) for i in range(130)
    }
    expected.add((None, "someone", json.dumps("c3RyaW5n")))
    assert len(seen) == len(expected)
    assert {(c, u, json.dumps(d)) for c, u, d in seen} == expected


async def test_no_lost_updates_with_etags(client: Client) -> None:
    path = "/v3/botstate/test/conversations/counter"

    async def worker(session: aiohttp.ClientSession) -> int:
        retries = 0
        async with StateClient(url(client), secret=SECRET, channel="test", session=session) as api:
            for _ in range(25):
                while True:
                    current = await api.get_conversation_data("counter")
                    count = current.data["count"] if isinstance(current.data, dict) else 0
                    try:
                        await api.set_conversation_data(
                            "counter", {"count": count + 1}, current.etag or None
                        )
                        break
                    except PreconditionFailed:
                        retries += 1
        return retries

    async with aiohttp.ClientSession() as session:
        retries = await asyncio.gather(*(worker(session) for _ in range(20)))
    assert (await call(client, "GET", path))[1]["data"] == {"count": 500}
    assert sum(retries) > 0, "the clients really raced"


async def test_the_cookie_path_loses_overlapping_increments(
    client_for: StartFn, store: Store
) -> None:
    barrier = asyncio.Barrier(20)

    async def messages(request: web.Request) -> web.Response:
        msg = await request.json()
        count = inline_state.get_conversation_data(msg, "count", 0)
        await barrier.wait()  # every turn read the same count
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_conversation_data(reply, "count", count + 1)
        return web.json_response(reply)

    app = web.Application()
    inline_state.setup(app, store)
    app.router.add_post("/api/messages", messages)
    client = await client_for(app)
    await asyncio.gather(*(post(client, activity(conversation="lossy")) for _ in range(20)))
    [conv] = await store.load([RecordKey("conversation", "bot-1", "test", "lossy", "")])
    assert conv.props["count"] == b"1", "19 of 20 increments were lost: why the REST API exists"


async def test_a_cookie_write_racing_a_rest_update_makes_it_412(client: Client) -> None:
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        await api.set_user_data("user-1", {"n": 1}, "*")
        read = await api.get_user_data("user-1")
        await post(client, activity(user="user-1"))  # the cookie path writes n=2
        with pytest.raises(PreconditionFailed):
            await api.set_user_data("user-1", {"n": 100}, read.etag)
        assert (await api.get_user_data("user-1")).data == {"n": 2}


def test_openapi_document_matches_the_served_routes() -> None:
    import inline_state._rest as rest

    document = json.loads((Path(rest.__file__).parent / "openapi.json").read_text())
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "delete"}
    }
    app = web.Application()
    inline_state.add_state_api(app, secret="x", bot_id="b", store=inline_state.MemoryStore())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }
    assert served == documented == set(rest.ROUTES)


async def test_delete_user_data_message_on_every_backend(client: Client) -> None:
    async with StateClient(url(client), secret=SECRET, channel="test") as api:
        for conv in ("c1", "c2"):
            await api.set_private_conversation_data(conv, "user-1", {"a": 1}, "*")
            await api.set_conversation_data(conv, {"c": 1}, "*")
        await post(client, activity(user="user-1"))  # the cookie path writes user data
        assert (await api.get_user_data("user-1")).data == {"n": 1}
        status, _ = await post(client, activity(user="user-1", type="deleteUserData"))
        assert status == 200
        assert (await api.get_user_data("user-1")).data is None
        for conv in ("c1", "c2"):
            assert (await api.get_private_conversation_data(conv, "user-1")).data is None
            assert (await api.get_conversation_data(conv)).data == {"c": 1}
