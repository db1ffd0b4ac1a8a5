"""What the SDK integrations share: the error raised when an SDK switch stops working."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["SdkSwitchError", "switch_failed"]


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
