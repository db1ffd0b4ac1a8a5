"""Test helpers: message factories and tiny real bots."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from aiohttp.test_utils import TestClient

import inline_state

Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ids = itertools.count(1)


def activity(
    *,
    text: str = "hi",
    user: str = "user-1",
    conversation: str = "conv-1",
    channel: str = "test",
    bot: str = "bot-1",
    type: str = "message",
    **extra: Any,
) -> dict[str, Any]:
    """A v3 Activity as a channel sends it."""
    return {
        "type": type,
        "id": f"act-{next(_ids)}",
        "channelId": channel,
        "serviceUrl": "http://127.0.0.1:1/",
        "conversation": {"id": conversation},
        "from": {"id": user, "name": "User"},
        "recipient": {"id": bot, "name": "Bot"},
        "deliveryMode": "expectReplies",
        "text": text,
        **extra,
    }


def v1_message(
    *,
    text: str = "hi",
    user: str = "user-1",
    conversation: str = "conv-1",
    bot: str = "bot-1",
    type: str = "Message",
    **extra: Any,
) -> dict[str, Any]:
    """A v1 Message as the 2016 Bot Connector sent it."""
    return {
        "type": type,
        "id": f"msg-{next(_ids)}",
        "conversationId": conversation,
        "from": {"id": user, "channelId": "test", "address": user},
        "to": {"id": bot, "channelId": "test", "address": bot, "isBot": True},
        "text": text,
        **extra,
    }


ReplyFn = Callable[[dict[str, Any]], Any]


def echo_app(
    make_body: ReplyFn, store: str | inline_state.Store = "memory://", **options: Any
) -> tuple[web.Application, list[dict[str, Any]]]:
    """An app whose bot records what it received and answers ``make_body(message)``."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        message = await request.json()
        seen.append(message)
        return web.json_response(make_body(message))

    app = web.Application()
    inline_state.setup(app, store, **options)
    app.router.add_post("/api/messages", handler)
    return app, seen


async def post(client: Client, body: Any) -> tuple[int, Any]:
    """POST a JSON body to /api/messages; return status and parsed JSON (or text)."""
    response = await client.post("/api/messages", json=body)
    text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningProcess:
    """A server started as its own process on a free loopback port.

    ``argv(port)`` builds its command line for the port picked.
    """

    def __init__(self, argv: Callable[[int], list[str]]) -> None:
        self.argv = argv
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/messages"

    def start(self, timeout: float = 20.0) -> Self:
        for _ in range(5):  # another process may grab the port between probe and bind
            self.port = free_port()
            self.process = subprocess.Popen(
                self.argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"{self.argv(0)} did not start listening")

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate a child process, killing it if it does not exit within 5 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class RunningBot(RunningProcess):
    """A sample bot script started with ``--port``."""

    def __init__(self, script: Path, *args: str) -> None:
        super().__init__(lambda port: [sys.executable, str(script), "--port", str(port), *args])


REPO = Path(__file__).resolve().parent.parent


class Channel:
    """A channel on loopback that records every request it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.status = 200
        self.redirect_once = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        app.router.add_put("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if self.redirect_once and not request.path.startswith("/moved"):
            self.redirect_once = False
            raise web.HTTPTemporaryRedirect("/moved" + request.path)
        self.received.append((request.path, request.content_type, await request.json()))
        return web.json_response({"id": "sent"}, status=self.status)


def carries_a_bag(raw: bytes | str | dict[str, Any]) -> bool:
    """True when any spelling of a bag field appears in a body (the wire must not)."""
    text = raw if isinstance(raw, str | bytes) else json.dumps(raw)
    lowered = text.lower() if isinstance(text, str) else text.decode().lower()
    return any(marker in lowered for marker in ("botuserdata", "botconversationdata", "botperuser"))


def memory_records(store: inline_state.MemoryStore) -> int:
    """How many records a MemoryStore holds, whatever their keys (test-only: it reads
    the store's internals, since no public call lists records across bots)."""
    stats = store.cache_stats
    return stats["hot_records"] + stats["packed_records"]
