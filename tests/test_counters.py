"""Laws of exact counters (``_counters``) over the stores' own merge (``Record``).

Work in progress for issue 17: the wire, the engine and the backends' tests come next.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from inline_state import Change, RecordKey
from inline_state._counters import (
    INCREMENT,
    effective,
    fold,
    increment_name,
    mark_name,
)
from inline_state.stores._record import Record

KEY = RecordKey("user", "bot", "chan", "", "u1")
NAMES = ["count", "other"]


def set_change(stamp: int, name: str, value: bytes | None) -> Change:
    """A set (or, for None, a removal) of ``name``, with its mark, as the engine writes it."""
    sets = {mark_name(name): b"%d" % stamp}
    if value is not None:
        sets[name] = value
    return Change(KEY, sets, frozenset() if value is not None else frozenset({name}), False, stamp)


def increment(stamp: int, name: str, delta: int) -> Change:
    return Change(KEY, {increment_name(name, stamp): b"%d" % delta}, frozenset(), False, stamp)


def clear(stamp: int) -> Change:
    return Change(KEY, {}, frozenset(), True, stamp)


def model(ops: list[tuple[str, int, str, object]]) -> dict[str, bytes]:
    """The rule of the issue, computed directly: a property's value is its last set (or
    removal, or the record's clear) at stamp b, plus every increment stamped above b."""
    out: dict[str, bytes] = {}
    for name in NAMES:
        writes = [(s, op, v) for op, s, n, v in ops if op == "clear" or (n == name and op != "inc")]
        last = max(writes, default=(0, "none", None))
        b, op, value = last
        counted = [v for o, s, n, v in ops if o == "inc" and n == name and s > b]
        if counted:
            base = 0
            if op == "set" and isinstance(value, bytes) and value.lstrip(b"-").isdigit():
                base = int(value)
            out[name] = b"%d" % (base + sum(int(str(v)) for v in counted))
        elif op == "set":
            assert isinstance(value, bytes)
            out[name] = value
    return out


def change_of(op: tuple[str, int, str, object]) -> Change:
    kind, stamp, name, value = op
    if kind == "inc":
        assert isinstance(value, int)
        return increment(stamp, name, value)
    if kind == "clear":
        return clear(stamp)
    return set_change(stamp, name, value if isinstance(value, bytes) else None)


operations = st.lists(
    st.tuples(
        st.sampled_from(["inc", "inc", "inc", "set", "remove", "clear"]),
        st.sampled_from(NAMES),
        st.one_of(st.integers(-5, 5), st.sampled_from([b"7", b'"text"', b"0"])),
    ),
    min_size=1,
    max_size=7,
)


def normalised(raw: list[tuple[str, str, object]]) -> list[tuple[str, int, str, object]]:
    ops: list[tuple[str, int, str, object]] = []
    for stamp, (kind, name, value) in enumerate(raw, start=1):
        if kind == "inc":
            value = value if isinstance(value, int) else 1
        elif kind == "set":
            value = value if isinstance(value, bytes) else str(value).encode()
        else:
            value = None
        ops.append((kind, stamp << 8, name, value))
    return ops


@settings(max_examples=150, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_any_order_gives_the_rule(raw: list[tuple[str, str, object]], rng: random.Random) -> None:
    ops = normalised(raw)
    expected = model(ops)
    orders = list(itertools.permutations(ops)) if len(ops) <= 5 else []
    orders += [tuple(rng.sample(ops, len(ops))) for _ in range(20)]
    for order in orders:
        rec = Record()
        for op in order:
            rec.apply(change_of(op))
        assert dict(effective(rec.values)) == expected, order


@settings(max_examples=100, deadline=None)
@given(operations)
def test_a_retried_change_counts_once(raw: list[tuple[str, str, object]]) -> None:
    ops = normalised(raw)
    rec = Record()
    for op in ops:
        rec.apply(change_of(op))
        rec.apply(change_of(op))  # the store's retry of the same apply
    assert dict(effective(rec.values)) == model(ops)


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(0, 8))
def test_folding_keeps_the_value_and_the_rule(raw: list[tuple[str, str, object]], cut: int) -> None:
    # Fold everything up to a horizon, then apply the rest: the value is as if unfolded.
    ops = normalised(raw)
    horizon = cut << 8
    early = [op for op in ops if op[1] <= horizon]
    late = [op for op in ops if op[1] > horizon]
    rec = Record()
    for op in early:
        rec.apply(change_of(op))
    before = dict(effective(rec.values))
    folding = fold(rec.values, horizon)
    if folding is not None:
        rec.apply(Change(KEY, folding.sets, frozenset(), False, folding.stamp))
        # The folded entries go in the turn's own change, stamped above them.
        rec.apply(Change(KEY, {}, folding.removes, False, horizon + 1))
        assert dict(effective(rec.values)) == before, "a fold changed the value"
        assert not any(
            name.startswith(INCREMENT) and int(name.rpartition("\x00")[2], 16) <= horizon
            for name in rec.values
        ), "folded increments were left behind"
    for op in late:
        rec.apply(change_of(op))
    assert dict(effective(rec.values)) == model(ops)


def test_fifty_overlapping_increments_end_at_fifty() -> None:
    rec = Record()
    changes = [increment((i + 1) << 8 | (i % 7), "count", 1) for i in range(50)]
    random.Random(5).shuffle(changes)
    for change in changes:
        rec.apply(change)
    assert effective(rec.values) == {"count": b"50"}


def test_a_record_without_hidden_properties_is_returned_as_is() -> None:
    props = {"a": b"1", "b": b'"x"'}
    assert effective(props) is props
    assert fold(props, 10**9) is None
