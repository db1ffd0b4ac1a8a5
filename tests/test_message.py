from __future__ import annotations

from inline_state._keys import RecordKey, turn_keys
from inline_state._message import (
    Shape,
    detect_shape,
    kind_of_field,
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
    v3 = turn_keys(activity(user="u", conversation="c", channel="ch", bot="b"), Shape.V3)
    assert v3 is not None and v3.private == RecordKey("private", "b", "ch", "c", "u")
    v1 = turn_keys(v1_message(user="u", conversation="c", bot="b"), Shape.V1)
    assert v1 is not None and v1.private == RecordKey("private", "b", None, "c", "u")
    # An id is a non-empty string; anything else counts as missing.
    odd = {"recipient": {"id": "b"}, "channelId": "ch", "from": 3, "conversation": {"id": 7}}
    assert turn_keys(odd, Shape.V3) == (None, None, None)
    assert turn_keys({"recipient": {"id": ""}, "channelId": "ch"}, Shape.V3) is None
    assert turn_keys({"recipient": {"id": "b"}, "channelId": ""}, Shape.V3) is None


def test_reply_body_shapes() -> None:
    one = {"type": "message"}
    assert reply_messages(one) == [one]
    assert reply_messages([one, 3, one]) == [one, one]
    assert reply_messages({"activities": [one]}) == [one]
    assert reply_messages("text") is None
