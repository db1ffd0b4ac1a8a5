from __future__ import annotations

from inline_state._message import (
    Shape,
    detect_shape,
    kind_of_field,
    message_ids,
    reply_messages,
    strip_bags,
)

from .support import activity, v1_message


def test_detects_both_shapes() -> None:
    assert detect_shape(activity()) is Shape.V3
    assert detect_shape(v1_message()) is Shape.V1
    assert detect_shape({"hello": "world"}) is None


def test_every_spelling_maps_to_its_kind() -> None:
    for name in ("botUserData", "BotUserData", "botuserdata", "BOTUSERDATA"):
        assert kind_of_field(name) == "user"
    for name in ("botPerUserInConversationData", "botPerUserConversationData"):
        assert kind_of_field(name) == "private"
    assert kind_of_field("BotConversationData") == "conversation"
    assert kind_of_field("userData") is None


def test_strip_removes_every_spelling_and_nothing_else() -> None:
    msg = {
        "text": "x",
        "BotUserData": {},
        "botperuserconversationdata": 1,
        "botConversationData": None,
    }
    assert strip_bags(msg)
    assert msg == {"text": "x"}
    assert not strip_bags(msg)


def test_ids_of_each_shape() -> None:
    assert message_ids(activity(user="u", conversation="c", channel="ch", bot="b"), Shape.V3) == (
        "b",
        "ch",
        "c",
        "u",
    )
    assert message_ids(v1_message(user="u", conversation="c", bot="b"), Shape.V1) == (
        "b",
        None,
        "c",
        "u",
    )
    assert message_ids({"recipient": {"id": ""}, "from": 3}, Shape.V3) == (None, None, None, None)


def test_reply_body_shapes() -> None:
    one = {"type": "message"}
    assert reply_messages(one) == [one]
    assert reply_messages([one, 3, one]) == [one, one]
    assert reply_messages({"activities": [one]}) == [one]
    assert reply_messages("text") is None
