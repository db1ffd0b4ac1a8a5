"""A real botbuilder-js bot (``tests/bots/js``: botbuilder 4.23.3 from npm, as shipped)
behind the proxy, keeping its state in ``channelData.inlineState``: inline
(expectReplies) and normal delivery, where the SDK POSTs its replies through a mapper
that drops unknown top-level fields."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

import inline_state
from inline_state import MemoryStore, RecordKey

from .support import RunningProcess, activity, carries_a_bag, free_port
from .test_proxy import Recorder

JS_BOT = Path(__file__).resolve().parent / "bots" / "js"
USER = RecordKey("user", "bot-1", "test", "", "user-1")
CONVERSATION = RecordKey("conversation", "bot-1", "test", "conv-1", "")


@pytest.fixture
def js_bot() -> Iterator[RunningProcess]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the botbuilder-js test needs Node.js")
    if not (JS_BOT / "node_modules" / "botbuilder").is_dir():
        raise RuntimeError(f"botbuilder-js is not installed: run `npm ci --prefix {JS_BOT}`")
    bot = RunningProcess(lambda port: [node, str(JS_BOT / "bot.js"), "--port", str(port)])
    bot.start()
    yield bot
    bot.stop()


@pytest.mark.parametrize("delivery", ["expectReplies", "normal"])
async def test_a_botbuilder_js_bot_keeps_its_state_through_the_proxy(
    aiohttp_server: AiohttpServer, js_bot: RunningProcess, delivery: str
) -> None:
    channel = Recorder()
    channel_server = await aiohttp_server(channel.app())
    store = MemoryStore()
    proxy_port = free_port()
    proxy = inline_state.proxy_app(
        upstream=js_bot.url,
        store=store,
        channel=str(channel_server.make_url("")).rstrip("/"),
        rewrite_service_url=f"http://127.0.0.1:{proxy_port}",  # its replies come here
    )
    proxy_server = await aiohttp_server(proxy, port=proxy_port)
    texts = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            sent = activity(deliveryMode=delivery, serviceUrl="https://channel.invalid/")
            async with session.post(proxy_server.make_url("/api/messages"), json=sent) as answer:
                body = await answer.read()
                assert answer.status == 200, body
            assert not carries_a_bag(body), "nothing the channel receives holds a bag"
            if delivery == "expectReplies":
                [reply] = (await answer.json())["activities"]
                texts.append(reply["text"])
    if delivery == "normal":
        assert len(channel.received) == 3
        for path, reply, _ in channel.received:
            assert path.startswith("/v3/conversations/conv-1/activities/")
            assert not carries_a_bag(reply)
            texts.append(reply["text"])
    else:
        assert channel.received == []
    assert texts == ["user 1 conversation 1", "user 2 conversation 2", "user 3 conversation 3"]
    user, conversation = await store.load([USER, CONVERSATION])
    assert (user.props, conversation.props) == ({"count": b"3"}, {"count": b"3"})
