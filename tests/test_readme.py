"""The README's examples run as written, so they never rot."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botbuilder.core import ActivityHandler, MemoryStorage, TurnContext, UserState
from botbuilder.core import MessageFactory as BotbuilderMessageFactory
from botbuilder.core.integration import aiohttp_error_middleware
from botbuilder.integration.aiohttp import ConfigurationBotFrameworkAuthentication
from microsoft_agents.hosting.core import MessageFactory, TurnState
from microsoft_agents.hosting.core import TurnContext as AgentsTurnContext
from samples.agents_state_management.bot import sdk_app
from samples.botbuilder_state_management.bot import Config

import inline_state
import inline_state.agents
import inline_state.botbuilder

from .support import REPO, Client, RunningBot, activity, carries_a_bag, post
from .test_agents import ANONYMOUS
from .test_encryption import cli, file_and_wal

StartFn = Callable[[web.Application], Awaitable[Client]]
README = (REPO / "README.md").read_text(encoding="utf-8")


def blocks(language: str, section: str | None = None) -> list[str]:
    """The README's code blocks in one language, of one ``## section`` when named."""
    text = README
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


async def test_quick_start_and_the_state_api_snippet(client_for: StartFn) -> None:
    quick_start = blocks("python", "Quick start")[0]
    state_api = blocks("python", "The REST state API (ETags)")[0]
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(quick_start, "README.md", "exec"), namespace)
    exec(compile(state_api, "README.md", "exec"), namespace)
    client = await client_for(namespace["app"])
    texts = [(await post(client, activity(bot="28:your-app-id")))[1]["text"] for _ in range(3)]
    assert texts == ["message 1 from you", "message 2 from you", "message 3 from you"]
    response = await client.get(
        "/v3/botstate/test/users/user-1",
        headers={"Authorization": "Bearer a long random secret"},
    )
    body = await response.json()
    assert body["data"] == {"count": 3}, "the API reads what the cookie path wrote"


async def test_client_middleware_snippet() -> None:
    snippet = blocks("python", "Replies POSTed to the channel")[0]
    namespace: dict[str, Any] = {"aiohttp": aiohttp, "inline_state": inline_state}
    namespace["app"] = web.Application()
    exec(compile(snippet, "README.md", "exec"), namespace)
    session = namespace["session"]
    try:
        assert isinstance(namespace["middleware"].client, inline_state.InlineStateClientMiddleware)
        assert session._middlewares == (namespace["middleware"].client,)
    finally:
        await session.close()


def test_curl_conversation_with_the_sample_bot() -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail(
            "curl is not installed: the README's conversation needs it (apt-get install curl)"
        )
    [console] = blocks("console")
    steps: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line:
            steps[-1][1].append(line)
    assert len(steps) == 2
    bot = RunningBot(REPO / "samples" / "state_management" / "bot.py").start()
    try:
        for command, expected in steps:
            argv = shlex.split(command.replace("localhost:3978", f"127.0.0.1:{bot.port}"))
            assert argv[0] == "curl"
            out = subprocess.run(
                [curl, *argv[1:]], capture_output=True, text=True, timeout=20, check=True
            ).stdout
            assert out.splitlines() == expected, command
    finally:
        bot.stop()


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"^make ([\w-]+)", "\n".join(blocks("sh")), flags=re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target
    assert "make run-v1" in README
    assert re.search(r"^run-v1:", makefile, flags=re.MULTILINE)


async def three_counts(client: Client) -> list[str]:
    texts: list[str] = []
    for _ in range(3):
        response = await client.post("/api/messages", json=activity())
        raw = await response.read()
        assert response.status == 200, raw
        assert not carries_a_bag(raw), raw
        texts.extend(reply["text"] for reply in json.loads(raw)["activities"])
    return texts


async def test_agents_sdk_before_and_after(
    client_for: StartFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before, after = blocks("python", "Bots on the Microsoft SDKs")[0:2]
    for snippet in (before, after):
        app, agent_app, adapter = sdk_app(ANONYMOUS)
        namespace: dict[str, Any] = {
            "AGENT_APP": agent_app,
            "APP": app,
            "ADAPTER": adapter,
            "MessageFactory": MessageFactory,
            "TurnContext": AgentsTurnContext,
            "TurnState": TurnState,
            "inline_state": inline_state,
        }
        exec(compile(snippet, "README.md", "exec"), namespace)
        assert await three_counts(await client_for(app)) == ["message 1", "message 2", "message 3"]
    assert (tmp_path / "state.db").exists(), "the after snippet keeps its state in SQLite"


async def test_botbuilder_before_and_after(
    client_for: StartFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before, after = blocks("python", "Bots on the Microsoft SDKs")[2:4]
    for snippet, bot_args in ((before, (UserState(MemoryStorage()),)), (after, ())):
        app = web.Application(middlewares=[aiohttp_error_middleware])
        adapter = inline_state.botbuilder.ExpectRepliesCloudAdapter(
            ConfigurationBotFrameworkAuthentication(Config())
        )
        namespace: dict[str, Any] = {
            "APP": app,
            "ADAPTER": adapter,
            "ActivityHandler": ActivityHandler,
            "MessageFactory": BotbuilderMessageFactory,
            "TurnContext": TurnContext,
            "UserState": UserState,
            "inline_state": inline_state,
        }
        exec(compile(snippet, "README.md", "exec"), namespace)
        bot = namespace["CountingBot"](*bot_args)

        async def messages(request: web.Request, bot: Any = bot, adapter: Any = adapter) -> Any:
            return await adapter.process(request, bot)

        app.router.add_post("/api/messages", messages)
        assert await three_counts(await client_for(app)) == ["message 1", "message 2", "message 3"]
    assert (tmp_path / "state.db").exists(), "the after snippet keeps its state in SQLite"


def test_the_botbuilder_js_snippet_is_the_bot_the_tests_run() -> None:
    [snippet] = blocks("js")
    bot = (REPO / "tests" / "bots" / "js" / "bot.js").read_text()
    assert snippet.strip() in bot


async def test_the_inspector_snippet(client_for: StartFn) -> None:
    quick_start = blocks("python")[0]
    [snippet] = blocks("python", "The inspector")
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(quick_start, "README.md", "exec"), namespace)
    exec(compile(snippet, "README.md", "exec"), namespace)
    client = await client_for(namespace["app"])
    await post(client, activity(bot="28:your-app-id"))
    page = await client.get("/inspector/")
    assert page.status == 200 and "inspector.js" in await page.text()
    login = await client.post("/inspector/api/login", json={"secret": "a long random secret"})
    assert login.status == 200
    csrf = (await login.json())["csrf"]
    listing = await client.post(
        "/inspector/api/records",
        json={"channel": "test", "kind": "user"},
        headers={"X-Inline-State-CSRF": csrf},
    )
    assert [r["user"] for r in (await listing.json())["records"]] == ["user-1"]


async def test_the_exact_counters_snippet(client_for: StartFn) -> None:
    [snippet] = blocks("python", "Exact counters")
    namespace: dict[str, Any] = {"inline_state": inline_state, "web": web}
    exec(compile(snippet, "README.md", "exec"), namespace)
    app = web.Application()
    inline_state.setup(app, "memory://")
    app.router.add_post("/api/messages", namespace["messages"])
    client = await client_for(app)
    answers = await asyncio.gather(*(post(client, activity()) for _ in range(20)))
    assert all(status == 200 for status, _ in answers)
    _, reply = await post(client, activity())
    assert reply["text"] == "visit 21"


@pytest.mark.parametrize("hashed", [False, True], ids=["sealed", "hashed"])
async def test_the_encryption_snippet_seals_what_it_stores(
    client_for: StartFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: bool
) -> None:
    keygens = [b for b in blocks("sh", "Encryption at rest") if "keygen" in b]
    variables = ["INLINE_STATE_KEYS", "INLINE_STATE_HASH_KEY"][: 1 + hashed]
    for variable in variables:  # each snippet exports a fresh key into its variable
        [keygen] = [b for b in keygens if f"export {variable}=" in b]
        assert "python -m inline_state keygen" in keygen
        code, out, _ = await cli("keygen")
        assert code == 0
        monkeypatch.setenv(variable, out.strip())
    monkeypatch.chdir(tmp_path)
    [snippet] = blocks("python", "Encryption at rest")
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(snippet, "README.md", "exec"), namespace)
    app = namespace["app"]

    async def remember(request: web.Request) -> web.Response:
        reply = inline_state.create_reply(await request.json(), "ok")
        inline_state.set_user_data(reply, "full_name", "Ada Lovelace")
        return web.json_response(reply)

    app.router.add_post("/api/messages", remember)
    client = await client_for(app)
    assert (await post(client, activity()))[0] == 200
    assert (await post(client, activity()))[0] == 200
    await client.close()
    raw = file_and_wal(tmp_path / "state.db")
    assert b"Ada Lovelace" not in raw
    # Hashed: neither the property's name nor the user's id is in the file.
    assert (b"full_name" in raw) != hashed
    assert (activity()["from"]["id"].encode() in raw) != hashed
