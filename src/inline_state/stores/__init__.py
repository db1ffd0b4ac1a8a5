"""Store backends behind one interface, chosen by URL; a backend is imported only when
it is used (``redis`` is an extra: ``pip install 'inline_state[redis]'``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .._change import Change
from .._clock import HybridClock
from .._errors import (
    InvalidCursor,
    PreconditionFailed,
    RecordTooLarge,
    StoreError,
    StoreUnavailable,
)
from .._keys import RecordKey, UserRef
from .._message import Kind
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    KEYS_RECORD,
    ApplyResult,
    DumpedRecord,
    DumpPage,
    ExportPage,
    InspectedRecord,
    KeyPage,
    Store,
    StoredRecord,
)
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore
    from .sealed import SealedStore
    from .sqlite import SqliteStore

# What a store implementer needs, in one place.
__all__ = [
    "DEFAULT_TOMBSTONE_TTL",
    "KEYS_RECORD",
    "ApplyResult",
    "Change",
    "DumpPage",
    "DumpedRecord",
    "ExportPage",
    "HybridClock",
    "InspectedRecord",
    "InvalidCursor",
    "KeyPage",
    "MemoryStore",
    "PreconditionFailed",
    "RecordKey",
    "RecordTooLarge",
    "RedisStore",
    "SealedStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "UserRef",
    "open_store",
    "resolve_store",
]


def __getattr__(name: str) -> Any:
    # The backends that pull in a library are loaded on first use, not on import.
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    if name == "RedisStore":
        return _redis_store_class()
    if name == "SealedStore":
        return _sealed_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sealed_store_class() -> type[SealedStore]:
    try:
        from .sealed import SealedStore
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "cryptography":
            raise ImportError(
                "encryption needs the encryption extra: pip install 'inline_state[encryption]'"
            ) from exc
        raise
    return SealedStore


def _redis_store_class() -> type[RedisStore]:
    try:
        from .redis import RedisStore
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("redis", "hiredis"):
            raise ImportError(
                "redis://, rediss:// and redis+cluster:// need the redis extra:"
                " pip install 'inline_state[redis]'"
            ) from exc
        raise
    return RedisStore


_SQLITE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "synchronous": str.upper,
    "timeout": float,
    "cache_bytes": int,
}


def open_store(url: str, **options: Any) -> Store:
    """A store for a URL; ``options`` go to the backend's constructor.

    - ``memory://``
    - ``sqlite:///relative/state.db``, ``sqlite:////absolute/state.db``
      (query: ``synchronous=FULL``, ``timeout=<seconds>``, ``cache_bytes=<bytes>``)
    - ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS),
      ``redis+cluster://host:port`` (query: ``prefix=...``, ``timeout=<seconds>``)

    The store is not connected yet: use it as an async context manager, or let
    ``setup()`` open and close it with the app.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryStore(**options)
    if parts.scheme == "sqlite":
        from .sqlite import SqliteStore

        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"expected sqlite:///path/to/state.db, got {url!r}")
        for name, value in parse_qsl(parts.query, strict_parsing=bool(parts.query)):
            if name not in _SQLITE_OPTIONS:
                raise ValueError(f"unknown sqlite:// option {name!r} in {url!r}")
            options.setdefault(name, _SQLITE_OPTIONS[name](value))
        return SqliteStore(parts.path[1:], **options)
    if parts.scheme in ("redis", "rediss", "redis+cluster"):
        return _redis_store_class().from_url(url, **options)
    raise ValueError(
        f"unsupported store URL {url!r}: expected memory://, sqlite:///path,"
        " redis://, rediss:// or redis+cluster://"
    )


def _is_redis_client(candidate: object) -> bool:
    return type(candidate).__module__.split(".")[0] == "redis"


def resolve_store(
    store: str | Store | Any,
    *,
    clock: HybridClock | None = None,
    ttl: Mapping[Kind, float] | None = None,
    tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    prefix: str | None = None,
    timeout: float | None = None,
) -> tuple[Store, bool]:
    """The Store for what ``setup(app, store)`` was given, and whether it is ours to
    open and close: a URL (yes), a ``redis.asyncio`` client (the store yes, the client
    stays the caller's), or a Store instance (no; the store options must not be given).
    """
    options: dict[str, Any] = {"clock": clock, "ttl": ttl, "tombstone_ttl": tombstone_ttl}
    extra: dict[str, Any] = {
        k: v for k, v in (("prefix", prefix), ("timeout", timeout)) if v is not None
    }
    if isinstance(store, str):
        return open_store(store, **options, **extra), True
    if isinstance(store, Store):
        given = [k for k, v in (("ttl", ttl), *extra.items()) if v is not None]
        if given or tombstone_ttl != DEFAULT_TOMBSTONE_TTL:
            raise TypeError(
                f"store options {given or ['tombstone_ttl']} need a store URL or client;"
                " give them to the Store instance instead"
            )
        return store, False
    if _is_redis_client(store):
        return _redis_store_class()(store, **options, **extra), True
    raise TypeError(
        f"store must be a URL, a Store or a redis.asyncio client, got {type(store).__name__}"
    )
