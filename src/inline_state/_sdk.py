"""What the SDK integrations share: the switch's error, and which SDK turns are the
request's own."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._message import activity_address
from ._turn import current_turn

__all__ = ["SdkSwitchError", "is_request_turn", "switch_failed"]


class SdkSwitchError(RuntimeError):
    """The installed SDK no longer carries the bag fields after ``enable()``.

    Raised at start-up rather than letting a bot lose its state silently: an SDK update
    changed the activity model in a way the switch does not cover.
    """


def switch_failed(distribution: str, tested: str, problem: str) -> SdkSwitchError:
    """An SdkSwitchError naming the installed version, the tested one and what failed."""
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        installed = "(version unknown)"
    return SdkSwitchError(
        f"{distribution} {installed}: {problem}; inline_state is tested on {distribution} "
        f"{tested}, where enable() makes the bag fields round-trip"
    )


def is_request_turn(activity: object) -> bool:
    """Whether an SDK turn for this incoming activity is the HTTP request's own turn.

    An SDK runs other turns inside a request too: a proactive ``continue_conversation``
    to another user or conversation. Those must run outside the request's turn, or the
    helpers would start that user's bags from this user's data.
    """
    turn = current_turn()
    if turn is None or turn.keys is None:
        return turn is None
    channel, conversation, user = activity_address(activity, "from_property")
    keys = turn.keys
    return (keys.user is None or turn.owns("user", channel, None, user)) and (
        keys.conversation is None or turn.owns("conversation", channel, conversation, None)
    )
