"""Pin the public surface: adding or removing a name is a deliberate change.

As httpx does: ``__all__`` is the whole of ``vars(inline_state)`` that does not start
with an underscore (but the submodules), every private module's ``__all__`` is exactly
what the package re-exports from it, and re-exported names say they are
``inline_state.X``.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import inline_state
import inline_state.stores

PUBLIC = [
    "ENGINE_KEY",
    "STORE_KEY",
    "ApplyResult",
    "BagError",
    "BotData",
    "Change",
    "Engine",
    "ExportPage",
    "HybridClock",
    "IdTooLong",
    "InspectedRecord",
    "InlineStateClientMiddleware",
    "InvalidCursor",
    "KeyPage",
    "InlineStateMiddleware",
    "DumpPage",
    "DumpedRecord",
    "KeyRing",
    "KeyRingError",
    "MemoryStore",
    "PreconditionFailed",
    "RecordKey",
    "RecordTooLarge",
    "RedisStore",
    "ReplyResponse",
    "SealedStore",
    "SqliteStore",
    "StateApiError",
    "StateClient",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "Turn",
    "TurnError",
    "UserRef",
    "add_inspector",
    "add_metrics",
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
    "incr_conversation_data",
    "incr_private_conversation_data",
    "incr_user_data",
    "open_store",
    "proxy_app",
    "set_conversation_data",
    "set_private_conversation_data",
    "set_user_data",
    "setup",
]
#: Loaded on first use (module ``__getattr__``), so not in ``vars()`` after import.
LAZY = {"KeyRing", "KeyRingError", "RedisStore", "SealedStore", "SqliteStore"}


def test_public_names() -> None:
    assert sorted(inline_state.__all__) == sorted(PUBLIC)
    for name in inline_state.__all__:
        assert getattr(inline_state, name) is not None
        assert not name.startswith("_")


def test_all_is_everything_public_in_vars() -> None:
    namespace = dict(vars(inline_state))
    public = {
        name
        for name, value in namespace.items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(inline_state.__all__) - LAZY


def _private_modules() -> list[types.ModuleType]:
    modules = []
    for package in (inline_state, inline_state.stores):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_") and info.name not in ("_sdk", "_redis_lua", "__main__"):
                modules.append(importlib.import_module(f"{package.__name__}.{info.name}"))
    return modules


def test_each_private_module_exports_what_the_package_re_exports() -> None:
    owners: dict[str, str] = {}
    for module in _private_modules():
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module.__name__} has no __all__"
        for name in exported:
            assert name in inline_state.__all__, f"{module.__name__}.{name} is not re-exported"
            assert getattr(module, name) is getattr(inline_state, name), name
            assert name not in owners, f"{name} is in {owners.get(name)} and {module.__name__}"
            owners[name] = module.__name__
    # MemoryStore and open_store come from public modules (inline_state.stores...).
    rest = set(inline_state.__all__) - set(owners) - LAZY - {"MemoryStore", "open_store"}
    assert not rest, f"re-exported but in no private module's __all__: {sorted(rest)}"


def test_re_exported_names_say_inline_state() -> None:
    for name in inline_state.__all__:
        value = getattr(inline_state, name)
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__ == "inline_state", f"{name}: {value.__module__}"


def test_store_implementer_types_live_in_inline_state_stores() -> None:
    for name in (
        "ApplyResult",
        "Change",
        "ExportPage",
        "HybridClock",
        "InspectedRecord",
        "KeyPage",
        "RecordKey",
        "Store",
        "StoredRecord",
        "StoreError",
        "StoreUnavailable",
        "InvalidCursor",
        "PreconditionFailed",
        "RecordTooLarge",
        "UserRef",
        "MemoryStore",
        "SqliteStore",
        "RedisStore",
    ):
        assert name in inline_state.stores.__all__, name
        assert getattr(inline_state.stores, name) is getattr(inline_state, name), name


def test_every_public_callable_has_a_docstring() -> None:
    for name in inline_state.__all__:
        obj = getattr(inline_state, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
        if isinstance(obj, type):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and isinstance(member, types.FunctionType):
                    assert member.__doc__, f"{name}.{attr} has no docstring"


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


def _modules_after(statement: str) -> list[str]:
    script = f"import sys; {statement}; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    modules: list[str] = eval(out.stdout)  # a list literal printed by the child
    return modules


def test_the_core_never_imports_an_sdk_nor_a_backend_it_does_not_use() -> None:
    loaded = _modules_after("import inline_state")
    roots = {name.split(".")[0] for name in loaded}
    assert not roots & {"botbuilder", "botframework", "msrest", "microsoft_agents"}
    assert "redis" not in roots, "import inline_state loads redis (it is the redis extra)"
    assert "sqlite3" not in roots
    assert "inline_state.stores.redis" not in loaded


def test_backends_load_when_used() -> None:
    loaded = _modules_after("import inline_state; inline_state.RedisStore")
    assert "inline_state.stores.redis" in loaded and "redis" in loaded
    loaded = _modules_after("import inline_state; inline_state.open_store('sqlite:///x.db')")
    assert "inline_state.stores.sqlite" in loaded and "redis" not in loaded
