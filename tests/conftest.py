"""Fixtures: a real aiohttp server on a free loopback port per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from .redis_servers import RedisCluster, RedisServer
from .support import Client


@pytest.fixture
def client_for(aiohttp_client: AiohttpClient) -> Callable[[web.Application], Awaitable[Client]]:
    """Start an app on a free loopback port and return a real client for it."""

    async def start(app: web.Application) -> Client:
        return await aiohttp_client(app)

    return start


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-node Redis Cluster for the whole session."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()
