"""The README's examples run as written, so they never rot."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import inline_state

from .support import REPO, Client, RunningBot, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
README = (REPO / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


async def test_quick_start_and_the_state_api_snippet(client_for: StartFn) -> None:
    quick_start, _, state_api = blocks("python")
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
    _, snippet, _ = blocks("python")
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
