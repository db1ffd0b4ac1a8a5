"""The turn's decoded bags: long strings shared between turns, everything else fresh."""

from __future__ import annotations

import orjson
import pytest

from inline_state import _turn
from inline_state._codec import encode_value, join_bag
from inline_state._message import Shape
from inline_state._turn import Turn

LONG = "x" * 70_000


def turn_with(props: dict[str, bytes]) -> Turn:
    return Turn(Shape.V3, None, {"user": props}, message={})


def test_a_long_bag_decodes_like_its_json_in_the_stored_order() -> None:
    props = {
        "a": encode_value(1),
        "long": encode_value(LONG),
        "items": encode_value(["y" * 5000]),
        "z": encode_value({"k": None}),
    }
    bag = turn_with(props).bag("user")
    assert bag == orjson.loads(join_bag(props))
    assert list(bag) == list(props)


def test_long_strings_are_shared_and_containers_are_not() -> None:
    props = {"long": encode_value(LONG), "items": encode_value(["y" * 5000])}
    first, second = turn_with(props).bag("user"), turn_with(dict(props)).bag("user")
    assert first["long"] is second["long"], "an immutable string is decoded once"
    assert first["items"] == second["items"] and first["items"] is not second["items"]
    first["items"].append("mine")
    assert turn_with(props).bag("user")["items"] == ["y" * 5000]


def test_the_shared_strings_stay_within_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_turn, "_STRINGS", {})
    monkeypatch.setattr(_turn, "_strings_bytes", 0)
    monkeypatch.setattr(_turn, "_STRINGS_MAX_BYTES", 40_000)
    kept = encode_value("k" * 6000)
    for i in range(10):
        value = encode_value(str(i) * 6000)
        assert turn_with({"s": value, "k": kept}).bag("user") == {
            "s": str(i) * 6000,
            "k": "k" * 6000,
        }
        held = 2 * sum(map(len, _turn._STRINGS))  # stored bytes and decoded text
        assert _turn._strings_bytes == held <= 40_000
    assert len(_turn._STRINGS) == 3
    assert kept in _turn._STRINGS, "a string used every turn is the last to go"
