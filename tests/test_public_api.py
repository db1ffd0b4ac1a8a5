"""Pin the public surface: adding or removing a name is a deliberate change."""

from __future__ import annotations

import inline_state


def test_public_names() -> None:
    assert sorted(inline_state.__all__) == sorted(
        [
            "STORE_KEY",
            "ApplyResult",
            "BagError",
            "BotData",
            "Change",
            "ExportPage",
            "HybridClock",
            "InlineStateClientMiddleware",
            "InlineStateMiddleware",
            "MemoryStore",
            "PreconditionFailed",
            "RecordKey",
            "RecordTooLarge",
            "RedisStore",
            "ReplyResponse",
            "SqliteStore",
            "StateApiError",
            "StateClient",
            "Store",
            "StoreError",
            "StoreUnavailable",
            "StoredRecord",
            "Turn",
            "UserRef",
            "add_state_api",
            "create_reply",
            "current_turn",
            "del_conversation_data",
            "del_private_conversation_data",
            "del_user_data",
            "get_conversation_data",
            "get_message",
            "get_private_conversation_data",
            "get_turn",
            "get_user_data",
            "open_store",
            "proxy_app",
            "set_conversation_data",
            "set_private_conversation_data",
            "set_user_data",
            "setup",
        ]
    )
    for name in inline_state.__all__:
        assert getattr(inline_state, name) is not None
        assert not name.startswith("_")


def test_every_public_callable_has_a_docstring() -> None:
    for name in inline_state.__all__:
        obj = getattr(inline_state, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_sdk_modules_public_names() -> None:
    import inline_state.agents
    import inline_state.botbuilder

    assert sorted(inline_state.agents.__all__) == ["SdkSwitchError", "enable", "setup", "verify"]
    assert sorted(inline_state.botbuilder.__all__) == [
        "ExpectRepliesCloudAdapter",
        "PostedReplies",
        "SdkSwitchError",
        "enable",
        "setup",
        "verify",
    ]
    for module in (inline_state.agents, inline_state.botbuilder):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name} has no docstring"


def test_the_core_never_imports_an_sdk() -> None:
    import subprocess
    import sys

    script = (
        "import sys, inline_state; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('botbuilder', 'botframework', 'msrest', 'microsoft_agents')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
