"""``setup()``: the one call that wires inline state onto an app, around one engine.

A composition root: it may import the adapters it puts together (the server middleware
and the client middleware); the adapters never import each other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from ._change import DEFAULT_MAX_BAG_BYTES, DEFAULT_MAX_PROPERTIES
from ._client import InlineStateClientMiddleware
from ._clock import HybridClock
from ._codec import DEFAULT_MAX_DEPTH
from ._engine import DEFAULT_MAX_ID_LENGTH, Engine
from ._http import ENGINE_KEY, STORE_KEY
from ._message import Kind
from ._server import InlineStateMiddleware
from .stores import DEFAULT_TOMBSTONE_TTL, Store

if TYPE_CHECKING:
    from ._seal import KeyRing

__all__ = ["setup"]


def setup(
    app: web.Application,
    store: str | Store | Any = "memory://",
    *,
    paths: Collection[str] = ("/api/messages",),
    clock: HybridClock | None = None,
    merge: Literal["property", "bag"] = "property",
    keep_fields: bool = False,
    max_bag_bytes: int = DEFAULT_MAX_BAG_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
    ttl: Mapping[Kind, float] | None = None,
    tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    prefix: str | None = None,
    timeout: float | None = None,
    encryption: KeyRing | None = None,
) -> InlineStateMiddleware:
    """Add inline state to an app: the middleware, and the store's lifecycle.

    ``store`` is a URL (opened and closed with the app), an existing
    ``redis.asyncio`` client (the caller keeps owning it), or a Store instance (the
    caller opens and closes it). ``ttl``, ``tombstone_ttl``, ``prefix`` (Redis) and
    ``timeout`` configure a store made from a URL or a client. The rest are the
    engine's: see ``Engine`` and the README's options table. ``encryption``, a
    ``KeyRing`` (``KeyRing.load()`` reads the keys from the environment), seals every
    stored value at rest (the ``encryption`` extra). Returns the middleware;
    ``middleware.engine`` is what the client middleware, the REST API and the SDK
    integrations share.
    """
    engine = Engine.create(
        store,
        clock=clock,
        merge=merge,
        keep_fields=keep_fields,
        max_bag_bytes=max_bag_bytes,
        max_properties=max_properties,
        max_depth=max_depth,
        max_id_length=max_id_length,
        ttl=ttl,
        tombstone_ttl=tombstone_ttl,
        prefix=prefix,
        timeout=timeout,
        encryption=encryption,
    )
    middleware = InlineStateMiddleware(
        engine, paths=paths, client=InlineStateClientMiddleware(engine)
    )
    app.middlewares.append(middleware)
    app.cleanup_ctx.append(middleware.cleanup_ctx)
    app[ENGINE_KEY] = engine
    app[STORE_KEY] = engine.store
    return middleware
