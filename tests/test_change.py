from __future__ import annotations

from typing import Any

import pytest

from inline_state import BagError
from inline_state._codec import encode_value
from inline_state._diff import PendingChange, fold_replies
from inline_state._message import Kind

LIMIT = 64 * 1024


Played = dict[Kind, dict[str, bytes]]


def fold(replies: list[dict[str, Any]], played: Played | None = None) -> dict[Kind, PendingChange]:
    return fold_replies(replies, played or {}, whole_bag=frozenset(), limit=LIMIT)


def test_set_remove_unchanged() -> None:
    played: Played = {"user": {"a": b"1", "b": b"2", "c": b"3"}}
    out = fold([{"botUserData": {"a": 1, "b": 20}}], played)
    assert out["user"].sets == {"b": b"20"}
    assert out["user"].removes == {"c"}


def test_absent_or_null_field_changes_nothing_but_empty_object_clears() -> None:
    played: Played = {"user": {"a": b"1"}}
    assert fold([{"text": "x"}, {"botUserData": None}], played) == {}
    cleared = fold([{"botUserData": {}}], played)
    assert cleared["user"].removes == {"a"} and not cleared["user"].sets


def test_values_compare_as_encoded_bytes() -> None:
    played: Played = {"user": {"n": b"1"}}
    assert fold([{"botUserData": {"n": 1}}], played) == {}
    assert fold([{"botUserData": {"n": 1.0}}], played)["user"].sets == {"n": b"1.0"}
    assert fold([{"botUserData": {"n": True}}], played)["user"].sets == {"n": b"true"}


def test_a_later_reply_carrying_the_played_bag_does_not_undo_an_earlier_change() -> None:
    played: Played = {"user": {"a": b"1"}}
    out = fold([{"botUserData": {"a": 2, "new": 1}}, {"botUserData": {"a": 1}}], played)
    assert out["user"].sets == {"a": b"2", "new": b"1"}
    assert out["user"].removes == set()


def test_the_last_differing_reply_wins() -> None:
    played: Played = {"user": {"a": b"1"}}
    out = fold([{"botUserData": {"a": 2}}, {"botUserData": {}}], played)
    assert out["user"].removes == {"a"} and not out["user"].sets
    out = fold([{"botUserData": {}}, {"botUserData": {"a": 3}}], played)
    assert out["user"].sets == {"a": b"3"} and not out["user"].removes


def test_null_property_is_stored_as_null() -> None:
    assert fold([{"botUserData": {"a": None}}], {"user": {"a": b"1"}})["user"].sets == {
        "a": b"null"
    }


@pytest.mark.parametrize(
    ("bag", "reason"),
    [
        ([1, 2], "notAnObject"),
        ("text", "notAnObject"),
        ({"n": 2**64}, "unstorableValue"),
        ({"n": -(2**63) - 1}, "unstorableValue"),
        ({"n": float("nan")}, "unstorableValue"),
        ({"n": float("inf")}, "unstorableValue"),
        ({"s": "\ud800"}, "unstorableValue"),
        ({"big": "x" * LIMIT}, "tooLarge"),
    ],
)
def test_invalid_bags_name_field_and_reason(bag: object, reason: str) -> None:
    with pytest.raises(BagError) as info:
        fold([{"text": "ok"}, {"BotUserData": bag}])
    assert info.value.field == "BotUserData"
    assert info.value.reason == reason
    assert info.value.limit == LIMIT
    if reason == "tooLarge":
        assert info.value.size is not None and info.value.size > LIMIT


def test_64_bit_integers_are_fine() -> None:
    assert encode_value(2**64 - 1) == b"18446744073709551615"
    assert encode_value(-(2**63)) == b"-9223372036854775808"
    assert encode_value("12345678901234567890123") == b'"12345678901234567890123"'


def test_two_spellings_of_one_bag_in_one_reply_fail() -> None:
    with pytest.raises(BagError, match="both"):
        fold([{"botUserData": {}, "BotUserData": {}}])


def test_whole_bag_mode_replaces_and_skips_unchanged() -> None:
    played: Played = {"user": {"a": b"1"}}
    same = fold_replies(
        [{"botUserData": {"a": 1}}], played, whole_bag=frozenset({"user"}), limit=LIMIT
    )
    assert same == {}
    new = fold_replies(
        [{"botUserData": {"b": 1}}], played, whole_bag=frozenset({"user"}), limit=LIMIT
    )
    assert new["user"].replace and new["user"].sets == {"b": b"1"}


def test_names_that_subclass_str_are_stored_as_plain_strings() -> None:
    class Name(str):
        pass

    out = fold([{"botUserData": {Name("a"): 1}}], {"user": {"a": b"0"}})
    assert out["user"].sets == {"a": b"1"}
    assert [type(name) for name in out["user"].sets] == [str]


def test_a_dict_subclass_bag_is_read_through_its_own_items() -> None:
    class Renamed(dict[str, Any]):
        def items(self) -> Any:
            return [(f"x{name}", value) for name, value in super().items()]

    out = fold([{"botUserData": Renamed(a=1)}])
    assert out["user"].sets == {"xa": b"1"}
