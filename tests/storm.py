"""A seeded hostile-input storm against the middleware, the REST API, the inspector's API
and the proxy.

Every request is generated from one seed: bodies in every content type and charset
(declared right, wrong or bogus), broken gzip, injected bags in every spelling, deep
nesting, lone surrogates, odd ids, wrong credentials; the bot's replies are generated
too (bad bags, non-string keys, other JSON media types and charsets). What must hold:

- no unhandled exception and no traceback in the log, no bare 500 (a 500 is always our
  JSON error, and never ``InternalError``);
- the bot never sees a client-sent bag, through ``request.json()`` or ``get_message()``;
- no response carries a bag field;
- records of users no request names are untouched, and requests with wrong
  credentials read and write nothing;
- an inspector call without its session's CSRF token, or from another Origin, is
  refused (401 or 403) and changes nothing.

``python -m tests.storm --requests 100000`` (``make storm``) runs it longer than CI does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import logging
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import inline_state
from inline_state import RecordKey, Store
from inline_state._message import kind_of_field, reply_messages

SECRET = "storm-secret"
BOT = "storm-bot"
CHANNEL = "storm"
#: Marks every bag a client sends: the bot must never see it.
INJECTED = "injected-by-client"
#: Users only the seed writes and nobody targets; and users only wrong credentials target.
VICTIMS = [f"victim-{i}" for i in range(5)]
GUARDED = [f"guarded-{i}" for i in range(5)]

FIELDS = [
    "botUserData",
    "botConversationData",
    "botPerUserInConversationData",
    "BotUserData",
    "BOTUSERDATA",
    "botuserdata",
    "botPerUserConversationData",
    "BotConversationData",
]
IDS = [
    "u1",
    "u2",
    "29:1A b/c",
    "50%",
    "a%2Fb",
    "{x}",
    "}{",
    "\ud800",
    "a\udfffb",
    "ü€ 😀",
    "x" * 1500,
    "",
    "%uD800",
    "../..",
    "<script>alert(1)</script>",
]
CHARSETS = [None, "utf-8", "UTF-8", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp037"]
BAD_CHARSETS = ["bogus", "rot13", "zlib", "utf-7", "ascii"]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "",
    "text/json",
    "application/x-json",
    "application/vnd.api+json",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]


def has_bag_field(value: Any) -> bool:
    """True when a message of a JSON body (one, a list, or ``{"activities": [...]}``)
    has a bag field, in any spelling, at its top level (deeper, a key is just a key)."""
    messages = reply_messages(value) or []
    return any(kind_of_field(key) is not None for msg in messages for key in msg)


def saw_injection(value: Any) -> bool:
    return INJECTED in json.dumps(value)


@dataclass
class Report:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(what)


class _Tracebacks(logging.Handler):
    """Collects every log record that carries a traceback or aiohttp's bare-500 line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if (
            (record.exc_info and record.levelno > logging.DEBUG)
            or "Error handling request" in message
            or "Unhandled exception" in message
            or "internal error" in message
        ):
            self.bad.append(f"{record.name}: {message[:300]}")


# -- generators ------------------------------------------------------------------------


class Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def ident(self) -> str:
        return self.rng.choice(IDS)

    def hostile_value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if r < 0.1 and depth < 3:
            return {
                self.rng.choice(["k", "\ud800", "", "botUserData"]): self.hostile_value(depth + 1)
            }
        if r < 0.2 and depth < 3:
            return [self.hostile_value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        return self.rng.choice(
            [1, 1.0, True, None, "x", "\ud800", 2**70, -(2**64), 1e308, "é" * 10, "", [], {}]
        )

    def injected_bag(self) -> Any:
        return self.rng.choice(
            [{"n": 10**6, "marker": INJECTED}, {INJECTED: 1}, INJECTED, [INJECTED], {"x": INJECTED}]
        )

    def message(self) -> dict[str, Any]:
        rng = self.rng
        user, conversation = self.ident(), self.ident()
        if rng.random() < 0.8:
            msg: dict[str, Any] = {
                "type": rng.choice(["message", "message", "deleteUserData", "", {}, [], 7]),
                "id": f"act-{rng.randrange(10**6)}",
                "channelId": rng.choice([CHANNEL, CHANNEL, "", None, {}, "\ud800"]),
                "serviceUrl": "http://127.0.0.1:1/",
                "conversation": rng.choice(
                    [{"id": conversation}, {"id": conversation}, {}, "c", None]
                ),
                "from": rng.choice([{"id": user}, {"id": user}, {"id": 5}, [], None]),
                "recipient": rng.choice(
                    [{"id": BOT}, {"id": BOT}, {"id": BOT}, {}, {"id": "\ud800"}]
                ),
                "text": rng.choice(["hi", "\ud800", "é" * 50, "", "x" * 5000, "🙂"]),
            }
        else:
            msg = {
                "type": rng.choice(["Message", "DeleteUserData", "Ping"]),
                "conversationId": conversation,
                "from": {"id": user},
                "to": {"id": BOT},
                "text": "v1",
            }
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            msg[rng.choice(FIELDS)] = self.injected_bag()
        if rng.random() < 0.1:
            msg["extra"] = self.hostile_value()
        if rng.random() < 0.02:
            msg[rng.choice([1, 2.5, True])] = "non-string key"  # type: ignore[index]
        return msg

    def encode(self, value: Any) -> tuple[bytes, dict[str, str]]:
        """A body and its headers: right, wrong or bogus charsets, gzip or broken gzip."""
        rng = self.rng
        headers: dict[str, str] = {}
        try:
            text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        except (TypeError, ValueError):
            text = json.dumps(str(value))
        roll = rng.random()
        if roll < 0.05:
            body = text.encode("utf-8", "surrogatepass")[: rng.randrange(1, len(text) + 2)]
            charset = None
        elif roll < 0.1:
            body = rng.choice(
                [b"[" * 100_000, b"{" * 5000, b"\xff\xfe\x00", b"", b"null", b'"\\ud800"']
            )
            charset = rng.choice([None, "utf-8"])
        elif roll < 0.15:
            charset = rng.choice(BAD_CHARSETS)
            body = text.encode("utf-8", "surrogatepass")
        else:
            charset = rng.choice(CHARSETS)
            try:
                body = text.encode(charset or "utf-8")
            except UnicodeEncodeError:
                body = (
                    json.dumps(value).encode(charset or "utf-8")
                    if charset
                    else text.encode("utf-8", "surrogatepass")
                )
        content_type = rng.choice(CONTENT_TYPES)
        if charset is not None and content_type:
            content_type += f"; charset={charset}"
        headers["Content-Type"] = content_type
        if rng.random() < 0.05:
            headers["Content-Encoding"] = "gzip"
            if rng.random() < 0.5:
                body = gzip.compress(body)
        return body, headers

    def rest_request(self) -> tuple[str, str, bytes | None, dict[str, str], str | None]:
        """(method, path, body, headers, the guarded or victim user it names, if any)."""
        rng = self.rng
        wrong = rng.random() < 0.3
        # Empty ids make paths no route serves; those are aiohttp's own 404s.
        user = rng.choice(GUARDED) if wrong and rng.random() < 0.5 else self.ident() or "e"
        conversation = self.ident() or "e"
        u = quote(user, safe="", errors="surrogatepass")
        c = quote(conversation, safe="", errors="surrogatepass")
        path = rng.choice(
            [
                f"/v3/botstate/{CHANNEL}/users/{u}",
                f"/v3/botstate/{CHANNEL}/conversations/{c}",
                f"/v3/botstate/{CHANNEL}/conversations/{c}/users/{u}",
                f"/v3/botstate/{CHANNEL}/exportBotStateData",
                f"/bot/v1.0/bots/{quote(BOT, safe='')}/users/{u}",
                f"/v3/botstate/{CHANNEL}/exportBotStateData?continuationToken="
                + rng.choice(["", "%FF", "abc", "dj4v"]),
            ]
        )
        method = rng.choice(["GET", "POST", "POST", "DELETE"])
        if wrong:
            auth = rng.choice(
                [
                    "Bearer wrong",
                    "Basic é",
                    "Basic !!!",
                    "",
                    "Bearer " + SECRET + "x",
                    "Basic " + base64.b64encode(b"\xff:" + SECRET.encode()).decode(),
                ]
            )
        else:
            auth = f"Bearer {SECRET}"
        body: bytes | None = None
        headers = {"Authorization": auth} if auth else {}
        if method == "POST":
            data = rng.choice(
                [
                    {"n": 1},
                    "a string",
                    "\ud800",
                    None,
                    [1],
                    {"deep": self.hostile_value()},
                    {"x": "y" * 70_000},
                    {str(i): i for i in range(1100)},
                ]
            )
            value: Any = rng.choice(
                [
                    {"data": data, "eTag": rng.choice(["*", "", None, 7, "1.1"])},
                    data,
                    [data],
                ]
            )
            body, more = self.encode(value)
            headers |= more
        target = user if wrong and user in GUARDED else None
        return method, path, body, headers, target

    def inspector_request(self, csrf: str) -> tuple[str, str, bytes | None, dict[str, str], bool]:
        """(method, path, body, headers, forged): a call of the inspector's API, in a
        session or forged (no token, a wrong one, another Origin), then naming only
        victims and guarded users."""
        rng = self.rng
        name = rng.choice(["read", "save", "records", "delete-user", "channels", "login"])
        forged = rng.random() < 0.3
        user = rng.choice(VICTIMS + GUARDED) if forged else self.ident()
        key: dict[str, Any] = {
            "kind": rng.choice(["user", "user", "conversation", "private", "nope", None, 5]),
            "channel": rng.choice([CHANNEL, CHANNEL, "", None, 7, self.ident()]),
            "user": rng.choice([user, user, user, 5, None, ""]),
            "conversation": self.ident(),
        }
        if rng.random() < 0.1:
            key["v1"] = rng.choice([True, "1", None, {}])
        value: Any
        if name == "save":
            too_large = '{"x": "' + "y" * 70_000 + '"}'
            hostile = json.dumps({"d": self.hostile_value()})
            texts = ['{"n": 1}', '{"n": 2, "s": "\u00e9"}', "{", "[" * 300, "\ud800"]
            data = rng.choice([*texts, 5, None, too_large, hostile])
            value = {**key, "eTag": rng.choice(["*", "*", "", None, 3, "0.0"]), "data": data}
        elif name == "records":
            value = {
                **key,
                "cursor": rng.choice([None, None, "x", '["a", "b"]', "\ud800", 5, "[]"]),
                "prefix": rng.choice(["", "u", "\ud800", 5, "%"]),
            }
        elif name == "login":
            value = {"secret": rng.choice(["wrong", "\ud800", 5, None, "", SECRET + "x"])}
        else:
            value = key
        value = rng.choice([value, value, value, [value], "text", None])
        body, headers = self.encode(value) if name != "channels" else (None, {})
        if forged:
            choice = rng.random()
            if choice < 0.4:
                headers["X-Inline-State-CSRF"] = "not-the-token"
            elif choice < 0.7:
                headers |= {"X-Inline-State-CSRF": csrf, "Origin": "http://evil.example"}
        elif name != "login":
            headers["X-Inline-State-CSRF"] = csrf
        method = "GET" if name == "channels" else rng.choice(["POST"] * 9 + ["PUT"])
        return method, f"/inspector/api/{name}", body, headers, forged and name != "channels"


# -- the bots --------------------------------------------------------------------------


class StormBot:
    """A bot that checks what it is given and answers with generated replies."""

    def __init__(self, rng: random.Random, report: Report) -> None:
        self.rng = rng
        self.report = report

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            msg = await request.json()
        except (ValueError, LookupError, RecursionError, UnicodeError):
            return web.json_response({"bot": "cannot parse"}, status=400)
        if saw_injection(msg):
            self.report.fail(f"the bot saw a client-sent bag via request.json(): {msg!r:.200}")
        played = inline_state.get_message(request)
        if played is not None and saw_injection(played):
            self.report.fail("the bot saw a client-sent bag via get_message()")
        if not isinstance(msg, dict):
            return web.json_response({"ok": True})
        return self.reply(msg)

    def reply(self, msg: dict[str, Any]) -> web.StreamResponse:
        rng = self.rng
        reply: dict[str, Any] = {"type": "message", "text": "ok"}
        roll = rng.random()
        n = inline_state.get_user_data(msg, "n", 0)
        n = n + 1 if isinstance(n, int) and not isinstance(n, bool) else 1
        if roll < 0.5:
            inline_state.set_user_data(reply, "n", n)
            inline_state.set_conversation_data(reply, "c", rng.randrange(100))
        elif roll < 0.6:
            reply[rng.choice(FIELDS)] = rng.choice(
                [
                    {"deep": json.loads("[" * 300 + "]" * 300)},
                    {"nan": float("nan")},
                    {"big": "x" * 70_000},
                    "not an object",
                    {i: i for i in range(3)},
                    {(1, 2): 3},
                    {"s": "\ud800"},
                    {"n": 2**70},
                ]
            )
        elif roll < 0.65:
            reply["botUserData"] = {"a": 1}
            reply["BotUserData"] = {"a": 2}
        body: Any = rng.choice([{"activities": [reply]}, reply, [reply, reply]])
        kind = rng.random()
        if kind < 0.4:
            return inline_state.ReplyResponse(body)
        charset = rng.choice(["utf-8", "utf-16", "latin-1"])
        content_type = rng.choice(["application/json", "application/vnd.api+json", "text/json"])
        try:
            raw = json.dumps(body, ensure_ascii=False).encode(charset)
        except (ValueError, TypeError, UnicodeEncodeError):
            return inline_state.ReplyResponse(body)
        return web.Response(body=raw, content_type=content_type, charset=charset)


# -- the run -----------------------------------------------------------------------------


async def _seed_victims(store: Store) -> dict[RecordKey, Any]:
    snapshot: dict[RecordKey, Any] = {}
    for user in VICTIMS:
        key = RecordKey("user", BOT, CHANNEL, "", user)
        await store.compare_and_set(key, {"kept": b'"yes"'}, "*", max_bytes=1000)
        [record] = await store.load([key])
        snapshot[key] = (dict(record.props), record.etag)
    return snapshot


async def _check_untouched(store: Store, snapshot: dict[RecordKey, Any], report: Report) -> None:
    for key, before in snapshot.items():
        [record] = await store.load([key])
        if (dict(record.props), record.etag) != before:
            report.fail(f"a record nobody targeted changed: {key}")
    for user in GUARDED:
        [record] = await store.load([RecordKey("user", BOT, CHANNEL, "", user)])
        if record.exists:
            report.fail(f"a request with wrong credentials wrote {user}")


def _check_response(report: Report, what: str, status: int, raw: bytes) -> None:
    report.statuses[status] += 1
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if status >= 500:
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or "code" not in error:
            report.fail(f"{what}: a bare {status}: {raw[:200]!r}")
        elif error["code"] == "InternalError":
            report.fail(f"{what}: an internal error: {error['message']}")
    if answer is not None and has_bag_field(answer):
        report.fail(f"{what}: a bag on the response: {raw[:200]!r}")
    if answer is None:
        for charset in ("utf-8", "utf-16", "latin-1"):
            try:
                decoded = json.loads(raw.decode(charset))
            except (ValueError, UnicodeError):
                continue
            if has_bag_field(decoded):
                report.fail(f"{what}: a bag on a {charset} response")


async def _storm_app(
    client: TestClient[web.Request, web.Application],
    gen: Generator,
    report: Report,
    count: int,
    rest: bool,
) -> None:
    csrf = ""
    if rest:
        login = await client.post("/inspector/api/login", json={"secret": SECRET})
        csrf = (await login.json())["csrf"]
    for i in range(count):
        report.requests += 1
        if rest and i % 5 == 4:
            method, path, body, headers, forged = gen.inspector_request(csrf)
            async with client.request(
                method, path, data=body, headers=headers, skip_auto_headers=["Content-Type"]
            ) as response:
                raw = await response.read()
                if (
                    forged
                    and path != "/inspector/api/login"
                    and response.status
                    not in (
                        401,
                        403,
                        405,
                    )
                ):
                    report.fail(f"a forged inspector call got {response.status} on {path}")
                _check_response(report, f"{method} {path}", response.status, raw)
            continue
        if rest and i % 3 == 2:
            method, path, body, headers, _ = gen.rest_request()
            async with client.request(
                method, path, data=body, headers=headers, skip_auto_headers=["Content-Type"]
            ) as response:
                raw = await response.read()
                wrong = headers.get("Authorization") != f"Bearer {SECRET}"
                if wrong and response.status != 401:
                    report.fail(f"wrong credentials got {response.status} on {method} {path[:80]}")
                _check_response(report, f"{method} {path[:60]}", response.status, raw)
            continue
        body, headers = gen.encode(gen.message())
        async with client.post(
            "/api/messages", data=body, headers=headers, skip_auto_headers=["Content-Type"]
        ) as response:
            _check_response(report, "POST /api/messages", response.status, await response.read())


def _bot_app(store: Store | str, bot: StormBot) -> web.Application:
    app = web.Application()
    inline_state.setup(app, store)
    inline_state.add_state_api(app, secret=SECRET, bot_id=BOT)
    inline_state.add_inspector(app, secret=SECRET, bot_id=BOT)
    app.router.add_post("/api/messages", bot.handle)
    return app


async def _run_backend(url: str, rng: random.Random, report: Report, count: int) -> None:
    store = inline_state.open_store(url)
    async with store:
        snapshot = await _seed_victims(store)
        bot = StormBot(rng, report)
        async with TestClient(TestServer(_bot_app(store, bot))) as client:
            await _storm_app(client, Generator(rng), report, count, rest=True)
        await _check_untouched(store, snapshot, report)


async def _run_proxy(rng: random.Random, report: Report, count: int) -> None:
    bot = StormBot(rng, report)
    upstream_app = web.Application()
    upstream_app.router.add_post("/api/messages", bot.handle)
    channel_app = web.Application()

    async def channel(request: web.Request) -> web.Response:
        raw = await request.read()
        _check_response(report, "the channel received", 200, raw)
        return web.json_response({"id": "sent"})

    channel_app.router.add_post("/{tail:.*}", channel)
    gen = Generator(rng)
    async with (
        TestServer(upstream_app) as upstream,
        TestServer(channel_app) as channel_server,
    ):
        store = inline_state.MemoryStore()
        snapshot = await _seed_victims(store)
        proxy = inline_state.proxy_app(
            upstream=str(upstream.make_url("/api/messages")),
            store=store,
            channel=str(channel_server.make_url("")),
        )
        async with TestClient(TestServer(proxy)) as client:
            for i in range(count):
                report.requests += 1
                msg = gen.message()
                if i % 2:
                    # A reply the bot POSTs: its bags are the bot's own, so trusted.
                    msg = {k: v for k, v in msg.items() if kind_of_field(k) is None}
                    msg["botUserData"] = {"posted": i}
                    msg["from"], msg["recipient"] = {"id": BOT}, {"id": gen.ident()}
                    path = (
                        f"/v3/conversations/{gen.rng.choice(['c1', '%7Bc%7D', 'a%2Fb'])}/activities"
                    )
                else:
                    path = "/api/messages"
                body, headers = gen.encode(msg)
                async with client.post(
                    path, data=body, headers=headers, skip_auto_headers=["Content-Type"]
                ) as response:
                    _check_response(report, f"proxy {path}", response.status, await response.read())
        await _check_untouched(store, snapshot, report)


async def run_storm(*, seed: int, requests: int, redis_url: str | None, directory: Path) -> Report:
    """Run the storm; ``requests`` is split over memory, sqlite, redis and the proxy."""
    report = Report()
    catcher = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(catcher)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        rng = random.Random(seed)
        share = requests // 4
        await _run_backend("memory://", rng, report, share)
        await _run_backend(f"sqlite:///{directory}/storm-{uuid.uuid4().hex}.db", rng, report, share)
        if redis_url is not None:
            await _run_backend(f"{redis_url}?prefix=storm{uuid.uuid4().hex}", rng, report, share)
        else:
            report.fail("no Redis server: the storm needs one for redis://")
        await _run_proxy(rng, report, requests - 3 * share)
    finally:
        root.removeHandler(catcher)
        root.setLevel(old_level)
    report.failures += catcher.bad[:50]
    return report


def main(argv: list[str] | None = None) -> int:
    from .redis_servers import RedisServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            started = time.monotonic()
            report = asyncio.run(
                run_storm(
                    seed=args.seed,
                    requests=args.requests,
                    redis_url=f"redis://127.0.0.1:{server.port}",
                    directory=Path(tmp),
                )
            )
        finally:
            server.stop()
    elapsed = time.monotonic() - started
    print(
        f"seed {args.seed}: {report.requests} requests in {elapsed:.0f} s,"
        f" statuses {dict(sorted(report.statuses.items()))}"
    )
    for failure in report.failures:
        print("FAIL", failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
