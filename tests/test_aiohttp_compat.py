"""The one private aiohttp detail we rely on, pinned so an upgrade fails loudly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .support import Client

StartFn = Callable[[web.Application], Awaitable[Client]]


async def test_replacing_the_cached_body_is_seen_by_json_and_text(client_for: StartFn) -> None:
    assert "_read_bytes" in web.BaseRequest.ATTRS

    @web.middleware
    async def rewrite(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        await request.read()
        request._read_bytes = b'{"rewritten": true}'
        return await handler(request)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response([await request.json(), await request.text()])

    app = web.Application(middlewares=[rewrite])
    app.router.add_post("/", handler)
    client = await client_for(app)
    response = await client.post("/", json={"original": True})
    assert await response.json() == [{"rewritten": True}, '{"rewritten": true}']
