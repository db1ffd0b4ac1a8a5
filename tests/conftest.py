"""Fixtures: a real aiohttp server on a free loopback port per app."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from inline_state import KeyRing, MemoryStore, SealedStore, SqliteStore, Store, open_store
from inline_state._seal import new_key
from inline_state.stores.sqlite import DEFAULT_CACHE_BYTES as DEFAULT_SQLITE_CACHE_BYTES

from .redis_servers import RedisCluster, RedisServer
from .support import Channel, Client


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


StoreFactory = Callable[..., Store]


def hashes_ids(store: Store) -> bool:
    """Whether a store keeps ids and names hashed (a prefix then finds an exact id, and
    listings come in the hashes' order)."""
    return isinstance(store, SealedStore) and store.keys.hash_key_id is not None


TEST_KEYS = KeyRing.from_text(new_key(), source="the tests' key")
TEST_HASHING_KEYS = KeyRing.from_text(
    new_key(), source="the tests' hashing key ring", hash_key=os.urandom(32)
)


@pytest.fixture(
    params=[
        "memory",
        "memory-cold",
        "sqlite",
        "sqlite-cold",
        "redis",
        "redis-cluster",
        "memory-sealed",
        "memory-cold-sealed",
        "sqlite-sealed",
        "sqlite-cold-sealed",
        "redis-sealed",
        "redis-cluster-sealed",
        "memory-hashed",
        "sqlite-hashed",
        "redis-hashed",
        "redis-cluster-hashed",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of fresh, unopened stores of one backend.

    ``memory-cold`` is memory:// with a cache of one record, so nearly every operation
    packs a record out and decodes one back in; ``sqlite-cold`` keeps no decoded record,
    so every operation reads the file. ``-sealed``: the backend behind a SealedStore
    (encryption at rest), which must keep every rule (memory:// and SQLite seal where
    values leave the process, so their cold variants open on nearly every read); ``-hashed``: that, with ids and
    names hashed too.
    """
    if request.param.endswith(("-sealed", "-hashed")):
        inner = _backend(request.param.rsplit("-", 1)[0], request, tmp_path)
        ring = TEST_KEYS if request.param.endswith("-sealed") else TEST_HASHING_KEYS
        return lambda **options: SealedStore(inner(**options), ring)
    return _backend(request.param, request, tmp_path)


def _backend(param: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    names = itertools.count()
    if param == "memory":
        return MemoryStore
    if param == "memory-cold":
        return lambda **options: MemoryStore(cache_bytes=0, **options)
    if param in ("sqlite", "sqlite-cold"):
        cache_bytes = 0 if param == "sqlite-cold" else DEFAULT_SQLITE_CACHE_BYTES
        return lambda **options: SqliteStore(
            tmp_path / f"state-{next(names)}.db", cache_bytes=cache_bytes, **options
        )
    scheme, port = (
        ("redis", request.getfixturevalue("redis_server").port)
        if param == "redis"
        else ("redis+cluster", request.getfixturevalue("redis_cluster").port)
    )
    # A fresh key prefix per store isolates tests sharing the session's server.
    return lambda **options: open_store(
        f"{scheme}://127.0.0.1:{port}?prefix=t{uuid.uuid4().hex}", **options
    )


@pytest.fixture
async def channel(aiohttp_server: AiohttpServer) -> tuple[Channel, str]:
    """A recording channel on loopback, and its base URL (a serviceUrl)."""
    fake = Channel()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/"))
