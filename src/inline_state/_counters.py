"""Exact counters as hidden stamped properties of a record (work in progress, issue 17).

An increment of property ``p`` by ``d``, made by a change stamped ``s``, is stored as
its own property ``INCREMENT + p + "\\0" + hex(s)`` holding ``d``; a set or removal of
``p`` at stamp ``b`` writes ``MARK + p`` holding ``b`` beside it. Every store merges
these like any property, so nothing in a backend changes, and:

- every order of the same changes gives the same record (they are stamped entries);
- a retried change counts once (its increment is the same entry at the same stamp);
- the value played back (``effective``) is ``p``'s stored value if it is an integer (0
  when absent or not one) plus every increment stamped above ``p``'s mark, or ``p`` as
  stored when no increment is above its mark. A clear at stamp ``c`` removes every
  entry below ``c``, increments and marks too.

Increments older than a horizon are folded (``fold``) into one ordinary write stamped
with the newest folded increment, which sets ``p`` and its mark and removes the folded
entries; an increment that arrives older than the horizon after a fold is lost, as a
late change past the tombstone window is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

__all__: list[str] = []

#: Every hidden name starts with this; a bot's own property names must not.
HIDDEN = "\x00is:"
INCREMENT = HIDDEN + "+"
MARK = HIDDEN + "="
_INT64 = range(-(2**63), 2**63)


def increment_name(name: str, stamp: int) -> str:
    """The hidden property holding one change's increment of ``name``."""
    return f"{INCREMENT}{name}\x00{stamp:x}"


def mark_name(name: str) -> str:
    """The hidden property holding the stamp of the last set or removal of ``name``."""
    return MARK + name


def may_hide(props: Mapping[str, bytes]) -> bool:
    """False when no property of ``props`` can be hidden (one C-level pass over the
    names: hidden names sort before every name that does not start with NUL)."""
    return bool(props) and min(props)[:1] == "\x00"


def _as_int(value: bytes | None) -> int | None:
    """The integer a canonical JSON value is, or None (absent, or not an integer)."""
    if value is None or not value or len(value) > 40:
        return None
    body = value[1:] if value[:1] == b"-" else value
    return int(value) if body.isdigit() else None


class Counters(NamedTuple):
    """A stored record's properties split: the plain ones, each counter's mark, and its
    increments as (stamp, delta, hidden name)."""

    plain: dict[str, bytes]
    marks: dict[str, int]
    increments: dict[str, list[tuple[int, int, str]]]


_AT_KIND = len(HIDDEN)  # where "+" or "=" stands in a hidden name
_NAME_AT = len(INCREMENT)


def parse(props: Mapping[str, bytes]) -> Counters:
    """Split a stored record's properties (once per turn: every other function here
    takes the result)."""
    plain: dict[str, bytes] = {}
    marks: dict[str, int] = {}
    increments: dict[str, list[tuple[int, int, str]]] = {}
    for name, value in props.items():
        if name[:1] != "\x00" or not name.startswith(HIDDEN):
            plain[name] = value
            continue
        which = name[_AT_KIND : _AT_KIND + 1]
        try:
            if which == "+":
                head, _, stamp = name.rpartition("\x00")
                if len(head) > _NAME_AT:
                    entry = (int(stamp, 16), int(value), name)
                    increments.setdefault(head[_NAME_AT:], []).append(entry)
            elif which == "=":
                marks[name[_NAME_AT:]] = int(value)
        except ValueError:  # not written by us: ignored
            continue
    return Counters(plain, marks, increments)


def played(counters: Counters) -> dict[str, bytes]:
    """The properties as played back: hidden ones gone, counters summed."""
    plain, marks, increments = counters
    out = dict(plain)
    for name, entries in increments.items():
        above = marks.get(name, 0)
        counted = [delta for stamp, delta, _ in entries if stamp > above]
        if counted:
            out[name] = b"%d" % _saturated((_as_int(out.get(name)) or 0) + sum(counted))
    return out


def effective(props: Mapping[str, bytes]) -> Mapping[str, bytes]:
    """``played`` of a stored record (``props`` itself when it holds no hidden one)."""
    return played(parse(props)) if may_hide(props) else props


class Fold(NamedTuple):
    """The writes that fold old increments: ``sets`` (the summed values and their
    marks, possibly none) stamped ``stamp``, the newest folded increment's; and
    ``removes``, the folded entries, which must go in a change stamped above it (the
    turn's own): a removal only takes an entry with a stamp above the entry's."""

    stamp: int
    sets: dict[str, bytes]
    removes: frozenset[str]


def fold(stored: Mapping[str, bytes] | Counters, horizon: int) -> Fold | None:
    """The writes that fold every increment stamped at or below ``horizon`` into its
    property, or None when there is none to fold (increments below their property's
    mark, which no longer count, are removed with them; so is the mark of a property
    that is gone and has no increment left)."""
    if not isinstance(stored, Counters):
        if not may_hide(stored):
            return None
        stored = parse(stored)
    plain, marks, increments = stored
    folded: list[tuple[str, list[tuple[int, int, str]]]] = []
    newest = 0
    for name, entries in increments.items():
        old = [entry for entry in entries if entry[0] <= horizon]
        if old:
            folded.append((name, old))
            newest = max(newest, *(stamp for stamp, _, _ in old))
    spent = {
        mark_name(name)
        for name, at in marks.items()
        if at <= horizon and name not in plain and name not in increments
    }
    if not folded and not spent:
        return None
    sets: dict[str, bytes] = {}
    removes: set[str] = set(spent)
    for name, old in folded:
        above = marks.get(name, 0)
        counted = [delta for stamp, delta, _ in old if stamp > above]
        removes.update(hidden for _, _, hidden in old)
        if counted:
            value = _saturated((_as_int(plain.get(name)) or 0) + sum(counted))
            sets[name] = b"%d" % value
            sets[mark_name(name)] = b"%d" % newest
    return Fold(newest, sets, frozenset(removes))


def _saturated(value: int) -> int:
    # Concurrent increments can sum past 64 bits, which JSON readers turn into floats.
    return min(max(value, _INT64.start), _INT64.stop - 1)


def newest_increment(counters: Counters) -> int:
    """The stamp of the newest increment a record holds (0 when none)."""
    return max((s for entries in counters.increments.values() for s, _, _ in entries), default=0)


def checked_delta(name: str, delta: object) -> int:
    """An increment as a reply gives it: an integer within 64 bits (not a bool);
    ValueError saying what is wrong otherwise."""
    if type(delta) is not int:
        raise ValueError(
            f"the increment of {name!r} must be an integer, got {type(delta).__name__}"
        )
    if delta not in _INT64:
        raise ValueError(f"the increment of {name!r} does not fit in 64 bits")
    return delta


def counter_names(counters: Counters) -> set[str]:
    """The properties of a stored record that have increments or a mark."""
    return counters.marks.keys() | counters.increments.keys()


def effective_stamps(props: Mapping[str, bytes], stamps: Mapping[str, int]) -> dict[str, int]:
    """Each played property's stamp, from a record's stored stamps: a counter's is the
    newest of its value, its mark and its increments."""
    out = {name: stamp for name, stamp in stamps.items() if not name.startswith(HIDDEN)}
    if not may_hide(props):
        return out
    for name, entries in parse(props).increments.items():
        newest = max(stamp for stamp, _, _ in entries)
        out[name] = max(out.get(name, 0), newest)
    return out


def entries_of(
    increments: Mapping[str, int],
    marked: set[str] | frozenset[str],
    stamp: int,
) -> dict[str, bytes]:
    """The hidden properties one change stamped ``stamp`` writes: an increment entry per
    incremented property, and a mark per property in ``marked`` (set or removed)."""
    out = {increment_name(name, stamp): b"%d" % delta for name, delta in increments.items()}
    for name in marked:
        out[mark_name(name)] = b"%d" % stamp
    return out
