"""Copying every record of one store into another (``python -m inline_state copy``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ._base import Store

__all__: list[str] = []


class Copied(NamedTuple):
    """What a copy did: records read, records that changed the target, and deletion
    stamps read."""

    records: int
    changed: int
    deletions: int


async def copy_records(
    source: Store,
    target: Store,
    *,
    limit: int = 200,
    progress: Callable[[Copied], None] | None = None,
) -> Copied:
    """Copy every record and deletion stamp of ``source`` into ``target``, keeping
    stamps, eTags, tombstones and expiries; values go as stored (sealed ones stay
    sealed, and open on the target with the same keys: they are bound to their record
    key, which a copy keeps).

    The target merges what it is given by the usual rules, so a copy can run under a
    bot's traffic on either side and again after it; what changed on the source
    meanwhile is copied by the next run."""
    records = changed = deletions = 0
    cursor: str | None = None
    while True:
        page = await source.dump(cursor=cursor, limit=limit)
        if page.records or page.deletions:
            changed += await target.restore(page.records, page.deletions)
        records += len(page.records)
        deletions += len(page.deletions)
        if progress is not None:
            progress(Copied(records, changed, deletions))
        cursor = page.cursor
        if cursor is None:
            return Copied(records, changed, deletions)
