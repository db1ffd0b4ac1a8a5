"""The inspector's API and its defences, over real turns on a real aiohttp app.

The page itself runs in a real browser in ``test_browser.py``; here every request is
made by hand, as an attacker would make it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web

import inline_state
import inline_state._inspector
from inline_state import MemoryStore, RecordKey
from inline_state._clock import stamp_ms
from inline_state._inspector import CSRF_HEADER, SESSION_COOKIE

from .support import Client, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
SECRET = "s3cret-for-the-inspector"
BOT = "bot-1"


def counting_bot(store: inline_state.Store, **inspector: Any) -> web.Application:
    app = web.Application()
    inline_state.setup(app, store)
    inline_state.add_inspector(app, **(inspector or {"secret": SECRET, "bot_id": BOT}))

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_user_data(reply, "n", inline_state.get_user_data(msg, "n", 0) + 1)
        inline_state.set_conversation_data(reply, "last", msg.get("text"))
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    return app


async def turn(client: Client, user: str = "user-1", text: str = "hi") -> Any:
    status, reply = await post(client, activity(text=text, user=user))
    assert status == 200
    return reply


async def login(client: Client, secret: str = SECRET) -> str:
    response = await client.post("/inspector/api/login", json={"secret": secret})
    assert response.status == 200, await response.text()
    csrf: str = (await response.json())["csrf"]
    return csrf


async def api(
    client: Client, method: str, path: str, csrf: str | None = None, **options: Any
) -> tuple[int, Any]:
    headers = dict(options.pop("headers", {}))
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    response = await client.request(method, "/inspector/api/" + path, headers=headers, **options)
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Content-Security-Policy" in response.headers
    return response.status, await response.json()


USER_QUERY = {"channel": "test", "kind": "user", "user": "user-1"}


async def test_login_gives_a_strict_http_only_session_cookie(client_for: StartFn) -> None:
    client = await client_for(counting_bot(MemoryStore()))
    assert (await api(client, "GET", "channels"))[0] == 401
    response = await client.post("/inspector/api/login", json={"secret": "wrong"})
    assert response.status == 401
    assert "Set-Cookie" not in response.headers
    response = await client.post("/inspector/api/login", json={"secret": SECRET})
    assert response.status == 200
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(SESSION_COOKIE)
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/inspector/"):
        assert attribute in cookie, cookie
    assert SECRET not in cookie
    body = await response.json()
    assert body["bot"] == BOT and len(body["csrf"]) >= 32
    assert (await api(client, "GET", "channels"))[0] == 200
    assert (await api(client, "GET", "session"))[1]["csrf"] == body["csrf"]
    assert (await api(client, "POST", "logout", body["csrf"], json={}))[0] == 200
    assert (await api(client, "GET", "channels"))[0] == 401, "the session ended"


async def test_every_answer_forbids_inline_script(client_for: StartFn) -> None:
    client = await client_for(counting_bot(MemoryStore()))
    for path in ("/inspector/", "/inspector/inspector.js", "/inspector/api/session"):
        response = await client.get(path)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy, policy
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await (await client.get("/inspector/")).text()

    class Audit(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.problems: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = {name for name, _ in attrs}
            if tag == "script" and "src" not in names:
                self.problems.append("an inline <script>")
            if tag == "style" or "style" in names:
                self.problems.append(f"inline style on <{tag}>")
            self.problems += [f"{name} on <{tag}>" for name in names if name.startswith("on")]

        def handle_data(self, data: str) -> None:
            if self.get_starttag_text() and self.lasttag == "script" and data.strip():
                self.problems.append("script text")

    audit = Audit()
    audit.feed(page)
    assert audit.problems == []
    script = await (await client.get("/inspector/inspector.js")).text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and "document.write" not in script


async def test_a_change_needs_the_csrf_token_and_our_origin(client_for: StartFn) -> None:
    store = MemoryStore()
    client = await client_for(counting_bot(store))
    await turn(client)
    csrf = await login(client)
    status, record = await api(client, "POST", "read", csrf, json=USER_QUERY)
    assert status == 200
    assert (await api(client, "POST", "read", json=USER_QUERY))[0] == 403, "reads need it too"
    save = {**USER_QUERY, "eTag": record["eTag"], "data": '{"n": 99}'}
    assert (await api(client, "POST", "save", json=save))[0] == 403
    assert (await api(client, "POST", "save", "not-the-token", json=save))[0] == 403
    evil = {"Origin": "http://evil.example"}
    assert (await api(client, "POST", "save", csrf, json=save, headers=evil))[0] == 403
    delete = {"channel": "test", "user": "user-1"}
    assert (await api(client, "POST", "delete-user", json=delete))[0] == 403
    [stored] = await store.load([RecordKey("user", BOT, "test", "", "user-1")])
    assert dict(stored.props) == {"n": b"1"}, "a refused change wrote something"
    assert (await api(client, "POST", "save", csrf, json=save))[0] == 200


async def test_a_login_from_another_origin_is_refused(client_for: StartFn) -> None:
    client = await client_for(counting_bot(MemoryStore()))
    response = await client.post(
        "/inspector/api/login", json={"secret": SECRET}, headers={"Origin": "http://evil.example"}
    )
    assert response.status == 403
    assert "Set-Cookie" not in response.headers
    for secret in ("\ud800", 5, None):
        response = await client.post("/inspector/api/login", json={"secret": secret})
        assert response.status in (400, 401), (secret, await response.text())


async def test_behind_a_tls_proxy_the_public_origin_counts(client_for: StartFn) -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        counting_bot(MemoryStore(), secret=SECRET, bot_id=BOT, public_origin="https://a/b")
    client = await client_for(
        counting_bot(
            MemoryStore(), secret=SECRET, bot_id=BOT, public_origin="https://Bot.example.com:443/"
        )
    )
    same = {"Origin": "https://bot.example.com"}
    response = await client.post("/inspector/api/login", json={"secret": SECRET}, headers=same)
    assert response.status == 200
    assert "Secure" in response.headers["Set-Cookie"]
    csrf = (await response.json())["csrf"]
    # The cookie is Secure, so the test client (plain HTTP) keeps it back: send it by hand.
    cookie = {"Cookie": response.headers["Set-Cookie"].partition(";")[0]}
    listing = {"channel": "t", "kind": "user"}
    plain = {"Origin": f"http://{client.host}:{client.port}", **cookie}
    got = await api(client, "POST", "records", csrf, json=listing, headers=plain)
    assert got[0] == 403, "the origin is the public one"
    got = await api(client, "POST", "records", csrf, json=listing, headers={**same, **cookie})
    assert got[0] == 200, got


async def test_a_session_sees_its_own_bots_records_only(client_for: StartFn) -> None:
    store = MemoryStore()
    client = await client_for(
        counting_bot(store, credentials={SECRET: BOT, "other-secret": "bot-2"})
    )
    await turn(client)
    csrf = await login(client, secret="other-secret")
    assert (await api(client, "GET", "channels"))[1] == {"channels": []}
    status, record = await api(client, "POST", "read", csrf, json=USER_QUERY)
    assert status == 200 and not record["exists"]
    delete = {"channel": "test", "user": "user-1"}
    assert (await api(client, "POST", "delete-user", csrf, json=delete))[0] == 200
    [stored] = await store.load([RecordKey("user", BOT, "test", "", "user-1")])
    assert dict(stored.props) == {"n": b"1"}, "bot-2's session deleted bot-1's user"


async def test_two_inspectors_on_one_host_do_not_share_a_cookie(client_for: StartFn) -> None:
    one = await client_for(counting_bot(MemoryStore()))
    two = await client_for(counting_bot(MemoryStore()))
    names = []
    for client in (one, two):
        response = await client.post("/inspector/api/login", json={"secret": SECRET})
        names.append(response.headers["Set-Cookie"].partition("=")[0])
    assert names[0] != names[1]


async def test_browse_edit_conflict_and_delete(client_for: StartFn) -> None:
    store = MemoryStore()
    client = await client_for(counting_bot(store))
    for user in ("alice", "albert", "bob"):
        await turn(client, user=user)
    await turn(client, user="alice")
    csrf = await login(client)
    assert (await api(client, "GET", "channels"))[1] == {"channels": ["test"]}
    status, page = await api(
        client, "POST", "records", csrf, json={"channel": "test", "kind": "user", "prefix": "al"}
    )
    assert status == 200
    assert [r["user"] for r in page["records"]] == ["albert", "alice"]
    query = {"channel": "test", "kind": "user", "user": "alice"}
    record = (await api(client, "POST", "read", csrf, json=query))[1]
    inspected = await store.inspect(RecordKey("user", BOT, "test", "", "alice"))
    assert record["exists"] and record["eTag"] == inspected.record.etag
    [prop] = record["properties"]
    assert prop["name"] == "n" and prop["value"] == "2"
    assert prop["modified"].startswith(_iso_prefix(stamp_ms(inspected.stamps["n"]))), (
        "the property's time is its stamp's"
    )
    unchanged = await api(client, "POST", "read", csrf, json={**query, "known": record["version"]})
    assert unchanged[1] == {"unchanged": True}, "polling an unchanged record costs no record"

    save = {**query, "eTag": record["eTag"], "data": '{"n": 41, "note": "set by hand"}'}
    status, saved = await api(client, "POST", "save", csrf, json=save)
    assert status == 200
    reply = await turn(client, user="alice")
    assert reply["text"] == "ok"
    inspected = await store.inspect(RecordKey("user", BOT, "test", "", "alice"))
    assert dict(inspected.record.props) == {"n": b"42", "note": b'"set by hand"'}

    stale = {**query, "eTag": saved["eTag"], "data": '{"n": 0}'}
    status, conflict = await api(client, "POST", "save", csrf, json=stale)
    assert status == 412
    assert conflict["error"]["code"] == "PreconditionFailed"
    assert '"n": 42' in conflict["current"]["data"]
    inspected = await store.inspect(RecordKey("user", BOT, "test", "", "alice"))
    assert inspected.record.props["n"] == b"42", "a conflict overwrote the record"

    delete = {"channel": "test", "user": "alice"}
    assert (await api(client, "POST", "delete-user", csrf, json=delete))[0] == 200
    assert not (await api(client, "POST", "read", csrf, json=query))[1]["exists"]
    reply = await turn(client, user="alice")
    assert (await store.inspect(RecordKey("user", BOT, "test", "", "alice"))).record.props == {
        "n": b"1"
    }, "after the deletion the count starts again"


def _iso_prefix(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "save", b"{not json", 400, "JSON object"),
        ("POST", "save", b'["a list"]', 400, "JSON object"),
        ("POST", "save", {"kind": "nope"}, 400, "kind must be"),
        ("POST", "save", {**USER_QUERY, "user": 5}, 400, "user must be"),
        ("POST", "save", {**USER_QUERY, "eTag": "*", "data": "[1]"}, 400, "JSON object"),
        ("POST", "save", {**USER_QUERY, "eTag": "*", "data": "{"}, 400, "JSON object"),
        ("POST", "save", {**USER_QUERY, "eTag": "*", "data": "[" * 5000}, 400, "nest"),
        ("POST", "save", {**USER_QUERY, "eTag": "*", "data": "\ud800"}, 400, "surrogate"),
        ("POST", "save", {**USER_QUERY, "eTag": 3, "data": "{}"}, 400, "strings"),
        (
            "POST",
            "save",
            {**USER_QUERY, "eTag": "*", "data": '{"a": "' + "x" * 70000 + '"}'},
            400,
            "limit",
        ),
        (
            "POST",
            "save",
            {**USER_QUERY, "user": "u" * 5000, "eTag": "*", "data": "{}"},
            400,
            "cannot be written",
        ),
        ("POST", "records", {"channel": "test", "kind": "user", "cursor": "forged"}, 400, "cursor"),
        ("POST", "records", {"channel": "", "kind": "user"}, 400, "channel must be"),
        ("POST", "delete-user", {"channel": "test"}, 400, "user must be"),
        ("POST", "read", {"kind": "user", "channel": "test"}, 400, "user must be"),
        ("POST", "read", None, 400, "JSON object"),
        (
            "POST",
            "records",
            {
                "channel": "test",
                "kind": "user",
                "cursor": '["v3/bot-1/test/u/", "v3/bot-1/test/u/\\ud800"]',
            },
            400,
            "cursor",
        ),
    ],
)
async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    client_for: StartFn,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    store = MemoryStore()
    client = await client_for(counting_bot(store))
    await turn(client)
    csrf = await login(client)
    options: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    with caplog.at_level(logging.DEBUG, logger="inline_state"):
        got, answer = await api(client, method, path, csrf, **options)
    assert got == status, answer
    assert says in answer["error"]["message"], answer
    assert "Traceback" not in caplog.text
    [stored] = await store.load([RecordKey("user", BOT, "test", "", "user-1")])
    assert dict(stored.props) == {"n": b"1"}


async def test_no_auth_mode_answers_loopback_host_names_only(client_for: StartFn) -> None:
    client = await client_for(counting_bot(MemoryStore(), no_auth=True, bot_id=BOT))
    rebound = {"Host": "attacker.example:3978"}
    response = await client.get("/inspector/", headers=rebound)
    assert response.status == 403
    assert "Host" in (await response.json())["error"]["message"]
    response = await client.post("/inspector/api/login", json={}, headers=rebound)
    assert response.status == 403
    assert "Set-Cookie" not in response.headers
    for host in ("localhost:3978", "127.0.0.1", "[::1]:80", "LOCALHOST"):
        assert (await client.get("/inspector/", headers={"Host": host})).status == 200, host
    status, session = await api(client, "GET", "session")
    assert status == 401 and session["noAuth"] is True
    csrf = await login(client, secret="")
    assert (await api(client, "GET", "channels", csrf))[0] == 200
    for header in inline_state._inspector.FORWARDING_HEADERS:
        proxied = {header: "203.0.113.7"}
        status, answer = await api(client, "GET", "channels", headers=proxied)
        assert status == 403 and "proxy" in answer["error"]["message"], header


async def test_the_store_being_down_is_a_503_naming_it(client_for: StartFn) -> None:
    class Down(MemoryStore):
        async def channels(self, bot: str) -> list[str | None]:
            raise inline_state.StoreUnavailable("the test took it down")

    client = await client_for(counting_bot(Down()))
    await login(client)
    status, answer = await api(client, "GET", "channels")
    assert status == 503 and "took it down" in answer["error"]["message"]


async def test_ids_and_values_come_back_as_json_text_only(client_for: StartFn) -> None:
    store = MemoryStore()
    client = await client_for(counting_bot(store))
    hostile = '<img src=x onerror="alert(1)"></script><script>alert(2)</script>'
    await turn(client, user=hostile, text=hostile)
    csrf = await login(client)
    status, page = await api(
        client, "POST", "records", csrf, json={"channel": "test", "kind": "user", "prefix": "<"}
    )
    assert status == 200
    assert [r["user"] for r in page["records"]] == [hostile]
    status, record = await api(
        client, "POST", "read", csrf, json={"channel": "test", "kind": "user", "user": hostile}
    )
    assert status == 200 and record["user"] == hostile and record["exists"]


async def test_an_id_holding_a_lone_surrogate_opens(client_for: StartFn) -> None:
    store = MemoryStore()
    client = await client_for(counting_bot(store))
    odd = "alice\ud800"
    await turn(client, user=odd)
    await turn(client, user="alice\ufffd")
    csrf = await login(client)
    listed = (await api(client, "POST", "records", csrf, json={"channel": "test", "kind": "user"}))[
        1
    ]
    assert odd in [r["user"] for r in listed["records"]]
    status, record = await api(
        client, "POST", "read", csrf, json={"channel": "test", "kind": "user", "user": odd}
    )
    assert status == 200 and record["user"] == odd and record["properties"][0]["value"] == "1"
