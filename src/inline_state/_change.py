"""``Change``: one net change to one record, the unit a store applies. A leaf: stores
import it, and know nothing of how replies are diffed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ._keys import RecordKey

__all__ = ["Change"]

DEFAULT_MAX_BAG_BYTES = 64 * 1024
DEFAULT_MAX_PROPERTIES = 1000


class Change(NamedTuple):
    """One net change to one record, applied atomically by a store.

    ``sets`` maps property names to canonical JSON bytes; ``removes`` names properties
    to tombstone. ``replace`` first clears the record at ``stamp`` (whole-bag writes).
    ``base`` is the highest stamp the turn observed on the owner's records (and the
    owner's deletion stamp); a store drops changes to a user's records whose base is
    below the user's deletion stamp.
    """

    key: RecordKey
    sets: Mapping[str, bytes]
    removes: frozenset[str] = frozenset()
    replace: bool = False
    stamp: int = 0
    base: int = 0
    max_bytes: int = DEFAULT_MAX_BAG_BYTES
