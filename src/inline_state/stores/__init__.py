"""Store backends behind one interface, chosen by URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._base import (
    ApplyResult,
    ExportPage,
    PreconditionFailed,
    RecordTooLarge,
    Store,
    StoredRecord,
    StoreError,
    StoreUnavailable,
)
from .memory import MemoryStore
from .redis import RedisStore
from .sqlite import SqliteStore

__all__ = [
    "ApplyResult",
    "ExportPage",
    "MemoryStore",
    "PreconditionFailed",
    "RecordTooLarge",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "open_store",
]


_SQLITE_OPTIONS: dict[str, Callable[[str], Any]] = {"synchronous": str.upper, "timeout": float}


def open_store(url: str, **options: Any) -> Store:
    """A store for a URL; ``options`` go to the backend's constructor.

    - ``memory://``
    - ``sqlite:///relative/state.db``, ``sqlite:////absolute/state.db``
      (query: ``synchronous=FULL``, ``timeout=<seconds>``)
    - ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS),
      ``redis+cluster://host:port`` (query: ``prefix=...``, ``timeout=<seconds>``)

    The store is not connected yet: use it as an async context manager, or let
    ``setup()`` open and close it with the app.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryStore(**options)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"expected sqlite:///path/to/state.db, got {url!r}")
        for name, value in parse_qsl(parts.query, strict_parsing=bool(parts.query)):
            if name not in _SQLITE_OPTIONS:
                raise ValueError(f"unknown sqlite:// option {name!r} in {url!r}")
            options.setdefault(name, _SQLITE_OPTIONS[name](value))
        return SqliteStore(parts.path[1:], **options)
    if parts.scheme in ("redis", "rediss", "redis+cluster"):
        return RedisStore.from_url(url, **options)
    raise ValueError(
        f"unsupported store URL {url!r}: expected memory://, sqlite:///path,"
        " redis://, rediss:// or redis+cluster://"
    )
