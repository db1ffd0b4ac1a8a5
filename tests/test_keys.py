from __future__ import annotations

import itertools

from inline_state import RecordKey, UserRef
from inline_state._keys import decode_key, turn_keys
from inline_state._message import Shape

from .support import activity, v1_message

ODD = ["a", "a/b", "a%2Fb", "%", "50%", "{x}", "a}b{", "29:1A b/c", "ü:ß/€", "", "/", "%25"]


def test_encoding_is_unambiguous_and_reversible() -> None:
    seen: dict[str, RecordKey] = {}
    for bot, channel, a, b in itertools.product(["b", "b/1"], [None, "c", "c/"], ODD, ODD[:6]):
        for key in (
            RecordKey("user", bot, channel, "", a),
            RecordKey("conversation", bot, channel, a, ""),
            RecordKey("private", bot, channel, a, b),
        ):
            encoded = key.encode()
            assert seen.setdefault(encoded, key) == key, f"{key} and {seen[encoded]} collide"
            assert decode_key(encoded) == key
            assert "{" not in encoded and "}" not in encoded


def test_v1_user_keys_are_global_and_v3_are_per_channel() -> None:
    v1 = turn_keys(v1_message(user="u", conversation="c", bot="b"), Shape.V1)
    assert v1 is not None and v1.user == RecordKey("user", "b", None, "", "u")
    v3 = turn_keys(activity(user="u", conversation="c", bot="b", channel="teams"), Shape.V3)
    assert v3 is not None
    assert v3.user == RecordKey("user", "b", "teams", "", "u")
    assert v3.private == RecordKey("private", "b", "teams", "c", "u")
    assert v3.conversation == RecordKey("conversation", "b", "teams", "c", "")
    assert v3.user.owner == v3.private.owner == UserRef("b", "teams", "u")
    assert v3.conversation.owner is None


def test_missing_ids_give_partial_or_no_keys() -> None:
    no_user = activity()
    del no_user["from"]
    keys = turn_keys(no_user, Shape.V3)
    assert keys is not None and keys.user is None and keys.private is None
    assert keys.conversation is not None
    no_bot = activity()
    del no_bot["recipient"]
    assert turn_keys(no_bot, Shape.V3) is None
