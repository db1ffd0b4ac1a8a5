"""Store backends behind one interface, chosen by URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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

__all__ = [
    "ApplyResult",
    "ExportPage",
    "MemoryStore",
    "PreconditionFailed",
    "RecordTooLarge",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "open_store",
]


def open_store(url: str, **options: Any) -> Store:
    """A store for a URL; ``options`` go to the backend's constructor.

    ``memory://`` is the only backend so far. The store is not connected yet: use it as
    an async context manager, or let ``setup()`` open and close it with the app.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(**options)
    raise ValueError(f"unsupported store URL {url!r}: expected memory://")
