"""Fixtures: a real aiohttp server on a free loopback port per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from .support import Client


@pytest.fixture
def client_for(aiohttp_client: AiohttpClient) -> Callable[[web.Application], Awaitable[Client]]:
    """Start an app on a free loopback port and return a real client for it."""

    async def start(app: web.Application) -> Client:
        return await aiohttp_client(app)

    return start
